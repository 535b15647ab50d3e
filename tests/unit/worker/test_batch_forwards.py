"""Which records a prepared batch forwards to their home partition (Redis Cluster) and which it folds."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from stream.events.windows import make_windows
from stream.kafka.routing import home_partition
from stream.store import Keys
from stream.worker.batch import BatchProcessor
from stream.worker.dead_letters import DeadLetters
from stream.worker.metrics import WorkerMetrics
from stream.worker.repartition import Repartition
from tests.support.config import clean_settings

PARTITIONS = 12
TICKETS = "crm.tickets"
INTERNAL = "crm.repartition"


def _processor(spread: bool = True) -> BatchProcessor:
    settings = clean_settings()
    return BatchProcessor(
        settings,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        WorkerMetrics(),
        make_windows(settings.windows),
        Keys("p", spread=spread),
        Repartition(None, INTERNAL),  # type: ignore[arg-type]
        PARTITIONS,
    )


def _ticket(event_id: str, customer: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "ticket.opened",
        "occurred_at": "2024-01-01T00:00:00Z",
        "customer_id": customer,
        "ticket_id": "t-" + event_id,
        "priority": "normal",
    }


def _record(topic: str, partition: int, offset: int, event: dict[str, Any], headers: Any = ()) -> Any:
    return SimpleNamespace(
        topic=topic, partition=partition, offset=offset, key=b"k", value=json.dumps(event).encode(),
        timestamp=offset, headers=list(headers),
    )


def _customer_at(partition: int) -> str:
    return next(c for c in (f"c{i}" for i in range(10_000)) if home_partition(c.encode(), PARTITIONS) == partition)


def test_events_off_their_home_are_forwarded_there_and_their_offsets_still_recorded() -> None:
    home, away = _customer_at(3), _customer_at(5)
    tp = TopicPartition(TICKETS, 3)
    records = [_record(TICKETS, 3, 0, _ticket("e0", home)), _record(TICKETS, 3, 1, _ticket("e1", away))]
    [prep] = _processor().prepare({tp: records}, {}, {tp: (0, 2)})
    assert [ev.event_id for ev, _ in prep.unique] == ["e0"]
    assert [(rec.offset, to, key) for rec, to, key in prep.forward] == [(1, 5, away.encode())]
    assert prep.ranges[0][:3] == (f"{TICKETS}:3", 0, 2)  # the source offsets advance past the forwarded record


def test_a_single_redis_forwards_nothing() -> None:
    tp = TopicPartition(TICKETS, 3)
    records = [_record(TICKETS, 3, 0, _ticket("e0", _customer_at(5)))]
    [prep] = _processor(spread=False).prepare({tp: records}, {}, {tp: (0, 1)})
    assert prep.forward == [] and len(prep.unique) == 1


def test_repartition_records_are_folded_as_read_on_their_source_topic_and_never_forwarded_again() -> None:
    tp = TopicPartition(INTERNAL, 5)
    source = [("source_topic", TICKETS.encode()), ("source_partition", b"3"), ("source_offset", b"1")]
    # Even one whose home is not this partition (the partition count changed since): folded, not bounced.
    records = [
        _record(INTERNAL, 5, 0, _ticket("e1", _customer_at(5)), source),
        _record(INTERNAL, 5, 1, _ticket("e2", _customer_at(7)), source),
        # The wrong_topic check uses the original topic: a ticket first read on crm.deals is rejected.
        _record(INTERNAL, 5, 2, _ticket("e3", _customer_at(5)), [("source_topic", b"crm.deals")]),
        _record(INTERNAL, 5, 3, _ticket("e4", _customer_at(5))),  # no provenance: not an event of any topic
    ]
    [prep] = _processor().prepare({tp: records}, {}, {tp: (0, 4)})
    assert prep.group == 5 and prep.forward == []
    assert [ev.event_id for ev, _ in prep.unique] == ["e1", "e2"]
    assert [why.reason for _, why in prep.rejected] == ["wrong_topic", "wrong_topic"]
    assert prep.ranges[0][:3] == (f"{INTERNAL}:5", 0, 4)


def test_a_forwarded_record_rejected_at_home_is_dead_lettered_with_its_original_source() -> None:
    """So `crm-kpi dead-letter replay` sends it back to its event topic, not to the internal one."""
    letters = DeadLetters(None, "crm.dead-letter", INTERNAL)  # type: ignore[arg-type]
    source = [("source_topic", TICKETS.encode()), ("source_partition", b"3"), ("source_offset", b"17")]
    forwarded = _record(INTERNAL, 5, 40, _ticket("e1", "c"), source)
    assert letters._origin(forwarded) == [*source, ("forwarded_from", f"{INTERNAL}:5:40".encode())]
    direct = _record(TICKETS, 2, 9, _ticket("e2", "c"))
    assert letters._origin(direct) == [
        ("source_topic", TICKETS.encode()), ("source_partition", b"2"), ("source_offset", b"9")
    ]
    # A record nobody forwarded (no provenance headers): named as read.
    stray = _record(INTERNAL, 1, 3, _ticket("e3", "c"))
    assert letters._origin(stray)[0] == ("source_topic", INTERNAL.encode())
