"""The benchmark driver (see bench/__main__.py for what it measures)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.reference import assert_matches, expected, make_stream
from schemas import TOPIC_FAMILY
from stream.devtools.processes import stop
from stream.devtools.servers import EmbeddedServer, free_port, start_kafka, start_redis
from stream.events.decode import Rejection, decode
from stream.exporter.collector import kpi_samples, snapshot
from stream.kafka.topics import create_topics
from stream.settings import Settings, load_settings
from stream.store.keys import Keys

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4


def _settings(
    kafka: str, redis_url: str, topic_prefix: str, key_prefix: str, *, partitions: int = PARTITIONS, **extra: Any
) -> Settings:
    return load_settings(
        kafka_bootstrap_servers=kafka,
        redis_url=redis_url,
        topic_prefix=topic_prefix,
        redis_key_prefix=key_prefix,
        kafka_group_id=f"{key_prefix}-group",
        topic_partitions=partitions,
        **extra,
    )


WORKER_SETTINGS: dict[str, str] = {}


def _env(s: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_KPI_")}
    env.update(
        CRM_KPI_KAFKA_BOOTSTRAP_SERVERS=s.kafka_bootstrap_servers,
        CRM_KPI_REDIS_URL=s.redis_url,
        CRM_KPI_TOPIC_PREFIX=s.topic_prefix,
        CRM_KPI_REDIS_KEY_PREFIX=s.redis_key_prefix,
        CRM_KPI_KAFKA_GROUP_ID=s.kafka_group_id,
        CRM_KPI_WORKER_PORT=str(free_port()),
        CRM_KPI_EXPORTER_PORT=str(free_port()),
        CRM_KPI_LOG_LEVEL="warning",
    )
    env.update(extra)
    # Experiments: `--worker-setting CRM_KPI_BATCH_MAX_RECORDS=2000` applies to every worker run.
    env.update(WORKER_SETTINGS)
    return env


def _bad_records(n: int) -> list[bytes]:
    kinds = [
        b"not json",
        b"[1]",
        b'{"type": "lead.exploded", "event_id": "x", "occurred_at": "2026-01-01T00:00:00Z"}',
        b'{"type": "lead.created", "event_id": "x", "occurred_at": "yesterday", "lead_id": "l"}',
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


def messages(s: Settings, events: Iterable[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) per event, keyed by customer as the product's publisher does."""
    return [
        (s.topic(TOPIC_FAMILY[e["type"]]), str(e.get("customer_id", e["event_id"])).encode(), json.dumps(e).encode())
        for e in events
    ]


async def publish(s: Settings, events: list[dict[str, Any]], bad: int = 0) -> dict[TopicPartition, int]:
    """Create the topics and publish events (+ `bad` invalid records); end offset per partition."""
    records = messages(s, events)
    if bad:
        bad_every = len(events) // bad
        bad_iter = iter(_bad_records(bad))
        mixed = []
        for i, record in enumerate(records):
            mixed.append(record)
            if i % bad_every == 0:
                mixed.append((s.topic("leads"), b"bad", next(bad_iter, b"x")))
        records = mixed
    return await publish_records(s, records)


async def publish_records(s: Settings, records: Iterable[tuple[str, bytes, bytes]]) -> dict[TopicPartition, int]:
    """Create the topics and publish (topic, key, value) in order; end offset per partition."""
    await create_topics(s)
    producer = AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap_servers, linger_ms=20, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    try:
        futures = []
        for topic, key, value in records:
            futures.append(await producer.send(topic, value, key=key))
            if len(futures) >= 20000:
                await _collect(futures, ends)
        await _collect(futures, ends)
    finally:
        await producer.stop()
    return ends


async def _collect(futures: list[Any], ends: dict[TopicPartition, int]) -> None:
    for fut in futures:
        md = await fut
        tp = TopicPartition(md.topic, md.partition)
        ends[tp] = max(ends.get(tp, 0), md.offset + 1)
    futures.clear()


