"""`crm-kpi demo --worker-port P --exporter-port Q` (README: "to pin ports"): the demo serves on exactly those."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from stream.devtools.servers import free_port
from tests.integration.devtools.test_demo import Demo
from tests.support.harness import scrape


@pytest.mark.slow
def test_demo_serves_on_the_ports_it_is_given(tmp_path: Path) -> None:
    worker_port, exporter_port = free_port(), free_port()
    demo = Demo(tmp_path, "--duration", "10", "--history", "5m", "--rate", "5",
                "--worker-port", str(worker_port), "--exporter-port", str(exporter_port))  # fmt: skip
    try:
        assert demo.find(r"^KPI gauges\s+(http://\S+)").group(1) == f"http://127.0.0.1:{exporter_port}/metrics"
        assert re.search(rf":{worker_port}/metrics", demo.find(r"^worker metrics\s+(http://\S+)").group(1))
        demo.find(r"^ready")
        deadline = time.monotonic() + 60
        while True:  # both endpoints answer on the pinned ports while the demo runs
            try:
                exporter, worker = scrape(f"http://127.0.0.1:{exporter_port}/metrics"), scrape(
                    f"http://127.0.0.1:{worker_port}/metrics"
                )
                break
            except OSError:
                assert time.monotonic() < deadline and demo.proc.poll() is None, "\n".join(demo.lines)
                time.sleep(0.2)
        assert exporter[("crm_exporter_redis_up", ())] == 1
        assert ("crm_events_duplicate_total", ()) in worker
        assert demo.wait(60) == 0, "\n".join(demo.lines)
    finally:
        demo.kill()
    report = json.loads(demo.json_out.read_text())
    assert (report["ports"]["worker"], report["ports"]["exporter"]) == (worker_port, exporter_port)
