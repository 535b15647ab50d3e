"""`python -m bench.catalog`: the full catalog flowing — worker throughput and scrape time (issue #6).

1. Throughput: publishes N simulator events of every event type spread over the
   last 29 days, runs one `crm-kpi worker`, reports events/s (first batch applied →
   last record applied).
2. Scrape: fills a fresh key prefix straight through the fold and the atomic write
   with C customers at churn risk (complaint ticket + NPS detractor each), C buyers
   with two orders each and U CRM users, all in the last 30 days; then times the
   exporter's read (`read_snapshot` + every read-out) and `crm-kpi at-risk`'s read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.run import _applied_total, _env, _poll_until, _settings, _spawn, _stop, publish
from schemas import event_adapter
from stream.devtools.servers import start_kafka, start_redis
from stream.devtools.synthetic_crm import SimConfig, generate
from stream.events.fold import FoldContext, entity_keys, fold
from stream.events.windows import make_windows, to_us
from stream.exporter.collector import kpi_samples, snapshot
from stream.kpis import fold_rules
from stream.settings import Settings
from stream.store import AsyncStore, Keys, read_at_risk


def throughput(kafka: str, redis_url: str, n: int, logs: Path, catalog: bool = True) -> dict[str, Any]:
    name = "cat" if catalog else "core"
    s = _settings(kafka, redis_url, f"{name}.", name)
    start = datetime.now(UTC) - timedelta(days=29)
    events = list(generate(SimConfig(seed=11, rate=n / (29 * 86400), customers=2000, catalog=catalog), start, count=n))
    types = sorted({e["type"] for e in events})
    asyncio.run(publish(s, events))
    client = redis.Redis.from_url(redis_url)
    proc = _spawn(["stream", "worker"], _env(s), logs / "worker.log")
    try:
        first = _poll_until(lambda: _applied_total(client, name) > 0, 120, "first batch")
        last = _poll_until(lambda: _applied_total(client, name) >= n, 900, "all records")
    finally:
        _stop(proc)
    return {"mix": name, "events": n, "types": len(types), "events_per_s": n / (last - first)}


def _event(kind: str, when: datetime, i: int, /, **fields: Any) -> Any:
    return event_adapter.validate_python({"event_id": f"b{kind}{i}", "type": kind, "occurred_at": when, **fields})


async def _fill(redis_url: str, prefix: str, customers: int, users: int) -> None:
    keys = Keys(prefix)
    client = aioredis.Redis.from_url(redis_url)
    store = AsyncStore(client, keys, 86400, 90 * 86400)
    await store.register([0])  # everything is written as partition group 0
    now = datetime.now(UTC)
    windows = make_windows([3600, 86400, 604800, 2592000])
    rules = fold_rules(Settings.model_construct().kpi_config())  # the defaults
    events = []
    for c in range(customers):
        cid = f"cust{c}"
        base = now - timedelta(minutes=(c * 37) % (28 * 1440) + 1)
        events.append(_event("ticket.opened", base, c, ticket_id=f"t{c}", customer_id=cid, category="complaint"))
        events.append(_event("survey.submitted", base, c, survey_id=f"s{c}", customer_id=cid, kind="nps", score=3))
        for k in range(2):
            when = base - timedelta(hours=k * 30)
            events.append(
                _event(
                    "order.placed", when, 2 * c + k, order_id=f"o{c}-{k}", customer_id=cid, amount=10, currency="EUR"
                )
            )
    for u in range(users):
        events.append(_event("activity.logged", now - timedelta(minutes=(u * 53) % (29 * 1440)), u, user_id=f"u{u}",
                             kind="call"))  # fmt: skip
    try:
        for lo in range(0, len(events), 4000):
            batch = events[lo : lo + 4000]
            now_s = time.time()
            ctx = FoldContext(now_s, windows, rules, keys.entity_prefix)
            states = await store.read_states(0, entity_keys(batch, ctx))
            delta = fold([(e, to_us(e.occurred_at)) for e in batch], states, ctx)
            outcome = await store.apply(0, delta, [], [], now_s)
            assert outcome.ok, outcome
    finally:
        await client.aclose()


def scrape(redis_url: str, customers: int, users: int, rounds: int = 30) -> dict[str, Any]:
    prefix = f"scrape{customers}"
    asyncio.run(_fill(redis_url, prefix, customers, users))
    s = _settings("127.0.0.1:1", redis_url, "x.", prefix)
    client = redis.Redis.from_url(redis_url)
    times, risk_times = [], []
    at_risk = None
    for _ in range(rounds):
        started = time.perf_counter()
        samples = list(kpi_samples(snapshot(client, s)))
        times.append(time.perf_counter() - started)
        at_risk = next(v for name, _, v in samples if name == "crm_customers_at_risk")
    for _ in range(5):
        started = time.perf_counter()
        rows = read_at_risk(client, Keys(prefix), time.time(), 20)
        risk_times.append(time.perf_counter() - started)
    return {
        "customers_at_risk": at_risk,
        "buyers": customers,
        "users": users,
        "scrape_ms_p50": 1000 * statistics.median(times),
        "scrape_ms_max": 1000 * max(times),
        "at_risk_top20_ms_p50": 1000 * statistics.median(risk_times),
        "top_points": rows[0]["points"] if rows else None,
        "redis_used_memory_mb": client.info("memory")["used_memory"] / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--also-core", action="store_true", help="Also measure the core-only mix, for comparison.")
    args = ap.parse_args()
    r = start_redis()
    k = None if args.skip_throughput else start_kafka()
    result: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as logs:
            if k is not None:
                result["throughput"] = throughput(k.url, r.url, args.events, Path(logs))
                print(json.dumps(result["throughput"]), flush=True)
                if args.also_core:
                    result["throughput_core"] = throughput(k.url, r.url, args.events, Path(logs), catalog=False)
                    print(json.dumps(result["throughput_core"]), flush=True)
            result["scrape"] = scrape(r.url, args.customers, args.users)
    finally:
        r.stop()
        if k is not None:
            k.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
