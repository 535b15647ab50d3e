"""Kafka clients never create topics as a side effect (docs/configuration.md, `crm-kpi topics create`).

aiokafka asks for `allow_auto_topic_creation=true` in every Metadata request (v4+), so a
consumer, a producer or an admin client naming a missing topic makes a broker with
`auto.create.topics.enable=true` (Kafka's default) create it with the broker's default
partition count: after a broker lost its log, the topics came back with the wrong number
of partitions before `crm-kpi topics create` could run. aiokafka has no option for it;
its Metadata requests are built in two modules, whose request class is swapped here for
one that asks for no creation. Importing `stream.kafka` (or any module in it) applies it.
"""

from __future__ import annotations

from typing import Any

import aiokafka.admin.client
import aiokafka.client
from aiokafka.protocol.metadata import MetadataRequest

__all__ = ["NoAutoCreateMetadataRequest"]


class NoAutoCreateMetadataRequest(MetadataRequest):  # type: ignore[misc]
    """A Metadata request that never asks the broker to create the topics it names."""

    def __init__(self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = None) -> None:
        super().__init__(topics, bool(allow_auto_topic_creation))


def _install() -> None:
    module: Any
    for module in (aiokafka.client, aiokafka.admin.client):
        if module.MetadataRequest is MetadataRequest:
            module.MetadataRequest = NoAutoCreateMetadataRequest


_install()
