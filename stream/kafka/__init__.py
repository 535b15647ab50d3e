"""Kafka beyond the worker's consumer: creating the topics (`topics`), publishing events (`publisher`)."""

from stream.kafka.publisher import publish_payloads, read_jsonl
from stream.kafka.topics import create_topics

__all__ = ["create_topics", "publish_payloads", "read_jsonl"]
