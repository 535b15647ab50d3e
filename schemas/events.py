"""Pydantic models of the CRM events producers publish (docs/events.md).

Validation is strict and runs almost entirely inside pydantic-core: strings
must be JSON strings, integers JSON integers, booleans JSON booleans.
Timestamps are RFC 3339 strings with an offset, returned as aware UTC
datetimes; amounts are JSON numbers >= 0, returned as `Decimal` built from the
number's shortest text form (0.1 stays Decimal("0.1")).

One module on purpose, though long: it is the one concept "what an event may look
like", 24 small models over one shared envelope and field types, read by producers
side by side with docs/events.md.
"""

from __future__ import annotations

import operator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Self

from iso4217 import Currency as Iso4217Currency
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    TypeAdapter,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from pydantic_core import core_schema as cs

__all__ = [
    "CATALOG_MODELS",
    "CORE_MODELS",
    "CORE_TYPES",
    "CURRENCY_CODES",
    "EVENT_TYPES",
    "MODELS",
    "TOPIC_FAMILY",
    "ActivityLogged",
    "Amount",
    "CustomerAcquired",
    "CustomerChurned",
    "DealCreated",
    "DealLost",
    "DealStageChanged",
    "DealWon",
    "Envelope",
    "Event",
    "InvoiceIssued",
    "InvoicePaid",
    "LeadConverted",
    "LeadCreated",
    "LeadLost",
    "LeadQualified",
    "MarketingSpend",
    "OrderDelivered",
    "OrderPlaced",
    "QuoteSent",
    "SubscriptionRenewalDue",
    "SubscriptionRenewed",
    "SurveySubmitted",
    "TicketAnswered",
    "TicketOpened",
    "TicketReopened",
    "TicketResolved",
    "UtcDatetime",
    "event_adapter",
    "type_of",
    "validate_event_json",
]

# `[0-9]`, not `\d`: the Rust regex engine's `\d` matches any Unicode digit.
RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


# Both steps after the pattern are C-level callables, not Python functions: pydantic-core
# calls them for every timestamp of every event (the worker's hot path). `fromisoformat`
# returns `datetime.UTC` itself for "Z" and "+00:00", which `astimezone(UTC)` then hands
# back as it is; pydantic-core's own parser returned an offset object that made the UTC
# conversion cost ~0.5 µs a timestamp.
_to_utc: Final = operator.methodcaller("astimezone", UTC)
_parse: Final = datetime.fromisoformat


class _Rfc3339:
    """Core schema of an RFC 3339 timestamp with offset, converted to UTC.

    JSON input: a string matching RFC3339_PATTERN (so no naive times, no
    date-only, no unix numbers or numeric strings, no `+0200`), upper-cased (RFC
    3339 allows a lower-case "t" and "z"), then parsed by `datetime.fromisoformat`,
    which refuses what has the shape but is no time ("24:00:00", month 13) with
    a `value_error` naming the field at fault. Digits beyond microseconds are
    dropped. Python input additionally accepts an aware `datetime`.
    """

    def __get_pydantic_core_schema__(self, source_type: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        from_text = cs.chain_schema(
            [
                cs.custom_error_schema(
                    cs.str_schema(pattern=RFC3339_PATTERN, strict=True, to_upper=True),
                    custom_error_type="rfc3339",
                    custom_error_message=(
                        "Input should be an RFC 3339 timestamp with an offset "
                        "(YYYY-MM-DDThh:mm:ss[.frac] then Z or ±hh:mm)"
                    ),
                ),
                cs.no_info_plain_validator_function(_parse),
            ]
        )
        from_python = cs.union_schema(
            [cs.datetime_schema(tz_constraint="aware", strict=True), from_text],
            mode="left_to_right",
        )
        return cs.json_or_python_schema(
            json_schema=cs.no_info_after_validator_function(_to_utc, from_text),
            python_schema=cs.no_info_after_validator_function(_to_utc, from_python),
        )

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}


