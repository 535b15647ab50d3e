"""`python -m bench.scaleout`: 1, 2 and 3 worker processes on one Redis and on a 3-master Redis Cluster (issue #14).

Starts a real Apache Kafka (one KRaft node from `.cache/kafka/libs`, as the end-to-end
tests run it; `--broker tansu` for the embedded one), a single `redis-server` and a
3-master Redis Cluster (no replicas) on free ports, and publishes one realistic stream
(`bench/workload.py`: 25k customers, ~30 % of events on 200 busy ones, event-time order,
3 % exact redeliveries up to 20k records later) once, to 12-partition topics keyed by
customer. Then, in interleaved rounds (the order of the six configurations rotates each
round), for each of {1, 2, 3} workers × {single Redis, cluster}:

* N `crm-kpi worker` processes in one fresh consumer group, writing a fresh key prefix
  (`CRM_KPI_REDIS_CLUSTER=true` on the cluster);
* wall time from spawning them until every partition's recorded offset (the store's
  fence, what the exporter trusts) reaches the partition's end, and the steady rate
  from the first batch applied to the last (start-up and the group's first rebalance
  excluded, as `bench.realistic` counts);
* over that steady span: the workers' CPU seconds (/proc), each Redis master's CPU
  (INFO cpu: used_cpu_user + used_cpu_sys), and over the whole run, per record: Redis
  commands (INFO commandstats, the scripts' inner commands included), network bytes in
  and out (INFO stats), and the state's memory (INFO memory used_memory delta);
* exactness: every series the exporter would serve equals the product's fold run
  offline over the de-duplicated stream as one batch (a separate key prefix on the
  single Redis, read at the same instant), and (core mix) the 30-day window equals the
  independent reference (`bench.reference`). A run that is not exact fails the bench.

After the first single-Redis run the state's memory is broken down by key kind
(MEMORY USAGE of every key). Prints a table; writes JSON (`--out`, e.g.
bench/last-scaleout.json). The machine's cores are shared by the broker, the Redis
servers, the workers and this driver: see docs/scaling.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.cluster

from bench.realistic import _cpu_s, _scrape_worker, describe, figures_at, fold_offline
from bench.reference import assert_matches, expected
from bench.run import (
    ROOT,
    _applied_offsets,
    _env,
    _peak_rss_mb,
    _poll_until,
    _settings,
    _stop,
    publish,
    report,
    summary,
)
from bench.workload import Shape, make_realistic
from stream._compiled import compiled
from stream.devtools.servers import start_kafka, start_redis
from stream.settings import Settings
from stream.store import Keys
from stream.store.connection import SyncClient, sync_client

PARTITIONS = 12
WORKERS = (1, 2, 3)
MODES = ("single", "cluster")
BASELINE = "1w-single"
POLL_S = 0.05  # the driver's own reads of the offsets: under 1 % of Redis's commands at this interval

Stats = dict[str, Any]


@dataclass
class Target:
    """One Redis deployment under test: its URL, its masters (direct clients) and whether it is a cluster."""

    mode: str
    url: str
    masters: list[redis.Redis]

    @property
    def cluster(self) -> bool:
        return self.mode == "cluster"


def node_stats(node: redis.Redis) -> Stats:
    """The INFO counters one master's figures are deltas of."""
    info = node.info("all")
    return {
        "cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        "commands": sum(int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_")),
        "evalsha": sum(int(info.get(k, {}).get("calls", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval")),
        "net_in": int(info["total_net_input_bytes"]),
        "net_out": int(info["total_net_output_bytes"]),
        "used_memory": int(info["used_memory"]),
    }


@dataclass(frozen=True)
class Sample:
    """The counters at one instant of a run."""

    at: float
    applied: int
    worker_cpu_s: float
    redis: list[Stats]
    machine_cpu_s: float
    broker_cpu_s: float


def stats(target: Target) -> list[Stats]:
    return [node_stats(n) for n in target.masters]


def _delta(after: list[Stats], before: list[Stats], key: str) -> list[float]:
    return [float(a[key] - b[key]) for a, b in zip(after, before, strict=True)]


def all_applied(client: SyncClient, prefix: str, ends: dict[str, int]) -> tuple[bool, int]:
    """(every partition's recorded offset is at its end, records applied so far)."""
    stored = _applied_offsets(client, prefix)  # type: ignore[arg-type]  # SMEMBERS + HGETALL route on a cluster too
    return all(stored.get(tp, -1) >= end for tp, end in ends.items()), sum(stored.values())


def groups_per_master(target: Target, prefix: str) -> list[int]:
    """How many of the 12 partition groups (hash tags) each master holds for this key prefix."""
    if not target.cluster:
        return [1]  # a single Redis keeps every partition in group 0
    client = redis.cluster.RedisCluster.from_url(target.url)
    try:
        ports = [n.connection_pool.connection_kwargs["port"] for n in target.masters]
        at = [client.get_node_from_key(Keys(prefix).group(g).offsets).port for g in range(PARTITIONS)]  # type: ignore[no-untyped-call]
        return [at.count(p) for p in ports]
    finally:
        client.close()


def memory_by_kind(client: redis.Redis, prefix: str) -> dict[str, dict[str, float]]:
    """Keys, members and MEMORY USAGE bytes per key kind ('w' window bucket, 'dd' dedupe set, an entity tag…)."""
    out: dict[str, dict[str, float]] = {}
    keys = list(client.scan_iter(match=Keys(prefix).pattern, count=5000))
    for i in range(0, len(keys), 2000):
        chunk = keys[i : i + 2000]
        pipe = client.pipeline(transaction=False)
        for k in chunk:
            pipe.memory_usage(k, samples=0)
        for k in chunk:
            pipe.type(k)
        replies = pipe.execute()
        sizes = client.pipeline(transaction=False)
        for k, kind in zip(chunk, replies[len(chunk) :], strict=True):
            t = kind.decode() if isinstance(kind, bytes) else str(kind)
            {"zset": sizes.zcard, "hash": sizes.hlen, "set": sizes.scard}.get(t, sizes.strlen)(k)
        for k, used, members in zip(chunk, replies[: len(chunk)], sizes.execute(), strict=True):
            parts = ["registry"] if b"}:" not in k else k.decode().split("}:", 1)[1].split(":")
            kind = parts[0] if parts[0] not in ("w", "wd", "z") else f"{parts[0]}:{parts[1]}"
            slot = out.setdefault(kind, {"keys": 0, "bytes": 0, "members": 0})
            slot["keys"] += 1
            slot["bytes"] += int(used or 0)
            slot["members"] += int(members)  # members of a set or sorted set, fields of a hash, a string's bytes
    for slot in out.values():
        slot["bytes_per_key"] = slot["bytes"] / slot["keys"]
        slot["bytes_per_member"] = slot["bytes"] / max(slot["members"], 1)
    return dict(sorted(out.items()))


def drop(target: Target, prefix: str) -> None:
    """Delete one run's keys (a cluster holds nothing else: flushed)."""
    for node in target.masters:
        if target.cluster:
            node.flushall()
            continue
        batch = []
        for k in node.scan_iter(match=Keys(prefix).pattern, count=5000):
            batch.append(k)
            if len(batch) >= 5000:
                node.unlink(*batch)
                batch.clear()
        if batch:
            node.unlink(*batch)


def _machine_busy_s() -> float:
    """CPU seconds every process on the machine has used (all cores, /proc/stat), other sessions' included."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_config(
    target: Target,
    broker_pid: int,
    workers: int,
    s: Settings,
    ends: dict[str, int],
    offline: Settings,
    offline_client: redis.Redis,
    unique: list[dict[str, Any]],
    core: bool,
    logs: Path,
) -> dict[str, Any]:
    """N workers in one fresh group over the published topics: wall time, rates, CPU, Redis costs, exactness."""
    total = sum(ends.values())
    client = sync_client(s)
    before = stats(target)
    spawned = time.perf_counter()
    procs, ports = [], []
    for i in range(workers):
        env = _env(s, CRM_KPI_TOPIC_PARTITIONS=str(PARTITIONS), CRM_KPI_REDIS_CLUSTER=str(target.cluster).lower())
        ports.append(env["CRM_KPI_WORKER_PORT"])
        log = (logs / f"worker-{s.redis_key_prefix}-{i}.log").open("ab")
        procs.append(
            subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=env, cwd=ROOT, stdout=log, stderr=log)
        )
    applied = [0]
    started: set[str] = set()

    def progress() -> bool:
        done, applied[0] = all_applied(client, s.redis_key_prefix, ends)
        return done

    def all_running() -> bool:
        """Every worker has applied a batch (its /metrics counts one): the group is assigned and stable."""
        progress()
        for port in set(ports) - started:
            try:
                if _scrape_worker(port).get("crm_batch_seconds_count", 0) > 0:
                    started.add(port)
            except OSError:
                pass
        return len(started) == len(ports) or applied[0] >= total

    def sample(at: float) -> Sample:
        return Sample(at, applied[0], sum(_cpu_s(p.pid) for p in procs), stats(target), _machine_busy_s(),
                      _cpu_s(broker_pid))  # fmt: skip

    try:
        first = sample(_poll_until(lambda: (progress(), applied[0])[1] > 0, 180, "first batch", POLL_S))
        running = sample(_poll_until(all_running, 180, "every worker applying", POLL_S))
        end = sample(_poll_until(progress, 1800, "every partition applied", POLL_S))
        rss = max(_peak_rss_mb(p.pid) for p in procs)
    finally:
        for p in procs:
            _stop(p)
    now_s = time.time()
    got, want = figures_at(client, s, now_s), figures_at(offline_client, offline, now_s)
    errors = [
        f"{k}: workers {got.get(k)} offline {want.get(k)}"
        for k in sorted(set(got) | set(want))
        if got.get(k) != want.get(k)
    ]
    if not errors and core:  # the independent reference covers the core mix only
        try:
            assert_matches(got, expected(unique, datetime.fromtimestamp(now_s, UTC)), windows=("30d",))
        except AssertionError as exc:
            errors.append(f"independent reference: {str(exc)[:300]}")
    # Steady: from every worker applying to the end. A stream too short for N workers (the last
    # one started near the end; see --events) falls back to the span from the first batch.
    steady = total - running.applied >= total / 10 and end.at - running.at > 0.5
    base = running if steady else first
    timed, span = total - base.applied, end.at - base.at
    redis_cpu = _delta(end.redis, base.redis, "cpu_s")
    out: dict[str, Any] = {
        "wall_s": end.at - spawned,
        "rate_wall": total / (end.at - spawned),
        "rate": timed / span,
        "steady": steady,
        "startup_s": first.at - spawned,
        "all_running_s": running.at - spawned,
        "steady_records": timed,
        "broker_cpu_us_per_record": 1e6 * (end.broker_cpu_s - base.broker_cpu_s) / timed,
        "machine_cores_busy": (end.machine_cpu_s - base.machine_cpu_s) / span,
        "worker_cpu_us_per_record": 1e6 * (end.worker_cpu_s - base.worker_cpu_s) / timed,
        "worker_cores_busy": (end.worker_cpu_s - base.worker_cpu_s) / span,
        "redis_cpu_us_per_record": [1e6 * c / timed for c in redis_cpu],
        "redis_cores_busy": [c / span for c in redis_cpu],
        "commands_per_record": sum(_delta(end.redis, before, "commands")) / total,
        "scripts_per_1k_records": 1000 * sum(_delta(end.redis, before, "evalsha")) / total,
        "net_in_bytes_per_record": sum(_delta(end.redis, before, "net_in")) / total,
        "net_out_bytes_per_record": sum(_delta(end.redis, before, "net_out")) / total,
        "state_mb": sum(_delta(end.redis, before, "used_memory")) / 2**20,
        "groups_per_master": groups_per_master(target, s.redis_key_prefix),
        "peak_rss_mb": rss,
        "series": len(got),
        "exact": not errors,
        "errors": errors[:5],
    }
    client.close()
    return out


@contextmanager
def broker(kind: str) -> Iterator[tuple[str, int]]:
    """(bootstrap address, pid) of a Kafka broker: Apache Kafka (the tests' launcher) or the embedded Tansu."""
    if kind == "tansu":
        server = start_kafka()
        try:
            yield server.url, server.proc.pid
        finally:
            server.stop()
        return
    from tests.support.apache_kafka import ApacheKafka  # the jars from .ci/fetch-kafka.sh

    with ApacheKafka(partitions=PARTITIONS, heap="768m") as kafka:
        assert kafka.pid is not None
        yield kafka.bootstrap, kafka.pid


@contextmanager
def redis_cluster(masters: int) -> Iterator[Target]:
    from tests.support.redis_cluster import RedisCluster  # the tests' real-cluster launcher

    with RedisCluster(masters=masters, replicas=0) as c:
        yield Target("cluster", c.url, [n.client() for n in c.nodes])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000, help="unique events in the stream")
    ap.add_argument("--customers", type=int, default=25_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--catalog", action="store_true", help="the full-catalog mix (default: the core mix)")
    ap.add_argument("--broker", choices=("apache", "tansu"), default="apache")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    logs = ROOT / "bench" / "results" / ("scaleout-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S"))
    logs.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "compiled": compiled(),
            "loadavg_at_start": os.getloadavg(),
            "broker": args.broker,
        },
    }
    rds = start_redis()
    try:
        with broker(args.broker) as (kafka, broker_pid), redis_cluster(3) as cluster:
            single = Target("single", rds.url, [redis.Redis.from_url(rds.url)])
            targets = {"single": single, "cluster": cluster}
            shape = Shape(events=args.events, customers=args.customers, catalog=args.catalog)
            unique, published = make_realistic(shape, now)
            topics = _settings(kafka, rds.url, "so.", "so", partitions=PARTITIONS)
            t0 = time.perf_counter()
            tp_ends = asyncio.run(publish(topics, published))
            ends = {f"{tp.topic}:{tp.partition}": end for tp, end in tp_ends.items()}
            result["workload"] = describe(shape, unique, published, tp_ends)
            by_partition: dict[int, int] = {}
            for tp, end in tp_ends.items():
                by_partition[tp.partition] = by_partition.get(tp.partition, 0) + end
            result["workload"]["records_per_partition"] = dict(sorted(by_partition.items()))
            result["workload"]["publish_s"] = time.perf_counter() - t0
            offline = _settings(kafka, rds.url, "so.", "sooff", partitions=PARTITIONS)
            asyncio.run(fold_offline(offline, unique))
            offline_client = redis.Redis.from_url(rds.url)
            print(f"published: {result['workload']}", flush=True)

            configs = [f"{w}w-{m}" for m in MODES for w in WORKERS]
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
            for r in range(args.rounds):
                order = configs[r % len(configs) :] + configs[: r % len(configs)]
                for name in order:
                    workers, mode = int(name.split("w-")[0]), name.split("w-")[1]
                    target = targets[mode]
                    prefix = f"so{r}{name.replace('-', '')}"
                    s = _settings(kafka, target.url, "so.", prefix, partitions=PARTITIONS,
                                  redis_cluster=target.cluster)  # fmt: skip
                    out = run_config(
                        target, broker_pid, workers, s, ends, offline, offline_client, unique, not args.catalog, logs
                    )
                    if r == 0 and name == BASELINE:
                        result["memory_by_kind"] = memory_by_kind(single.masters[0], prefix)
                    drop(target, prefix)
                    runs[name].append(out)
                    print(
                        f"round {r + 1} {name}: {out['rate']:,.0f} rec/s {'steady' if out['steady'] else 'from the first batch'}, {out['rate_wall']:,.0f} wall, "
                        f"worker {out['worker_cpu_us_per_record']:.1f} µs/rec, redis "
                        f"{'/'.join(f'{x:.1f}' for x in out['redis_cpu_us_per_record'])} µs/rec, "
                        f"exact={out['exact']} {out['errors'][:1]}",
                        flush=True,
                    )
            result["runs"] = runs
            result["summary"] = summarise(runs)
            result["exact"] = all(x["exact"] for v in runs.values() for x in v)
            result["loadavg_at_end"] = os.getloadavg()
    finally:
        rds.stop()
    report(result, args.out or logs / "result.json", print_table, "a configuration's figures were not exact")


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians (min, max) per configuration, and ratios to the 1-worker single-Redis baseline."""
    scalar = (
        "rate",
        "rate_wall",
        "wall_s",
        "startup_s",
        "worker_cpu_us_per_record",
        "worker_cores_busy",
        "broker_cpu_us_per_record",
        "machine_cores_busy",
        "all_running_s",
        "commands_per_record",
        "scripts_per_1k_records",
        "net_in_bytes_per_record",
        "net_out_bytes_per_record",
        "state_mb",
        "peak_rss_mb",
    )
    out: dict[str, Any] = {}
    for name, xs in runs.items():
        row: dict[str, Any] = {k: summary([x[k] for x in xs]) for k in scalar}
        # Per master, sorted busiest first in each run (the masters' groups differ per key prefix).
        shards = [sorted(x["redis_cpu_us_per_record"], reverse=True) for x in xs]
        busy = [sorted(x["redis_cores_busy"], reverse=True) for x in xs]
        row["redis_cpu_us_per_record_by_master"] = [statistics.median(c) for c in zip(*shards, strict=True)]
        row["redis_cpu_us_per_record_total"] = summary([sum(c) for c in shards])
        row["redis_cores_busy_by_master"] = [statistics.median(c) for c in zip(*busy, strict=True)]
        row["workers_and_redis_cores_busy"] = statistics.median(
            x["worker_cores_busy"] + sum(x["redis_cores_busy"]) for x in xs
        )
        out[name] = row
    base = out[BASELINE]
    for row in out.values():
        row["rate_vs_baseline"] = row["rate"]["median"] / base["rate"]["median"]
        row["rate_wall_vs_baseline"] = row["rate_wall"]["median"] / base["rate_wall"]["median"]
    return out


def print_table(r: dict[str, Any]) -> None:
    m, w = r["machine"], r["workload"]
    print(f"\n{m['cpus']} CPUs, {m['platform']}, broker {m['broker']}, compiled core {m['compiled']}, "
          f"load average at start {m['loadavg_at_start'][0]:.1f}, at end {r['loadavg_at_end'][0]:.1f}")  # fmt: skip
    print(f"stream: {w['label']}; {w['records']:,} records over {len(w['records_per_partition'])} partitions")
    head = (f"{'config':<12}{'rec/s':>9}{'min':>8}{'max':>8}{'×base':>7}{'wall/s':>9}{'×base':>7}"
            f"{'wkr µs':>8}{'wkr cores':>10}{'redis µs/rec by master':>24}{'redis cores':>16}"
            f"{'cmd/rec':>8}{'B in':>7}{'B out':>7}{'MB':>6}{'kafka µs':>9}{'host cores':>11}")  # fmt: skip
    print(head)
    for name, x in r["summary"].items():
        redis_us = "/".join(f"{v:.1f}" for v in x["redis_cpu_us_per_record_by_master"])
        redis_busy = "/".join(f"{v:.2f}" for v in x["redis_cores_busy_by_master"])
        print(f"{name:<12}{x['rate']['median']:>9,.0f}{x['rate']['min']:>8,.0f}{x['rate']['max']:>8,.0f}"
              f"{x['rate_vs_baseline']:>7.2f}{x['rate_wall']['median']:>9,.0f}{x['rate_wall_vs_baseline']:>7.2f}"
              f"{x['worker_cpu_us_per_record']['median']:>8.1f}{x['worker_cores_busy']['median']:>10.2f}"
              f"{redis_us:>24}{redis_busy:>16}{x['commands_per_record']['median']:>8.1f}"
              f"{x['net_in_bytes_per_record']['median']:>7.0f}{x['net_out_bytes_per_record']['median']:>7.0f}"
              f"{x['state_mb']['median']:>6.0f}{x['broker_cpu_us_per_record']['median']:>9.1f}"
              f"{x['machine_cores_busy']['median']:>11.2f}")  # fmt: skip
    print(f"{'figures exact in every run':<40}{r['exact']!s:>8}")
    for kind, v in r.get("memory_by_kind", {}).items():
        print(f"  state key kind {kind:<16}{v['keys']:>8,} keys {v['bytes_per_key']:>9.0f} B/key "
              f"{v['members']:>9,} members {v['bytes_per_member']:>7.0f} B/member")  # fmt: skip


if __name__ == "__main__":
    main()
