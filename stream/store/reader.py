"""The readers' side of Redis: the exporter's snapshot and `crm-kpi at-risk` (blocking client).

State is kept per partition group (`stream.store.keys`); a reader merges the groups:
window counters and current counters are summed, distinct-count members are united
(a member's counts summed over the groups), sorted-set statistics combined (sizes and
counts summed, the lowest score the least of the groups').

On a single Redis a snapshot is one Lua call (`lua/read.lua`) whatever the number of
windows, buckets, sorted sets and groups (it also returns the registry of groups, so a
new group costs one more call, once); on a Redis Cluster it is a read of the registry
and one call per group (each group is one slot). With a `ReadCache`
it also transfers and sums only the buckets written since the last read.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.cluster
import redis.exceptions

from stream.events.windows import Window
from stream.kpis import DISTINCT_COUNTS, Current, KpiConfig, Totals, ZStat, churn_risk, sorted_set_queries
from stream.kpis.customers import AT_RISK, RISK, RiskState
from stream.store.connection import SyncClient
from stream.store.keys import BUCKET_TOKEN_FIELD, Keys
from stream.store.writer import as_text, lua_script

__all__ = ["ReadCache", "Snapshot", "read_at_risk", "read_snapshot", "registered_groups"]


@dataclass(frozen=True)
class Snapshot:
    """Everything the KPI read-outs need: per-window totals and the current state."""

    windows: dict[str, Totals]
    current: Current


_READ_LUA = lua_script("read.lua")
_READ_SHA = hashlib.sha1(_READ_LUA.encode()).hexdigest()


def _evalsha_ro(client: SyncClient, keys: list[str], args: list[Any]) -> Any:
    """Run read.lua with EVALSHA_RO (Redis 7+): read-only, so a read-only ACL user may run it.

    The script is loaded once per server (SCRIPT LOAD after a NOSCRIPT reply).
    """
    try:
        return client.evalsha_ro(_READ_SHA, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        client.script_load(_READ_LUA)
        return client.evalsha_ro(_READ_SHA, len(keys), *keys, *args)


class _Held:
    """The hashes of one kind (a window's buckets, or one distinct count's) a reader holds, by group and bucket.

    The sums run over every group's hashes: the merge of the groups costs nothing at read time.
    """

    def __init__(self) -> None:
        self.hashes: dict[int, dict[int, tuple[str, dict[str, int]]]] = {}

    def _apply(self, fields: dict[str, int], sign: int) -> None:
        raise NotImplementedError

    def add(self, group: int, bucket: int, token: str, fields: dict[str, int]) -> None:
        held = self.hashes.setdefault(group, {})
        if bucket in held:
            self.drop(group, bucket)
        held[bucket] = (token, fields)
        self._apply(fields, 1)

    def drop(self, group: int, bucket: int) -> None:
        _, fields = self.hashes[group].pop(bucket)
        self._apply(fields, -1)

    def keep(self, groups: Sequence[int], first: int, last: int) -> None:
        """Forget the buckets that slid out of [first, last], and every bucket of a group no longer listed."""
        for group in [g for g in self.hashes if g not in groups]:
            for bucket in list(self.hashes[group]):
                self.drop(group, bucket)
            del self.hashes[group]
        for group, held in self.hashes.items():
            for bucket in [b for b in held if not first <= b <= last]:
                self.drop(group, bucket)

    def held(self, group: int) -> list[Any]:
        """n, then the (bucket, token) pairs of one group: what read.lua compares with Redis."""
        hashes = self.hashes.get(group, {})
        out: list[Any] = [len(hashes)]
        for bucket, (token, _) in hashes.items():
            out += [bucket, token]
        return out

    def update(self, group: int, reply: Sequence[Any]) -> None:
        """Apply read.lua's {fetched, gone} for this kind in one group."""
        fetched, gone = reply
        for bucket in gone:
            self.drop(group, int(bucket))
        for j in range(0, len(fetched), 3):
            flat = fetched[j + 2]
            names = map(as_text, flat[0::2])
            fields = {n: int(v) for n, v in zip(names, flat[1::2], strict=True) if n != BUCKET_TOKEN_FIELD}
            self.add(group, int(fetched[j]), as_text(fetched[j + 1]), fields)


