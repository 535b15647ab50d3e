"""Stateful joins as order-independent entity states (pure, no I/O).

An entity (a ticket, a deal) keeps a small state in Redis. Each event merges
into it with commutative rules (earliest opening, earliest public agent answer,
…), so the state — and everything derived from it — does not depend on the
order events arrive in. What an entity adds to the KPIs is a function of its
state (`contribute`); when an event changes the state, the batch applies
contribute(new) − contribute(old). Out-of-order arrivals therefore end in the
same figures as in-order ones: a response time becomes known when the opening
arrives after the answer, and an earlier answer arriving late replaces a later
one as the first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

from stream import sketch
from stream.kpis import Field

__all__ = [
    "ENTITIES",
    "Contribution",
    "DealState",
    "EntityKind",
    "TicketState",
    "to_us",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact, no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class Contribution:
    """What one entity state adds: windowed counters at event times, and current state."""

    window: list[tuple[int, str, int]] = field(default_factory=list)  # (t_us, field, delta)
    counters: dict[str, int] = field(default_factory=dict)  # non-windowed counters
    zmembers: set[tuple[str, str, float]] = field(default_factory=set)  # (zset, member, score)


S = TypeVar("S", bound="_State")


class _State:
    """Compact '|'-joined encoding of a dataclass of optional ints and strings."""

    _ints: ClassVar[frozenset[str]] = frozenset()

    def encode(self) -> str:
        return "|".join("" if v is None else str(v) for v in (getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]

    @classmethod
    def decode(cls: type[S], raw: str | None) -> S:
        if not raw:
            return cls()
        values: dict[str, Any] = {}
        for f, part in zip(fields(cls), raw.split("|"), strict=False):  # type: ignore[arg-type]
            values[f.name] = None if part == "" else (int(part) if f.name in cls._ints else part)
        return cls(**values)


def _earlier(current: int | None, candidate: int) -> bool:
    return current is None or candidate < current


@dataclass
class TicketState(_State):
    """A ticket: its opening, a hinted opening from answers, and its first response."""

    opened_us: int | None = None
    priority: str | None = None
    hint_us: int | None = None
    hint_priority: str | None = None
    answered_us: int | None = None

    _ints: ClassVar[frozenset[str]] = frozenset({"opened_us", "hint_us", "answered_us"})

    def merge(self, event: Any, t_us: int) -> TicketState:
        """The state after `event` (ticket.opened / ticket.answered); self is unchanged."""
        new = replace(self)
        if event.type == "ticket.opened":
            if _earlier(new.opened_us, t_us):
                new.opened_us, new.priority = t_us, event.priority
        elif event.type == "ticket.answered":
            if event.ticket_opened_at is not None:
                hint = to_us(event.ticket_opened_at)
                if _earlier(new.hint_us, hint):
                    new.hint_us, new.hint_priority = hint, event.priority
            # SPEC §3.2: only a public answer by an agent is a response.
            if event.public and event.author == "agent" and _earlier(new.answered_us, t_us):
                new.answered_us = t_us
        return new

    def contribute(self, ctx: JoinContext) -> Contribution:
        """First-response samples at the first answer's time; the awaiting-response set."""
        out = Contribution()
        opening = self.opened_us if self.opened_us is not None else self.hint_us
        if self.answered_us is not None and opening is not None:
            # An answer stamped before its opening (producer clocks) counts as instant.
            rt_us = max(0, self.answered_us - opening)
            prio = self.priority or self.hint_priority or "normal"
            at = self.answered_us
            out.window += [
                (at, Field.FR_N, 1),
                (at, Field.FR_US, rt_us),
                (at, Field.fr_bucket(sketch.bucket_index(rt_us / 1e6)), 1),
                (at, Field.fr_priority(prio), 1),
            ]
            if rt_us > ctx.sla[prio] * 1_000_000:
                out.window.append((at, Field.fr_breach(prio), 1))
        if self.opened_us is not None and self.answered_us is None:
            out.zmembers.add((Field.awaiting(self.priority or "normal"), ctx.entity_id, self.opened_us / 1e6))
        return out


@dataclass
class DealState(_State):
    """A deal: its stored creation, the creation time a won event carried, its win."""

    created_us: int | None = None
    created_hint_us: int | None = None
    won_us: int | None = None

    _ints: ClassVar[frozenset[str]] = frozenset({"created_us", "created_hint_us", "won_us"})

    def merge(self, event: Any, t_us: int) -> DealState:
        """The state after `event` (deal.created / deal.won); self is unchanged."""
        new = replace(self)
        if event.type == "deal.created":
            if _earlier(new.created_us, t_us):
                new.created_us = t_us
        elif event.type == "deal.won":
            if _earlier(new.won_us, t_us):
                new.won_us = t_us
                if event.deal_created_at is not None:
                    new.created_hint_us = to_us(event.deal_created_at)
            elif new.created_hint_us is None and event.deal_created_at is not None:
                new.created_hint_us = to_us(event.deal_created_at)
        return new

    def contribute(self, ctx: JoinContext) -> Contribution:
        """One sales-cycle sample at the win, when the creation time is known."""
        out = Contribution()
        created = self.created_hint_us if self.created_hint_us is not None else self.created_us
        if self.won_us is not None and created is not None:
            out.window += [
                (self.won_us, Field.CYCLE_N, 1),
                (self.won_us, Field.CYCLE_US, self.won_us - created),
            ]
        return out


@dataclass(frozen=True)
class JoinContext:
    """What `contribute` may know beyond the state: the entity's id and the SLAs (s)."""

    entity_id: str
    sla: Mapping[str, float]


class _Stateful(Protocol):
    def merge(self, event: Any, t_us: int) -> Any: ...
    def contribute(self, ctx: JoinContext) -> Contribution: ...
    def encode(self) -> str: ...


@dataclass(frozen=True)
class EntityKind:
    """A kind of joined entity: its key tag, the event types it consumes, its state class."""

    tag: str
    types: frozenset[str]
    id_of: Callable[[Any], str]
    decode: Callable[[str | None], Any]


ENTITIES: tuple[EntityKind, ...] = (
    EntityKind("t", frozenset({"ticket.opened", "ticket.answered"}), lambda e: e.ticket_id, TicketState.decode),
    EntityKind("d", frozenset({"deal.created", "deal.won"}), lambda e: e.deal_id, DealState.decode),
)
