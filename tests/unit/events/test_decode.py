"""Record bytes to event or dead-letter reason (stream.events.decode), edge cases of the type-directed path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import event_adapter
from stream.events.decode import Rejection, decode, decode_records

NOW_US = 1_800_000_000 * 1_000_000
BASE = {"event_id": "e1", "occurred_at": "2026-11-23T10:00:00+01:00", "customer_id": "c1", "deal_id": "d1"}


def _decode(obj: object, family: str = "deals") -> object:
    return decode(json.dumps(obj).encode(), family, NOW_US, 65536, 300_000_000)


def test_type_anywhere_in_the_object() -> None:
    raw = {**BASE, "type": "deal.lost", "reason": "price"}
    event, t_us = _decode(raw)  # type: ignore[misc]
    assert event == event_adapter.validate_json(json.dumps(raw))
    assert t_us == int(datetime(2026, 11, 23, 9, tzinfo=UTC).timestamp()) * 1_000_000


def test_a_nested_type_key_does_not_mislead() -> None:
    # An unknown extra field holding an object with its own "type" comes first.
    raw = {"meta": {"type": "lead.created"}, **BASE, "type": "deal.lost"}
    event, _ = _decode(raw)  # type: ignore[misc]
    assert event.type == "deal.lost" and event.deal_id == "d1"


def test_errors_are_the_union_validators() -> None:
    out = _decode({**BASE, "type": "deal.lost", "deal_id": ""})
    assert isinstance(out, Rejection) and out.reason == "invalid_fields"
    assert out.detail.startswith("deal_id: ")
    assert _decode({**BASE, "type": "deal.exploded"}) == Rejection("unknown_type", "unknown type 'deal.exploded'")
    wrong = _decode({**BASE, "type": "deal.lost"}, family="leads")
    assert isinstance(wrong, Rejection) and wrong.reason == "wrong_topic"


def test_a_currency_outside_iso_4217_is_dead_lettered() -> None:
    won = {**BASE, "type": "deal.won", "amount": 10}
    event, _ = _decode({**won, "currency": "CHF"})  # type: ignore[misc]
    assert event.currency == "CHF"
    for code in ("EUD", "ABC", "USDT"):  # three capitals, but no currency
        out = _decode({**won, "currency": code})
        assert isinstance(out, Rejection) and out.reason == "invalid_fields", code
        assert out.detail.startswith("currency: ") and "ISO 4217" in out.detail


def test_a_refused_event_has_the_union_validators_first_error() -> None:
    # decode keeps the guessed model's errors when that model accepted `type` (the union,
    # which picks its model by `type`, would refuse the same way): the detail must not change.
    cases = [
        {**BASE, "type": "deal.won", "amount": -5, "currency": "EUR"},
        {**BASE, "type": "deal.won", "amount": 5, "currency": "euro"},
        {**BASE, "type": "deal.lost", "deal_id": None},
        {**BASE, "type": "deal.lost", "occurred_at": "yesterday"},
        {"type": "deal.lost"},
        {"meta": {"type": "deal.won"}, **BASE, "type": "deal.lost", "deal_id": 7},  # a wrong guess first
    ]
    for case in cases:
        raw = json.dumps(case).encode()
        with pytest.raises(ValidationError) as refused:
            event_adapter.validate_json(raw)
        first = refused.value.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:] or first["loc"])
        assert _decode(case) == Rejection("invalid_fields", f"{where}: {first['msg']}"[:200]), case


@dataclass(frozen=True)
class _Record:
    """The two fields of aiokafka's ConsumerRecord that decoding reads."""

    offset: int
    value: bytes | None


_VALUES = (
    json.dumps({**BASE, "type": "deal.lost", "reason": "price"}).encode(),
    json.dumps({**BASE, "type": "deal.lost", "event_id": "e2", "occurred_at": "2026-11-24T10:00:00Z"}).encode(),
    json.dumps({**BASE, "type": "lead.created", "event_id": "e3"}).encode(),  # another topic's type
    b"{not json",
    None,
)


@given(st.lists(st.sampled_from(_VALUES), max_size=12), st.integers(-1, 13))
def test_decoding_a_partition_is_decoding_each_record_from_the_floor_on(values: list[Any], floor: int) -> None:
    records = [_Record(offset, value) for offset, value in enumerate(values)]
    valid: list[Any] = []
    rejected: list[Any] = []
    last, newest = decode_records(records, floor, "deals", NOW_US, 65536, 300_000_000, valid, rejected)
    outs = [(r, decode(r.value, "deals", NOW_US, 65536, 300_000_000)) for r in records if r.offset >= floor]
    assert valid == [out for _, out in outs if not isinstance(out, Rejection)]
    assert rejected == [(r, out) for r, out in outs if isinstance(out, Rejection)]
    assert last == (outs[-1][0].offset if outs else -1)
    assert newest == max((t_us for _, t_us in valid), default=-1)


def test_a_partition_s_records_may_name_their_family_and_go_elsewhere() -> None:
    """The repartition topic's records decode as read on their source topic; forwarded ones leave `valid`."""
    records = [_Record(0, _VALUES[0]), _Record(1, _VALUES[1]), _Record(2, _VALUES[2])]
    valid: list[Any] = []
    rejected: list[Any] = []
    forwarded: list[int] = []

    def forward(record: Any, event: Any) -> bool:
        if event.event_id == "e2":
            forwarded.append(record.offset)
            return True
        return False

    last, newest = decode_records(
        records, 0, "", NOW_US, 65536, 300_000_000, valid, rejected, lambda record: "deals", forward
    )
    assert [event.event_id for event, _ in valid] == ["e1"]
    assert forwarded == [1]
    assert [(r.offset, out.reason) for r, out in rejected] == [(2, "wrong_topic")]
    assert (last, newest) == (2, valid[0][1])


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"deal.lost","event_id":"e1"}',
        '{"event_id":"e1", "type" :\t"deal.lost"}',
        '{"event_id":"e1",\n  "type"\r\n:\n "deal.lost"\n}',
        '{"note":"a \\"type\\" in text","type": "deal.lost","event_id":"e1"}',
        '{"meta":{"type":7},"x":{"type":"Deal.Lost"},"type":"deal.lost","event_id":"e1"}',
    ],
)
def test_the_type_guess_reads_any_spacing_and_skips_what_names_no_model(text: str) -> None:
    raw = json.loads(text) | {k: v for k, v in BASE.items() if k != "event_id"}
    event, _ = _decode(raw)  # type: ignore[misc]
    assert event.type == "deal.lost"
    # The raw text as written (spacing, key order) goes through decode too.
    body = text[:-1] + ", " + json.dumps({k: v for k, v in BASE.items() if k != "event_id"})[1:]
    event, _ = decode(body.encode(), "deals", NOW_US, 65536, 300_000_000)  # type: ignore[misc]
    assert event.type == "deal.lost"
