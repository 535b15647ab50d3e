"""`python -m bench.poison`: the worker's rate with half its records invalid, against the same stream clean (issue #11).

Starts its own broker (Tansu; `--bootstrap` names another, e.g. an Apache Kafka) and
Redis, and publishes two streams once, each on its own topics:

* clean — the seeded core stream of `bench/reference.py` (with ~5 % producer retries);
* poisoned — the same records in the same order, with as many invalid ones from
  `bench/hostile.py` put anywhere among them: every dead-letter reason, invalid UTF-8,
  10,000-deep nesting, 5,000-digit numbers, NaN/Infinity, NUL bytes, 200 KB records
  (the stream `test_poison_flood_…` proves exact).

Then, in interleaved rounds (clean, poisoned, clean, poisoned …), one `crm-kpi worker`
over each (its own key prefix and group): records/s from the first batch applied to the
last, records per CPU-second of the worker, and the broker's CPU per record (the
embedded one's, or `--broker-pid`'s: it shares the cores). Every run is checked: every KPI series
equal to the product's offline fold of the unique events and to the independent
reference, `crm_events_processed_total` per type, `crm_events_duplicate_total`, and for
the poisoned stream `crm_events_invalid_total` per reason and the dead-letter topic (each
invalid record there once, with its reason and source topic). Prints medians and the
ratio poisoned / clean; writes JSON. A run that is not exact reports failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.hostile import Poison, hostile_records, interleave
from bench.realistic import _cpu_s, fold_offline, run_worker
from bench.reference import make_stream
from bench.run import ROOT, _settings, messages, publish_records, report, summary
from stream._compiled import compiled
from stream.devtools.servers import EmbeddedServer, start_kafka, start_redis
from stream.settings import Settings


async def read_new(bootstrap: str, topic: str, partitions: int, positions: dict[int, int]) -> list[Any]:
    """The records of `topic` after `positions` (partition -> next offset, advanced) up to its end.

    The end is each partition's high watermark as a fetch reports it: Tansu answers
    ListOffsets "latest" wrongly (stream/kafka/logs.py).
    """
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, positions.get(tp.partition, 0))
        pending = set(tps)
        deadline = time.monotonic() + 120
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp in list(pending):
                if batch.get(tp):
                    records.extend(batch[tp])
                    positions[tp.partition] = batch[tp][-1].offset + 1
                highwater = consumer.highwater(tp)
                if highwater is not None and positions.get(tp.partition, 0) >= highwater:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return records


def counting_errors(
    counters: Mapping[str, float], events: list[dict[str, Any]], published: int, poison: list[Poison]
) -> list[str]:
    """Where the worker's own counters differ from the stream's: processed per type, duplicates, invalid per reason."""
    want = {f'crm_events_processed_total{{type="{k}"}}': n for k, n in Counter(e["type"] for e in events).items()}
    want["crm_events_duplicate_total"] = published - len(events)
    want |= {f'crm_events_invalid_total{{reason="{k}"}}': n for k, n in Counter(p[3] for p in poison).items()}
    got = {k: v for k, v in counters.items() if k.startswith("crm_events_") and v}
    return [f"{k}: worker {got.get(k, 0)} stream {want.get(k, 0)}" for k in sorted(set(got) | set(want))
            if got.get(k, 0) != want.get(k, 0)]  # fmt: skip


def dead_letter_errors(letters: list[Any], poison: list[Poison]) -> list[str]:
    """Each invalid record in the dead-letter topic once, with its reason and source topic; nothing else."""
    seen = Counter()
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        seen[(headers.get("source_topic"), letter.value, headers.get("reason"))] += 1
    want = Counter((topic, value, reason) for topic, _, value, reason in poison)
    if seen == want:
        return []
    extra, missing = seen - want, want - seen
    return [f"dead letters: {sum(extra.values())} unexpected, {sum(missing.values())} missing or with another reason"]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.poison", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000, help="unique valid events (plus ~5 %% retries)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--bootstrap", default=None, help="an external broker instead of an embedded Tansu")
    ap.add_argument("--broker-pid", type=int, default=None, help="the external broker's process, for its CPU time")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a checkout of another version: its worker runs both streams too, interleaved, in every round",
    )
    args = ap.parse_args()

    logs = ROOT / "bench" / "results" / ("poison-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S"))
    logs.mkdir(parents=True, exist_ok=True)
    kafka: EmbeddedServer | None = None if args.bootstrap else start_kafka()
    bootstrap = args.bootstrap or (kafka.url if kafka else "")
    broker_pid = kafka.proc.pid if kafka else args.broker_pid
    rds = start_redis()
    tag = f"p{os.getpid()}"  # topics of their own, also on a shared external broker
    rnd = random.Random(args.seed)
    now = datetime.now(UTC)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "compiled": compiled(), "loadavg_at_start": os.getloadavg()},
        "broker": "external " + bootstrap if args.bootstrap else "tansu (embedded)",
    }
    try:
        events, published = make_stream(args.events, seed=args.seed, now=now)
        clean_s = _settings(bootstrap, rds.url, f"{tag}c.", f"{tag}off")
        poison_s = _settings(bootstrap, rds.url, f"{tag}x.", f"{tag}off")
        poison = hostile_records(poison_s.topic, rnd, len(published), now)
        streams: dict[str, tuple[Settings, int]] = {}
        for name, s, records in (
            ("clean", clean_s, messages(clean_s, published)),
            ("poisoned", poison_s, interleave(messages(poison_s, published), poison, rnd)),
        ):
            ends = asyncio.run(publish_records(s, records))
            streams[name] = (s, sum(ends.values()))
            print(f"published {name}: {streams[name][1]:,} records, {sum(len(r[2]) for r in records) / 1e6:.0f} MB",
                  flush=True)  # fmt: skip
        offline = _settings(bootstrap, rds.url, f"{tag}c.", f"{tag}off")
        asyncio.run(fold_offline(offline, events))
        versions = [("", ROOT)] + ([("@before", args.before.resolve())] if args.before else [])
        runs: dict[str, list[dict[str, Any]]] = {name + v: [] for v, _ in versions for name in streams}
        read_to: dict[str, dict[int, int]] = {name: {} for name in streams}  # dead letters of earlier runs
        for r in range(args.rounds):
            for version, root in versions:
                for name, (base, total) in streams.items():
                    s = _settings(bootstrap, rds.url, base.topic_prefix, f"{tag}{name[0]}{r}{'b' if version else ''}")
                    broker_before = _cpu_s(broker_pid) if broker_pid else 0.0
                    out = run_worker(s, total, offline, events, True, logs, root)
                    if broker_pid:
                        # The broker shares the cores: what it spends on a stream (fetches, and
                        # storing the dead letters) is CPU the worker does not get.
                        out["broker_cpu_us_per_record"] = 1e6 * (_cpu_s(broker_pid) - broker_before) / total
                    bad = poison if name == "poisoned" else []
                    out["errors"] += counting_errors(out.pop("counters"), events, len(published), bad)
                    letters = read_new(bootstrap, s.dead_letter_topic, s.topic_partitions, read_to[name])
                    out["errors"] += dead_letter_errors(asyncio.run(letters), bad)
                    out["exact"] = not out["errors"]
                    runs[name + version].append(out)
                    broker = f", broker {out['broker_cpu_us_per_record']:.1f} µs/record" if broker_pid else ""
                    print(f"round {r + 1} {name}{version}: {out['rate']:,.0f} records/s, "
                          f"{out['per_cpu_s']:,.0f} per CPU-s{broker}, exact={out['exact']} {out['errors'][:2]}",
                          flush=True)  # fmt: skip
        result["rates"] = {k: summary([x["rate"] for x in v]) for k, v in runs.items()}
        result["per_cpu_s"] = {k: summary([x["per_cpu_s"] for x in v]) for k, v in runs.items()}
        if broker_pid:
            result["broker_cpu_us_per_record"] = {
                k: summary([x["broker_cpu_us_per_record"] for x in v]) for k, v in runs.items()
            }
        # Ratios inside each round (the two runs are adjacent in time), then their median:
        # steadier than a ratio of medians on a machine whose load drifts.
        result["ratios"] = {}
        for version, _ in versions:
            pairs = list(zip(runs["clean" + version], runs["poisoned" + version], strict=True))
            by_round = [p["rate"] / c["rate"] for c, p in pairs]
            result["ratios"][version or "this version"] = {
                "records/s": statistics.median(by_round),
                "by_round": by_round,
                "per CPU-s": statistics.median(p["per_cpu_s"] / c["per_cpu_s"] for c, p in pairs),
            }
        result["runs"] = runs
        result["exact"] = all(x["exact"] for v in runs.values() for x in v)
        result["records"] = {name + v: total for name, (_, total) in streams.items() for v, _ in versions}
        result["loadavg_at_end"] = os.getloadavg()
    finally:
        if kafka is not None:
            kafka.stop()
        rds.stop()
    failure = "a worker's figures, counters or dead letters were not exact"
    report(result, args.out or logs / "result.json", print_table, failure)


def print_table(r: dict[str, Any]) -> None:
    print(f"\n{r['machine']['cpus']} CPUs, broker {r['broker']}, compiled core: {r['machine']['compiled']}, "
          f"load average at start {r['machine']['loadavg_at_start'][0]:.1f}")  # fmt: skip
    broker = r.get("broker_cpu_us_per_record", {})
    print(f"{'worker records/s':<40}{'median':>10}{'min':>10}{'max':>10}{'per CPU-s':>12}"
          + (f"{'broker µs/rec':>15}" if broker else ""))  # fmt: skip
    for name, x in r["rates"].items():
        label = f"{name} ({r['records'][name]:,} records)"
        print(f"{label:<40}{x['median']:>10,.0f}{x['min']:>10,.0f}{x['max']:>10,.0f}"
              f"{r['per_cpu_s'][name]['median']:>12,.0f}"
              + (f"{broker[name]['median']:>15.1f}" if broker else ""))  # fmt: skip
    for version, x in r["ratios"].items():
        rounds = ", ".join(f"{v:.2f}" for v in x["by_round"])
        print(f"{'poisoned / clean, records/s':<30}{version:>10}{x['records/s']:>10.2f}  (median of rounds: {rounds})")
        print(f"{'poisoned / clean, per CPU-s':<30}{version:>10}{x['per CPU-s']:>10.2f}")
    print(f"{'exact in every run':<40}{r['exact']!s:>10}")


if __name__ == "__main__":
    main()
