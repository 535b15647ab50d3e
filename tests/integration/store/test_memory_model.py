"""The in-memory store model (tests/support/memory_store.py) against the real apply.lua and read.lua.

The fold and catalog properties (tests/unit/events/test_fold.py, tests/unit/kpis/test_catalog.py)
run on the model; this test is what lets them stand for Redis. Hypothesis generates batches over
all 24 event types (shared ids, late, future and TTL-old events); each batch is folded once per
side — over the model's states, and over the states read back from a real Redis — and written by
MemoryStore.run and by AsyncStore.apply + apply.lua. After every batch, every key the scripts
wrote must be in the model with the same value (and a TTL exactly where the model says the state
is not persistent); at the end, read.lua's snapshot must equal MemoryStore.snapshot field for field.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from schemas import event_adapter
from stream.events.fold import FoldMemo, entity_keys, fold
from stream.events.windows import to_us
from stream.store import AsyncStore, Keys, read_snapshot
from stream.store.keys import BUCKET_TOKEN_FIELD
from tests.support.config import fold_context, kpi_config
from tests.support.event_streams import Action, actions, build
from tests.support.memory_store import MemoryStore

WINDOWS = [3600.0, 86400.0, 604800.0, 2592000.0]
STATE_TTL_S = 90 * 86400.0
SKEW_S = 300.0
CONFIG = kpi_config()
_examples = itertools.count()

Dump = dict[str, Any]


def redis_dump(client: redis.Redis, keys: Keys) -> tuple[Dump, set[str]]:
    """Every key of the prefix but the offsets and dedupe sets: value by type; the keys without TTL."""
    out: Dump = {}
    persistent: set[str] = set()
    for raw in client.scan_iter(match=keys.tag + ":*", count=1000):
        key = raw.decode()
        if key == keys.offsets or key.startswith(keys.tag + ":dd:"):
            continue
        kind = client.type(key).decode()
        if kind == "string":
            out[key] = client.get(key).decode()  # type: ignore[union-attr]
            if client.pttl(key) == -1:
                persistent.add(key)
        elif kind == "hash":
            fields = {f.decode(): v for f, v in client.hgetall(key).items()}  # type: ignore[union-attr]
            # Every bucket and distinct-member hash a batch wrote carries that batch's token (the
            # exporter's ReadCache): not a counter, so not in the model; one without would never be re-read.
            token = fields.pop(BUCKET_TOKEN_FIELD, None)
            windowed = (keys.tag + ":w:", keys.tag + ":wd:")
            assert (token is not None) == key.startswith(windowed), key
            if not fields:
                # A distinct hash whose members all went back to 0 keeps only the token until it
                # expires: no member, as the model (which drops the key) has it.
                continue
            out[key] = {f: int(v) for f, v in fields.items()}
        elif kind == "zset":
            out[key] = {m.decode(): s for m, s in client.zrange(key, 0, -1, withscores=True)}  # type: ignore[union-attr]
        else:
            raise AssertionError(f"unexpected {kind} key {key}")
    return out, persistent


def model_dump(model: MemoryStore, keys: Keys) -> Dump:
    """The model's dicts under the key names the writer uses (Redis has no empty hash or set)."""
    out: Dump = dict(model.states)
    for (label, bucket), fields in model.buckets.items():
        if fields:
            out[keys.bucket(label, bucket)] = dict(fields)
    for (label, bucket, name), members in model.distinct.items():
        if members:
            out[keys.distinct(label, bucket, name)] = dict(members)
    if model.counters:
        out[keys.current] = dict(model.counters)
    for name, members in model.zsets.items():
        if members:
            out[keys.zset(name)] = dict(members)
    return out


batches = st.lists(st.lists(actions, min_size=1, max_size=20), min_size=1, max_size=5)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Any:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches, st.booleans())
def test_the_model_writes_and_reads_what_the_scripts_do(
    client: redis.Redis, redis_url: str, prefix: str, batches: list[list[Action]], memo: bool
) -> None:
    keys = Keys(f"{prefix}m{next(_examples)}")
    now = datetime.now(UTC)  # per example: bucket expiries must lie ahead of the real clock
    ctx = fold_context(now.timestamp(), WINDOWS, key_prefix=keys.prefix)
    model = MemoryStore(ctx, FoldMemo() if memo else None, STATE_TTL_S)
    index = itertools.count()
    events = [[event_adapter.validate_python(build(a, next(index), now, "m")) for a in batch] for batch in batches]

    async def write() -> None:
        async_client = aioredis.Redis.from_url(redis_url)
        store = AsyncStore(async_client, keys, dedupe_horizon_s=86400.0, state_ttl_s=STATE_TTL_S)
        memo_r = FoldMemo() if memo else None
        try:
            for n, batch in enumerate(events):
                note(f"batch {n}: {[(e.type, getattr(e, 'event_id', '')) for e in batch]}")
                model.run(batch)
                states = await store.read_states(entity_keys(batch, ctx))
                delta = fold([(e, to_us(e.occurred_at)) for e in batch], states, ctx, memo_r)
                outcome = await store.apply(delta, [], [], ctx.now_s)
                assert outcome.ok, outcome
                if memo_r is not None:
                    memo_r.remember(delta)
                got, persistent = redis_dump(client, keys)
                want = model_dump(model, keys)
                assert got == want, f"after batch {n}"
                assert persistent == {k for k in model.states if k in model.persistent}, f"TTLs after batch {n}"
        finally:
            await async_client.aclose()

    asyncio.run(write())

    snap = read_snapshot(client, keys, ctx.windows, CONFIG, ctx.now_s, SKEW_S)
    mine = model.snapshot(CONFIG, SKEW_S)
    for label, totals in snap.windows.items():
        assert dict(totals) == dict(mine.windows[label]), label
    assert dict(snap.current.counters) == dict(mine.current.counters)
    assert dict(snap.current.zsets) == dict(mine.current.zsets)
    client.delete(*[k for k in client.scan_iter(match=keys.tag + ":*", count=1000)] or ["-"])

