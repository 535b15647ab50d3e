"""Every Kafka client of the product through every security variant, against Apache Kafka.

One broker (tests/support/secure_kafka.py) has a listener per variant: TLS (server
verified, the broker's key encrypted), mutual TLS (the client's key encrypted too),
SASL_SSL with PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER (JWTs from the test's
OIDC provider, validated by the broker against its JWKS endpoint), and SASL_PLAINTEXT.
The broker runs StandardAuthorizer: each test grants its principal its own prefix only.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from schemas import TOPIC_FAMILY
from stream.kafka.clients import KafkaAccessError, check_kafka, kafka_client_options
from stream.kafka.publisher import publish_payloads
from stream.kafka.topics import create_topics
from tests.support.harness import settings_of
from tests.support.secure_kafka import VARIANTS, SecureKafka


def _env(kafka: SecureKafka, variant: str, prefix: str) -> dict[str, str]:
    return {
        **kafka.env(variant),
        "CRM_KPI_TOPIC_PREFIX": f"{prefix}.",
        "CRM_KPI_KAFKA_GROUP_ID": f"{prefix}-workers",
        "CRM_KPI_TOPIC_PARTITIONS": "2",
    }


def _event(i: int) -> tuple[str, bytes, bytes]:
    event = {"event_id": f"e{i}", "type": "lead.created", "occurred_at": "2026-01-01T00:00:00Z",
             "lead_id": f"l{i}", "customer_id": f"c{i % 7}", "lead_source": "web"}
    return event["type"], str(event["customer_id"]).encode(), json.dumps(event).encode()


async def _read_all(options: dict[str, Any], topic: str, group: str, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, **options, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=200)
            values += [r.value for records in batch.values() for r in records]
            if len(values) >= expected:
                break
    finally:
        await consumer.stop()
    return values


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_topics_publish_and_consume_through_each_variant(
    secure_kafka: SecureKafka, prefix: str, variant: str
) -> None:
    env = _env(secure_kafka, variant, prefix)
    settings = settings_of(env)
    acls = secure_kafka.grant_all(secure_kafka.principal(variant), f"{prefix}.", f"{prefix}-")
    try:
        created = await create_topics(settings)
        topics = [*settings.event_topics(), settings.dead_letter_topic, settings.repartition_topic]
        assert sorted(created) == sorted(topics)
        await check_kafka(
            settings, read=list(settings.event_topics()), write=[settings.dead_letter_topic],
            group=settings.kafka_group_id,
        )
        items = [_event(i) for i in range(300)]
        assert await publish_payloads(settings, items) == 300
        topic = settings.topic(TOPIC_FAMILY["lead.created"])
        got = await _read_all(kafka_client_options(settings), topic, settings.kafka_group_id, 300)
        assert sorted(got) == sorted(v for _, _, v in items)
    finally:
        secure_kafka.revoke(acls)


async def test_oauthbearer_tokens_are_fetched_once_and_shared(secure_kafka: SecureKafka, prefix: str) -> None:
    """Every connection of every client reuses the one token until it nears its expiry."""
    env = _env(secure_kafka, "sasl_ssl-oauthbearer", prefix)
    settings = settings_of(env)
    from stream.kafka.clients import OidcTokenProvider

    OidcTokenProvider._SHARED.clear()
    before = secure_kafka.oidc.requests
    acls = secure_kafka.grant_all(secure_kafka.principal("sasl_ssl-oauthbearer"), f"{prefix}.", f"{prefix}-")
    try:
        await create_topics(settings)
        await publish_payloads(settings, [_event(i) for i in range(10)])
        await check_kafka(settings, write=list(settings.event_topics()))
    finally:
        secure_kafka.revoke(acls)
    assert secure_kafka.oidc.requests - before == 1


async def test_a_right_taken_away_is_named(secure_kafka: SecureKafka, prefix: str) -> None:
    """Without Write on one topic the check names the operation, the topic and the user."""
    from tests.support.secure_kafka import Acl

    variant = "sasl_ssl-scram256"
    env = _env(secure_kafka, variant, prefix)
    settings = settings_of(env)
    who = secure_kafka.principal(variant)
    await create_topics(settings_of({**env, **secure_kafka_plaintext(secure_kafka)}))
    leads = settings.topic("leads")
    granted = [Acl(who, "Describe", "topic", f"{prefix}.", "prefixed")]
    granted += [Acl(who, "Write", "topic", topic) for topic in settings.event_topics() if topic != leads]
    secure_kafka.grant(granted)
    try:
        with pytest.raises(KafkaAccessError) as caught:
            await check_kafka(settings, write=list(settings.event_topics()))
        assert caught.value.kind == "acl"
        assert str(caught.value) == (
            f"Kafka denies Write on topic {leads} to SCRAM-SHA-256 user 'scram256-user' (an ACL is missing)"
        )
    finally:
        secure_kafka.revoke(granted)


def secure_kafka_plaintext(kafka: SecureKafka) -> dict[str, str]:
    """Settings of the broker's PLAINTEXT listener (its anonymous principal is a super user)."""
    return {"CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "CRM_KPI_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "CRM_KPI_KAFKA_SSL_CAFILE": "", "CRM_KPI_KAFKA_SASL_MECHANISM": "", "CRM_KPI_KAFKA_SASL_USERNAME": "",
            "CRM_KPI_KAFKA_SASL_PASSWORD": ""}
