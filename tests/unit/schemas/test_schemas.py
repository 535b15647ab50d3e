"""The producers' event models (docs/events.md): what they accept, reject and export."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import schemas
from schemas import (
    CORE_TYPES,
    EVENT_TYPES,
    MODELS,
    TOPIC_FAMILY,
    DealWon,
    SurveySubmitted,
    TicketAnswered,
    TicketOpened,
    event_adapter,
    export_json_schemas,
    type_of,
    validate_event_json,
)
from tests.support.event_streams import Action, build

JSON_DIR = Path(schemas.__file__).parent / "json"
AT = "2026-11-23T10:15:30Z"

# One valid example per type, with only the required fields beyond the envelope.
EXAMPLES: dict[str, dict[str, Any]] = {
    "lead.created": {"lead_id": "l1"},
    "lead.converted": {"lead_id": "l1", "customer_id": "c1"},
    "lead.qualified": {"lead_id": "l1"},
    "lead.lost": {"lead_id": "l1", "reason": "budget"},
    "deal.created": {"deal_id": "d1", "customer_id": "c1", "amount": 100, "currency": "EUR"},
    "deal.won": {"deal_id": "d1", "customer_id": "c1", "amount": 99.5, "currency": "USD"},
    "deal.lost": {"deal_id": "d1", "customer_id": "c1"},
    "deal.stage_changed": {"deal_id": "d1", "customer_id": "c1", "stage": "proposal"},
    "quote.sent": {"quote_id": "q1", "customer_id": "c1", "amount": 10, "currency": "EUR"},
    "ticket.opened": {"ticket_id": "t1", "customer_id": "c1"},
    "ticket.answered": {"ticket_id": "t1", "customer_id": "c1"},
    "ticket.resolved": {"ticket_id": "t1", "customer_id": "c1"},
    "ticket.reopened": {"ticket_id": "t1", "customer_id": "c1"},
    "survey.submitted": {"survey_id": "s1", "customer_id": "c1", "kind": "nps", "score": 9},
    "customer.acquired": {"customer_id": "c1"},
    "customer.churned": {"customer_id": "c1"},
    "subscription.renewal_due": {"customer_id": "c1", "subscription_id": "sub1"},
    "subscription.renewed": {"customer_id": "c1", "subscription_id": "sub1"},
    "order.placed": {"order_id": "o1", "customer_id": "c1", "amount": 5, "currency": "EUR"},
    "order.delivered": {"order_id": "o1", "customer_id": "c1"},
    "invoice.issued": {
        "invoice_id": "i1",
        "customer_id": "c1",
        "amount": 5,
        "currency": "EUR",
        "due_at": "2026-12-23T00:00:00+01:00",
    },
    "invoice.paid": {"invoice_id": "i1", "customer_id": "c1"},
    "marketing.spend": {"campaign_id": "cmp1", "channel": "ads", "amount": 0, "currency": "EUR"},
    "activity.logged": {"user_id": "u1", "kind": "call"},
}


def event(kind: str, /, **changes: Any) -> dict[str, Any]:
    """A valid event of type `kind` as a dict; `changes` override or add fields."""
    out: dict[str, Any] = {"event_id": f"e-{kind}", "type": kind, "occurred_at": AT}
    out.update(EXAMPLES[kind])
    out.update(changes)
    return out


def parse(obj: dict[str, Any]) -> Any:
    """Validate `obj` the way the worker does: from JSON bytes."""
    return validate_event_json(orjson.dumps(obj))


def rejects(obj: dict[str, Any], field: str | None, error: str, message: str = "") -> None:
    """Assert `obj` is invalid for exactly one reason: `error` (pydantic's error type) at `field`.

    `field` None: the event as a whole (its type tag, a rule across fields); `message`, when
    given, must be part of the error's text.
    """
    with pytest.raises(ValidationError) as info:
        parse(obj)
    errors = [(e["loc"][1] if len(e["loc"]) > 1 else None, str(e["type"])) for e in info.value.errors()]
    assert errors == [(field, error)], info.value.errors()
    assert message in info.value.errors()[0]["msg"]


def without(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != name}


# --- catalogue ---------------------------------------------------------------


def test_catalogue_is_consistent() -> None:
    assert set(EXAMPLES) == set(EVENT_TYPES) == set(TOPIC_FAMILY)
    assert len(EVENT_TYPES) == 24
    assert {type_of(m) for m in MODELS} == set(EVENT_TYPES)
    assert set(CORE_TYPES) < set(EVENT_TYPES)
    assert set(TOPIC_FAMILY.values()) == {
        "leads", "deals", "tickets", "surveys", "customers", "orders", "marketing", "activities",
    }  # fmt: skip
    assert TOPIC_FAMILY["quote.sent"] == "deals"
    assert TOPIC_FAMILY["invoice.paid"] == "orders"


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_type_validates_a_good_example(kind: str) -> None:
    parsed = parse(event(kind))
    assert parsed.type == kind
    assert parsed.schema_version == 1
    assert parsed.occurred_at == datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)
    assert parsed.occurred_at.tzinfo is UTC


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_required_field_is_required(kind: str) -> None:
    good = event(kind)
    optional = {"reason", "lead_source", "campaign_id", "source", "schema_version"}
    for name in good:
        if name in optional:
            continue
        if name == "type":
            rejects(without(good, name), None, "union_tag_not_found")
        else:
            rejects(without(good, name), name, "missing")


def test_defaults() -> None:
    opened = parse(event("ticket.opened"))
    assert (opened.priority, opened.channel, opened.category) == ("normal", None, None)
    answered = parse(event("ticket.answered"))
    assert (answered.priority, answered.public, answered.author) == (None, True, "agent")
    assert answered.ticket_opened_at is None
    assert parse(event("deal.created")).stage == "new"
    assert parse(event("marketing.spend")).purpose == "acquisition"
    assert parse(event("deal.won")).deal_created_at is None


def test_customer_id_only_where_the_tables_say() -> None:
    for kind in ("lead.created", "lead.qualified", "lead.lost", "marketing.spend", "activity.logged"):
        assert not hasattr(parse(event(kind)), "customer_id"), kind
    rejects(without(event("lead.converted"), "customer_id"), "customer_id", "missing")


# --- envelope --------------------------------------------------------------


def test_unknown_extra_fields_are_ignored() -> None:
    parsed = parse(event("deal.won", colour="blue", nested={"a": [1, 2]}))
    assert not hasattr(parsed, "colour")
    assert "nested" not in parsed.model_dump()


def test_event_id_length() -> None:
    assert parse(event("deal.lost", event_id="x" * 128)).event_id == "x" * 128
    rejects(event("deal.lost", event_id="x" * 129), "event_id", "string_too_long")
    rejects(event("deal.lost", event_id=""), "event_id", "string_too_short")


def test_unknown_type_is_rejected() -> None:
    rejects(event("deal.lost", type="deal.maybe"), None, "union_tag_invalid")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T12:15:30+02:00", datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)),
        ("2026-11-23T00:30:00+02:00", datetime(2026, 11, 22, 22, 30, tzinfo=UTC)),
        ("2026-11-23T05:15:30.250-05:00", datetime(2026, 11, 23, 10, 15, 30, 250000, tzinfo=UTC)),
        ("2026-11-23t10:15:30z", datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)),
        ("2026-11-23 10:15:30-00:00", datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)),
    ],
)
def test_occurred_at_is_converted_to_utc(text: str, expected: datetime) -> None:
    parsed = parse(event("ticket.answered", occurred_at=text, ticket_opened_at=text))
    assert parsed.occurred_at == expected
    assert parsed.occurred_at.tzinfo is UTC
    assert parsed.occurred_at.utcoffset().total_seconds() == 0
    assert parsed.ticket_opened_at == expected
    assert parsed.ticket_opened_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("2026-11-23T10:15:30", "rfc3339"),  # naive
        ("2026-11-23", "rfc3339"),  # date only
        ("1700000000", "rfc3339"),  # unix seconds as a string
        (1700000000, "rfc3339"),  # unix seconds
        (1700000000.5, "rfc3339"),
        ("2026-11-23T10:15Z", "rfc3339"),  # no seconds
        ("2026-11-23T10:15:30+0200", "rfc3339"),  # offset without colon
        ("2026-11-23T10:15:30+02", "rfc3339"),
        ("2026-11-23T24:00:00Z", "value_error"),  # the right shape, not a time
        ("2026-13-01T10:00:00Z", "value_error"),
        ("2026-02-30T10:00:00Z", "value_error"),
        ("2026-11-23T10:15:30+24:00", "value_error"),
        ("٢٠٢٦-11-23T10:15:30Z", "rfc3339"),  # non-ASCII digits
        ("", "rfc3339"),
        (None, "rfc3339"),
        (True, "rfc3339"),
    ],
)
def test_occurred_at_must_be_rfc3339_with_offset(bad: object, error: str) -> None:
    rejects(event("deal.lost", occurred_at=bad), "occurred_at", error)
    rejects(event("invoice.issued", due_at=bad), "due_at", error)
    if bad is not None:  # these two are optional: null means absent
        rejects(event("order.placed", promised_at=bad), "promised_at", error)
        rejects(event("deal.won", deal_created_at=bad), "deal_created_at", error)
    else:
        assert parse(event("order.placed", promised_at=None)).promised_at is None


def test_schema_version_and_source() -> None:
    assert parse(event("deal.lost", schema_version=3, source="crm")).schema_version == 3
    rejects(event("deal.lost", schema_version=0), "schema_version", "greater_than_equal")
    rejects(event("deal.lost", schema_version="1"), "schema_version", "int_type")
    rejects(event("deal.lost", schema_version=1.0), "schema_version", "int_type")
    rejects(event("deal.lost", source="s" * 65), "source", "string_too_long")


# --- strict types ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "field", "value", "error"),
    [
        ("deal.lost", "customer_id", 42, "string_type"),
        ("deal.lost", "event_id", 1, "string_type"),
        ("deal.lost", "deal_id", None, "string_type"),
        ("deal.lost", "reason", 3, "string_type"),
        ("lead.created", "lead_source", ["web"], "string_type"),
        ("survey.submitted", "score", 9.0, "int_type"),
        ("survey.submitted", "score", "9", "int_type"),
        ("survey.submitted", "score", True, "int_type"),
        ("ticket.answered", "public", "true", "bool_type"),
        ("ticket.answered", "public", 1, "bool_type"),
        ("ticket.answered", "author", "human", "literal_error"),
        ("ticket.answered", "priority", "critical", "literal_error"),
        ("ticket.opened", "priority", "URGENT", "literal_error"),
        ("ticket.opened", "category", "praise", "literal_error"),
        ("marketing.spend", "purpose", "branding", "literal_error"),
        ("activity.logged", "kind", "lunch", "literal_error"),
        ("survey.submitted", "kind", "ces2", "literal_error"),
        ("deal.stage_changed", "stage", "", "string_too_short"),
        ("deal.stage_changed", "stage", "s" * 65, "string_too_long"),
        ("lead.created", "campaign_id", "c" * 129, "string_too_long"),
    ],
)
def test_ill_typed_fields_are_rejected(kind: str, field: str, value: object, error: str) -> None:
    rejects(event(kind, **{field: value}), field, error)


@pytest.mark.parametrize("currency", ["eur", "EURO", "EU", "", "E1R", "ÉUR", "XYZ", 978, None])
def test_bad_currency_is_rejected(currency: object) -> None:
    # One error whatever the input's type: not an ISO 4217 code (schemas' own "currency" type).
    rejects(event("deal.won", currency=currency), "currency", "currency")
    rejects(event("marketing.spend", currency=currency), "currency", "currency")


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        (-0.01, "greater_than_equal"),
        (-1, "greater_than_equal"),
        ("10", "amount_type"),  # a number, never a string
        ("0.1", "amount_type"),
        (True, "amount_type"),
        (None, "amount_type"),
        ([1], "amount_type"),
        ({"v": 1}, "amount_type"),
    ],
)
def test_bad_amount_is_rejected(amount: object, error: str) -> None:
    for kind in ("deal.created", "deal.won", "quote.sent", "order.placed", "invoice.issued", "marketing.spend"):
        rejects(event(kind, amount=amount), "amount", error)


@pytest.mark.parametrize("text", [b"1e400", b"-1e400", b"NaN", b"Infinity"])
def test_non_finite_amount_is_rejected(text: bytes) -> None:
    raw = orjson.dumps(event("deal.won", amount=0)).replace(b'"amount":0', b'"amount":' + text)
    with pytest.raises(ValidationError) as info:
        validate_event_json(raw)
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [(("deal.won", "amount"), "amount_type")]


@pytest.mark.parametrize(
    ("json_number", "expected"),
    [
        (b"0.1", "0.1"),
        (b"0", "0"),
        (b"1234.5", "1234.5"),
        (b"0.30000000000000004", "0.30000000000000004"),
        (b"123456789012345678901234567890", "123456789012345678901234567890"),
        (b"1e2", "100.0"),
    ],
)
def test_amount_is_an_exact_decimal_of_the_number_text(json_number: bytes, expected: str) -> None:
    raw = orjson.dumps(event("deal.won", amount=0)).replace(b'"amount":0', b'"amount":' + json_number)
    parsed = validate_event_json(raw)
    assert isinstance(parsed, DealWon)
    assert isinstance(parsed.amount, Decimal)
    assert parsed.amount == Decimal(expected)


# --- surveys -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "score"),
    [("nps", -1), ("nps", 11), ("csat", 0), ("csat", 6), ("ces", 0), ("ces", 8), ("csat", 10)],
)
def test_score_out_of_range_for_kind_is_rejected(kind: str, score: int) -> None:
    survey = event("survey.submitted", kind=kind, score=score)
    if score < 0:
        rejects(survey, "score", "greater_than_equal")  # outside every kind's range: the field's own bound
    elif score > 10:
        rejects(survey, "score", "less_than_equal")
    else:
        rejects(survey, None, "value_error", f"{kind} score must be between")


@given(
    st.sampled_from([("nps", 0, 10), ("csat", 1, 5), ("ces", 1, 7)]).flatmap(
        lambda k: st.tuples(st.just(k[0]), st.integers(k[1], k[2]))
    )
)
def test_any_valid_survey_score_round_trips(kind_score: tuple[str, int]) -> None:
    kind, score = kind_score
    parsed = parse(event("survey.submitted", kind=kind, score=score))
    assert isinstance(parsed, SurveySubmitted)
    assert (parsed.kind, parsed.score) == (kind, score)
    again = validate_event_json(parsed.model_dump_json())
    assert again == parsed


# --- models from Python ------------------------------------------------------


def test_models_are_frozen() -> None:
    parsed = parse(event("ticket.opened"))
    assert isinstance(parsed, TicketOpened)
    with pytest.raises(ValidationError) as info:
        parsed.priority = "high"
    assert info.value.errors()[0]["type"] == "frozen_instance"


def test_python_construction_accepts_aware_datetimes_and_decimals() -> None:
    moment = datetime.fromisoformat("2026-11-23T12:15:30+02:00")
    won = DealWon(
        event_id="e1",
        type="deal.won",
        occurred_at=moment,
        customer_id="c1",
        deal_id="d1",
        amount=Decimal("12.30"),
        currency="EUR",
    )
    assert won.occurred_at == moment
    assert won.occurred_at.tzinfo is UTC
    assert won.amount == Decimal("12.30")
    with pytest.raises(ValidationError) as info:
        TicketAnswered(
            event_id="e1",
            type="ticket.answered",
            occurred_at=datetime(2026, 11, 23, 10, 0),  # naive
            customer_id="c1",
            ticket_id="t1",
        )
    # Neither an aware datetime nor an RFC 3339 string: both union members say why.
    assert [(e["loc"][0], e["type"]) for e in info.value.errors()] == [
        ("occurred_at", "timezone_aware"),
        ("occurred_at", "rfc3339"),
    ]
    from_python = event_adapter.validate_python(orjson.loads(orjson.dumps(event("deal.won"))))
    assert from_python == parse(event("deal.won"))


# --- JSON Schemas ------------------------------------------------------------------


def test_committed_json_schemas_match_a_fresh_export(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{t}.json" for t in EVENT_TYPES)
    committed = sorted(p.name for p in JSON_DIR.glob("*.json"))
    assert committed == sorted(p.name for p in written), "run `crm-kpi schemas export schemas/json`"
    for path in written:
        fresh = path.read_bytes()
        assert fresh.endswith(b"}\n")
        assert (JSON_DIR / path.name).read_bytes() == fresh, (
            f"{path.name} drifted: run `crm-kpi schemas export schemas/json`"
        )


def test_export_is_deterministic(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path / "b")}
    assert first == second
    schema = orjson.loads(first["deal.won.json"])
    assert schema["properties"]["type"]["const"] == "deal.won"
    assert schema["properties"]["amount"] == {"minimum": 0, "title": "Amount", "type": "number"}
    assert schema["properties"]["occurred_at"]["format"] == "date-time"
    assert "occurred_at" in schema["required"]


# Producers validate against the exported schemas, not the models: they must accept what the worker
# accepts and refuse, for every rule a JSON Schema can say, what it refuses.
SCHEMAS = {kind: orjson.loads((JSON_DIR / f"{kind}.json").read_bytes()) for kind in EVENT_TYPES}


def schema_errors(doc: dict[str, Any], kind: str | None = None) -> list[str]:
    """What the exported schema of `kind` (default: the document's type) says is wrong with `doc`."""
    validator = jsonschema.Draft202012Validator(SCHEMAS[kind or doc["type"]])
    return [e.message for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_exported_schemas_accept_what_the_worker_accepts(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[kind])
    now = datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC)
    documents = [event(kind)] + [
        build(Action(kind, entity, age, variant), n, now, "js")
        for n, (entity, age, variant) in enumerate(itertools.product(range(2), (30, -60), range(12)))
    ]
    for doc in documents:
        parse(doc)  # the worker's models accept it
        assert schema_errors(doc) == [], doc


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        ("deal.won", {"currency": "eur"}),
        ("deal.won", {"amount": -1}),
        ("deal.won", {"amount": "10"}),
        ("marketing.spend", {"purpose": "branding"}),
        ("survey.submitted", {"kind": "csat", "score": 6}),
        ("survey.submitted", {"kind": "ces", "score": 0}),
        ("survey.submitted", {"kind": "nps", "score": 11}),
        ("survey.submitted", {"score": 9.5}),
        ("ticket.opened", {"priority": "URGENT"}),
        ("ticket.answered", {"public": "true"}),
        ("deal.lost", {"occurred_at": "2026-11-23T10:15:30"}),
        ("invoice.issued", {"due_at": "2026-11-23"}),
        ("deal.lost", {"event_id": "x" * 129}),
        ("deal.stage_changed", {"stage": ""}),
        ("deal.lost", {"type": "deal.won"}),  # another type's schema: a deal.won needs more
    ],
)
def test_exported_schemas_refuse_what_the_worker_refuses(kind: str, changes: dict[str, Any]) -> None:
    doc = event(kind, **changes)
    with pytest.raises(ValidationError):
        parse(doc)
    assert schema_errors(doc, kind), doc


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_exported_schemas_require_what_the_worker_requires(kind: str) -> None:
    good = event(kind)
    for name in SCHEMAS[kind]["required"]:
        assert schema_errors(without(good, name), kind), name
        if name != "type":
            rejects(without(good, name), name, "missing")
