"""`python -m bench.realistic`: worker throughput on streams shaped like production (issue #13).

Starts its own broker and Redis on free ports and publishes four streams of
`bench/workload.py` once, each on its own topics: the core mix and the
full-catalog mix, each with and without 3 % exact redeliveries arriving up to
20k records after their original. Then, in interleaved rounds (A B C D … A B C D …):

* each stream through one `crm-kpi worker` process (its own key prefix and
  group): records/s from the first batch applied to the last, start-up, peak
  RSS, and `crm_batch_conflicts_total` by kind scraped from the worker's own
  /metrics before it stops;
* the baselines on the same machine in the same round: the naive Faust agent
  (`bench/naive_faust.py`, one awaited Redis call per event) on a smaller
  realistic core stream, and the ceilings — aiokafka `getmany()` alone, and
  `getmany()` + the project's validation (the decode ceiling) — over the core
  stream with redeliveries.

Exactness, every worker run: every series the exporter would serve (every KPI,
window and label) must equal the product's own fold run offline over the
de-duplicated stream as one single batch, written to a separate key prefix and
read at the same instant. That checks delivery — duplicates, redeliveries,
batching, pipelining, restarts of a batch — rather than the KPI definitions,
which the unit tests and the independent reference cover: the core mix is
also compared with `bench.reference` (independent of the product) on the 30-day
window, which holds the whole stream. A run that is not exact reports failure.

Then: exporter scrape time over the catalog stream's keys (full catalog, tens
of thousands of customers). Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.reference import assert_matches, expected
from bench.run import (
    ROOT,
    _applied_total,
    _env,
    _peak_rss_mb,
    _poll_until,
    _settings,
    _stop,
    publish,
    report,
    run_ceiling,
    run_naive,
    run_scrape,
    summary,
)
from bench.workload import Shape, make_realistic
from schemas import TOPIC_FAMILY
from stream._compiled import compiled
from stream.devtools.servers import start_kafka, start_redis
from stream.events.decode import decode
from stream.events.fold import FoldContext, entity_keys, fold
from stream.events.windows import make_windows
from stream.exporter.collector import kpi_samples, snapshot
from stream.kpis import fold_rules
from stream.settings import Settings
from stream.store import AsyncStore, Keys
from stream.store.connection import SyncClient

Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def figures_at(client: SyncClient, s: Settings, now_s: float) -> Figures:
    """Every KPI series the exporter would serve for this key prefix, read at `now_s`."""
    return {
        (name, tuple(sorted(labels.items()))): value for name, labels, value in kpi_samples(snapshot(client, s, now_s))
    }


async def fold_offline(s: Settings, unique: list[dict[str, Any]]) -> None:
    """The product's fold over the de-duplicated stream as ONE batch, written to `s`'s (empty) key prefix."""
    now_s = time.time()
    now_us = int(now_s * 1e6)
    events = []
    for e in unique:
        out = decode(json.dumps(e).encode(), TOPIC_FAMILY[e["type"]], now_us, s.max_event_bytes, 300_000_000)
        assert isinstance(out, tuple), (e, out)
        events.append(out)
    keys = Keys(s.redis_key_prefix)
    ctx = FoldContext(now_s, make_windows(s.windows), fold_rules(s.kpi_config()), keys.entity_prefix)
    states: dict[str, str | None] = dict.fromkeys(entity_keys([ev for ev, _ in events], ctx))
    delta = fold(events, states, ctx)
    client = aioredis.Redis.from_url(s.redis_url)
    try:
        store = AsyncStore(client, keys, s.dedupe_horizon, s.state_ttl)
        await store.register([0])  # written as partition group 0: readers read the registered groups
        outcome = await store.apply(0, delta, [], [], now_s)
        assert outcome.ok, outcome
    finally:
        await client.aclose()


def describe(
    shape: Shape, unique: list[dict[str, Any]], published: list[dict[str, Any]], ends: dict[Any, int]
) -> dict[str, Any]:
    """What a published realistic stream holds: sizes, redeliveries, customers, the busy accounts' share."""
    busy = sum(1 for e in unique if int(str(e.get("customer_id", "c999999"))[1:]) < shape.busy)
    return {
        "label": shape.label(),
        "events": len(unique),
        "records": sum(ends.values()),
        "redeliveries": len(published) - len(unique),
        "customers_seen": len({e["customer_id"] for e in unique if "customer_id" in e}),
        "busy_share_of_events": busy / len(unique),
        "event_time_span_days": (
            datetime.fromisoformat(unique[-1]["occurred_at"]) - datetime.fromisoformat(unique[0]["occurred_at"])
        ).total_seconds()
        / 86400,
    }


