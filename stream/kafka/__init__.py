"""Kafka beyond the worker's consumer: creating the topics (`topics`), publishing events (`publisher`),
reading log bounds and records (`logs`); no client creates a topic as a side effect (`clients`)."""

from stream.kafka import clients as _clients  # noqa: F401  # first: before any client is built
from stream.kafka.publisher import publish_payloads, read_jsonl
from stream.kafka.topics import create_topics

__all__ = ["create_topics", "publish_payloads", "read_jsonl"]
