"""The exporter's incremental read (`ReadCache`) gives exactly what a full read gives.

A simulated CRM is applied batch after batch through the fold and the atomic Lua
write while the clock moves on (buckets slide out of the windows), with late
events landing in old buckets, a bucket deleted and another restored to an older
copy (a Redis that went back in time): after every step the cached read and a
fresh full read return the totals summed here from every hash in Redis (an
oracle independent of the reader), for every window.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis

from stream.devtools.synthetic_crm import SimConfig, generate
from stream.events.windows import Window
from stream.kpis import DISTINCT_COUNTS
from stream.store import ReadCache, Snapshot, read_snapshot
from stream.store.keys import BUCKET_TOKEN_FIELD, Keys
from tests.support.config import clean_settings
from tests.support.replay import Replay


@pytest.mark.slow
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
            keys = sorted(k for k in reader.scan_iter(match=Keys(prefix).bucket_prefix("7d") + "*", count=1000))
            if i == 10:
                saved = (keys[-2], reader.dump(keys[-2]))  # a copy to restore later
            if i == 20 and saved is not None:
                reader.restore(saved[0], 0, saved[1], replace=True)  # the bucket goes back in time
                reader.delete(keys[0])  # and another one is lost
            cached = replay_snapshot(replay, now, cache)
            full = replay_snapshot(replay, now, None)
            for w in replay.windows:
                expected = _sums_in_redis(reader, replay, w, now)
                assert dict(full.windows[w.label]) == expected, (i, w.label)
                assert dict(cached.windows[w.label]) == expected, (i, w.label)
        # The cache holds what it summed: only live buckets, each with a token.
        for label, sums in cache.windows.items():
            held = [token for group in sums.hashes.values() for token, _ in group.values()]
            assert held and all(held), label
        assert any(seen.hashes for seen in cache.distinct.values())
    finally:
        await client.aclose()
        reader.close()


def _sums_in_redis(reader: redis.Redis, replay: Replay, w: Window, now: float) -> dict[str, int]:
    """A window's totals summed here from every hash in its bucket range: the oracle."""
    sums: dict[str, int] = {}
    members: dict[str, dict[str, int]] = {d.name: {} for d in DISTINCT_COUNTS}
    token = BUCKET_TOKEN_FIELD.encode()
    for bucket in range(w.first_bucket(now), w.last_bucket(now, replay.settings.max_future_skew) + 1):
        for name, value in reader.hgetall(replay.keys.bucket(w.label, bucket)).items():
            if name != token:
                sums[name.decode()] = sums.get(name.decode(), 0) + int(value)
        for d in DISTINCT_COUNTS:
            for member, count in reader.hgetall(replay.keys.distinct(w.label, bucket, d.name)).items():
                if member != token:
                    members[d.name][member.decode()] = members[d.name].get(member.decode(), 0) + int(count)
    for d in DISTINCT_COUNTS:
        sums[d.distinct_field] = sum(1 for c in members[d.name].values() if c >= 1)
        sums[d.repeated_field] = sum(1 for c in members[d.name].values() if c >= 2)
    return sums


def replay_snapshot(replay: Replay, now: float, cache: ReadCache | None) -> Snapshot:
    s = replay.settings
    return read_snapshot(replay.reader, replay.keys, replay.windows, s.kpi_config(), now, s.max_future_skew, cache)