class _WindowSums(_Held):
    """A window's summed counters; a field stays while at least one held bucket has it."""

    def __init__(self) -> None:
        super().__init__()
        self.sums: dict[str, int] = {}
        self.present: dict[str, int] = {}

    def _apply(self, fields: dict[str, int], sign: int) -> None:
        sums, present = self.sums, self.present
        for name, value in fields.items():
            left = present.get(name, 0) + sign
            if left:
                present[name] = left
                sums[name] = sums.get(name, 0) + sign * value
            else:
                del present[name], sums[name]


class _DistinctSums(_Held):
    """An exact distinct count over a window: members' summed counts, and how many reach 1 and 2.

    A member (a user id) may appear in several groups: its counts are summed over them, so
    it is counted once, exactly as if every group's hashes were one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.distinct = 0
        self.repeated = 0

    def _apply(self, fields: dict[str, int], sign: int) -> None:
        counts = self.counts
        for member, by in fields.items():
            old = counts.get(member, 0)
            new = old + sign * by
            self.distinct += (new >= 1) - (old >= 1)
            self.repeated += (new >= 2) - (old >= 2)
            if new:
                counts[member] = new
            else:
                del counts[member]


class ReadCache:
    """The window sums and distinct members a long-lived reader (the exporter) keeps between reads.

    Each read sends the (bucket, token) pairs held; Redis answers with the hashes
    whose token changed (every batch that writes a bucket sets a new token,
    `BUCKET_TOKEN_FIELD`) and those that vanished, and the sums are updated by
    difference. Figures are exactly those of a full read - a restored or rolled-back
    Redis shows other tokens, so its buckets are read again - while a scrape costs the
    hashes that changed instead of every field of every bucket of every window.
    """

    def __init__(self) -> None:
        self.windows: dict[str, _WindowSums] = {}
        self.distinct: dict[tuple[str, str], _DistinctSums] = {}
        self.groups: list[int] = []  # the partition groups of the last read (single Redis: from its reply)
        self.lock = threading.Lock()


def read_snapshot(
    client: SyncClient,
    keys: Keys,
    windows: Sequence[Window],
    config: KpiConfig,
    now_s: float,
    future_skew_s: float,
    cache: ReadCache | None = None,
) -> Snapshot:
    """Read all windows' summed counters and the current state, every partition group merged.

    Each window's totals also carry its exact distinct counts (`DistinctCount`)
    and the current counters (`Totals.current`). `now_s` is unix seconds;
    buckets up to `future_skew_s` ahead are included (events may be that early).
    `cache`: keep the sums between calls (see `ReadCache`); None reads everything.
    """
    cache = cache if cache is not None else ReadCache()
    with cache.lock:
        return _read(client, keys, windows, config, now_s, future_skew_s, cache)


def registered_groups(client: SyncClient, keys: Keys) -> list[int]:
    """The partition groups the workers registered (`Keys.registry`), in order."""
    return sorted(int(g) for g in client.smembers(keys.registry))


def _read(
    client: SyncClient,
    keys: Keys,
    windows: Sequence[Window],
    config: KpiConfig,
    now_s: float,
    future_skew_s: float,
    cache: ReadCache,
) -> Snapshot:
    queries = sorted_set_queries(now_s, config)
    cluster = isinstance(client, redis.cluster.RedisCluster)
    # On a cluster the registry is another slot: read apart. On a single Redis the read
    # returns it, and only a group the cache did not know yet costs a second call.
    groups = registered_groups(client, keys) if cluster else cache.groups
    sums_of = [cache.windows.setdefault(w.label, _WindowSums()) for w in windows]
    members_of = [
        [cache.distinct.setdefault((w.label, d.name), _DistinctSums()) for d in DISTINCT_COUNTS] for w in windows
    ]
    bounds = [(w.first_bucket(now_s), w.last_bucket(now_s, future_skew_s)) for w in windows]

    def keep(groups: Sequence[int]) -> None:
        for sums, members, (first, last) in zip(sums_of, members_of, bounds, strict=True):
            for held in (sums, *members):
                held.keep(groups, first, last)

    def group_argv(group: int) -> list[Any]:
        gk = keys.group(group)
        argv: list[Any] = [len(windows)]
        for w, sums, members, (first, last) in zip(windows, sums_of, members_of, bounds, strict=True):
            argv += [gk.bucket_prefix(w.label), gk.distinct_prefix(w.label), first, last, *sums.held(group)]
            argv.append(len(DISTINCT_COUNTS))
            for d, seen in zip(DISTINCT_COUNTS, members, strict=True):
                argv += [d.name, *seen.held(group)]
        argv += [gk.current, len(queries)]
        for name, threshold in queries.items():
            argv += [gk.zset(name), repr(threshold)]
        return argv

    def call(groups: Sequence[int], registry: str) -> tuple[list[int], dict[int, Any]]:
        argv: list[Any] = [BUCKET_TOKEN_FIELD, registry, len(groups)]
        for g in groups:
            argv += group_argv(g)
        route = [keys.group(groups[0]).current] if groups else [keys.registry]
        reply = _evalsha_ro(client, route, argv)
        return sorted(int(g) for g in reply[0]), dict(zip(groups, reply[1:], strict=True))

    def absorb(replies: dict[int, Any]) -> None:
        for group, reply in replies.items():
            for j, window_reply in enumerate(reply[: len(windows)]):
                sums_of[j].update(group, window_reply[0])
                for seen, distinct_reply in zip(members_of[j], window_reply[1:], strict=True):
                    seen.update(group, distinct_reply)

    keep(groups)
    replies: dict[int, Any] = {}
    if cluster:
        for g in groups:  # each group is one slot, possibly on another node: one call per group
            replies.update(call([g], "")[1])
        absorb(replies)
    else:
        registered, replies = call(groups, keys.registry)
        absorb(replies)
        if registered != groups:
            keep(registered)
            new = [g for g in registered if g not in replies]
            if new:
                more = call(new, "")[1]
                absorb(more)
                replies.update(more)
            groups = cache.groups = registered

    counters = Totals()
    zsize: dict[str, int] = dict.fromkeys(queries, 0)
    zbelow: dict[str, int] = dict.fromkeys(queries, 0)
    zlowest: dict[str, float | None] = dict.fromkeys(queries)
    for group in groups:
        reply = replies[group]
        cur_flat = reply[len(windows)]
        for name, value in zip(map(as_text, cur_flat[0::2]), cur_flat[1::2], strict=True):
            counters[name] = counters.get(name, 0) + int(value)
        for name, (size, below, lowest) in zip(queries, reply[len(windows) + 1 :], strict=True):
            zsize[name] += int(size)
            zbelow[name] += int(below)
            low = as_text(lowest)
            if low:
                prev = zlowest[name]
                zlowest[name] = float(low) if prev is None else min(prev, float(low))
    totals: dict[str, Totals] = {}
    for w, sums, members in zip(windows, sums_of, members_of, strict=True):
        window = Totals(sums.sums)
        for d, seen in zip(DISTINCT_COUNTS, members, strict=True):
            window[d.distinct_field] = seen.distinct
            window[d.repeated_field] = seen.repeated
        window.current = counters
        totals[w.label] = window
    zstats = {name: ZStat(zsize[name], zbelow[name], zlowest[name]) for name in queries}
    return Snapshot(totals, Current(counters, zstats, now_s, config, totals))


def read_at_risk(client: SyncClient, keys: Keys, now_s: float, top: int | None = None) -> list[dict[str, Any]]:
    """Customers at churn risk now, highest points first: id, points, reasons, until (unix s).

    The at-risk set holds each customer scored by the moment they fall under the
    threshold; points and reasons are recomputed at `now_s` from the stored items.
    Every partition group has its own set and states; the lists are merged.
    """
    found: list[tuple[str, float, Any]] = []
    for group in registered_groups(client, keys):
        gk = keys.group(group)
        members: list[tuple[Any, float]] = client.zrangebyscore(  # type: ignore[assignment]
            gk.zset(AT_RISK.name), f"({now_s!r}", "+inf", withscores=True
        )
        if not members:
            continue
        ids = [as_text(m) for m, _ in members]
        # One group's keys share a slot: one MGET even on a cluster.
        raw: list[Any] = client.mget([gk.entity(RISK.key_tag, c) for c in ids])
        found += [(cid, until, state) for cid, (_, until), state in zip(ids, members, raw, strict=True)]
    now_us = int(now_s * 1_000_000)
    out: list[dict[str, Any]] = []
    for cid, until, state_raw in found:
        state = RiskState.decode(as_text(state_raw) if state_raw is not None else None)
        out.append(
            {
                "customer_id": cid,
                "points": churn_risk.points(state.items, now_us),
                "reasons": churn_risk.reasons(state.items, now_us),
                "at_risk_until": until,
            }
        )
    out.sort(key=lambda r: (-r["points"], r["customer_id"]))
    return out[:top] if top is not None else out
