"""The fault suite on Apache Kafka (docs/failures.md): every figure exact after each fault, or the loss signalled.

Each test runs real processes — Apache Kafka (tests/support/apache_kafka.py), redis-server,
`crm-kpi worker` and exporter — publishes a seeded stream whose figures the independent
model (bench/reference.py) computes, injects its fault at seeded instants, and compares what
the exporter serves with the model, exactly. The seed is printed (pytest shows it on
failure): rerun one with CRM_KPI_TEST_SEED=<seed>.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from bench.hostile import hostile_records, interleave
from bench.reference import assert_matches, expected, make_stream
from stream.devtools.servers import EmbeddedServer, start_redis
from stream.kafka.topics import create_topics
from stream.store.keys import Keys
from tests.support.apache_kafka import ApacheKafka
from tests.support.faults import TcpProxy, crm_kpi, log_lines, metric_sum, produce_paced, worker_metrics
from tests.support.harness import (
    WorkerProcess,
    applied,
    applied_at_least,
    end_offsets,
    exporter_figures,
    messages,
    produce,
    progress,
    read_all,
    seed_of,
    settings_of,
    stack_env,
    stored_offsets,
    unapplied_records,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis() -> Iterator[EmbeddedServer]:
    """A Redis of this test's own, to kill and restart (no persistence: only an explicit SAVE survives)."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
