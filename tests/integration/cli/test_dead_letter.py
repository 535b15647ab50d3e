"""`crm-kpi dead-letter list|replay` on records a real worker dead-lettered."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.kafka.topics import create_topics
from tests.integration.cli.test_commands import crm_kpi
from tests.support.harness import WorkerProcess, applied, produce, settings_of, stack_env, wait_for


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


async def _records(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        out: list[Any] = []
        while True:  # to the end, then one empty poll (an end offset may lag what was acked)
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                out.extend(recs)
            ends = await consumer.end_offsets(partitions)
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in partitions]):
                return out
    finally:
        await consumer.stop()


@pytest.mark.slow
async def test_list_filters_and_replays_fixed_or_all_dead_letters(
    kafka_bootstrap: str, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    env = stack_env(kafka_bootstrap, redis_url, prefix, topic_partitions="1")
    settings = settings_of(env)
    await create_topics(settings)
    tickets, deals = settings.topic("tickets"), settings.topic("deals")
    ahead = {  # 30 minutes ahead: future_timestamp with the default 5-minute skew
        "event_id": "f1", "type": "ticket.opened", "occurred_at": _at(timedelta(minutes=30)),
        "ticket_id": "T1", "customer_id": "c1",
    }  # fmt: skip
    typo = {
        "event_id": "w1", "type": "deal.won", "occurred_at": _at(timedelta(0)), "deal_id": "D1",
        "customer_id": "c1", "amount": 10, "currency": "EUD",
    }  # fmt: skip
    ends = await produce(
        kafka_bootstrap,
        [
            (tickets, b"c1", b"{not json"),
            (tickets, b"c1", json.dumps(ahead).encode()),
            (deals, b"c1", json.dumps(typo).encode()),
        ],
    )
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    try:
        await wait_for(lambda: applied(redis, prefix, ends), 90, "the worker to go through the records")
    finally:
        worker.stop()

    listed = crm_kpi("dead-letter", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    by_reason = {d["reason"]: d for d in letters}
    assert set(by_reason) == {"invalid_json", "future_timestamp", "invalid_fields"}
    assert by_reason["invalid_json"]["source_topic"] == tickets and by_reason["invalid_json"]["source_offset"] == 0
    assert by_reason["future_timestamp"]["source_offset"] == 1 and "future" in by_reason["future_timestamp"]["detail"]
    assert by_reason["invalid_fields"]["source_topic"] == deals and "ISO 4217" in by_reason["invalid_fields"]["detail"]
    assert json.loads(by_reason["future_timestamp"]["value"]) == ahead

    only = json.loads(crm_kpi("dead-letter", "list", "--json", "--reason", "invalid_json", env=env).stdout)
    assert [d["reason"] for d in only] == ["invalid_json"]
    assert json.loads(crm_kpi("dead-letter", "list", "--json", "--topic", deals, env=env).stdout)[0]["reason"] == (
        "invalid_fields"
    )
    assert json.loads(crm_kpi("dead-letter", "list", "--json", "--since", "2026-01-01T00:00:00Z", env=env).stdout)
    plain = crm_kpi("dead-letter", "list", env=env).stdout.splitlines()
    assert plain[0].split("\t")[:3] == ["time", "reason", "source_topic"] and len(plain) == 4

    # The operator allows an hour of clock skew: the future record is now fixed, the others are not.
    relaxed = {**env, "CRM_KPI_MAX_FUTURE_SKEW": "1h"}
    dry = crm_kpi("dead-letter", "replay", "--dry-run", env=relaxed)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would send") == 1 and dry.stdout.count("keeping") == 2
    assert "1 to replay, kept 2 of 3" in dry.stderr
    assert len(await _records(kafka_bootstrap, tickets)) == 2  # nothing sent
    assert "3 to replay" in crm_kpi("dead-letter", "replay", "--all", "--dry-run", env=relaxed).stderr

    sent = crm_kpi("dead-letter", "replay", env=relaxed)
    assert sent.returncode == 0, sent.stderr
    assert "replayed 1, kept 2 of 3" in sent.stderr
    records = await _records(kafka_bootstrap, tickets)
    assert len(records) == 3
    last = records[-1]
    assert json.loads(last.value) == ahead and last.key == b"c1"
    origin = dict(last.headers)["replayed_from"].decode()
    assert origin == f"{settings.dead_letter_topic}:0:{by_reason['future_timestamp']['offset']}"
