"""`crm-kpi simulate` (determinism, mix, pacing) and `crm-kpi demo` (live KPIs, clean stop, nothing left behind)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import TOPIC_FAMILY, validate_event_json
from stream.devtools.simulate import parse_start
from stream.devtools.synthetic_crm import INCIDENTS, SimConfig, generate
from stream.kafka.topics import create_topics
from stream.settings import load_settings
from tests.support.harness import ROOT, scrape

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CRM_KPI_")}
FAMILIES = sorted(set(TOPIC_FAMILY.values()))

# --- helpers ------------------------------------------------------------------------


async def crm_kpi(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stream", *args],
            cwd=ROOT,
            env={**ENV, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    return await asyncio.to_thread(run)


Record = tuple[bytes | None, bytes, int]  # key, value, timestamp (ms)


async def read_all(bootstrap: str, prefix: str) -> dict[tuple[str, int], list[Record]]:
    """Every record of every event topic of `prefix`, per (family, partition), in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetch the metadata
        partitions = [
            TopicPartition(f"{prefix}{family}", p)
            for family in FAMILIES
            for p in sorted(consumer.partitions_for_topic(f"{prefix}{family}") or ())
        ]
        assert len(partitions) >= len(FAMILIES)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: dict[tuple[str, int], list[Record]] = {
            (tp.topic.removeprefix(prefix), tp.partition): [] for tp in partitions
        }
        deadline = time.monotonic() + 60
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "timed out reading the topics back"
            for tp, recs in (await consumer.getmany(timeout_ms=200)).items():
                out[(tp.topic.removeprefix(prefix), tp.partition)].extend((r.key, r.value, r.timestamp) for r in recs)
        return out
    finally:
        await consumer.stop()


async def simulate_into(kafka_bootstrap: str, prefix: str, *args: str) -> dict[tuple[str, int], list[Record]]:
    settings = load_settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    await create_topics(settings)
    result = await crm_kpi(
        "simulate", *args, env={"CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CRM_KPI_TOPIC_PREFIX": prefix}
    )
    assert result.returncode == 0, result.stderr
    return await read_all(kafka_bootstrap, prefix)


def events_of(records: dict[tuple[str, int], list[Record]]) -> list[dict[str, Any]]:
    return [orjson.loads(value) for recs in records.values() for _, value, _ in recs]


# --- simulate -----------------------------------------------------------------------


async def test_same_seed_and_start_publish_the_same_events(kafka_bootstrap: str, prefix: str) -> None:
    args = ("--seed", "7", "--customers", "500", "--events", "10000", "--start", "2026-01-05T09:00:00Z")
    first = await simulate_into(kafka_bootstrap, f"{prefix}a.", *args)
    second = await simulate_into(kafka_bootstrap, f"{prefix}b.", *args)
    assert sum(len(r) for r in first.values()) == 10000
    # Same partitions, same keys, same bytes, same order.
    assert {k: [(key, value) for key, value, _ in v] for k, v in first.items()} == {
        k: [(key, value) for key, value, _ in v] for k, v in second.items()
    }
    other = await simulate_into(kafka_bootstrap, f"{prefix}c.", "--seed", "8", *args[2:])  # same size, other seed
    assert {e["event_id"] for e in events_of(other)}.isdisjoint(e["event_id"] for e in events_of(first))


