"""Fuzzing the event decoder (hypothesis): every input is accepted or rejected with a reason, never an exception.

`decode` runs on every record of every batch; an exception would stop the batch. The
inputs: arbitrary bytes; arbitrary JSON documents; valid events of every type with one
field replaced by an arbitrary JSON value, or an unknown field added; and the hostile
shapes producers have sent: deep nesting, 5,000-digit numbers, NaN and Infinity literals,
duplicate keys, NUL bytes, invalid UTF-8, a BOM, truncation.

CRM_KPI_FUZZ_EXAMPLES sets the number of examples per property (default 300; CI's
default keeps the file under a few seconds).
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import MODELS, TOPIC_FAMILY, type_of
from stream.events.decode import REASONS, Rejection, decode

NOW_US = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp()) * 1_000_000
FAMILIES = sorted(set(TOPIC_FAMILY.values()))
EXAMPLES = int(os.environ.get("CRM_KPI_FUZZ_EXAMPLES") or 300)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


_FIELD_VALUES: dict[str, Any] = {
    "occurred_at": "2026-05-01T10:00:00+02:00", "amount": 1250.5, "currency": "EUR", "score": 9, "kind": "nps",
    "channel": "ads", "stage": "proposal", "due_at": "2026-06-01T00:00:00Z",
}


def _samples() -> dict[str, dict[str, Any]]:
    """One valid event of every type: its required fields, filled in (checked against the model)."""
    out: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        event_type = type_of(model)
        schema = model.model_json_schema()
        event: dict[str, Any] = {"type": event_type}
        for name in schema.get("required", []):
            event.setdefault(name, _FIELD_VALUES.get(name, f"{name}-1"))
        if event_type == "activity.logged":
            event["kind"] = model.model_json_schema()["properties"]["kind"].get("enum", ["call"])[0]
        model.model_validate(event)
        out[event_type] = event
    return out


SAMPLES = _samples()

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["", "NaN", "2026-05-01T00:00:00Z", "lead.created", "\x00", "\ud7ff"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


def check(raw: bytes | None, family: str) -> None:
    """The property: a decoded event of this family with a finite time, or a rejection with a known reason."""
    out = decode(raw, family, NOW_US, 65536, 300_000_000)
    if isinstance(out, Rejection):
        assert out.reason in REASONS, out
        assert out.detail and len(out.detail) <= 300, out
        return
    event, t_us = out
    assert TOPIC_FAMILY[event.type] == family
    assert isinstance(t_us, int) and t_us <= NOW_US + 300_000_000
    for value in event.model_dump().values():
        if isinstance(value, float):
            assert math.isfinite(value), (event, value)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(FAMILIES))
def test_arbitrary_bytes(raw: bytes, family: str) -> None:
    check(raw, family)


@FUZZ
@given(json_values, st.sampled_from(FAMILIES))
def test_arbitrary_json(doc: Any, family: str) -> None:
    check(_dumps(doc), family)


@FUZZ
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_valid_events_with_one_field_replaced(event_type: str, data: st.DataObject) -> None:
    event = dict(SAMPLES[event_type])
    field = data.draw(st.sampled_from([*sorted(event), "extra"]))
    event[field] = data.draw(json_values)
    check(_dumps(event), TOPIC_FAMILY[event_type])
    check(_dumps(event), data.draw(st.sampled_from(FAMILIES)))


@FUZZ
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_valid_events_mangled(event_type: str, data: st.DataObject) -> None:
    raw = _dumps(SAMPLES[event_type])
    family = TOPIC_FAMILY[event_type]
    cut = data.draw(st.integers(0, len(raw)))
    junk = data.draw(st.sampled_from([b"\x00", b"\xff\xfe", b"\xc3\x28", b"\xef\xbb\xbf", b",", b"}", b"\\u0000",
                                      b"NaN", b"-Infinity", b"1e999999"]))
    check(raw[:cut], family)  # truncated
    check(raw[:cut] + junk + raw[cut:], family)  # something inserted
    check(b"\xef\xbb\xbf" + raw, family)  # a byte-order mark


def test_hostile_shapes() -> None:
    sample = SAMPLES["deal.won"]
    family = TOPIC_FAMILY["deal.won"]
    body = _dumps(sample)[1:-1]
    hostile = [
        None, b"", b"null", b"[]", b"{}", b'"x"', b"1", b"\x00" * 100,
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"type": "deal.won", "x": ' + b"[" * 5_000 + b"]" * 5_000 + b", " + body + b"}",
        b"{" + body + b', "amount": ' + b"9" * 5_000 + b"}",
        b"{" + body + b', "amount": -' + b"9" * 5_000 + b".5e-99999}",
        b"{" + body + b', "amount": NaN}',
        b"{" + body + b', "amount": Infinity}',
        b"{" + body + b', "amount": -Infinity}',
        b"{" + body + b', "amount": 1e400}',
        b"{" + body + b', "event_id": "dup", "event_id": "dup2"}',
        b"{" + body + b', "type": "lead.created"}',
        b"{" + body + b', "customer_id": "a\\u0000b"}',
        b"{" + body.replace(b'"deal.won"', b'"deal.w\xffon"') + b"}",
        b"{" + body + b', "occurred_at": "9999-12-31T23:59:59+14:00"}',
        b"{" + body + b', "occurred_at": "0001-01-01T00:00:00-14:00"}',
        b"{" + body + b', "occurred_at": 1e20}',
        b'{"type": "' + b"x" * 100_000 + b'"}',
    ]
    for raw in hostile:
        check(raw, family)
    # Non-finite amounts are never accepted as figures.
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        out = decode(b"{" + body + b', "amount": ' + literal + b"}", family, NOW_US, 1 << 20, 300_000_000)
        assert isinstance(out, Rejection), (literal, out)