async def own_client(own_redis: EmbeddedServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


def _env(kafka: str, redis_url: str, prefix: str, **settings: str) -> dict[str, str]:
    # Small batches: many Redis writes for each fault to land between.
    return stack_env(kafka, redis_url, prefix, topic_partitions="4", batch_max_records="500", **settings)


async def _publish(env: dict[str, str], published: list[dict[str, Any]]) -> dict[TopicPartition, int]:
    await create_topics(settings_of(env))
    ends = await produce(env["CRM_KPI_KAFKA_BOOTSTRAP_SERVERS"], messages(env, published))
    assert sum(ends.values()) == len(published)
    return ends


async def _reached(client: aioredis.Redis, prefix: str, n: float, what: str, timeout: float = 120) -> None:
    await wait_for(lambda: applied_at_least(client, prefix, n), timeout, what)


# --- Redis going backwards -------------------------------------------------------------


async def test_redis_restarted_from_an_older_snapshot_is_caught_up_exactly(
    apache_kafka: ApacheKafka, own_redis: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    """SAVE, more traffic, kill -9, restart from that dump: mid-stream, then once everything was applied.

    The second rewind leaves every partition idle: no batch fence can see it, the worker's
    watch of Redis's offsets must.
    """
    seed = seed_of()
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    # One stream, published in two parts: the model joins tickets and deals across them.
    events, stream = make_stream(34_000, seed=seed, now=now)
    published, more_published = stream[:31_000], stream[31_000:]
    env = _env(apache_kafka.bootstrap, own_redis.url, prefix)
    await create_topics(settings_of(env))
    total = len(published)
    log = tmp_path / "worker.log"
    client = aioredis.Redis.from_url(own_redis.url)
    worker = WorkerProcess(env, "worker", log).start()
    # Published while the worker runs, slower than it applies: the SAVE and the kill land
    # mid-stream however fast the worker is (given the whole stream up front, a fast worker
    # could apply all of it between two polls, and the dump would then miss nothing).
    producing = asyncio.ensure_future(produce_paced(apache_kafka.bootstrap, messages(env, published), rate=4_000))
    try:
        saved_at, killed_at = rnd.uniform(0.15, 0.4), rnd.uniform(0.55, 0.85)
        print(f"SAVE at {saved_at:.0%} applied, kill -9 and restart from it at {killed_at:.0%}")
        await _reached(client, prefix, saved_at * total, f"{saved_at:.0%} applied (seed {seed})")
        await client.save()
        snapshot = await progress(client, prefix)
        await _reached(client, prefix, killed_at * total, f"{killed_at:.0%} applied (seed {seed})")
        lost = await progress(client, prefix) - snapshot
        assert lost > 0, "records were applied after the SAVE: the restart must lose them"
        own_redis.kill()
        own_redis.restart()
        await client.aclose()
        client = aioredis.Redis.from_url(own_redis.url)
        assert 0 <= await progress(client, prefix) <= snapshot + 500 * 8  # the old dump (and a batch or so)
        await producing
        ends = await end_offsets(apache_kafka.bootstrap, settings_of(env).event_topics())
        assert sum(ends.values()) == total
        await wait_for(lambda: applied(client, prefix, ends), 180, f"every record applied again (seed {seed})")
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(_unique_of(published), now))
        ops = worker_metrics(env)
        assert metric_sum(ops, "crm_redis_rewinds_total") > 0
        assert log_lines(log, r"Redis went back"), "one ERROR line names the partitions Redis lost"
        print(f"Redis lost {lost} applied records mid-stream; re-applied")

        # Idle: everything applied, SAVE, a second stream applied, then Redis back from that dump.
        # Every partition is idle when Redis loses the second stream: no batch fence can see it.
        await client.save()
        all_done = await progress(client, prefix)
        more_ends = await produce(apache_kafka.bootstrap, messages(env, more_published))
        want = {**ends, **more_ends}  # end offsets: the second stream's are the later ones
        await wait_for(lambda: applied(client, prefix, want), 120, f"the second stream applied (seed {seed})")
        own_redis.kill()
        own_redis.restart()  # back to the dump taken before the second stream: idle partitions behind
        await client.aclose()
        client = aioredis.Redis.from_url(own_redis.url)
        assert await progress(client, prefix) == all_done
        await wait_for(lambda: applied(client, prefix, want), 120, f"the idle partitions re-applied (seed {seed})")
        assert_matches(await exporter_figures(env, tmp_path / "exporter2.log"), expected(events, now))
    finally:
        producing.cancel()
        worker.stop()
        await client.aclose()


async def test_redis_restarted_empty_is_rebuilt_from_the_log(
    apache_kafka: ApacheKafka, own_redis: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    """Redis restarts with no data mid-stream: the worker rebuilds every partition from the log start, exactly."""
    seed = seed_of()
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    events, published = make_stream(30_000, seed=seed, now=now)
    env = _env(apache_kafka.bootstrap, own_redis.url, prefix)
    ends = await _publish(env, published)
    total = sum(ends.values())
    log = tmp_path / "worker.log"
    client = aioredis.Redis.from_url(own_redis.url)
    worker = WorkerProcess(env, "worker", log).start()
    try:
        at = rnd.uniform(0.3, 0.8)
        print(f"Redis restarted empty at {at:.0%} applied")
        await _reached(client, prefix, at * total, f"{at:.0%} applied (seed {seed})")
        own_redis.kill()
        own_redis.restart()
        await client.aclose()
        client = aioredis.Redis.from_url(own_redis.url)
        await wait_for(lambda: applied(client, prefix, ends), 180, f"every record applied again (seed {seed})")
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(events, now))
        ops = worker_metrics(env)
        assert metric_sum(ops, "crm_redis_rewinds_total") > 0
        assert log_lines(log, r"Redis holds no applied offset"), "one ERROR line names the partitions"
        # The log still holds every record: nothing is missing, so no gap is reported.
        assert metric_sum(ops, "crm_kpi_history_gap_records") == 0
    finally:
        worker.stop()
        await client.aclose()


async def test_redis_empty_and_log_past_its_retention_says_the_history_is_incomplete(
    apache_kafka: ApacheKafka, own_redis: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    """Records deleted from the log start (as retention does), then Redis lost: the rest is exact, the gap is loud.

    Then records beyond Redis's offsets are deleted while the worker is down: they can never be
    applied, the worker skips to the log start and counts them in the same gap.
    """
    seed = seed_of()
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    _, published = make_stream(6_000, seed=seed, now=now)
    env = _env(apache_kafka.bootstrap, own_redis.url, prefix)
    ends = await _publish(env, published)
    log = tmp_path / "worker.log"
    client = aioredis.Redis.from_url(own_redis.url)
    records = await read_all(apache_kafka.bootstrap, ends)
    # Retention: each partition's first records go (DeleteRecords moves the log start offset).
    starts = {tp: rnd.randrange(1, end // 2) for tp, end in ends.items() if end > 2}
    await _delete_records(apache_kafka.bootstrap, starts)
    worker = WorkerProcess(env, "worker", log).start()
    try:
        await wait_for(lambda: applied(client, prefix, ends), 120, f"the retained log applied (seed {seed})")
        kept = [r for r in records if r.offset >= starts.get(TopicPartition(r.topic, r.partition), 0)]
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(_unique(kept), now))
        ops = worker_metrics(env)
        for tp, start in starts.items():
            gap = metric_sum(ops, "crm_kpi_history_gap_records", topic=tp.topic, partition=str(tp.partition))
            assert gap == start, (tp, gap, start)
        assert log_lines(log, r"deleted by Kafka's retention"), "one ERROR line names the partitions"
        shown = json.loads(crm_kpi(env, "offsets", "show", "--json").stdout)
        assert {(r["topic"], r["partition"]): r["gap_records"] for r in shown if r["gap_records"]} == {
            (tp.topic, tp.partition): n for tp, n in starts.items()
        }
    finally:
        worker.stop()
        await client.aclose()


def _unique(records: list[Any]) -> list[dict[str, Any]]:
    """The distinct events (first copy of each event_id) carried by Kafka `records`, in log order."""
    return _unique_of(json.loads(r.value) for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)))


def _unique_of(published: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first copy of each event_id: what a stream with producer retries counts."""
    seen: set[str] = set()
    out = []
    for event in published:
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            out.append(event)
    return out


async def _delete_records(bootstrap: str, before: dict[TopicPartition, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(offset) for tp, offset in before.items()})
    finally:
        await admin.close()


# --- the log going backwards --------------------------------------------------------------


async def _recreate_topics(bootstrap: str, env: dict[str, str]) -> None:
    settings = settings_of(env)
    names = list(settings.event_topics())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)

        async def gone() -> bool:
            return not set(names) & set(await admin.list_topics())

        await wait_for(gone, 60, "the topics deleted")
    finally:
        await admin.close()

    async def created() -> bool:
        try:
            await create_topics(settings)
            return True
        except Exception:  # the broker may still be deleting the old logs
            return False

    await wait_for(created, 60, "the topics created again")


async def test_recreated_topic_pauses_its_partitions_until_an_operator_reanchors(
    apache_kafka: ApacheKafka, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """Topics deleted and recreated under a running worker, then refilled past the old offsets.

    Nothing of the new logs may be skipped silently: the partitions pause with a metric and an
    ERROR line; `crm-kpi offsets show` tells; `crm-kpi offsets reset` re-anchors each partition
    at its log start (or, for one, at its end: those records are skipped and reported as a gap);
    the worker resumes by itself and every figure is exact.
    """
    seed = seed_of()
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    _, stream = make_stream(9_000, seed=seed, now=now)
    old_published, new_published = stream[:3_000], stream[3_000:]
    env = _env(apache_kafka.bootstrap, redis_url, prefix)
    old_ends = await _publish(env, old_published)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, "worker", log).start()
    try:
        await wait_for(lambda: applied(redis, prefix, old_ends), 120, f"the first stream applied (seed {seed})")
        await _recreate_topics(apache_kafka.bootstrap, env)
        # A few new records: every new log is shorter than the offsets Redis applied.
        cut = 200
        await produce(apache_kafka.bootstrap, messages(env, new_published[:cut]))

        behind = {(tp.topic, tp.partition) for tp, end in old_ends.items() if end > 0}

        async def paused(reason: str | None = None) -> bool:
            try:
                ops = worker_metrics(env)
            except OSError:
                return False
            flagged = {
                (dict(lab)["topic"], int(dict(lab)["partition"]))
                for (n, lab), v in ops.items()
                if n == "crm_kafka_log_mismatch" and v == 1 and (reason is None or dict(lab)["reason"] == reason)
            }
            return flagged >= behind

        await wait_for(paused, 90, f"every recreated partition paused (seed {seed})")
        assert log_lines(log, r"Kafka log of .* ends below the offset Redis applied")
        # The rest of the new stream: the new logs grow past the old offsets, still paused.
        await produce(apache_kafka.bootstrap, messages(env, new_published[cut:]))
        new_ends = await end_offsets(apache_kafka.bootstrap, settings_of(env).event_topics())
        show = crm_kpi(env, "offsets", "show", "--json")
        assert show.returncode == 1, show.stderr
        states = {(r["topic"], r["partition"]): r for r in json.loads(show.stdout)}
        assert {k for k, r in states.items() if r["verdict"] in ("log_behind", "log_replaced")} >= behind

        # One partition's new records are a replay the KPIs already hold: skip them (--to-log-end);
        # every other partition applies its new log from the start.
        skipped = sorted(behind)[rnd.randrange(len(behind))]
        topics = sorted({t for t, _ in behind})
        args = [x for t in topics if t != skipped[0] for x in ("--topic", t)]
        others = [str(p) for t, p in sorted(behind) if t == skipped[0] and p != skipped[1]]
        dry = crm_kpi(env, "offsets", "reset", *args, "--to-log-start", "--dry-run")
        assert dry.returncode == 0 and "would set" in dry.stdout, dry.stdout + dry.stderr
        stored = await stored_offsets(redis, prefix)
        for topic, partition in behind:  # nothing of the new logs applied there: not even the dry run
            tp = TopicPartition(topic, partition)
            assert stored[f"{topic}:{partition}"] == old_ends[tp], tp
        for argv in (
            ["--topic", skipped[0], "--partition", str(skipped[1]), "--to-log-end"],
            ["--topic", skipped[0], *(x for p in others for x in ("--partition", p)), "--to-log-start"],
            [*args, "--to-log-start"],
        ):
            reset = crm_kpi(env, "offsets", "reset", *argv)
            assert reset.returncode == 0, reset.stdout + reset.stderr
            print(reset.stdout.strip())
        await wait_for(lambda: applied(redis, prefix, new_ends), 120, f"the new logs applied (seed {seed})")
        new_records = await read_all(apache_kafka.bootstrap, new_ends)
        counted = old_published + [
            json.loads(r.value) for r in new_records if (r.topic, r.partition) != skipped
        ]
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(_unique_of(counted), now))
        ops = worker_metrics(env)
        gap = metric_sum(ops, "crm_kpi_history_gap_records", topic=skipped[0], partition=str(skipped[1]))
        assert gap == new_ends[TopicPartition(*skipped)], "the skipped records are reported as a gap"
        assert crm_kpi(env, "offsets", "show").returncode == 0
    finally:
        worker.stop()


# --- crashes and rebalances --------------------------------------------------------------


async def test_kill_9_at_ten_random_instants_counts_every_event_once(
    apache_kafka: ApacheKafka, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """100,000 events; the worker is SIGKILLed at 10 seeded instants while it applies them."""
    seed = seed_of()
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    events, published = make_stream(100_000, seed=seed, now=now)
    env = _env(apache_kafka.bootstrap, redis_url, prefix)
    ends = await _publish(env, published)
    total = sum(ends.values())
    log = tmp_path / "worker.log"
    marks = sorted(rnd.uniform(0.02, 0.95) for _ in range(10))
    delays = [rnd.uniform(0.0, 0.4) for _ in marks]  # past the mark: anywhere in a batch's cycle
    instants = ", ".join(f"{m:.0%}+{d:.2f}s" for m, d in zip(marks, delays, strict=True))
    print(f"kill -9 at (fraction applied + seconds): {instants}")
    started = asyncio.get_running_loop().time()
    worker = WorkerProcess(env, "worker", log).start()
    try:
        for i, (mark, delay) in enumerate(zip(marks, delays, strict=True)):
            before = await progress(redis, prefix)

            async def reached(mark: float = mark, before: int = before) -> bool:
                done = await progress(redis, prefix)
                # The worker running now has applied some, unless one before it got to the end
                # before its kill (then there is nothing left to kill it in); the partition groups
                # are written concurrently, so a fast worker may finish between two polls.
                return (done > before or done >= total) and done >= mark * total

            await wait_for(reached, 120, f"kill {i + 1}: {mark:.0%} applied (seed {seed})")
            await asyncio.sleep(delay)
            worker.kill()
            worker = WorkerProcess(env, "worker", log).start()
        await wait_for(lambda: applied(redis, prefix, ends), 180, f"every record applied (seed {seed})")
        elapsed = asyncio.get_running_loop().time() - started
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(events, now))
        ops = worker_metrics(env)
        assert metric_sum(ops, "crm_events_invalid_total") == 0
        assert metric_sum(ops, "crm_redis_rewinds_total") == 0  # a crashed worker is not a Redis rewind
        print(f"{total} records, 10 kills, applied in {elapsed:.1f}s")
    finally:
        worker.stop()


async def test_workers_joining_and_leaving_under_load_end_with_no_lag(
    apache_kafka: ApacheKafka, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """While events arrive: workers join (1 -> 3), leave by SIGTERM and by kill -9, join again.

    Every figure is exact and, once the stream ends, every partition's lag is 0 on the
    worker that owns it.
    """
    seed = seed_of()
    now = datetime.now(UTC)
    events, published = make_stream(60_000, seed=seed, now=now)
    env = _env(apache_kafka.bootstrap, redis_url, prefix)
    settings = settings_of(env)
    await create_topics(settings)
    from stream.devtools.servers import free_port

    def worker_env() -> dict[str, str]:
        return {**env, "CRM_KPI_WORKER_PORT": str(free_port())}

    producing = asyncio.ensure_future(
        produce_paced(apache_kafka.bootstrap, messages(env, published), rate=6_000)
    )
    log = tmp_path / "worker.log"
    workers = {"w1": WorkerProcess(worker_env(), "worker", log).start()}
    total = len(published)
    try:
        plan = [
            (0.05, "start", "w2"),
            (0.12, "start", "w3"),
            (0.30, "term", "w1"),
            (0.45, "kill", "w2"),
            (0.55, "start", "w4"),
            (0.70, "term", "w3"),
            (0.80, "start", "w5"),
        ]
        for fraction, action, name in plan:
            await _reached(redis, prefix, fraction * total, f"{fraction:.0%} applied before {action} {name}")
            if action == "start":
                workers[name] = WorkerProcess(worker_env(), "worker", log).start()
            elif action == "term":
                assert workers.pop(name).stop(timeout=30) == 0, f"{name} must stop cleanly on SIGTERM"
            else:
                workers.pop(name).kill()
        await producing
        ends = await end_offsets(apache_kafka.bootstrap, settings.event_topics())
        await wait_for(lambda: applied(redis, prefix, ends), 180, f"every record applied (seed {seed})")
        live = [w.env for w in workers.values()]
        with_records = {(tp.topic, str(tp.partition)) for tp, end in ends.items() if end > 0}

        async def no_lag() -> bool:
            lags: dict[tuple[str, str], float] = {}
            for worker_env_ in live:
                try:
                    ops = worker_metrics(worker_env_)
                except OSError:
                    return False
                for (name, labels), value in ops.items():
                    if name == "crm_kafka_consumer_lag":
                        lab = dict(labels)
                        lags[(lab["topic"], lab["partition"])] = value
            return set(lags) >= with_records and not any(lags.values())

        await wait_for(no_lag, 60, f"lag 0 on every partition (seed {seed})")
        # Every offset is applied: so every event id must be recorded too. If not, this names
        # the records lost (partition and offsets), to read against the workers' log.
        lost = await unapplied_records(apache_kafka.bootstrap, redis, prefix, ends)
        assert not lost, f"applied offsets cover records never applied (seed {seed}, log {log}): {lost}"
        # The stream's oldest events leave the 1h window 300 s after `now` (make_stream).
        print(f"{total} records applied and scraped {(datetime.now(UTC) - now).total_seconds():.0f}s after now")
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(events, now))
    finally:
        producing.cancel()
        for w in workers.values():
            w.stop()


async def test_broker_kill_9_and_restart_while_publishing_and_applying(
    apache_kafka_factory: Callable[..., ApacheKafka], redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """The broker is SIGKILLed mid-stream and restarted on its log; producers retry; exact figures."""
    kafka = apache_kafka_factory()
    seed = seed_of()
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    events, published = make_stream(30_000, seed=seed, now=now)
    env = _env(kafka.bootstrap, redis_url, prefix)
    settings = settings_of(env)
    await create_topics(settings)
    producing = asyncio.ensure_future(produce_paced(kafka.bootstrap, messages(env, published), rate=5_000))
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, "worker", log).start()
    try:
        at = rnd.uniform(0.2, 0.6)
        await _reached(redis, prefix, at * len(published), f"{at:.0%} applied (seed {seed})")
        await asyncio.to_thread(kafka.restart)  # SIGKILL, then the same node on its log
        print(f"broker SIGKILLed at {at:.0%} applied, back in {kafka.startup_seconds:.1f}s")
        await producing
        ends = await end_offsets(kafka.bootstrap, settings.event_topics())
        await wait_for(lambda: applied(redis, prefix, ends), 180, f"every record applied (seed {seed})")
        assert worker.proc is not None and worker.proc.poll() is None, "the worker must outlive the broker crash"
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(events, now))
        ops = worker_metrics(env)
        assert metric_sum(ops, "crm_kafka_log_mismatch") == 0
    finally:
        producing.cancel()
        worker.stop()


# --- replay --------------------------------------------------------------------------------


async def _commit_earliest(bootstrap: str, group: str, ends: dict[TopicPartition, int]) -> None:
    """What `kafka-consumer-groups.sh --reset-offsets --to-earliest --execute` does to the group."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import OffsetAndMetadata

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in ends})
    finally:
        await consumer.stop()