def _applied_offsets(client: redis.Redis, key_prefix: str) -> dict[str, int]:
    """Every applied offset, over the partition groups the workers registered."""
    keys = Keys(key_prefix)
    out: dict[str, int] = {}
    for group in client.smembers(keys.registry):  # type: ignore[union-attr]
        out.update({k.decode(): int(v) for k, v in client.hgetall(keys.group(int(group)).offsets).items()})  # type: ignore[union-attr]
    return out


async def _applied_offsets_async(client: aioredis.Redis, key_prefix: str) -> dict[str, int]:
    keys = Keys(key_prefix)
    out: dict[str, int] = {}
    for group in await client.smembers(keys.registry):
        out.update({k.decode(): int(v) for k, v in (await client.hgetall(keys.group(int(group)).offsets)).items()})
    return out


def _applied_total(client: redis.Redis, key_prefix: str) -> int:
    return sum(_applied_offsets(client, key_prefix).values())


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args], env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop(proc, 30)


def _poll_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.0f}s")
        time.sleep(interval)
    return time.perf_counter()


def run_worker(
    s: Settings, total: int, unique: list[dict[str, Any]], now: datetime, logs: Path, replicas: int = 1
) -> dict[str, Any]:
    """The project's worker (`replicas` processes in one group) on the published topics: rate, start-up, RSS, exactness."""
    client = redis.Redis.from_url(s.redis_url)
    spawned = time.perf_counter()
    procs = [_spawn(["stream", "worker"], _env(s), logs / f"worker{i}.log") for i in range(replicas)]
    try:
        first = _poll_until(lambda: _applied_total(client, s.redis_key_prefix) > 0, 120, "first batch")
        last = _poll_until(lambda: _applied_total(client, s.redis_key_prefix) >= total, 900, "all records")
        rss = max(_peak_rss_mb(p.pid) for p in procs)
    finally:
        for p in procs:
            _stop(p)
    figures = {(name, tuple(sorted(labels.items()))): value for name, labels, value in kpi_samples(snapshot(client, s))}
    try:
        assert_matches(figures, expected(unique, now))
        exact, error = True, ""
    except AssertionError as exc:
        exact, error = False, str(exc)[:300]
    return {
        "rate": total / (last - first),
        "startup_s": first - spawned,
        "peak_rss_mb": rss,
        "exact": exact,
        "error": error,
    }


def run_naive(kafka: str, redis_url: str, topic_prefix: str, key_prefix: str, total: int, logs: Path) -> dict[str, Any]:
    """The naive Faust agent on its own (smaller) topic set: events/s."""
    client = redis.Redis.from_url(redis_url)
    env = {
        **os.environ,
        "BENCH_KAFKA": kafka,
        "BENCH_REDIS": redis_url,
        "BENCH_TOPIC_PREFIX": topic_prefix,
        "BENCH_KEY_PREFIX": key_prefix,
        "BENCH_GROUP": f"{key_prefix}-naive",
    }
    proc = _spawn(["bench.naive_faust", "worker", "--loglevel", "warn", "--without-web"], env, logs / "naive.log")

    def done() -> int:
        return int(client.get(f"{key_prefix}:done") or 0)

    try:
        spawned = time.perf_counter()
        first = _poll_until(lambda: done() > 0, 180, "naive first event", 0.05)
        last = _poll_until(lambda: done() >= total, 1800, "naive all events", 0.05)
    finally:
        _stop(proc)
    return {"rate": total / (last - first), "startup_s": first - spawned}


async def run_ceiling(s: Settings, total: int, group: str, with_decode: bool) -> dict[str, Any]:
    """aiokafka getmany() over the topics, with or without the project's validation."""
    topics = list(s.event_topics())
    families = s.event_topics()
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=s.kafka_bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=s.batch_max_records,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    n = valid = 0
    first = 0.0
    try:
        while n < total:
            batch = await consumer.getmany(timeout_ms=100, max_records=s.batch_max_records)
            if batch and not first:
                first = time.perf_counter()
            now_us = int(time.time() * 1e6)
            for tp, recs in batch.items():
                n += len(recs)
                if with_decode:
                    family = families[tp.topic]
                    for r in recs:
                        valid += not isinstance(decode(r.value, family, now_us, 65536, 300_000_000), Rejection)
        last = time.perf_counter()
    finally:
        await consumer.stop()
    return {"rate": total / (last - first)}


