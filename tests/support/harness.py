"""Test harness: real servers, a worker subprocess, scraping, waiting on conditions."""

from __future__ import annotations

import asyncio
import os
import random
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
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from stream.devtools.processes import stop
from stream.store.keys import Keys

ROOT = Path(__file__).resolve().parents[2]

Scraped = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""A /metrics page: {(sample name, sorted labels): value}."""


def seed_of(default: int | None = None) -> int:
    """CRM_KPI_TEST_SEED, else `default` (None: a random one); printed, so a failure shows how to rerun it."""
    if default is None:
        default = random.SystemRandom().randrange(1 << 30)
    seed = int(os.environ.get("CRM_KPI_TEST_SEED") or default)
    print(f"seed={seed} (rerun with CRM_KPI_TEST_SEED={seed})")
    return seed


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
        # Unbuffered: a child killed with -9 must not take its last log lines with it.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
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


def scrape(url: str) -> Scraped:
    """Fetch a /metrics page: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: Scraped = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape_when_up(url: str, timeout: float, what: str) -> Scraped:
    """Scrape `url` as soon as it answers (a process starting up); fail with `what` after `timeout` s."""
    scraped: Scraped = {}

    async def up() -> bool:
        nonlocal scraped
        try:
            scraped = scrape(url)
            return True
        except OSError:
            return False

    await wait_for(up, timeout, what)
    return scraped


async def exporter_figures(env: Mapping[str, str], log: Path) -> Scraped:
    """Start `crm-kpi exporter`, scrape it once it serves, stop it."""
    exporter = WorkerProcess(env, "exporter", log).start()
    try:
        url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"
        return await scrape_when_up(url, 30, "the exporter to serve /metrics")
    finally:
        exporter.stop()


def messages(env: Mapping[str, str], events: Iterable[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) per event on the topics of `env`, keyed as the product's publisher does."""
    from bench.run import messages as on_topics

    return on_topics(settings_of(env), events)


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


async def read_all(bootstrap: str, ends: Mapping[TopicPartition, int], timeout: float = 60) -> list[Any]:
    """Every record from each partition's log start up to `ends` (fails on timeout)."""
    wanted = {tp: end for tp, end in ends.items() if end > 0}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign(list(wanted))
        await consumer.seek_to_beginning(*wanted)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        done: set[TopicPartition] = set()
        while len(done) < len(wanted):
            assert loop.time() < deadline, f"could not read back {sorted(set(wanted) - done)}"
            for tp, recs in (await consumer.getmany(timeout_ms=200)).items():
                records.extend(r for r in recs if r.offset < wanted[tp])
                if recs and recs[-1].offset + 1 >= wanted[tp]:
                    done.add(tp)
                    consumer.pause(tp)
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


async def end_offsets(bootstrap: str, topics: Iterable[str], empty: bool = True) -> dict[TopicPartition, int]:
    """The end offset of every partition of `topics` as the broker reports it (`empty`: also those at 0)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp: end for tp, end in ends.items() if empty or end > 0}


async def progress(client: Any, prefix: str) -> int:
    """Records applied so far, summed over partitions (the offsets Redis holds); -1 while Redis is down."""
    import redis.exceptions

    try:
        stored = await stored_offsets(client, prefix)
    except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
        return -1
    return sum(stored.values())


async def applied_at_least(client: Any, prefix: str, n: float) -> bool:
    """True once Redis records at least `n` records applied."""
    return await progress(client, prefix) >= n


async def applied(client: Any, prefix: str, ends: Mapping[TopicPartition, int]) -> bool:
    """True when Redis records every partition applied up to its end offset."""
    import redis.exceptions

    try:
        stored = await stored_offsets(client, prefix)
    except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
        return False  # a restarted server still loading its data
    return all(stored.get(f"{tp.topic}:{tp.partition}", -1) >= end for tp, end in ends.items())


async def unapplied_records(
    bootstrap: str, client: Any, prefix: str, ends: Mapping[TopicPartition, int]
) -> dict[str, str]:
    """Records whose event id Redis never recorded as applied: 'topic:partition' -> their offset ranges.

    Reads every record up to `ends` and looks its event id's digest up in every dedupe set
    of the prefix. Empty when every event was applied; otherwise it names where a loss
    happened, to read against the workers' logs.
    """
    import json

    from stream.events.dedupe import event_digest

    keys = Keys(prefix)
    recorded: set[bytes] = set()
    for group in await client.smembers(keys.registry):
        async for key in client.scan_iter(match=f"{keys.group(int(group)).dedupe(0)[:-1]}*"):
            recorded |= set(await client.smembers(key))
    missing: dict[str, list[int]] = {}
    for record in await read_all(bootstrap, ends):
        try:
            event_id = json.loads(record.value)["event_id"]
        except (ValueError, KeyError, TypeError):
            continue  # not an event: never recorded
        if event_digest(event_id) not in recorded:
            missing.setdefault(f"{record.topic}:{record.partition}", []).append(record.offset)
    return {field: _ranges(sorted(offsets)) for field, offsets in sorted(missing.items())}


def _ranges(offsets: list[int]) -> str:
    """'3-7, 12' for [3, 4, 5, 6, 7, 12]."""
    spans: list[str] = []
    start = prev = offsets[0]
    for offset in [*offsets[1:], None]:
        if offset is not None and offset == prev + 1:
            prev = offset
            continue
        spans.append(f"{start}-{prev}" if prev > start else str(start))
        if offset is not None:
            start = prev = offset
    return ", ".join(spans)
