"""The baseline: a Faust worker written the way most people would (issue #3).

One agent per topic iterating events one at a time, pydantic validation, and an
awaited redis-py call per event for the same counts the project keeps (event-id
dedupe with expiry, one counter per type and window bucket). Run by bench/run.py as
`python -m bench.naive_faust worker`; settings come from BENCH_* variables.
"""

from __future__ import annotations

import os
from typing import Any

import faust
import redis.asyncio as aioredis
from pydantic import ValidationError

from schemas import TOPIC_FAMILY, validate_event_json
from stream.events.windows import to_us

BOOTSTRAP = os.environ["BENCH_KAFKA"]
PREFIX = os.environ["BENCH_TOPIC_PREFIX"]
KEYS = os.environ["BENCH_KEY_PREFIX"]
app = faust.App(
    os.environ.get("BENCH_GROUP", "bench-naive"),
    broker=f"kafka://{BOOTSTRAP}",
    value_serializer="raw",
    web_enabled=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    store="memory://",
)
redis = aioredis.Redis.from_url(os.environ["BENCH_REDIS"])
WINDOWS = (3600, 86400, 604800, 2592000)


async def _apply(raw: Any) -> None:
    try:
        event = validate_event_json(raw)
    except ValidationError:
        await redis.incr(f"{KEYS}:invalid")
        await redis.incr(f"{KEYS}:done")
        return
    if await redis.set(f"{KEYS}:id:{event.event_id}", 1, nx=True, ex=86400):
        t = to_us(event.occurred_at) // 1_000_000
        for w in WINDOWS:
            await redis.hincrby(f"{KEYS}:w:{w}:{t // (w // 60)}", event.type, 1)
    await redis.incr(f"{KEYS}:done")


for _family in sorted(set(TOPIC_FAMILY.values())):
    _topic = app.topic(f"{PREFIX}{_family}", value_type=bytes)

    async def _agent(stream: Any) -> None:
        async for raw in stream:
            await _apply(raw)

    _agent.__name__ = f"agent_{_family}"
    app.agent(_topic, name=f"naive-{_family}")(_agent)


if __name__ == "__main__":
    app.main()
