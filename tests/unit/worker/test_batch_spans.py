"""What a prepared batch claims about each partition: where it starts and ends (the offset fence's input)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from stream.events.windows import make_windows
from stream.kafka.logs import Fingerprint
from stream.store import Keys
from stream.worker.batch import BatchProcessor
from stream.worker.metrics import WorkerMetrics
from tests.support.config import clean_settings

TP = TopicPartition("crm.leads", 0)


def _processor(spread: bool = False) -> BatchProcessor:
    settings = clean_settings()
    keys = Keys("p", spread=spread)
    return BatchProcessor(settings, None, None, WorkerMetrics(), make_windows(settings.windows), keys)  # type: ignore[arg-type]


def _records(*offsets: int) -> list[Any]:
    event = {"type": "lead.created", "occurred_at": "2024-01-01T00:00:00Z", "lead_id": "l"}
    return [
        SimpleNamespace(offset=o, key=b"k", value=json.dumps({**event, "event_id": f"e{o}"}).encode(), timestamp=o)
        for o in offsets
    ]


def test_spans_come_from_the_consumer_positions_not_the_record_offsets() -> None:
    """Offsets without records (transaction markers, compaction) are inside a span, not a gap."""
    records = _records(10, 11, 13)  # 12: a transaction marker; 14-15: aborted records
    [prep] = _processor().prepare({TP: records}, {"crm.leads:0": 10}, {TP: (10, 16)})
    assert prep.ranges == [("crm.leads:0", 10, 16, Fingerprint.of(records[-1]).encode())]
    assert len(prep.unique) == 3


def test_records_below_the_applied_offset_are_skipped_and_the_span_starts_there() -> None:
    records = _records(8, 9, 10, 11)
    [prep] = _processor().prepare({TP: records}, {"crm.leads:0": 10}, {TP: (8, 12)})
    assert prep.ranges == [("crm.leads:0", 10, 12, Fingerprint.of(records[-1]).encode())]
    assert [ev.event_id for ev, _ in prep.unique] == ["e10", "e11"]
    # A span entirely below it: nothing to write for that partition.
    assert _processor().prepare({TP: records}, {"crm.leads:0": 20}, {TP: (8, 12)})[0].ranges == []


def test_without_spans_a_batch_claims_its_records() -> None:
    records = _records(4, 5)
    assert _processor().prepare({TP: records}, {})[0].ranges == [
        ("crm.leads:0", 4, 6, Fingerprint.of(records[-1]).encode())
    ]


def test_a_batch_splits_into_one_group_per_partition_number_across_topics() -> None:
    """Spread (Redis Cluster): partition p of every event topic is one group: one atomic write, one hash tag."""
    deals = TopicPartition("crm.deals", 1)
    leads1, leads3 = TopicPartition("crm.leads", 1), TopicPartition("crm.leads", 3)
    batch = {leads3: _records(0), leads1: _records(5), deals: _records(7)}
    parts = _processor(spread=True).prepare(batch, {}, None)
    assert [(p.group, sorted(f for f, *_ in p.ranges)) for p in parts] == [
        (1, ["crm.deals:1", "crm.leads:1"]),
        (3, ["crm.leads:3"]),
    ]
    # A single Redis keeps every partition in group 0: one write for the whole batch.
    parts = _processor().prepare(batch, {}, None)
    assert [(p.group, sorted(f for f, *_ in p.ranges)) for p in parts] == [
        (0, ["crm.deals:1", "crm.leads:1", "crm.leads:3"]),
    ]