def _scrape_worker(port: str) -> dict[str, float]:
    """The worker's own counters: what a batch cost (conflicts by kind, duplicates) and what it counted."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    counted = ("crm_events_duplicate_total ", "crm_events_processed_total{", "crm_events_invalid_total{")
    for line in body.splitlines():
        if line.startswith(("crm_batch_conflicts_total{", "crm_batch_seconds_count", *counted)):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used so far (its main thread and the others)."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def run_worker(
    s: Settings,
    total: int,
    offline: Settings,
    unique: list[dict[str, Any]],
    core: bool,
    logs: Path,
    root: Path = ROOT,
) -> dict[str, Any]:
    """One `crm-kpi worker` over the published stream: rate, conflicts, exactness against the offline fold.

    `root`: the checkout whose `stream` package the worker runs (`--before`: another version's).
    """
    client = redis.Redis.from_url(s.redis_url)
    env = _env(s)
    spawned = time.perf_counter()
    log = (logs / f"worker-{s.redis_key_prefix}.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=env, cwd=root, stdout=log, stderr=log)
    try:
        first = _poll_until(lambda: _applied_total(client, s.redis_key_prefix) > 0, 120, "first batch")
        cpu_first, redis_first = _cpu_s(proc.pid), _redis_cpu_s(client)
        # The records applied by then took time before `first`: the rates count only the others
        # (counting them all overstated a short stream's rate by one batch in N).
        timed = total - _applied_total(client, s.redis_key_prefix)
        last = _poll_until(lambda: _applied_total(client, s.redis_key_prefix) >= total, 1800, "all records")
        cpu_last, redis_last = _cpu_s(proc.pid), _redis_cpu_s(client)
        rss = _peak_rss_mb(proc.pid)
        counters = _scrape_worker(env["CRM_KPI_WORKER_PORT"])
    finally:
        _stop(proc)
    now_s = time.time()
    got, want = figures_at(client, s, now_s), figures_at(client, offline, now_s)
    errors = [
        f"{k}: worker {got.get(k)} offline {want.get(k)}"
        for k in sorted(set(got) | set(want))
        if got.get(k) != want.get(k)
    ]
    if core and not errors:
        try:
            assert_matches(got, expected(unique, datetime.fromtimestamp(now_s, UTC)), windows=("30d",))
        except AssertionError as exc:
            errors.append(f"independent reference: {str(exc)[:300]}")
    conflicts = {
        k.split('kind="')[1].rstrip('"}'): int(v) for k, v in counters.items() if k.startswith("crm_batch_conflicts")
    }
    return {
        "rate": timed / (last - first),
        # Records per CPU-second of the worker process: what one core sustains, whatever else
        # the shared machine runs (the wall-clock rate above depends on it).
        "per_cpu_s": timed / max(cpu_last - cpu_first, 1e-9),
        # Redis's own CPU per record over the same span (it serves only this bench): for sizing.
        "redis_cpu_us_per_record": 1e6 * (redis_last - redis_first) / timed,
        "startup_s": first - spawned,
        "peak_rss_mb": rss,
        "conflicts": conflicts,
        "batches": int(counters.get("crm_batch_seconds_count", 0)),
        "duplicates_counted": int(counters.get("crm_events_duplicate_total", 0)),
        "counters": counters,
        "series": len(got),
        "exact": not errors,
        "errors": errors[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.realistic", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000, help="unique events per stream")
    ap.add_argument("--customers", type=int, default=25_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mixes", default="core,catalog", help="comma-separated: core, catalog")
    ap.add_argument("--naive-events", type=int, default=10_000, help="the naive agent is ~40x slower")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a checkout of another version (e.g. `git worktree add`): its worker runs every stream too, "
        "interleaved, for after/before ratios from the same run",
    )
    args = ap.parse_args()

    logs = ROOT / "bench" / "results" / ("realistic-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S"))
    logs.mkdir(parents=True, exist_ok=True)
    kafka, rds = start_kafka(), start_redis()
    now = datetime.now(UTC)
    load = os.getloadavg()
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "compiled": compiled(),
            "loadavg_at_start": load,
        },
        "workloads": {},
    }
    try:
        workloads: dict[str, tuple[Shape, int, Settings, list[dict[str, Any]]]] = {}
        for mix in args.mixes.split(","):
            for redeliveries in (0.03, 0.0):
                name = f"{mix}{'-redeliv' if redeliveries else '-clean'}"
                shape = Shape(events=args.events, customers=args.customers, catalog=mix == "catalog",
                              redeliveries=redeliveries)  # fmt: skip
                unique, published = make_realistic(shape, now)
                tag = name.replace("-", "")
                ends = asyncio.run(publish(_settings(kafka.url, rds.url, f"{tag}.", tag), published))
                offline = _settings(kafka.url, rds.url, f"{tag}.", f"{tag}off")
                asyncio.run(fold_offline(offline, unique))
                workloads[name] = (shape, sum(ends.values()), offline, unique)
                result["workloads"][name] = describe(shape, unique, published, ends)
                print(f"published {name}: {json.dumps(result['workloads'][name], ensure_ascii=False)}", flush=True)
        core_name = next(iter(workloads))
        core_settings = _settings(kafka.url, rds.url, f"{core_name.replace('-', '')}.", "ceiling")
        core_total = workloads[core_name][1]
        if not args.skip_naive:
            _, naive_pub = make_realistic(Shape(events=args.naive_events, customers=args.customers, seed=2), now)
            naive_total = sum(
                asyncio.run(publish(_settings(kafka.url, rds.url, "rnaive.", "rnaive"), naive_pub)).values()
            )
        versions = [("", ROOT)] + ([("@before", args.before.resolve())] if args.before else [])
        runs: dict[str, list[dict[str, Any]]] = {name + v: [] for name in workloads for v, _ in versions}
        runs.update(naive=[], raw=[], decode=[])
        for r in range(args.rounds):
            for name, (shape, total, offline, unique) in workloads.items():
                for version, root in versions:
                    tag = name.replace("-", "") + ("b" if version else "")
                    s = _settings(kafka.url, rds.url, f"{name.replace('-', '')}.", f"{tag}{r}")
                    out = run_worker(s, total, offline, unique, not shape.catalog, logs, root)
                    runs[name + version].append(out)
                    print(f"round {r + 1} {name}{version}: {out['rate']:,.0f} records/s exact={out['exact']} "
                          f"conflicts={out['conflicts']} {out['errors'][:1]}", flush=True)  # fmt: skip
            if not args.skip_naive:
                runs["naive"].append(run_naive(kafka.url, rds.url, "rnaive.", f"rnaive{r}", naive_total, logs))
                print(f"round {r + 1} naive: {runs['naive'][-1]['rate']:,.0f}/s", flush=True)
            runs["raw"].append(asyncio.run(run_ceiling(core_settings, core_total, f"rraw{r}", False)))
            runs["decode"].append(asyncio.run(run_ceiling(core_settings, core_total, f"rdecode{r}", True)))
            print(f"round {r + 1} ceilings: raw {runs['raw'][-1]['rate']:,.0f}/s "
                  f"decode {runs['decode'][-1]['rate']:,.0f}/s", flush=True)  # fmt: skip
        result["rates"] = {k: summary([x["rate"] for x in v]) for k, v in runs.items() if v}
        workers = [k for k in runs if k.partition("@")[0] in workloads]
        result["per_cpu_s"] = {k: summary([x["per_cpu_s"] for x in runs[k]]) for k in workers}
        result["redis_cpu_us_per_record"] = {
            k: summary([x["redis_cpu_us_per_record"] for x in runs[k]]) for k in workers
        }
        result["runs"] = {k: runs[k] for k in workers}
        result["exact"] = all(x["exact"] for k in workers for x in runs[k])
        med = {k: v["median"] for k, v in result["rates"].items()}
        ratios: dict[str, float] = {}
        if args.before:
            for name in workloads:
                ratios[f"{name}: after / before"] = med[name] / med[name + "@before"]
                per_cpu = result["per_cpu_s"]
                ratios[f"{name}: after / before, per CPU-s"] = (
                    per_cpu[name]["median"] / per_cpu[name + "@before"]["median"]
                )
            # The two versions run one after the other on the same stream in each round: their
            # ratio within a round is steadier than the ratio of the medians when the shared
            # machine's speed moves between rounds (±20 % in runs of 2026-11-27).
            result["paired"] = {
                name: summary([a["rate"] / b["rate"] for a, b in zip(runs[name], runs[name + "@before"], strict=True)])
                for name in workloads
            }
        for mix in args.mixes.split(","):
            ratios[f"{mix}: redeliveries cost"] = 1 - med[f"{mix}-redeliv"] / med[f"{mix}-clean"]
        ratios["core-redeliv / decode ceiling"] = med[core_name] / med["decode"]
        ratios["core-redeliv / raw ceiling"] = med[core_name] / med["raw"]
        if "naive" in med:
            ratios["core-redeliv / naive"] = med[core_name] / med["naive"]
        result["ratios"] = ratios
        last = list(workloads)[-2] if len(workloads) > 2 else core_name
        result["scrape"] = run_scrape(_settings(kafka.url, rds.url, "x.", f"{last.replace('-', '')}0"), logs)
        result["scrape"]["workload"] = workloads[last][0].label()
        result["loadavg_at_end"] = os.getloadavg()
    finally:
        kafka.stop()
        rds.stop()
    report(result, args.out or logs / "result.json", print_table, "a worker's figures were not exact")


def print_table(r: dict[str, Any]) -> None:
    print(f"\n{r['machine']['cpus']} CPUs, {r['machine']['platform']}, compiled core: {r['machine']['compiled']}, "
          f"load average at start {r['machine']['loadavg_at_start'][0]:.1f}")  # fmt: skip
    print(f"{'what':<58}{'median':>10}{'min':>10}{'max':>10}{'per CPU-s':>11}  conflicts (per run)")
    for key, x in r["rates"].items():
        if key.partition("@")[0] in r["workloads"]:
            label = f"worker, {key} (records/s)"
            per_cpu = f"{r['per_cpu_s'][key]['median']:>11,.0f}"
            conflicts = "; ".join(
                ", ".join(f"{k} {v}" for k, v in run["conflicts"].items()) or "none" for run in r["runs"][key]
            )
        else:
            label = {
                "naive": "naive Faust agent (ev/s)",
                "raw": "ceiling: getmany only",
                "decode": "ceiling: getmany + validation",
            }[key]
            conflicts, per_cpu = "", " " * 11
        print(f"{label:<58}{x['median']:>10,.0f}{x['min']:>10,.0f}{x['max']:>10,.0f}{per_cpu}  {conflicts}")
    for k, v in r["ratios"].items():
        print(f"{k:<58}{v:>10.2f}")
    for name, x in r.get("paired", {}).items():
        print(f"{name + ': after / before, paired by round':<58}{x['median']:>10.2f}{x['min']:>10.2f}{x['max']:>10.2f}")
    print(f"{'figures exact in every run':<58}{r['exact']!s:>10}")
    sc = r["scrape"]
    print(
        f"{'exporter scrape median / max (ms), series':<58}{sc['median_ms']:>10.1f}{sc['max_ms']:>10.1f}{sc['series']:>10}"
    )
    for name, w in r["workloads"].items():
        print(f"  {name}: {w['label']}; {w['records']:,} records, {w['customers_seen']:,} customers seen, "
              f"{w['busy_share_of_events']:.0%} of events on the busy ones, {w['event_time_span_days']:.1f} days")  # fmt: skip


if __name__ == "__main__":
    main()
