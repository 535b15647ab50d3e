"""Test harness: real servers, a worker subprocess, scraping, waiting on conditions."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from stream.devtools.processes import stop
from stream.store.keys import Keys

ROOT = Path(__file__).resolve().parents[2]


def required_tool(name: str, debian_package: str) -> str:
    """Path of an external tool the test needs: skipped without it locally, a failure without it in CI.

    CI is the environment variable `.ci/run` exports; tests/conftest.py also turns any other skip
    into a failure there.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} not on PATH (Debian package: {debian_package})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the real check")
        pytest.skip(message)
    return path


def stack_env(kafka: str, redis_url: str, prefix: str, **settings: str) -> dict[str, str]:
    """CRM_KPI_* variables for one test's worker and exporter: own topics, keys, group, free ports.

    Extra settings are given by field name: `stack_env(..., topic_partitions="3")`.
    """
    from stream.devtools.servers import free_port

    env = {
        "CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "CRM_KPI_REDIS_URL": redis_url,
        "CRM_KPI_TOPIC_PREFIX": f"{prefix}.",
        "CRM_KPI_REDIS_KEY_PREFIX": prefix,
        "CRM_KPI_KAFKA_GROUP_ID": f"{prefix}-workers",
        "CRM_KPI_WORKER_PORT": str(free_port()),
        "CRM_KPI_EXPORTER_PORT": str(free_port()),
    }
    env.update({f"CRM_KPI_{name.upper()}": value for name, value in settings.items()})
    return env


def settings_of(env: Mapping[str, str]) -> Any:
    """The Settings a process started with `env` sees."""
    from stream.settings import load_settings

    return load_settings(**{k[len("CRM_KPI_") :].lower(): v for k, v in env.items() if k.startswith("CRM_KPI_")})


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll an async condition with backoff until true; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(0.5, delay * 1.5)


class WorkerProcess:
    """`crm-kpi worker` (or another crm-kpi command) as a child process with its own env."""

    def __init__(self, env: Mapping[str, str], command: str = "worker", log: Path | None = None) -> None:
        self.env = {**os.environ, **env}
        self.command = command
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", *self.command.split()],
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: a crash at an arbitrary instant."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`)."""
        if self.proc is None:
            return None
        return stop(self.proc, timeout)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Fetch a /metrics page: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def produce(
    bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes | None]]
) -> dict[TopicPartition, int]:
    """Send (topic, key, value) in order; return the end offset (last + 1) per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    try:
        futures = [await producer.send(t, value=v, key=k) for t, k, v in messages]
        for fut in futures:
            md = await fut
            tp = TopicPartition(md.topic, md.partition)
            ends[tp] = max(ends.get(tp, 0), md.offset + 1)
    finally:
        await producer.stop()
    return ends


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[Any]:
    """Read `expected` records of a topic from the start (fails on timeout)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def stored_offsets(client: Any, prefix: str) -> dict[str, int]:
    """Every applied offset Redis holds ('topic:partition' -> next offset), over every partition group."""
    keys = Keys(prefix)
    out: dict[str, int] = {}
    for group in await client.smembers(keys.registry):
        raw = await client.hgetall(keys.group(int(group)).offsets)
        out.update({k.decode(): int(v) for k, v in raw.items()})
    return out


def stored_offsets_sync(client: Any, prefix: str) -> dict[str, int]:
    """`stored_offsets` with a blocking client."""
    keys = Keys(prefix)
    out: dict[str, int] = {}
    for group in client.smembers(keys.registry):
        out.update({k.decode(): int(v) for k, v in client.hgetall(keys.group(int(group)).offsets).items()})
    return out


async def applied(client: Any, prefix: str, ends: Mapping[TopicPartition, int]) -> bool:
    """True when Redis records every partition applied up to its end offset."""
    import redis.exceptions

    try:
        stored = await stored_offsets(client, prefix)
    except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
        return False  # a restarted server still loading its data
    return all(stored.get(f"{tp.topic}:{tp.partition}", -1) >= end for tp, end in ends.items())
