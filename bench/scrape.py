"""Exporter scrape time at realistic sizes: `python -m bench.scrape`.

For each size (customers, history), the simulated CRM (`stream.devtools.synthetic_crm`,
its realistic per-customer rates, what `crm-kpi demo` runs) is published to its own
topics from `now - history` to now, a real `crm-kpi worker` applies it, and a real
`crm-kpi exporter` is scraped over HTTP `--scrapes` times: median and max wall
time per scrape, the series served, and the exporter's own `crm_exporter_scrape_seconds`;
and the first scrape after the exporter started (a full read; later ones read only the
buckets written since). The scrapes run while nothing is written, the exporter's
steady state between two batches; `uptime`'s load average is recorded with them.

Sizes: the demo's default (20,000 customers, 7 days of history) and 10,000
customers with 30 days of history (every window full). Writes bench/scrape-last-run.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench.run import ROOT, _applied_total, _env, _poll_until, _settings, _spawn, _stop
from stream.devtools.demo import DemoOptions
from stream.devtools.servers import start_kafka, start_redis
from stream.devtools.simulate import SimulateStats, simulate
from stream.devtools.synthetic_crm import SimConfig
from stream.kafka.topics import create_topics
from stream.settings import Settings

SIZES = ((DemoOptions().customers, DemoOptions().history_s / 86400), (10_000, 30.0))


async def _publish(s: Settings, customers: int, days: float, seed: int) -> SimulateStats:
    await create_topics(s)
    start = datetime.fromtimestamp(time.time() - days * 86400, UTC)
    return await simulate(s, SimConfig(seed=seed, customers=customers), start, duration_s=days * 86400)


def measure(kafka: str, redis_url: str, customers: int, days: float, scrapes: int, logs: Path) -> dict[str, Any]:
    key = f"scrape{customers}x{days:g}"
    s = _settings(kafka, redis_url, f"{key}.", key)
    stats = asyncio.run(_publish(s, customers, days, seed=7))
    client = redis.Redis.from_url(redis_url)
    env = _env(s)
    worker = _spawn(["stream", "worker"], env, logs / f"{key}-worker.log")
    try:
        _poll_until(lambda: _applied_total(client, key) >= stats.published, 600, "the worker to apply everything", 0.2)
    finally:
        _stop(worker)
    exporter = _spawn(["stream", "exporter"], env, logs / f"{key}-exporter.log")
    url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"
    try:
        first: list[float] = []

        def up() -> bool:  # the first scrape reads every bucket: the exporter keeps the sums from then on
            t0 = time.perf_counter()
            try:
                urllib.request.urlopen(url, timeout=30).read()
            except OSError:
                return False
            first.append(time.perf_counter() - t0)
            return True

        _poll_until(up, 30, "exporter up", 0.05)
        walls, inside, series = [], [], 0
        for _ in range(scrapes):
            t0 = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            walls.append(time.perf_counter() - t0)
            lines = [line for line in body.splitlines() if line and not line.startswith("#")]
            series = sum(1 for line in lines if not line.startswith(("crm_exporter", "crm_kpi_build_info")))
            inside += [float(line.split()[-1]) for line in lines if line.startswith("crm_exporter_scrape_seconds ")]
    finally:
        _stop(exporter)
    return {
        "customers": customers,
        "history_days": days,
        "events": stats.published,
        "series": series,
        "first_scrape_ms": round(1000 * first[-1], 1),
        "scrape_median_ms": round(1000 * statistics.median(walls), 1),
        "scrape_max_ms": round(1000 * max(walls), 1),
        "exporter_compute_median_ms": round(1000 * statistics.median(inside), 1),
        "redis_used_memory_mb": round(client.info("memory")["used_memory"] / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes per size (default 50)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scrape-last-run.json")
    args = parser.parse_args()
    kafka, redis_server = start_kafka(), start_redis()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="crm-kpi-bench-") as tmp:
            for customers, days in SIZES:
                r = measure(kafka.url, redis_server.url, customers, days, args.scrapes, Path(tmp))
                results.append(r)
                print(
                    f"{r['customers']:>7,} customers, {r['history_days']:g} days ({r['events']:,} events,"
                    f" {r['series']} series): scrape median {r['scrape_median_ms']} ms, max {r['scrape_max_ms']} ms"
                    f" (exporter {r['exporter_compute_median_ms']} ms); first scrape {r['first_scrape_ms']} ms"
                )
    finally:
        redis_server.stop()
        kafka.stop()
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # the machine is shared: read the figures with it
        "sizes": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
