"""`python -m bench.latency`: publish→visible latency at a fixed rate, several rounds (issue #13's p99 target).

Each round publishes `--seconds` of the issue #3 stream at `--rate` records/s, paced, to
fresh topics read by a fresh worker (`bench.run.run_latency`: the time from each
record's send to the moment Redis records its partition's offset past it, which is when
the exporter can serve its effect). Prints each round and the medians; JSON in
bench/last-latency.json. The figure is the machine's as much as the worker's: with other
work on the cores the tail grows, so read it next to the load average printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import ROOT, run_latency, summary
from stream.devtools.servers import start_kafka, start_redis


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--rate", type=float, default=10_000, help="records/s published")
    parser.add_argument("--seconds", type=float, default=20, help="how long each round publishes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "last-latency.json")
    args = parser.parse_args()
    logs = ROOT / "bench" / "results" / datetime.now(UTC).strftime("latency-%Y%m%dT%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    kafka, rds = start_kafka(), start_redis()
    rounds: list[dict[str, Any]] = []
    try:
        for i in range(args.rounds):
            result = asyncio.run(run_latency(kafka.url, rds.url, logs, args.rate, args.seconds, f"benchlat{i}"))
            result["load_average"] = os.getloadavg()
            rounds.append(result)
            print(
                f"round {i + 1}: {result['publish_rate']:,.0f} records/s published, p50 {result['p50_ms']:.0f} ms,"
                f" p99 {result['p99_ms']:.0f} ms ({result['measured']:,} of {result['sent']:,} measured;"
                f" load average {result['load_average'][0]:.1f})",
                flush=True,
            )
    finally:
        kafka.stop()
        rds.stop()
    out = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rate": args.rate,
        "seconds": args.seconds,
        "rounds": rounds,
        "p50_ms": summary([r["p50_ms"] for r in rounds]),
        "p99_ms": summary([r["p99_ms"] for r in rounds]),
    }
    args.out.write_text(json.dumps(out, indent=2))
    p50, p99 = out["p50_ms"], out["p99_ms"]
    print(
        f"median of {len(rounds)} rounds: p50 {p50['median']:.0f} ms, p99 {p99['median']:.0f} ms"
        f" (p99 {p99['min']:.0f}-{p99['max']:.0f} ms); JSON: {args.out}"
    )


if __name__ == "__main__":
    main()
