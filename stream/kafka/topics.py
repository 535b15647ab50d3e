"""`crm-kpi topics create`: the event topics and the dead-letter topic."""

from __future__ import annotations

import aiokafka.errors as Errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.kafka.clients import KafkaAccessError, check_kafka, who
from stream.settings import Settings

__all__ = ["create_topics"]


async def create_topics(settings: Settings) -> list[str]:
    """Create every topic that does not exist yet; return the names created.

    Raises KafkaAccessError (one line) when Kafka cannot be reached or used, or denies
    the creation (the user needs Create on the cluster or on the topics, docs/security.md).
    """
    names = [*settings.event_topics(), settings.dead_letter_topic]
    await check_kafka(settings)  # reachable, TLS and credentials accepted: else one line, before the admin client
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, settings.topic_partitions, settings.topic_replication_factor)
            for name in names
            if name not in existing
        ]
        created = []
        for topic in wanted:
            response = await admin.create_topics([topic])
            for name, code, *rest in response.topic_errors:
                if code == Errors.TopicAlreadyExistsError.errno:
                    continue
                if code in (Errors.TopicAuthorizationFailedError.errno, Errors.ClusterAuthorizationFailedError.errno):
                    raise KafkaAccessError(
                        "acl", f"Kafka denies Create on topic {name} to {who(settings)} (topics create needs "
                        "Create on the cluster or on the topics: docs/security.md)",
                    )
                if code:
                    detail = rest[0] if rest and isinstance(rest[0], str) and rest[0] else Errors.for_code(code).message
                    raise KafkaAccessError("config", f"Kafka refused to create topic {name}: {detail}")
                created.append(name)
        return created
    finally:
        await admin.close()