async def run_latency(
    kafka: str, redis_url: str, logs: Path, rate: float, seconds: float, name: str = "benchlat"
) -> dict[str, Any]:
    """p50/p99 from publish to the effect being in Redis (what the exporter reads), at a fixed rate.

    `name`: the topic and key prefix (and the consumer group's name); a fresh one per run,
    else a run starts behind the records of the one before."""
    s = _settings(kafka, redis_url, f"{name}.", name, batch_timeout_ms=5)
    await create_topics(s)
    client = aioredis.Redis.from_url(redis_url)
    events, _ = make_stream(int(rate * seconds), seed=5, now=datetime.now(UTC))
    proc = _spawn(["stream", "worker"], _env(s, CRM_KPI_BATCH_TIMEOUT_MS="5"), logs / f"worker-{name}.log")
    try:
        warm = await publish(s, events[:10])
        while sum((await _applied_offsets_async(client, name)).values()) < sum(warm.values()):
            await asyncio.sleep(0.05)
        producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=1, acks=1)
        await producer.start()
        seen: dict[str, int] = {}
        visible_at: list[tuple[str, int, float]] = []
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                raw = await _applied_offsets_async(client, name)
                t = time.perf_counter()
                for field, off in raw.items():
                    if off > seen.get(field, -1):
                        seen[field] = off
                        visible_at.append((field, off, t))
                await asyncio.sleep(0.002)

        # Encoded up front: the driver shares the machine with the worker, so it
        # should spend as little CPU per record as it can while publishing.
        records_out = [
            (s.topic(TOPIC_FAMILY[e["type"]]), json.dumps(e).encode(), str(e.get("customer_id", "k")).encode())
            for e in events[10:]
        ]
        poller = asyncio.create_task(poll())
        start = time.perf_counter()
        futures = []
        for i, (topic, value, key) in enumerate(records_out):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0.001:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            fut = await producer.send(topic, value, key=key)
            futures.append((fut, t0))
        records = []
        for fut, t0 in futures:
            md = await fut
            records.append((f"{md.topic}:{md.partition}", md.offset, t0))
        achieved = len(records) / (time.perf_counter() - start)
        deadline = time.monotonic() + 60
        last_needed = {}
        for f, off, _ in records:
            last_needed[f] = max(last_needed.get(f, 0), off + 1)
        while any(seen.get(f, 0) < o for f, o in last_needed.items()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await poller
        await producer.stop()
        by_field: dict[str, list[tuple[int, float]]] = {}
        for f, off, t in visible_at:
            by_field.setdefault(f, []).append((off, t))
        lat = []
        for f, off, t0 in records:
            for applied_off, t in by_field.get(f, []):
                if applied_off > off:
                    lat.append(t - t0)
                    break
        lat.sort()
        return {
            "publish_rate": achieved,
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
            "measured": len(lat),
            "sent": len(records),
        }
    finally:
        _stop(proc)
        await client.aclose()


def run_scrape(s: Settings, logs: Path, n: int = 30) -> dict[str, Any]:
    """Median time of a full exporter scrape over HTTP (all windows, every series)."""
    env = _env(s)
    proc = _spawn(["stream", "exporter"], env, logs / "exporter.log")
    url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"
    try:

        def up() -> bool:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                return True
            except OSError:
                return False

        _poll_until(up, 30, "exporter up", 0.05)
        times, series = [], 0
        for _ in range(n):
            t0 = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            times.append(time.perf_counter() - t0)
            series = sum(
                1 for line in body.splitlines() if line.startswith("crm_") and not line.startswith("crm_exporter")
            )
        return {"median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times), "series": series}
    finally:
        _stop(proc)


async def run_memory(kafka: str, redis_url: str, n: int, logs: Path) -> dict[str, Any]:
    """Redis used_memory after n events with short windows, and after they expired."""
    extra: dict[str, Any] = {"windows": "1m,2m", "dedupe_horizon": "1m", "state_ttl": "2m"}
    s = _settings(kafka, redis_url, "benchmem.", "benchmem", **extra)
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    base = client.info("memory")["used_memory"]
    _, published = make_stream(n, seed=9, now=datetime.now(UTC), span_s=55)
    ends = await publish(s, published)
    total = sum(ends.values())
    env = _env(s, CRM_KPI_WINDOWS="1m,2m", CRM_KPI_DEDUPE_HORIZON="1m", CRM_KPI_STATE_TTL="2m")
    proc = _spawn(["stream", "worker"], env, logs / "worker-memory.log")
    try:
        _poll_until(lambda: _applied_total(client, "benchmem") >= total, 900, "memory run applied", 0.1)
    finally:
        _stop(proc)
    after = client.info("memory")["used_memory"]
    keys_after = client.dbsize()

    def kinds() -> dict[str, int]:
        counts: dict[str, int] = {}
        for key in client.scan_iter("{benchmem}:*", count=10_000):
            kind = key.decode().split(":")[1]
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    # Windowed and dedupe keys must all expire; what stays is "current" state that
    # is still open (tickets awaiting an answer or resolution, offsets, counters).
    _poll_until(lambda: not {"w", "wd", "dd"} & kinds().keys(), 900, "window and dedupe keys expired", 2.0)
    expired = client.info("memory")["used_memory"]
    return {
        "events": total,
        "baseline_mb": base / 2**20,
        "after_events_mb": after / 2**20,
        "keys_after_events": keys_after,
        "after_expiry_mb": expired / 2**20,
        "keys_after_expiry": client.dbsize(),
        "keys_left_by_kind": kinds(),
    }


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of one measurement over the rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(result: dict[str, Any], out: Path, print_table: Callable[[dict[str, Any]], None], failure: str) -> None:
    """Write the JSON and print the table; exit 1 when a run was not exact (`failure` says what was not)."""
    out.write_text(json.dumps(result, indent=2, default=str, ensure_ascii=False))
    print_table(result)
    print(f"\nJSON: {out}")
    if not result.get("exact", False):
        print(f"FAILURE: {failure}; its speed does not count.")
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=10_000, help="the naive baseline is ~40x slower")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-events", type=int, default=1_000_000, help="0 skips the memory phase")
    parser.add_argument("--latency-rate", type=float, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="also run this many worker processes in one group (scaling out); 1 skips",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--worker-setting", action="append", default=[], metavar="CRM_KPI_X=VALUE", help="a worker setting to try"
    )
    args = parser.parse_args()
    WORKER_SETTINGS.update(kv.split("=", 1) for kv in args.worker_setting)

    logs = ROOT / "bench" / "results" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    kafka: EmbeddedServer = start_kafka()
    rds: EmbeddedServer = start_redis()
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "events": args.events,
    }
    try:
        now = datetime.now(UTC)
        unique, published = make_stream(args.events, seed=1, now=now, span_s=1800)
        s_main = _settings(kafka.url, rds.url, "bench.", "bench")
        bad = args.events // 200
        ends = asyncio.run(publish(s_main, published, bad=bad))
        total = sum(ends.values())
        result.update(records=total, duplicates=len(published) - len(unique), invalid=bad)
        if not args.skip_naive:
            _, n_pub = make_stream(args.naive_events, seed=2, now=now, span_s=1800)
            s_naive = _settings(kafka.url, rds.url, "benchn.", "benchn")
            n_total = sum(asyncio.run(publish(s_naive, n_pub)).values())
        runs: dict[str, list[dict[str, Any]]] = {"worker": [], "replicas": [], "naive": [], "raw": [], "decode": []}
        for r in range(args.rounds):
            s = _settings(kafka.url, rds.url, "bench.", f"benchw{r}")
            runs["worker"].append(run_worker(s, total, unique, now, logs))
            print(
                f"round {r + 1}: worker {runs['worker'][-1]['rate']:,.0f}/s exact={runs['worker'][-1]['exact']}",
                flush=True,
            )
            if args.replicas > 1:
                s_rep = _settings(kafka.url, rds.url, "bench.", f"benchr{r}")
                runs["replicas"].append(run_worker(s_rep, total, unique, now, logs, args.replicas))
                print(f"round {r + 1}: {args.replicas} workers {runs['replicas'][-1]['rate']:,.0f}/s", flush=True)
            if not args.skip_naive:
                runs["naive"].append(run_naive(kafka.url, rds.url, "benchn.", f"benchn{r}", n_total, logs))
                print(f"round {r + 1}: naive {runs['naive'][-1]['rate']:,.0f}/s", flush=True)
            runs["raw"].append(asyncio.run(run_ceiling(s_main, total, f"raw{r}", False)))
            runs["decode"].append(asyncio.run(run_ceiling(s_main, total, f"decode{r}", True)))
            print(
                f"round {r + 1}: raw {runs['raw'][-1]['rate']:,.0f}/s decode {runs['decode'][-1]['rate']:,.0f}/s",
                flush=True,
            )
        result["rates"] = {k: summary([x["rate"] for x in v]) for k, v in runs.items() if v}
        result["worker_runs"] = runs["worker"]
        result["replica_runs"] = runs["replicas"]
        result["replicas"] = args.replicas
        result["exact"] = all(x["exact"] for x in runs["worker"] + runs["replicas"])
        med = result["rates"]
        result["ratios"] = {
            "worker_vs_decode_ceiling": med["worker"]["median"] / med["decode"]["median"],
            "worker_vs_raw_ceiling": med["worker"]["median"] / med["raw"]["median"],
        }
        if "naive" in med:
            result["ratios"]["worker_vs_naive"] = med["worker"]["median"] / med["naive"]["median"]
        result["startup_s"] = summary([x["startup_s"] for x in runs["worker"]])
        result["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs["worker"])
        result["scrape"] = run_scrape(_settings(kafka.url, rds.url, "bench.", "benchw0"), logs)
        result["latency"] = asyncio.run(run_latency(kafka.url, rds.url, logs, args.latency_rate, args.latency_seconds))
        if args.memory_events:
            result["memory"] = asyncio.run(run_memory(kafka.url, rds.url, args.memory_events, logs))
    finally:
        kafka.stop()
        rds.stop()
    report(result, args.out or logs / "result.json", print_table, "the worker's figures were not exact")


def print_table(r: dict[str, Any]) -> None:
    """The human summary."""
    print(
        f"\n{r['events']:,} events ({r['records']:,} records incl. {r['duplicates']:,} duplicates, {r['invalid']:,} invalid), "
        f"{r['machine']['cpus']} CPUs, {r['machine']['platform']}"
    )
    print(f"{'what':<44}{'median':>12}{'min':>12}{'max':>12}")
    names = {
        "worker": "crm-kpi worker, end to end, exact (ev/s)",
        "replicas": f"{r.get('replicas', 2)} worker processes, one group (ev/s)",
        "naive": "naive Faust agent, await per event (ev/s)",
        "raw": "ceiling: aiokafka getmany only (ev/s)",
        "decode": "ceiling: getmany + validation (ev/s)",
    }
    for key, label in names.items():
        if key in r["rates"]:
            x = r["rates"][key]
            print(f"{label:<44}{x['median']:>12,.0f}{x['min']:>12,.0f}{x['max']:>12,.0f}")
    for k, v in r["ratios"].items():
        print(f"{k:<44}{v:>12.2f}")
    print(f"{'figures exact in every round':<44}{r['exact']!s:>12}")
    print(f"{'start-up to first batch applied (s)':<44}{r['startup_s']['median']:>12.1f}")
    print(f"{'worker peak RSS (MB)':<44}{r['peak_rss_mb']:>12.0f}")
    lat = r["latency"]
    print(
        f"{'publish->visible p50 / p99 (ms) @ rate':<44}{lat['p50_ms']:>12.0f}{lat['p99_ms']:>12.0f}{lat['publish_rate']:>12,.0f}"
    )
    sc = r["scrape"]
    print(
        f"{'exporter scrape median / max (ms), series':<44}{sc['median_ms']:>12.1f}{sc['max_ms']:>12.1f}{sc['series']:>12}"
    )
    if "memory" in r:
        m = r["memory"]
        print(
            f"{'redis MB: empty / after events / expired':<44}{m['baseline_mb']:>12.1f}{m['after_events_mb']:>12.1f}{m['after_expiry_mb']:>12.1f}"
        )
