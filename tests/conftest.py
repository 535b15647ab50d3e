"""Session fixtures: a real Kafka-protocol broker and a real Redis on free loopback ports.

Set CRM_KPI_KAFKA_BOOTSTRAP_SERVERS / CRM_KPI_REDIS_URL to use existing servers.
Each test gets its own topic prefix and Redis key prefix, so tests never share state.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from stream.devtools.servers import start_kafka, start_redis

pytest_plugins = ["tests.support.kafka_fixtures"]
_counter = itertools.count()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI (.ci/run exports CI=true), a skipped test is a failed one: a skip must not hide a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {reason}"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("CRM_KPI_KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    server = start_kafka()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    given = os.environ.get("CRM_KPI_REDIS_URL")
    if given:
        yield given
        return
    server = start_redis()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A unique name for this test's topics and Redis keys."""
    return f"t{os.getpid()}x{next(_counter)}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