async def test_published_stream_is_the_simulators_mix_on_the_right_topics(kafka_bootstrap: str, prefix: str) -> None:
    start = "2026-01-05T00:00:00Z"  # a Monday: two days of weekday seasonality
    records = await simulate_into(
        kafka_bootstrap,
        f"{prefix}.",
        "--seed",
        "11",
        "--customers",
        "200",
        "--rate",
        "0.3",
        "--duration",
        "2d",
        "--start",
        start,
        "--incident",
        "slow-responses",
        "--incident-start",
        start,
    )
    config = SimConfig(seed=11, customers=200, rate=0.3, incidents=frozenset({"slow-responses"}))
    expected = [orjson.dumps(e) for e in generate(config, parse_start(start), duration_s=2 * 86400)]
    published = [value for recs in records.values() for _, value, _ in recs]
    assert sorted(published) == sorted(expected)
    mix = Counter(orjson.loads(v)["type"] for v in published)
    assert set(mix) >= {
        "customer.acquired",
        "ticket.opened",
        "ticket.answered",
        "lead.created",
        "deal.created",
        "survey.submitted",
        "invoice.issued",
        "activity.logged",
    }
    assert mix["ticket.answered"] > mix["ticket.opened"] / 2 and mix["customer.acquired"] >= 200
    # The customer base first (dated at its sign-ups), then the simulated days from --start on.
    starts = sorted(orjson.loads(v)["occurred_at"] for v in published)
    assert starts[200] >= "2026-01-05T00:00:00"
    for (family, _), recs in records.items():
        last = ""
        for key, value, _ in recs:
            event = orjson.loads(value)
            validate_event_json(value)
            assert TOPIC_FAMILY[event["type"]] == family
            assert key == str(event.get("customer_id") or event["event_id"]).encode()
            assert event["occurred_at"] >= last, "a partition is in event-time order"
            last = event["occurred_at"]


async def test_live_events_are_never_published_before_their_time(kafka_bootstrap: str, prefix: str) -> None:
    began = time.time()
    start = datetime.fromtimestamp(began, UTC) - timedelta(seconds=3)  # 3 s of backfill, then live
    records = await simulate_into(
        kafka_bootstrap,
        f"{prefix}.",
        "--seed",
        "5",
        "--customers",
        "500",
        "--rate",
        "40",
        "--duration",
        "8s",
        "--start",
        start.isoformat().replace("+00:00", "Z"),
    )
    events = [(orjson.loads(v), ts / 1000) for recs in records.values() for _, v, ts in recs]
    assert events
    times = [(datetime.fromisoformat(e["occurred_at"]).timestamp(), sent) for e, sent in events]
    for occurred, sent in times:
        assert sent >= occurred - 0.05, f"published {occurred - sent:.2f}s early"
    live = [(o, s) for o, s in times if o > began + 1]
    assert live, "some events fell in the live part"
    # Live ones go out when they happen, not all at once at the end: their publish times spread
    # like their event times (whatever the machine's speed, which only shifts them later).
    spread_sent = max(s for _, s in live) - min(s for _, s in live)
    spread_occurred = max(o for o, _ in live) - min(o for o, _ in live)
    assert spread_sent >= spread_occurred / 2, (spread_sent, spread_occurred)
    assert max(o for o, _ in times) - start.timestamp() <= 8.0


def test_cli_incident_choices_match_the_simulator() -> None:
    from stream.cli import commands as cli

    assert set(cli._INCIDENTS) == set(INCIDENTS)


def test_bad_start_is_rejected() -> None:
    with pytest.raises(ValueError):
        parse_start("yesterday")
    with pytest.raises(ValueError):
        parse_start("2026-01-05T09:00:00")  # no zone
    assert parse_start("2026-01-05T10:00:00+01:00") == datetime(2026, 1, 5, 9, tzinfo=UTC)


# --- demo ---------------------------------------------------------------------------


def _process_table() -> dict[int, int]:
    """{pid: ppid} of every process."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(pid: int) -> set[int]:
    table = _process_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


class Demo:
    """`python -m stream demo` as a subprocess in its own process group (like a terminal job), no TTY."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.json_out = tmp_path / "demo.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "demo", "--json-out", str(self.json_out), "--refresh", "1", *args],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.seen: set[int] = set()  # every descendant ever observed
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))

    def watch(self) -> None:
        self.seen |= _descendants(self.proc.pid)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _listening_on(port: int) -> set[str]:
    """The addresses a TCP port listens on, from /proc/net/tcp and tcp6 ('127.0.0.1', '0.0.0.0', '::'...)."""
    import ipaddress

    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
            found.add(str(ipaddress.ip_address(ordered)))
    return found


