"""Kafka beyond the worker's consumer: creating the topics (`topics`), publishing events (`publisher`),
reading log bounds and records (`logs`); every client's options and a check that it can work (`clients`);
no client creates a topic as a side effect (`no_auto_create`)."""

from stream.kafka import no_auto_create as _no_auto_create  # noqa: F401  # first: before any client is built
from stream.kafka.publisher import publish_payloads, read_jsonl
from stream.kafka.topics import create_topics

__all__ = ["create_topics", "publish_payloads", "read_jsonl"]