class _Amount:
    """Core schema of a money amount: a finite JSON number >= 0, as `Decimal`.

    JSON strings and booleans are rejected. Floats become Decimal(str(f)),
    so 0.1 is Decimal("0.1"); integers of any size stay exact. Python input
    additionally accepts a `Decimal`.
    """

    def __get_pydantic_core_schema__(self, source_type: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        def number(*extra: CoreSchema) -> CoreSchema:
            return cs.custom_error_schema(
                cs.union_schema(
                    [
                        cs.int_schema(strict=True),
                        cs.float_schema(strict=True, allow_inf_nan=False),
                        *extra,
                    ],
                    mode="left_to_right",
                ),
                custom_error_type="amount_type",
                custom_error_message="Input should be a finite JSON number",
            )

        # Lax decimal: it receives an int/float/Decimal already checked above.
        to_decimal = cs.decimal_schema(ge=Decimal(0), allow_inf_nan=False, strict=False)
        return cs.json_or_python_schema(
            json_schema=cs.chain_schema([number(), to_decimal]),
            python_schema=cs.chain_schema([number(cs.decimal_schema(strict=True)), to_decimal]),
        )

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "number", "minimum": 0}


CURRENCY_CODES: Final[tuple[str, ...]] = tuple(sorted(c.value for c in Iso4217Currency))
"""The ISO 4217 currency codes (the maintained `iso4217` package's list)."""


class _Currency:
    """Core schema of a currency: one of the ISO 4217 codes, checked in pydantic-core.

    A literal set rather than a pattern: `[A-Z]{3}` admits 17,576 strings, so a
    typo ("EUD") would open a new `currency` label on every revenue metric.
    """

    def __get_pydantic_core_schema__(self, source_type: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return cs.custom_error_schema(
            cs.literal_schema(list(CURRENCY_CODES)),
            custom_error_type="currency",
            custom_error_message="Input should be an ISO 4217 currency code (e.g. EUR, USD)",
        )

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "enum": list(CURRENCY_CODES), "description": "ISO 4217 currency code"}


UtcDatetime = Annotated[datetime, _Rfc3339()]
"""Aware datetime in UTC, from an RFC 3339 string with offset (Z or ±hh:mm)."""

Amount = Annotated[Decimal, _Amount()]
"""Decimal >= 0 from a JSON number (never a string); no currency conversion."""

Id = Annotated[str, Field(min_length=1, max_length=128)]
Currency = Annotated[str, _Currency()]
# Free-text labels are capped to allow-lists by the worker (docs/kpi-definitions.md), not here.
Label = Annotated[str, Field(max_length=64)]
RequiredLabel = Annotated[str, Field(min_length=1, max_length=64)]
Priority = Literal["low", "normal", "high", "urgent"]

_SCORE_RANGE: Final[dict[str, tuple[int, int]]] = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}