async def test_replays_leave_every_figure_unchanged(
    apache_kafka: ApacheKafka, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """Group reset to the earliest offsets; a new group id; a new group and Redis's offsets deleted: same figures."""
    seed = seed_of()
    now = datetime.now(UTC)
    events, published = make_stream(8_000, seed=seed, now=now)
    env = _env(apache_kafka.bootstrap, redis_url, prefix)
    ends = await _publish(env, published)
    want = expected(events, now)
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    try:
        await wait_for(lambda: applied(redis, prefix, ends), 120, f"every record applied (seed {seed})")
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), want)
    finally:
        assert worker.stop() == 0

    async def replay(run_env: dict[str, str], name: str) -> Any:
        """Run a worker until it owns every partition with lag 0; return its /metrics."""
        proc = WorkerProcess(run_env, "worker", tmp_path / f"worker-{name}.log").start()
        try:
            partitions = {(tp.topic, str(tp.partition)) for tp in ends}

            async def caught_up() -> bool:
                try:
                    ops = worker_metrics(run_env)
                except OSError:
                    return False
                lags = {
                    (dict(lab)["topic"], dict(lab)["partition"]): v
                    for (n, lab), v in ops.items()
                    if n == "crm_kafka_consumer_lag"
                }
                return set(lags) >= partitions and not any(lags.values())

            await wait_for(caught_up, 120, f"{name}: every partition caught up (seed {seed})")
            await wait_for(lambda: applied(redis, prefix, ends), 60, f"{name}: every record applied")
            assert_matches(await exporter_figures(run_env, tmp_path / f"exporter-{name}.log"), want)
            return worker_metrics(run_env)
        finally:
            assert proc.stop() == 0

    # The group's committed offsets back to the earliest: Redis's offsets decide, nothing is re-applied.
    await _commit_earliest(apache_kafka.bootstrap, env["CRM_KPI_KAFKA_GROUP_ID"], ends)
    ops = await replay(env, "group-reset")
    assert metric_sum(ops, "crm_events_processed_total") == 0
    # A new consumer group: the same.
    ops = await replay({**env, "CRM_KPI_KAFKA_GROUP_ID": f"{prefix}-other"}, "new-group")
    assert metric_sum(ops, "crm_events_processed_total") == 0
    # A new group and Redis's offsets deleted: every record is read again from the log start,
    # and every event is recognised by its event_id (within the dedupe horizon): counted once.
    keys = Keys(prefix)
    for group in await redis.smembers(keys.registry):
        await redis.delete(keys.group(int(group)).offsets, keys.group(int(group)).log_marks)
    ops = await replay({**env, "CRM_KPI_KAFKA_GROUP_ID": f"{prefix}-third"}, "offsets-deleted")
    assert metric_sum(ops, "crm_events_processed_total") == 0
    assert metric_sum(ops, "crm_events_duplicate_total") == len(published)