def _window_events(url: str) -> float:
    try:
        samples = scrape(url)
    except OSError:
        return -1.0
    return sum(v for (name, labels), v in samples.items() if name == "crm_window_events" and ("window", "1h") in labels)


def _assert_all_gone(demo: Demo, pids: dict[str, int], ports: dict[str, int]) -> None:
    expected = {"kafka", "redis", "worker", "exporter"}
    assert set(pids) == expected, pids
    assert set(pids.values()) <= demo.seen, "the reported pids are the demo's children"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in demo.seen):
        time.sleep(0.1)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in demo.seen if _alive(p)}
    assert not left, f"processes left behind: {left}"
    assert not [name for name, port in ports.items() if _port_open(port)], "ports still open"


@pytest.mark.slow
def test_demo_runs_for_its_duration_with_changing_kpis_and_leaves_nothing(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--duration", "25", "--history", "30m", "--customers", "2000", "--rate", "5")
    try:
        pids = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", demo.find(r"^pids ").string)}
        exporter = demo.find(r"^KPI gauges\s+(http://\S+)").group(1)
        worker_url = demo.find(r"^worker metrics\s+(http://\S+)").group(1)
        demo.find(r"^ready")
        # The worker and the exporter serve on loopback only.
        for url in (exporter, worker_url):
            assert _listening_on(int(url.rsplit(":", 1)[1].split("/")[0])) == {"127.0.0.1"}, url
        scraped: list[float] = []
        while demo.proc.poll() is None:
            demo.watch()
            scraped.append(_window_events(exporter))
            time.sleep(1)
        code = demo.wait(60)
    finally:
        demo.kill()
    output = "\n".join(demo.lines)
    assert code == 0, output
    report = json.loads(demo.json_out.read_text())
    assert report["reason"] == "duration"
    # The exporter served growing, non-zero event counts while the demo ran.
    served = [v for v in scraped if v > 0]
    assert served and max(served) > min(served), scraped
    samples = [s["window_events"].get("1h", 0) for s in report["samples"]]
    assert samples[-1] > 0 and len(set(samples)) > 2, samples
    assert report["samples"][-1]["live"] is True and report["published"] > 0
    assert "CRM KPIs" in output and "first response" in output  # the table
    _assert_all_gone(demo, pids, report["ports"])


@pytest.mark.slow
def test_ctrl_c_stops_everything_cleanly(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--history", "10m", "--customers", "2000", "--rate", "5")
    try:
        pids = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", demo.find(r"^pids ").string)}
        exporter = demo.find(r"^KPI gauges\s+(http://\S+)").group(1)
        demo.find(r"simulator: live")
        deadline = time.monotonic() + 60
        while _window_events(exporter) <= 0:
            assert time.monotonic() < deadline, "the exporter never served events"
            time.sleep(0.5)
        demo.watch()
        os.killpg(demo.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole job
        code = demo.wait(60)  # a bound for a hang, not a speed
    finally:
        demo.kill()
    output = "\n".join(demo.lines)
    assert code == 0, output
    report = json.loads(demo.json_out.read_text())
    assert report["reason"] == "interrupted", output
    assert report["exit_codes"]["worker"] == 0, output  # the worker shut down on its SIGTERM, not killed
    assert "stopped (interrupted)" in output
    _assert_all_gone(demo, pids, report["ports"])


@pytest.mark.slow
def test_a_closed_output_stops_the_demo_and_removes_its_folder() -> None:
    """`crm-kpi demo | head`: once the reader leaves, the demo stops everything and cleans up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "demo", "--history", "10m", "--customers", "1000", "--refresh", "0.5"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        workdir: Path | None = None
        pids: dict[str, int] = {}
        for line in proc.stdout:
            if line.startswith("logs"):
                workdir = Path(line.split()[1])
            elif line.startswith("pids "):
                pids = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            elif line.startswith("ready"):
                break
        assert workdir is not None and workdir.is_dir() and pids
        proc.stdout.close()  # the reader goes away, as `head` does
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not workdir.exists(), f"{workdir} left behind"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.1)
    assert not [name for name, pid in pids.items() if _alive(pid)]
