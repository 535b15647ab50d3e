"""`crm-kpi topics create`: the event, dead-letter and repartition topics; checks that they exist.

Topics are created here and nowhere else: no client of the product asks the broker to
create one (`stream.kafka.clients`), so a topic always has the configured partition count,
or `crm-kpi topics create` says it has not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import aiokafka.errors as Errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.kafka.clients import KafkaAccessError, check_kafka, kafka_client_options, who
from stream.settings import Settings

__all__ = [
    "MissingTopicsError",
    "TopicsReport",
    "create_topics",
    "ensure_topics",
    "home_partition_count",
    "partitions_of",
    "require_topics",
]


class MissingTopicsError(Exception):
    """Topics the product needs do not exist; str() is one line naming them and the broker."""


@dataclass
class TopicsReport:
    """What `ensure_topics` did and found."""

    created: list[str] = field(default_factory=list)
    mismatched: dict[str, int] = field(default_factory=dict)
    """Existing topics whose partition count differs from the setting: name -> partitions."""


def _names(settings: Settings) -> list[str]:
    return [*settings.event_topics(), settings.dead_letter_topic, settings.repartition_topic]


async def ensure_topics(settings: Settings) -> TopicsReport:
    """Create every topic that does not exist yet; report existing ones with another partition count.

    Raises KafkaAccessError (one line) when Kafka cannot be reached or used, or denies
    the creation (the user needs Create on the cluster or on the topics, docs/security.md).
    """
    names = _names(settings)
    await check_kafka(settings)  # reachable, TLS and credentials accepted: else one line, before the admin client
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    report = TopicsReport()
    try:
        existing = set(await admin.list_topics())
        for name in names:
            if name in existing:
                continue
            response = await admin.create_topics(
                [NewTopic(name, settings.topic_partitions, settings.topic_replication_factor)]
            )
            for topic_name, code, *rest in response.topic_errors:
                if code == Errors.TopicAlreadyExistsError.errno:
                    existing.add(topic_name)
                    continue
                if code in (Errors.TopicAuthorizationFailedError.errno, Errors.ClusterAuthorizationFailedError.errno):
                    raise KafkaAccessError(
                        "acl",
                        f"Kafka denies Create on topic {topic_name} to {who(settings)} (topics create needs "
                        "Create on the cluster or on the topics: docs/security.md)",
                    )
                if code:
                    detail = rest[0] if rest and isinstance(rest[0], str) and rest[0] else Errors.for_code(code).message
                    raise KafkaAccessError("config", f"Kafka refused to create topic {topic_name}: {detail}")
                report.created.append(topic_name)
        present = [name for name in names if name in existing]
        if present:
            for topic in await admin.describe_topics(present):
                count = len(topic["partitions"])
                if topic["error_code"] == 0 and count != settings.topic_partitions:
                    report.mismatched[topic["topic"]] = count
        return report
    finally:
        await admin.close()


async def create_topics(settings: Settings) -> list[str]:
    """Create every topic that does not exist yet; return the names created."""
    return (await ensure_topics(settings)).created


async def require_topics(settings: Settings, names: Iterable[str] | None = None) -> None:
    """Raise MissingTopicsError unless every named topic (default: all the product's) exists."""
    wanted = list(names) if names is not None else _names(settings)
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    missing = [name for name in wanted if name not in existing]
    if missing:
        raise MissingTopicsError(
            f"topic(s) {', '.join(missing)} do not exist on {settings.kafka_bootstrap_servers}: "
            "run `crm-kpi topics create` (clients never create topics)"
        )


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


async def home_partition_count(settings: Settings) -> int:
    """The partition count every event topic and the repartition topic share (Redis Cluster mode).

    An event's home partition is its routing key's murmur2 modulo this count
    (`stream.kafka.routing`), and partition p of every one of these topics feeds partition
    group p: with another count anywhere, a customer's events would meet in no group.
    Raises KafkaAccessError: "topic" (one missing: `crm-kpi topics create`) or "config"
    (counts differ: an operator must act), with one line naming the topics and counts.
    """
    names = [*settings.event_topics(), settings.repartition_topic]
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        found = await partitions_of(admin, names)
    finally:
        await admin.close()
    missing = [name for name in names if name not in found]
    if missing:
        raise KafkaAccessError(
            "topic",
            f"topic(s) {', '.join(missing)} do not exist on {settings.kafka_bootstrap_servers}: "
            "run `crm-kpi topics create` (clients never create topics)",
        )
    counts = {name: len(found[name]) for name in names}
    if len(set(counts.values())) > 1:
        common = max(set(counts.values()), key=list(counts.values()).count)
        odd = ", ".join(f"{name} has {n}" for name, n in counts.items() if n != common)
        raise KafkaAccessError(
            "config",
            f"with CRM_KPI_REDIS_CLUSTER the event topics and {settings.repartition_topic} need one partition "
            f"count, but {odd} (the others {common}): see docs/runbooks.md#topic-partition-count-differs",
        )
    return counts[names[0]]