class Envelope(BaseModel):
    """Fields every event carries (docs/events.md); subclasses narrow `type` to a Literal.

    Unknown fields are ignored for forward compatibility; instances are frozen.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    event_id: Id
    type: str
    occurred_at: UtcDatetime
    schema_version: int = Field(default=1, ge=1)
    source: Label | None = None


class _CustomerEnvelope(Envelope):
    customer_id: Id


class _Priced(_CustomerEnvelope):
    amount: Amount
    currency: Currency


# --- core types (leads, deals, tickets, surveys) -------------------------------------------------------------


class LeadCreated(Envelope):
    """A new lead; no customer exists yet."""

    type: Literal["lead.created"]
    lead_id: Id
    lead_source: Label | None = None
    campaign_id: Id | None = None


class LeadConverted(_CustomerEnvelope):
    """A lead became the customer `customer_id`."""

    type: Literal["lead.converted"]
    lead_id: Id


class DealCreated(_Priced):
    """A deal opened with its expected amount; `stage` defaults to "new"."""

    type: Literal["deal.created"]
    deal_id: Id
    stage: RequiredLabel = "new"


class DealWon(_Priced):
    """A deal won; `deal_created_at` (UTC) lets the sales cycle be measured without deal.created."""

    type: Literal["deal.won"]
    deal_id: Id
    deal_created_at: UtcDatetime | None = None


class DealLost(_CustomerEnvelope):
    """A deal lost, with an optional free-text reason (≤ 64 chars)."""

    type: Literal["deal.lost"]
    deal_id: Id
    reason: Label | None = None


class TicketOpened(_CustomerEnvelope):
    """A support ticket opened; priority defaults to "normal"."""

    type: Literal["ticket.opened"]
    ticket_id: Id
    priority: Priority = "normal"
    channel: Label | None = None
    category: Literal["question", "problem", "complaint", "cancellation", "other"] | None = None


class TicketAnswered(_CustomerEnvelope):
    """An answer on a ticket; only `public` answers by an `agent` count as responses.

    `ticket_opened_at` and `priority` stand in when the opening is unknown;
    `priority` is None when absent (the worker then assumes "normal").
    """

    type: Literal["ticket.answered"]
    ticket_id: Id
    agent_id: Id | None = None
    ticket_opened_at: UtcDatetime | None = None
    priority: Priority | None = None
    public: bool = True
    author: Literal["agent", "bot"] = "agent"


class SurveySubmitted(_CustomerEnvelope):
    """A survey answer; score range depends on kind: nps 0–10, csat 1–5, ces 1–7."""

    # The per-kind ranges below are enforced by `_score_in_range`; this only
    # publishes them to producers reading the JSON Schema.
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"kind": {"const": kind}}},
                    "then": {"properties": {"score": {"minimum": low, "maximum": high}}},
                }
                for kind, (low, high) in _SCORE_RANGE.items()
            ]
        }
    )

    type: Literal["survey.submitted"]
    survey_id: Id
    kind: Literal["nps", "csat", "ces"]
    # The field bounds cover every kind; the validator narrows per kind.
    score: int = Field(ge=0, le=10)

    @model_validator(mode="after")
    def _score_in_range(self) -> Self:
        low, high = _SCORE_RANGE[self.kind]
        if not low <= self.score <= high:
            raise ValueError(f"{self.kind} score must be between {low} and {high}, got {self.score}")
        return self


# --- the rest of the catalog -----------------------------------------------------


class LeadQualified(Envelope):
    """A lead qualified by sales (no customer yet)."""

    type: Literal["lead.qualified"]
    lead_id: Id


class LeadLost(Envelope):
    """A lead dropped, with an optional free-text reason (≤ 64 chars)."""

    type: Literal["lead.lost"]
    lead_id: Id
    reason: Label | None = None


class DealStageChanged(_CustomerEnvelope):
    """A deal moved to `stage` (free text, 1–64 chars)."""

    type: Literal["deal.stage_changed"]
    deal_id: Id
    stage: RequiredLabel


class QuoteSent(_Priced):
    """A quote sent to a customer, optionally for a deal."""

    type: Literal["quote.sent"]
    quote_id: Id
    deal_id: Id | None = None


class TicketResolved(_CustomerEnvelope):
    """A ticket resolved."""

    type: Literal["ticket.resolved"]
    ticket_id: Id


class TicketReopened(_CustomerEnvelope):
    """A resolved ticket reopened (back in the backlog)."""

    type: Literal["ticket.reopened"]
    ticket_id: Id


class CustomerAcquired(_CustomerEnvelope):
    """A new customer, with an optional free-text segment (≤ 64 chars)."""

    type: Literal["customer.acquired"]
    segment: Label | None = None


class CustomerChurned(_CustomerEnvelope):
    """A customer lost, with an optional free-text reason (≤ 64 chars)."""

    type: Literal["customer.churned"]
    reason: Label | None = None


class SubscriptionRenewalDue(_CustomerEnvelope):
    """A subscription reached its renewal date."""

    type: Literal["subscription.renewal_due"]
    subscription_id: Id


class SubscriptionRenewed(_CustomerEnvelope):
    """A subscription renewed."""

    type: Literal["subscription.renewed"]
    subscription_id: Id


class OrderPlaced(_Priced):
    """An order; `quote_id` links it to a sent quote, `promised_at` (UTC) is the promised delivery."""

    type: Literal["order.placed"]
    order_id: Id
    quote_id: Id | None = None
    promised_at: UtcDatetime | None = None


class OrderDelivered(_CustomerEnvelope):
    """An order delivered."""

    type: Literal["order.delivered"]
    order_id: Id


class InvoiceIssued(_Priced):
    """An invoice issued; `due_at` (UTC) is required."""

    type: Literal["invoice.issued"]
    invoice_id: Id
    due_at: UtcDatetime


class InvoicePaid(_CustomerEnvelope):
    """An invoice paid in full."""

    type: Literal["invoice.paid"]
    invoice_id: Id


class MarketingSpend(Envelope):
    """Money spent on a campaign; `purpose` is acquisition (default) or retention."""

    type: Literal["marketing.spend"]
    campaign_id: Id
    channel: RequiredLabel
    amount: Amount
    currency: Currency
    purpose: Literal["acquisition", "retention"] = "acquisition"


class ActivityLogged(Envelope):
    """An activity logged by the CRM user `user_id`."""

    type: Literal["activity.logged"]
    user_id: Id
    kind: Literal["call", "email", "meeting", "note", "other"]


Event = Annotated[
    LeadCreated
    | LeadConverted
    | LeadQualified
    | LeadLost
    | DealCreated
    | DealWon
    | DealLost
    | DealStageChanged
    | QuoteSent
    | TicketOpened
    | TicketAnswered
    | TicketResolved
    | TicketReopened
    | SurveySubmitted
    | CustomerAcquired
    | CustomerChurned
    | SubscriptionRenewalDue
    | SubscriptionRenewed
    | OrderPlaced
    | OrderDelivered
    | InvoiceIssued
    | InvoicePaid
    | MarketingSpend
    | ActivityLogged,
    Field(discriminator="type"),
]
"""Any event, discriminated by its `type` field."""

CORE_MODELS: Final[tuple[type[Envelope], ...]] = (
    LeadCreated,
    LeadConverted,
    DealCreated,
    DealWon,
    DealLost,
    TicketOpened,
    TicketAnswered,
    SurveySubmitted,
)
"""Model classes of the core types, in table order."""

CATALOG_MODELS: Final[tuple[type[Envelope], ...]] = (
    LeadQualified,
    LeadLost,
    DealStageChanged,
    QuoteSent,
    TicketResolved,
    TicketReopened,
    CustomerAcquired,
    CustomerChurned,
    SubscriptionRenewalDue,
    SubscriptionRenewed,
    OrderPlaced,
    OrderDelivered,
    InvoiceIssued,
    InvoicePaid,
    MarketingSpend,
    ActivityLogged,
)
"""Model classes of the types beyond the core."""

MODELS: Final[tuple[type[Envelope], ...]] = CORE_MODELS + CATALOG_MODELS
"""Every event model class."""


def type_of(model: type[Envelope]) -> str:
    """The `type` string an event model class accepts (its Literal's only value)."""
    value: str = model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    return value


TOPIC_FAMILY: Final[dict[str, str]] = {
    "lead.created": "leads",
    "lead.converted": "leads",
    "lead.qualified": "leads",
    "lead.lost": "leads",
    "deal.created": "deals",
    "deal.won": "deals",
    "deal.lost": "deals",
    "deal.stage_changed": "deals",
    "quote.sent": "deals",
    "ticket.opened": "tickets",
    "ticket.answered": "tickets",
    "ticket.resolved": "tickets",
    "ticket.reopened": "tickets",
    "survey.submitted": "surveys",
    "customer.acquired": "customers",
    "customer.churned": "customers",
    "subscription.renewal_due": "customers",
    "subscription.renewed": "customers",
    "order.placed": "orders",
    "order.delivered": "orders",
    "invoice.issued": "orders",
    "invoice.paid": "orders",
    "marketing.spend": "marketing",
    "activity.logged": "activities",
}
"""Event type -> topic family, without the configurable `crm.` prefix."""

EVENT_TYPES: Final[tuple[str, ...]] = tuple(TOPIC_FAMILY)
"""Every event type string."""

CORE_TYPES: Final[tuple[str, ...]] = (
    "lead.created",
    "lead.converted",
    "deal.created",
    "deal.won",
    "deal.lost",
    "ticket.opened",
    "ticket.answered",
    "survey.submitted",
)
"""The core event types (the four KPI families: leads, deals, tickets, surveys)."""

event_adapter: Final[TypeAdapter[Event]] = TypeAdapter(Event)
"""Validator of any event; built once at import (schema compilation is slow)."""


def validate_event_json(raw: bytes | bytearray | str) -> Event:
    """Parse and validate one JSON-encoded event.

    Raises pydantic.ValidationError for invalid JSON, a non-object, an
    unknown `type` or any field rule broken; timestamps come back in UTC.
    """
    return event_adapter.validate_json(raw)
