"""`crm-kpi exporter` against a Redis of its own: one Lua read per scrape, and what a Redis outage looks like.

Both are README / docs/kpi-definitions.md promises: "one Lua read per scrape" (a scrape costs one
round trip whatever the number of windows and series) and, while Redis is down, scrapes answered
with `crm_exporter_redis_up 0` and no KPI series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.devtools.servers import EmbeddedServer, free_port, start_redis
from tests.support.harness import WorkerProcess, scrape
from tests.support.series import kpi_series


@pytest.fixture
def own_redis() -> Iterator[EmbeddedServer]:
    server = start_redis()  # no other client: every command it sees is the exporter's or ours
    yield server
    server.stop()


@pytest.fixture
def exporter(own_redis: EmbeddedServer, tmp_path: Path) -> Iterator[str]:
    env = {"CRM_KPI_REDIS_URL": own_redis.url, "CRM_KPI_REDIS_KEY_PREFIX": "x"}
    env["CRM_KPI_EXPORTER_PORT"] = str(free_port())
    proc = WorkerProcess(env, "exporter", tmp_path / "exporter.log").start()
    url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"
    deadline = time.monotonic() + 30
    while True:
        try:
            scrape(url)
            break
        except OSError:
            assert time.monotonic() < deadline, "the exporter did not come up"
            time.sleep(0.1)
    yield url
    proc.stop()


def _commands_during(server: EmbeddedServer, action: Any) -> list[dict[str, Any]]:
    """Every command Redis received from a client (not from inside a script) while `action` ran."""
    marker = f"end-{time.monotonic_ns()}"
    seen: list[dict[str, Any]] = []
    ours: list[str] = []  # the client port that sent the marker (its connection's handshake too)
    client = redis.Redis.from_url(server.url)
    ready = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                if marker in command["command"]:
                    ours.append(command["client_port"])
                    return
                seen.append(command)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ready.wait(10)
    time.sleep(0.2)  # MONITOR is set up once its reply arrived; give it that round trip
    action()
    other = redis.Redis.from_url(server.url)
    other.echo(marker)
    other.close()
    watcher.join(10)
    client.close()
    assert ours, "the marker never came through MONITOR"
    return [c for c in seen if c.get("client_type") != "lua" and c["client_port"] not in ours]


def test_one_lua_read_per_scrape(own_redis: EmbeddedServer, exporter: str) -> None:
    scrape(exporter)  # the first scrape may load the script (EVALSHA_RO, SCRIPT LOAD, EVALSHA_RO)
    commands = _commands_during(own_redis, lambda: scrape(exporter))
    assert [c["command"].split()[0].upper() for c in commands] == ["EVALSHA_RO"], commands


def test_a_redis_outage_is_served_as_redis_up_0_and_no_kpis(own_redis: EmbeddedServer, exporter: str) -> None:
    page = scrape(exporter)
    assert page[("crm_exporter_redis_up", ())] == 1 and kpi_series(page)
    assert page[("crm_exporter_scrape_seconds", ())] > 0
    own_redis.kill()
    page = scrape(exporter)
    assert page[("crm_exporter_redis_up", ())] == 0
    assert kpi_series(page) == {}
    own_redis.restart()
    page = scrape(exporter)
    assert page[("crm_exporter_redis_up", ())] == 1 and kpi_series(page)
