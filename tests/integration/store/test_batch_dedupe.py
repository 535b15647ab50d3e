"""Duplicates known before the fold: the worker's batch read names the redeliveries, the write is a safety net.

Real redis-server, the worker's own `BatchProcessor` and scripts. Figures are compared, series by
series, with the product's fold over the de-duplicated events as ONE batch under another key prefix.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import redis as sync_redis
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from bench.reference_catalog import edge_free
from bench.workload import Shape, make_realistic
from schemas import TOPIC_FAMILY
from stream.events import event_digest
from stream.events.decode import decode
from stream.events.fold import FoldContext, entity_keys, fold
from stream.events.windows import make_windows
from stream.exporter.collector import kpi_samples, snapshot
from stream.kpis import fold_rules
from stream.settings import Settings
from stream.store import AsyncStore, Keys
from stream.store.writer import dedupe_slots
from stream.worker.batch import BatchProcessor, Prepared
from stream.worker.metrics import WorkerMetrics
from tests.support.config import clean_settings

# The figures are read a few seconds after the worker folded: events near a window edge, an
# SLA or the skew could move between the two clocks, so the stream keeps clear of them.
_HEADROOM_S = 120.0


def _events(now: datetime) -> list[dict[str, Any]]:
    """A small realistic catalog stream (entity joins included) whose figures do not depend on the clock."""
    unique, _ = make_realistic(Shape(events=600, customers=40, busy=5, catalog=True, redeliveries=0.0), now)
    now_s = now.timestamp()

    def steady(e: dict[str, Any]) -> bool:
        for name, value in e.items():
            if name.endswith("_at") and isinstance(value, str):
                age = now_s - datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
                if not edge_free(age, _HEADROOM_S, due=name == "due_at"):
                    return False
        return True

    return [e for e in unique if steady(e)]


class _Log:
    """Records per Kafka partition as the consumer hands them over (offset, key, value, timestamp)."""

    def __init__(self, settings: Settings, partition: int = 0) -> None:
        self.topic = {family: topic for topic, family in settings.event_topics().items()}
        self.partition = partition
        self.next: dict[str, int] = defaultdict(int)

    def batch(self, events: list[dict[str, Any]]) -> dict[TopicPartition, list[Any]]:
        out: dict[TopicPartition, list[Any]] = defaultdict(list)
        for e in events:
            tp = TopicPartition(self.topic[TOPIC_FAMILY[e["type"]]], self.partition)
            offset = self.next[tp.topic]
            self.next[tp.topic] += 1
            out[tp].append(SimpleNamespace(offset=offset, key=b"k", value=json.dumps(e).encode(), timestamp=offset))
        return out


def _worker(settings: Settings, client: aioredis.Redis) -> tuple[BatchProcessor, WorkerMetrics]:
    keys = Keys(settings.redis_key_prefix)
    store = AsyncStore(client, keys, settings.dedupe_horizon, settings.state_ttl)
    metrics = WorkerMetrics()
    # No dead letters: every record of these batches is valid.
    return BatchProcessor(settings, store, None, metrics, make_windows(settings.windows), keys), metrics  # type: ignore[arg-type]


async def _offline(settings: Settings, client: aioredis.Redis, events: list[dict[str, Any]]) -> None:
    """The product's fold over `events` (no repeats) as one batch, written under `settings`' key prefix."""
    now_s = time.time()
    skew_us = int(settings.max_future_skew * 1_000_000)
    pairs = []
    for e in events:
        raw = json.dumps(e).encode()
        out = decode(raw, TOPIC_FAMILY[e["type"]], int(now_s * 1e6), settings.max_event_bytes, skew_us)
        assert isinstance(out, tuple), (e, out)
        pairs.append(out)
    keys = Keys(settings.redis_key_prefix)
    ctx = FoldContext(now_s, make_windows(settings.windows), fold_rules(settings.kpi_config()), keys.entity_prefix)
    delta = fold(pairs, dict.fromkeys(entity_keys([ev for ev, _ in pairs], ctx)), ctx)
    outcome = await AsyncStore(client, keys, settings.dedupe_horizon, settings.state_ttl).apply(0, delta, [], [], now_s)
    assert outcome.ok, outcome


def _figures(redis_url: str, settings: Settings, now_s: float) -> dict[Any, float]:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        samples = kpi_samples(snapshot(client, settings, now_s))
        return {(name, tuple(sorted(labels.items()))): value for name, labels, value in samples}
    finally:
        client.close()


def _conflicts(metrics: WorkerMetrics) -> dict[str, float]:
    return {
        sample.labels["kind"]: sample.value
        for family in metrics.conflicts.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def _duplicates(metrics: WorkerMetrics) -> float:
    return sum(s.value for f in metrics.duplicate.collect() for s in f.samples if s.name.endswith("_total"))


async def _run(processor: BatchProcessor, batch: dict[Any, list[Any]], expected: dict[str, int]) -> None:
    """What the consumer does with one batch: prepare, read, write; `expected` follows Redis."""
    [prep] = processor.prepare(batch, expected)  # a single Redis: one partition group
    processor.read_ahead([prep])
    await processor.fold_read([prep])
    expected.update(await processor.apply(prep, expected))


async def test_a_redelivery_of_an_earlier_batch_is_left_out_before_the_fold_in_one_write(
    redis: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    now = datetime.now(UTC)
    events = _events(now)
    assert len(events) > 300
    settings = clean_settings(redis_key_prefix=prefix)
    processor, metrics = _worker(settings, redis)
    log, expected = _Log(settings), dict[str, int]()
    half = len(events) // 2
    await _run(processor, log.batch(events[:half]), expected)

    # The next batch carries exact copies of a tenth of the first batch's events, those of
    # joined entities among them, interleaved with its own events.
    copies = events[:half:10]
    assert any(e["type"].startswith(("ticket.", "deal.")) for e in copies)
    second = events[half:]
    mixed = [x for pair in zip(second, copies, strict=False) for x in pair] + second[len(copies) :]
    [prep] = processor.prepare(log.batch(mixed), expected)
    assert prep.in_batch_duplicates == 0 and len(prep.digests) == len(mixed)
    read = await processor.read_batch(prep)
    assert sorted(read.recorded) == sorted(prep.digests.index(event_digest(e["event_id"])) for e in copies)
    processor.read_ahead([prep])
    await processor.fold_read([prep])
    assert prep.folded is not None and prep.folded.dropped == len(copies)
    expected.update(await processor.apply(prep, expected))

    # Applied in one write: every refused write counts a conflict, and there was none.
    assert _conflicts(metrics) == {}
    assert _duplicates(metrics) == len(copies)
    await _assert_exact(redis, redis_url, settings, events)


async def test_a_digest_recorded_after_the_read_is_still_refused_by_the_write(
    redis: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """Another worker (after a rebalance) records a copy between this batch's read and its write."""
    now = datetime.now(UTC)
    events = _events(now)
    settings = clean_settings(redis_key_prefix=prefix)
    first, first_metrics = _worker(settings, redis)
    other, other_metrics = _worker(settings, redis)
    log, other_log = _Log(settings, partition=0), _Log(settings, partition=1)
    expected, other_expected = dict[str, int](), dict[str, int]()
    half = len(events) // 2
    await _run(first, log.batch(events[:half]), expected)

    batch = events[half:]
    [prep] = first.prepare(log.batch(batch), expected)
    first.read_ahead([prep])
    await first.fold_read([prep])
    assert prep.folded is not None and prep.folded.dropped == 0
    # The other worker applies a copy of some of these events from another partition (a producer
    # retry) — a joined entity's among them, so this batch's states are stale too.
    tickets = [e for e in batch if e["type"].startswith("ticket.")][:3]
    taken = list({e["event_id"]: e for e in [*batch[:2], *tickets]}.values())
    await _run(other, other_log.batch(taken), other_expected)
    assert _conflicts(other_metrics) == {}

    expected.update(await first.apply(prep, expected))
    assert _conflicts(first_metrics) == {"duplicate": 1}  # refused once, then applied without the copies
    assert _duplicates(first_metrics) == len(taken)
    _, live, _ = dedupe_slots(time.time(), settings.dedupe_horizon)
    for e in batch:
        recorded = [await redis.sismember(Keys(prefix).dedupe(s), event_digest(e["event_id"])) for s in live]
        assert sum(recorded) == 1  # every event recorded exactly once
    await _assert_exact(redis, redis_url, settings, events)


