"""Every setting that changes a figure, end to end at a non-default value, with its documented effect.

A real broker, `crm-kpi worker`, Redis and `crm-kpi exporter`, started with the setting changed.
Each effect is asserted where a default value would give another figure, and the KPI-rule settings
are also checked series by series against bench/reference_catalog.py configured the same way.
Business hours are exercised by tests/end_to_end/test_catalog_kpis.py (New York, a holiday).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.reference_catalog import Config, edge_free, expected
from schemas import TOPIC_FAMILY
from stream.events import event_digest
from stream.kafka.topics import create_topics
from stream.store import Keys
from tests.support.harness import WorkerProcess, applied, produce, scrape, settings_of, stack_env, wait_for
from tests.support.series import assert_series_match, kpi_series

HEADROOM_S = 120.0


class Stack:
    """A worker and an exporter with `env`; `publish` returns the end offsets, `applied` waits for them."""

    def __init__(self, env: dict[str, str], redis: aioredis.Redis, tmp: Path) -> None:
        self.env = env
        self.settings = settings_of(env)
        self.redis = redis
        self.worker = WorkerProcess(env, "worker", tmp / "worker.log")
        self.exporter = WorkerProcess(env, "exporter", tmp / "exporter.log")
        self.worker_url = f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics"
        self.exporter_url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"

    async def start(self, exporter: bool = True) -> Stack:
        await create_topics(self.settings)
        self.worker.start()
        if exporter:
            self.exporter.start()
        return self

    def stop(self) -> None:
        self.worker.stop()
        self.exporter.stop()

    async def publish(self, events: list[dict[str, Any]], raw: list[tuple[str, bytes]] | None = None) -> dict[Any, int]:
        messages = [
            (self.settings.topic(TOPIC_FAMILY[e["type"]]), str(e.get("customer_id", e["event_id"])).encode(),
             json.dumps(e).encode())
            for e in events
        ]  # fmt: skip
        messages += [(self.settings.topic(family), b"raw", value) for family, value in raw or []]
        ends = await produce(self.settings.kafka_bootstrap_servers, messages)
        prefix = self.settings.redis_key_prefix
        await wait_for(lambda: applied(self.redis, prefix, ends), 60, "the worker to apply every record")
        return ends

    async def kpis(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async def up() -> bool:
            try:
                scrape(self.exporter_url)
                return True
            except OSError:
                return False

        await wait_for(up, 30, "the exporter")
        return kpi_series(scrape(self.exporter_url))

    def ops(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return scrape(self.worker_url)


@pytest.fixture
def stacks(redis: aioredis.Redis, tmp_path: Path) -> Iterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for s in started:
        s.stop()


def _event(now: datetime, n: int, event_type: str, age_s: float, /, **fields: Any) -> dict[str, Any]:
    when = (now - timedelta(seconds=age_s)).isoformat().replace("+00:00", "Z")
    return {"event_id": f"s{n}", "type": event_type, "occurred_at": when, **fields}


def _get(series: dict[Any, float], name: str, **labels: str) -> float | None:
    return series.get((name, tuple(sorted(labels.items()))))


# --- the KPI rules and limits ---------------------------------------------------------------------

RULES = {
    "windows": "15m,2h,3d",
    "sla": "urgent=2m,high=10m,normal=30m,low=1h",
    "lead_sources": "tiktok,web",
    "lead_lost_reasons": "student,spam",
    "deal_stages": "discovery,legal review",
    "churn_risk_threshold": "2",
    "max_event_bytes": "1024",
    "max_future_skew": "1h",
    "batch_max_records": "7",
}
CONFIG = Config(
    windows_s=(900, 7200, 3 * 86400),
    sla_s={"urgent": 120.0, "high": 600.0, "normal": 1800.0, "low": 3600.0},
    lead_sources=frozenset({"tiktok", "web"}),
    lost_reasons=frozenset({"student", "spam"}),
    stages=("discovery", "legal review"),
    risk_threshold=2,
    max_future_skew_s=3600.0,
)


async def test_kpi_rules_and_limits_follow_their_settings(
    kafka_bootstrap: str, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path, stacks: list[Stack]
) -> None:
    stack = await Stack(stack_env(kafka_bootstrap, redis_url, prefix, topic_partitions="2", **RULES), redis,
                        tmp_path).start()  # fmt: skip
    stacks.append(stack)
    now = datetime.now(UTC)
    ids = iter(range(10**6))

    def ev(event_type: str, age_s: float, /, **fields: Any) -> dict[str, Any]:
        assert edge_free(age_s, HEADROOM_S, CONFIG), age_s
        return _event(now, next(ids), event_type, age_s, **fields)

    eur = {"currency": "EUR"}
    events = [
        ev("lead.created", 300, lead_id="L1", lead_source="tiktok"),  # kept: in the allow-list
        ev("lead.created", 1200, lead_id="L2", lead_source="ads"),  # other (a default source)
        ev("lead.created", 2 * 86400, lead_id="L3", lead_source="web"),
        ev("lead.created", 4 * 86400, lead_id="L4"),  # older than the longest window (3d): late
        ev("lead.created", -1800, lead_id="L5"),  # 30 min ahead: within the 1h skew
        ev("lead.converted", 150, lead_id="L1", customer_id="c1"),
        ev("lead.lost", 660, lead_id="L2", reason="student"),  # kept
        ev("lead.lost", 5000, lead_id="L3", reason="no budget"),  # other (a default reason)
        ev("deal.created", 3000, deal_id="D1", customer_id="c1", amount=100, stage="legal review", **eur),
        ev("deal.created", 3000, deal_id="D2", customer_id="c2", amount=50, stage="proposal", currency="USD"),
        ev("deal.created", 7000, deal_id="D3", customer_id="c3", amount=30, stage="discovery", **eur),
        ev("deal.won", 200, deal_id="D3", customer_id="c3", amount=30, **eur),
        ev("ticket.opened", 1000, ticket_id="T1", customer_id="c1", priority="urgent"),
        ev("ticket.answered", 700, ticket_id="T1", customer_id="c1"),  # 5 min: over the 2m SLA
        ev("ticket.opened", 2700, ticket_id="T2", customer_id="c2"),  # 45 min unanswered: over 30m
        ev("ticket.opened", 660, ticket_id="T3", customer_id="c3", priority="low"),  # 11 min: under 1h
        ev("survey.submitted", 150, survey_id="S1", customer_id="c9", kind="nps", score=5),  # 2 points
        ev("survey.submitted", 150, survey_id="S2", customer_id="c1", kind="csat", score=5),
        ev("activity.logged", 150, user_id="u1", kind="note", text="x" * 700),  # under 1024 bytes
    ]
    big = ev("activity.logged", 150, user_id="u2", kind="note", text="x" * 1500)
    far = _event(now, next(ids), "lead.created", -7200, lead_id="L6")  # 2 h ahead: beyond the skew
    raw = [("activities", json.dumps(big).encode()), ("leads", json.dumps(far).encode())]
    assert len(raw[0][1]) > 1024 and all(len(json.dumps(e)) <= 1024 for e in events)
    await stack.publish(events, raw)
    got = await stack.kpis()
    read_within = time.time() - now.timestamp()
    assert read_within <= HEADROOM_S, f"read {read_within:.0f}s after NOW: beyond the headroom of the event times"

    # The effects, one by one (a default value would give another figure each time).
    assert {dict(labels)["window"] for _, labels in got if "window" in dict(labels)} == {"15m", "2h", "3d"}
    assert _get(got, "crm_window_events", window="15m", type="lead.created") == 2  # L1 and L5 (ahead)
    assert _get(got, "crm_window_events", window="2h", type="lead.created") == 3
    assert _get(got, "crm_window_events", window="3d", type="lead.created") == 4  # L4 is late
    assert _get(got, "crm_leads_created", window="3d", lead_source="tiktok") == 1
    assert _get(got, "crm_leads_created", window="3d", lead_source="other") == 1
    assert _get(got, "crm_leads_lost", window="3d", reason="student") == 1
    assert _get(got, "crm_leads_lost", window="3d", reason="other") == 1
    assert _get(got, "crm_deals_open", stage="legal review") == 1
    assert _get(got, "crm_deals_open", stage="discovery") == 0  # D3 won
    assert _get(got, "crm_deals_open", stage="other") == 1  # proposal is not in the list
    assert _get(got, "crm_first_response_sla_breach_ratio", window="15m", priority="urgent") == 1
    assert _get(got, "crm_tickets_awaiting_response_over_sla", priority="normal") == 1
    assert _get(got, "crm_tickets_awaiting_response_over_sla", priority="low") == 0
    assert _get(got, "crm_customers_at_risk") == 1  # c9: one NPS detractor, 2 points
    assert not [k for k in got if k[0] == "crm_customer_lifetime_value"]  # needs a 30d window
    ops = stack.ops()
    assert _get(ops, "crm_events_invalid_total", reason="too_large") == 1
    assert _get(ops, "crm_events_invalid_total", reason="future_timestamp") == 1
    assert _get(ops, "crm_events_late_total") == 1
    batches = _get(ops, "crm_batch_seconds_count")
    assert batches is not None and batches >= math.ceil((len(events) + len(raw)) / 7)
    # Newest occurred_at seen: L5, 30 min ahead of NOW.
    lag = _get(ops, "crm_event_lag_seconds")
    assert lag is not None and -1800 <= lag <= -1800 + (time.time() - now.timestamp()) + 1

    # And every series, against the reference with the same settings.
    assert_series_match(got, expected(events, now.timestamp(), CONFIG), read_within)


# --- dedupe horizon -----------------------------------------------------------------------------------


async def test_a_repeat_is_dropped_inside_the_dedupe_horizon_and_counted_again_after_it(
    kafka_bootstrap: str, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path, stacks: list[Stack]
) -> None:
    horizon_s = 10.0  # 8 slots of 1.25 s
    env = stack_env(kafka_bootstrap, redis_url, prefix, topic_partitions="1", dedupe_horizon=f"{horizon_s:g}s")
    stack = await Stack(env, redis, tmp_path).start()
    stacks.append(stack)
    now = datetime.now(UTC)
    event = _event(now, 1, "lead.created", 60, lead_id="L1")
    await stack.publish([_event(now, 0, "lead.qualified", 60, lead_id="L0")])  # the worker is up and applying

    async def figures() -> tuple[float | None, float | None, float | None]:
        got, ops = await stack.kpis(), stack.ops()
        return (
            _get(got, "crm_window_events", window="1h", type="lead.created"),
            _get(ops, "crm_events_duplicate_total"),
            _get(ops, "crm_batch_conflicts_total", kind="duplicate"),
        )

    first_sent = time.monotonic()
    await stack.publish([event])
    await stack.publish([event])  # a producer retry, a later batch: inside the horizon
    inside = time.monotonic() - first_sent
    assert inside < horizon_s, f"the repeat was applied {inside:.1f}s after the first: not inside the horizon"
    # Left out before the fold (the batch's read names the recorded id): counted as a duplicate,
    # and no write refused for it.
    assert await figures() == (1, 1, None)

    # The digest leaves the dedupe sets with its slot: the horizon plus at most one slot later.
    keys = Keys(env["CRM_KPI_REDIS_KEY_PREFIX"])
    digest = event_digest(event["event_id"])

    async def forgotten() -> bool:
        slots = [k async for k in redis.scan_iter(match=keys.tag + ":dd:*")]
        return not any([await redis.sismember(k, digest) for k in slots])

    await wait_for(forgotten, horizon_s * 9 / 8 + 10, "the event id to leave the dedupe horizon")
    assert time.monotonic() - first_sent >= horizon_s, "forgotten before the horizon"
    await stack.publish([event])  # after the horizon: a new event, as documented
    assert await figures() == (2, 1, None)


# --- state TTL -------------------------------------------------------------------------------------------


async def test_state_ttl_forgets_closed_entities_and_old_awaiting_tickets(
    kafka_bootstrap: str, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path, stacks: list[Stack]
) -> None:
    ttl_s = 5.0
    env = stack_env(kafka_bootstrap, redis_url, prefix, topic_partitions="1", state_ttl=f"{ttl_s:g}s")
    stack = await Stack(env, redis, tmp_path).start()
    stacks.append(stack)
    now = datetime.now(UTC)
    eur = {"amount": 10, "currency": "EUR"}
    events = [
        _event(now, 1, "ticket.opened", 3600, ticket_id="T1", customer_id="c1"),  # older than the TTL
        _event(now, 2, "ticket.opened", -120, ticket_id="T2", customer_id="c2"),  # not (2 min ahead)
        _event(now, 3, "deal.created", 600, deal_id="D1", customer_id="c1", **eur),
        _event(now, 4, "deal.won", 300, deal_id="D1", customer_id="c1", **eur),  # closed: forgotten after the TTL
        _event(now, 5, "deal.created", 600, deal_id="D2", customer_id="c2", **eur),  # open: kept
    ]
    await stack.publish(events)
    keys = Keys(env["CRM_KPI_REDIS_KEY_PREFIX"])
    d1, d2 = keys.entity("d", "D1"), keys.entity("d", "D2")
    assert 0 < await redis.pttl(d1) <= ttl_s * 1000  # read at once: the write was moments ago
    assert await redis.pttl(d2) == -1  # holds an open figure: outlives the TTL
    got = await stack.kpis()
    # An awaiting ticket opened longer than the TTL ago leaves the awaiting figures, not the backlog.
    assert _get(got, "crm_tickets_awaiting_response", priority="normal") == 1  # T2 only
    assert _get(got, "crm_tickets_open", priority="normal") == 2
    assert _get(got, "crm_deals_open", stage="new") == 1  # D2

    async def d1_forgotten() -> bool:
        return not await redis.exists(d1)

    await wait_for(d1_forgotten, ttl_s + 10, "the closed deal's state to expire")
    # The deal's creation arrives again (a replay): with its state forgotten it starts anew, open.
    await stack.publish([_event(now, 6, "deal.created", 900, deal_id="D1", customer_id="c1", **eur)])
    got = await stack.kpis()
    assert _get(got, "crm_deals_open", stage="new") == 2
    assert await redis.exists(d2)


# --- commit interval ---------------------------------------------------------------------------------------


async def _committed(bootstrap: str, group: str, ends: dict[Any, int]) -> dict[Any, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: await consumer.committed(TopicPartition(tp.topic, tp.partition)) for tp in ends}
    finally:
        await consumer.stop()


async def test_kafka_offsets_are_committed_every_commit_interval(
    kafka_bootstrap: str, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path, stacks: list[Stack]
) -> None:
    for name in ("lazy", "eager"):
        (tmp_path / name).mkdir()
    lazy = Stack(stack_env(kafka_bootstrap, redis_url, f"{prefix}a", topic_partitions="1", commit_interval="1h"),
                 redis, tmp_path / "lazy")  # fmt: skip
    eager = Stack(stack_env(kafka_bootstrap, redis_url, f"{prefix}b", topic_partitions="1", commit_interval="200ms"),
                  redis, tmp_path / "eager")  # fmt: skip
    for s in (lazy, eager):
        await s.start(exporter=False)
        stacks.append(s)
    now = datetime.now(UTC)
    ends = {
        s: await s.publish([_event(now, 1, "lead.created", 60, lead_id="L1")]) for s in (lazy, eager)
    }  # fmt: skip

    async def eager_committed() -> bool:
        got = await _committed(kafka_bootstrap, eager.settings.kafka_group_id, ends[eager])
        return got == {tp: end for tp, end in ends[eager].items()}

    await wait_for(eager_committed, 10, "offsets committed within the 200ms interval")
    # The lazy worker applied its record before the eager one; an hour's interval commits nothing
    # meanwhile. Three seconds of nothing is what the old fixed one-second timer could not give.
    await asyncio.sleep(3)
    got = await _committed(kafka_bootstrap, lazy.settings.kafka_group_id, ends[lazy])
    assert set(got.values()) == {None}, got
    assert lazy.worker.stop() == 0  # a clean stop commits what was applied
    got = await _committed(kafka_bootstrap, lazy.settings.kafka_group_id, ends[lazy])
    assert got == {tp: end for tp, end in ends[lazy].items()}
