"""`python -m bench.profile`: where one worker's time goes on a realistic stream (py-spy, issue #13).

Starts its own broker and Redis, publishes one stream of `bench/workload.py`,
runs one `crm-kpi worker` under `py-spy record --pid` from its first batch to
its last record, and prints `bench.spy`'s summary: the share of the worker's
busy samples in each part of the hot path (decode, fold, entity states, Redis
client, aiokafka…). `--native` also samples inside compiled code (mypyc, orjson,
pydantic-core), which shows C function names.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench import spy
from bench.run import ROOT, _applied_total, _env, _poll_until, _settings, _spawn, _stop, publish
from bench.workload import Shape, make_realistic
from stream._compiled import compiled
from stream.devtools.servers import start_kafka, start_redis


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--catalog", action="store_true")
    ap.add_argument("--redeliveries", type=float, default=0.03)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("/tmp/worker-profile.raw"))
    args = ap.parse_args()
    shape = Shape(events=args.events, catalog=args.catalog, redeliveries=args.redeliveries)
    kafka, rds = start_kafka(), start_redis()
    try:
        s = _settings(kafka.url, rds.url, "prof.", "prof")
        _, published = make_realistic(shape, datetime.now(UTC))
        total = sum(asyncio.run(publish(s, published)).values())
        client = redis.Redis.from_url(s.redis_url)
        logs = ROOT / "bench" / "results"
        logs.mkdir(parents=True, exist_ok=True)
        proc = _spawn(["stream", "worker"], _env(s), logs / "worker-profile.log")
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))  # the dev extra's
        spy_cmd = [py_spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(args.out), "--pid", str(proc.pid)]
        recorder = None
        try:
            _poll_until(lambda: _applied_total(client, "prof") > 0, 120, "first batch")
            recorder = subprocess.Popen([*spy_cmd, *(["--native"] if args.native else [])], stdout=subprocess.DEVNULL)
            started = time.perf_counter()
            last = _poll_until(lambda: _applied_total(client, "prof") >= total, 1800, "all records")
            print(
                f"{shape.label()}; compiled core: {compiled()}; {total / (last - started):,.0f} records/s under py-spy"
            )
        finally:
            if recorder is not None:
                recorder.send_signal(signal.SIGINT)
                recorder.wait(60)
            _stop(proc)
    finally:
        kafka.stop()
        rds.stop()
    spy.summarise(args.out)


if __name__ == "__main__":
    main()