# --- bad input -----------------------------------------------------------------------------


async def _rate(client: aioredis.Redis, prefix: str, ends: dict[TopicPartition, int], timeout: float) -> float:
    """Records/s a worker (started just before) applies: from its first applied record to the last."""
    loop = asyncio.get_running_loop()
    total = sum(ends.values())
    deadline = loop.time() + timeout
    first = None
    while True:
        done = await progress(client, prefix)
        now = loop.time()
        assert now < deadline, f"only {done} of {total} records applied in {timeout:.0f}s"
        if first is None and done > 0:
            first = (now, done)
        if done >= total and await applied(client, prefix, ends):
            assert first is not None
            return (total - first[1]) / max(now - first[0], 1e-3)
        await asyncio.sleep(0.02)


async def test_poison_flood_dead_letters_every_invalid_record_with_its_reason(
    apache_kafka: ApacheKafka, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """Half the records invalid (every reason, hostile bytes): each dead-lettered with its reason, valid ones exact."""
    seed = seed_of()
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    events, published = make_stream(10_000, seed=seed, now=now)

    # The clean rate: the valid records alone, in topics of their own.
    # Default batches (not the crash tests' small ones): rates as a deployment sees them.
    clean_env = stack_env(apache_kafka.bootstrap, redis_url, prefix + "c", topic_partitions="4")
    clean_ends = await _publish(clean_env, published)
    worker = WorkerProcess(clean_env, "worker", tmp_path / "clean.log").start()
    try:
        clean_rate = await _rate(redis, prefix + "c", clean_ends, 120)
    finally:
        worker.stop()

    env = stack_env(apache_kafka.bootstrap, redis_url, prefix, topic_partitions="4")
    settings = settings_of(env)
    await create_topics(settings)
    poison = hostile_records(settings.topic, rnd, len(published), now)
    # The valid records keep their order; the invalid ones land anywhere among them.
    ends = await produce(apache_kafka.bootstrap, interleave(messages(env, published), poison, rnd))
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, "worker", log).start()
    try:
        mixed_rate = await _rate(redis, prefix, ends, 180)
        print(f"clean {clean_rate:,.0f} records/s, 50 % invalid {mixed_rate:,.0f} records/s "
              f"({mixed_rate / clean_rate:.0%}; valid events {mixed_rate / 2:,.0f}/s)")
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(events, now))
        ops = worker_metrics(env)
        want_reasons = Counter(reason for *_, reason in poison)
        for reason, n in want_reasons.items():
            assert metric_sum(ops, "crm_events_invalid_total", reason=reason) == n, reason
        assert metric_sum(ops, "crm_events_invalid_total") == len(poison)
        for kind, n in Counter(e["type"] for e in events).items():
            assert metric_sum(ops, "crm_events_processed_total", type=kind) == n, kind
        assert metric_sum(ops, "crm_events_duplicate_total") == len(published) - len(events)

        # Every invalid record is in the dead-letter topic once, with its reason and source.
        dead_ends = await end_offsets(apache_kafka.bootstrap, [settings.dead_letter_topic])
        dead = await read_all(apache_kafka.bootstrap, dead_ends)
        source = {(r.topic, r.partition, r.offset): r.value for r in await read_all(apache_kafka.bootstrap, ends)}
        seen = Counter()
        for letter in dead:
            headers = {k: v.decode() for k, v in letter.headers}
            where = (headers["source_topic"], int(headers["source_partition"]), int(headers["source_offset"]))
            assert source[where] == letter.value, where
            assert headers["detail"], where
            seen[(letter.value, headers["reason"])] += 1
        assert seen == Counter((value, reason) for _, _, value, reason in poison)
        # No assertion on the rates: wall-clock speed belongs to the benchmark, not to a test
        # (this machine's load alone moves it); the printed ratio is for the reader of the log.
    finally:
        worker.stop()


