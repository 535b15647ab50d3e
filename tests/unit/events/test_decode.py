"""Record bytes to event or dead-letter reason (stream.events.decode), edge cases of the type-directed path."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import event_adapter
from stream.events.decode import Rejection, decode

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