def _with_copies(events: list[dict[str, Any]], earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`events` with exact copies of every tenth event of `earlier` interleaved."""
    copies = earlier[::10]
    return [x for pair in zip(events, copies, strict=False) for x in pair] + events[len(copies) :]


async def _three_read_ahead(
    processor: BatchProcessor, log: _Log, events: list[dict[str, Any]]
) -> tuple[list[list[dict[str, Any]]], list[Prepared]]:
    """Three batches taken as the pipeline takes them, in its most racy order; batches 1 and 2 folded.

    Batch 2 is read before batch 1 is folded, batch 3 before batch 1 is written. Later
    batches answer tickets earlier ones opened, move their deals, and carry copies of every
    tenth earlier event, which Redis does not record yet.
    """
    third = len(events) // 3
    one, two, three = events[:third], events[third : 2 * third], events[2 * third :]
    [first] = processor.prepare(log.batch(one), {})
    processor.read_ahead([first])
    [second] = processor.prepare(log.batch(_with_copies(two, one)), {})
    processor.read_ahead([second], [[first]])
    await processor.fold_read([first])
    [last] = processor.prepare(log.batch(_with_copies(three, one + two)), {})
    processor.read_ahead([last], [[second], [first]])
    assert set(second.entity_keys) & first.key_set and set(last.entity_keys) & (first.key_set | second.key_set)
    await processor.fold_read([second])
    return [one, two, three], [first, second, last]


async def _assert_exact(
    redis: aioredis.Redis, redis_url: str, settings: Settings, events: list[dict[str, Any]]
) -> None:
    """Every series under `settings`' prefix equals the offline fold of `events` as one batch."""
    offline = clean_settings(redis_key_prefix=settings.redis_key_prefix + "off")
    await _offline(offline, redis, events)
    now_s = time.time()
    assert _figures(redis_url, settings, now_s) == _figures(redis_url, offline, now_s)


async def test_batches_read_before_the_batches_below_them_are_folded_or_written_take_those_folds(
    redis: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """Only the folds below can tell a batch read ahead the states and ids they write: were
    either missing, a write would be refused ('entity' or 'duplicate')."""
    events = _events(datetime.now(UTC))
    settings = clean_settings(redis_key_prefix=prefix)
    processor, metrics = _worker(settings, redis)
    (one, two, _), (first, second, last) = await _three_read_ahead(processor, _Log(settings), events)

    expected = await processor.apply_all([first], {})
    processor.settle(second)
    assert second.folded is not None  # the batch below was written exactly as folded: this fold stands
    await processor.fold_read([last])
    expected.update(await processor.apply_all([second], expected))
    processor.settle(last)
    assert last.folded is not None
    await processor.apply_all([last], expected)

    assert _conflicts(metrics) == {}
    copies = len(one[::10]) + len((one + two)[::10])
    assert _duplicates(metrics) == copies
    assert second.folded.dropped + last.folded.dropped == copies
    await _assert_exact(redis, redis_url, settings, events)


async def test_a_fold_ahead_over_a_batch_whose_write_was_refused_is_dropped_and_done_again(
    redis: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """Batch 1 is refused once (another worker recorded copies of some of its events) and folded again:
    the folds of batches 2 and 3 made over its first fold no longer hold, and are done afresh."""
    events = _events(datetime.now(UTC))
    settings = clean_settings(redis_key_prefix=prefix)
    processor, metrics = _worker(settings, redis)
    other, _ = _worker(settings, redis)
    (one, two, _), (first, second, last) = await _three_read_ahead(processor, _Log(settings, partition=0), events)
    assert second.folded is not None

    tickets = [e for e in one if e["type"].startswith("ticket.")][:3]
    taken = list({e["event_id"]: e for e in [*one[:2], *tickets]}.values())
    await _run(other, _Log(settings, partition=1).batch(taken), {})
    expected = await processor.apply_all([first], {})
    assert _conflicts(metrics) == {"duplicate": 1}
    assert first.folded is not None and first.written is not first.folded.delta

    processor.settle(second)
    assert second.folded is None  # folded over batch 1's refused fold: apply reads and folds again
    await processor.fold_read([last])
    assert last.folded is None  # its basis holds a batch without a fold ahead
    expected.update(await processor.apply_all([second], expected))
    processor.settle(last)
    await processor.apply_all([last], expected)
    assert _conflicts(metrics) == {"duplicate": 1}  # the later writes were not refused
    assert _duplicates(metrics) == len(taken) + len(one[::10]) + len((one + two)[::10])
    await _assert_exact(redis, redis_url, settings, events)