# --- the network ---------------------------------------------------------------------------


@pytest.fixture
def proxied_kafka() -> Iterator[tuple[ApacheKafka, TcpProxy]]:
    """A broker whose PROXIED listener is advertised at a TCP proxy's address: cut the proxy, cut the network."""
    from tests.support.apache_kafka import KafkaUnavailable, Listener
    from tests.support.kafka_fixtures import _unavailable

    try:
        kafka = ApacheKafka(listeners=[Listener("PROXIED", "PLAINTEXT")])
    except KafkaUnavailable as exc:
        _unavailable(exc)
    proxy = TcpProxy(("127.0.0.1", kafka.ports["PROXIED"]))
    # Clients that bootstrap through the proxy are sent back to it for every request.
    kafka.extra_properties["advertised.listeners"] = f"PLAINTEXT://{kafka.bootstrap},PROXIED://{proxy.address}"
    try:
        kafka.start()
        yield kafka, proxy
    finally:
        proxy.close()
        kafka.stop()


async def test_network_cut_to_the_broker_pauses_the_worker_and_loses_nothing(
    proxied_kafka: tuple[ApacheKafka, TcpProxy], redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """The worker reaches the broker through a proxy; the proxy drops every connection for 15 s mid-stream."""
    kafka, proxy = proxied_kafka
    seed = seed_of()
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    events, published = make_stream(30_000, seed=seed, now=now)
    env = _env(kafka.bootstrap, redis_url, prefix)
    ends = await _publish(env, published)  # directly, not through the proxy
    worker_env = {**env, "CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": proxy.address}
    log = tmp_path / "worker.log"
    worker = WorkerProcess(worker_env, "worker", log).start()
    try:
        at = rnd.uniform(0.2, 0.6)
        await _reached(redis, prefix, at * len(published), f"{at:.0%} applied (seed {seed})")
        proxy.cut()
        cut_at = await progress(redis, prefix)
        lines_before = len(log.read_text(errors="replace").splitlines())
        # What the worker had fetched before the cut may still be applied; then it must stop.
        await asyncio.sleep(3)
        paused_at = await progress(redis, prefix)
        await asyncio.sleep(12)
        assert await progress(redis, prefix) == paused_at, "no record can be applied without the broker"
        assert worker.proc is not None and worker.proc.poll() is None, "the worker must wait, not exit"
        during = log.read_text(errors="replace").splitlines()[lines_before:]
        proxy.restore()
        await wait_for(lambda: applied(redis, prefix, ends), 180, f"every record applied after the cut (seed {seed})")
        assert_matches(await exporter_figures(worker_env, tmp_path / "exporter.log"), expected(events, now))
        errors = sum("[ERROR]" in line for line in during)
        print(
            f"cut at {at:.0%} ({cut_at} applied, {paused_at - cut_at} more from fetched records); "
            f"{len(during)} log lines in the 15 s cut, {errors} at ERROR"
        )
    finally:
        worker.stop()


# --- topics ---------------------------------------------------------------------------------


async def test_no_client_creates_a_topic_and_topics_create_reports_other_partition_counts(
    apache_kafka_factory: Callable[..., ApacheKafka], redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """On a broker that auto-creates topics (Kafka's default), the worker, publish and simulate create none.

    `crm-kpi topics create` then creates them, and reports (exit 1) a topic made with another
    partition count.
    """
    kafka = apache_kafka_factory(partitions=2, properties={"auto.create.topics.enable": "true"})
    env = _env(kafka.bootstrap, redis_url, prefix)
    settings = settings_of(env)
    names = [*settings.event_topics(), settings.dead_letter_topic, settings.repartition_topic]
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    try:
        events, _ = make_stream(10, seed=1, now=datetime.now(UTC))
        lines = tmp_path / "events.jsonl"
        lines.write_text("".join(json.dumps(e) + "\n" for e in events))
        published = crm_kpi(env, "publish", str(lines))
        assert published.returncode == 1 and "crm-kpi topics create" in published.stderr, published.stderr
        simulated = crm_kpi(env, "simulate", "--events", "5", "--seed", "1")
        assert simulated.returncode == 1 and "do not exist" in simulated.stderr, simulated.stderr

        async def worker_said_so() -> bool:
            # The worker names them and retries (a WARNING: creating the topics is all it waits for).
            pattern = r"(do|does) not exist .*crm-kpi topics create"
            return any(log_lines(tmp_path / "worker.log", pattern, level) for level in ("ERROR", "WARNING"))

        await wait_for(worker_said_so, 60, "the worker to name the missing topics")
        await asyncio.sleep(2)  # a few more of the worker's metadata refreshes
        assert not set(names) & set(kafka.metadata().topics), "a client created a topic"
    finally:
        worker.stop()

    # One topic exists with another partition count (as a client's auto-creation made them).
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        from aiokafka.admin import NewTopic

        await admin.create_topics([NewTopic(names[0], 2, 1)])
    finally:
        await admin.close()
    created = crm_kpi(env, "topics", "create")
    assert created.returncode == 1, created.stdout + created.stderr
    assert f"created {len(names) - 1} topic(s)" in created.stdout
    assert f"topic {names[0]} has 2 partition(s), CRM_KPI_TOPIC_PARTITIONS is 4" in created.stderr
    again = crm_kpi(env, "topics", "create", "--partitions", "2")
    assert "created 0 topic(s)" in again.stdout and again.returncode == 1  # the others have 4
