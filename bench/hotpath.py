"""`python -m bench.hotpath`: the worker's CPU per event, in one process, no servers (issue #13).

Runs what a worker does to each batch of a realistic stream (bench/workload.py)
minus the I/O: `BatchProcessor.prepare` (decode and validate, digests, entity
keys), the entity states read from a dict standing in for Redis, `fold` with
the worker's memo, and `AsyncStore.encode_delta` (the JSON the atomic write
sends); the written states go back into the dict. Redeliveries are dropped
against the digests already applied, as the atomic write would. Prints CPU µs
per event for each step (process time, so other load on the machine matters
less), best of `--repeat` passes; for attributing time and for
comparing the compiled and the pure-Python build (`CRM_KPI_PURE_PYTHON=1`).
The end-to-end figures come from `python -m bench.realistic`.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import redis.asyncio as aioredis
from aiokafka import TopicPartition

from bench.workload import Shape, make_realistic
from schemas import TOPIC_FAMILY
from stream.events.fold import FoldMemo, fold
from stream.settings import load_settings
from stream.store import AsyncStore, Keys
from stream.worker.batch import BatchProcessor
from stream.worker.metrics import WorkerMetrics


def _records(published: list[dict[str, Any]], s: Any, partitions: int = 4) -> list[tuple[Any, int, bytes, bytes]]:
    """Published events as (TopicPartition, offset, value, key) in publish order, partitioned by customer."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for e in published:
        topic = s.topic(TOPIC_FAMILY[e["type"]])
        part = hash(str(e.get("customer_id", e["event_id"]))) % partitions
        off = offsets.get((topic, part), 0)
        offsets[(topic, part)] = off + 1
        out.append((TopicPartition(topic, part), off, json.dumps(e).encode(), str(e.get("customer_id", "")).encode()))
    return out


def run(published: list[dict[str, Any]], batch: int, compile_note: str) -> dict[str, float]:
    s = load_settings(redis_key_prefix="hp", topic_prefix="crm.")
    keys = Keys("hp")
    store = AsyncStore(aioredis.Redis(), keys, s.dedupe_horizon, s.state_ttl)  # no connection is made
    from stream.events.windows import make_windows

    proc = BatchProcessor(s, store, None, WorkerMetrics(), make_windows(s.windows), keys)  # type: ignore[arg-type]
    tps: dict[tuple[str, int], Any] = {}
    records = []
    for tp, off, value, record_key in _records(published, s):
        key = (tp.topic, tp.partition)
        tp = tps.setdefault(key, tp)
        # The fields of aiokafka's ConsumerRecord the worker reads (the last one's fingerprint too).
        rec = SimpleNamespace(offset=off, value=value, key=record_key, timestamp=off, topic=tp.topic, partition=tp.partition)
        records.append((tp, rec))
    redis_states: dict[str, str] = {}
    applied: set[bytes] = set()
    memo = FoldMemo()
    t_prep = t_fold = t_encode = 0.0
    now_s = time.time()
    for lo in range(0, len(records), batch):
        chunk: dict[Any, list[Any]] = {}
        for tp, rec in records[lo : lo + batch]:
            chunk.setdefault(tp, []).append(rec)
        t0 = time.process_time()
        [prep] = proc.prepare(chunk, {})  # a single Redis: one partition group
        t1 = time.process_time()
        keep = [j for j, d in enumerate(prep.digests) if d not in applied]
        unique = [prep.unique[j] for j in keep] if len(keep) < len(prep.unique) else prep.unique
        states = {k: redis_states.get(k) for k in prep.entity_keys}
        delta = fold(unique, states, proc._context(now_s, prep.group), memo)
        t2 = time.process_time()
        store.encode_delta(delta, now_s)
        t3 = time.process_time()
        for key, (_, new) in delta.entity_writes.items():
            redis_states[key] = new
        memo.remember(delta)
        applied.update(prep.digests)
        t_prep += t1 - t0
        t_fold += t2 - t1
        t_encode += t3 - t2
    n = len(records)
    return {
        "prepare_us": 1e6 * t_prep / n,
        "fold_us": 1e6 * t_fold / n,
        "encode_us": 1e6 * t_encode / n,
        "total_us": 1e6 * (t_prep + t_fold + t_encode) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--catalog", action="store_true")
    ap.add_argument("--batch", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", type=str, default="", help="write a cProfile of one pass to this file")
    args = ap.parse_args()
    compiled = not (sys.modules["stream.events.fold"].__file__ or "").endswith(".py")
    shape = Shape(events=args.events, catalog=args.catalog)
    _, published = make_realistic(shape, datetime.now(UTC))
    if args.profile:
        import cProfile

        cProfile.runctx("run(published, args.batch, '')", globals(), locals(), args.profile)
        return
    # As the worker runs (stream/worker/consumer.py _tune_gc): no automatic cyclic collection.
    gc.collect()
    gc.freeze()
    gc.disable()
    best: dict[str, float] | None = None
    for _ in range(args.repeat):
        r = run(published, args.batch, "")
        if best is None or r["total_us"] < best["total_us"]:
            best = r
    assert best is not None
    print(
        json.dumps(
            {"workload": shape.label(), "compiled": compiled, **{k: round(v, 2) for k, v in best.items()}},
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
