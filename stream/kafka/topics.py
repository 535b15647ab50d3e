"""`crm-kpi topics create`: the event topics and the dead-letter topic."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.settings import Settings

__all__ = ["create_topics", "partitions_of"]


async def create_topics(settings: Settings) -> list[str]:
    """Create every topic that does not exist yet; return the names created."""
    names = [*settings.event_topics(), settings.dead_letter_topic]
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
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        await admin.close()


async def partitions_of(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, list[int]]:
    """{topic: its partition ids} from the brokers' metadata; topics that do not exist are left out.

    (A consumer's own `partitions_for_topic` only knows topics it subscribed to or
    fetched before; this asks the brokers.)
    """
    out: dict[str, list[int]] = {}
    for topic in await admin.describe_topics(topics):
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            out[topic["topic"]] = sorted(p["partition"] for p in topic["partitions"])
    return out
