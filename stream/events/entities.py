"""Entity states: how joined figures stay order-independent (pure, no I/O).

An entity (a ticket, a deal, a customer) keeps a small state in Redis. Each
event merges into it with commutative rules (earliest opening, earliest public
agent answer, …), so the state — and everything derived from it — does not
depend on the order events arrive in. What an entity adds to the KPIs is a
function of its state (`contribute`); when an event changes the state, the
batch applies contribute(new) − contribute(old). Out-of-order arrivals
therefore end in the same figures as in-order ones: a response time becomes
known when the opening arrives after the answer, and an earlier answer
arriving late replaces a later one as the first.

This module holds the machinery only; the states themselves, with the KPIs
they feed, live in the KPI domain modules (`stream.kpis.support`, …).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

__all__ = ["Contribution", "EntityKind", "EntityState", "PackedState", "earlier"]


class Contribution:
    """What one entity state adds: windowed counters at event times, and current state.

    A plain class, not a dataclass: the fold builds two per changed entity, and
    a compiled (mypyc) class builds fastest from its own `__init__`.
    """

    def __init__(self) -> None:
        self.window: list[tuple[int, str, int]] = []  # (t_us, field, delta)
        self.members: list[tuple[int, str, str, int]] = []  # (t_us, distinct name, member, delta)
        self.counters: dict[str, int] = {}  # non-windowed counters
        self.zmembers: set[tuple[str, str, float]] = set()  # (sorted set, member, score in unix s)


E = TypeVar("E", bound="EntityState")


class EntityState:
    """Base of every entity state: merge events, say what it contributes, encode itself.

    `absorb` merges an event into the state in place; `merge` returns the merged
    copy and leaves the state as it was. The fold copies a state once per batch
    and absorbs each of the batch's events into the copy. A class rather than a
    Protocol: compiled by mypyc, the fold then calls these methods directly
    instead of looking each up by name (~7 calls per event).
    """

    def absorb(self, event: Any, t_us: int) -> None:
        """Merge `event` (at t_us) into this state, in place (each subclass's rules)."""
        raise NotImplementedError

    def copy(self: E) -> E:
        """An equal state that absorbing into leaves this one as it is."""
        raise NotImplementedError

    def contribute(self, entity_id: str, config: Any) -> Contribution:
        """What the state adds to the KPIs (`config`: the KPI settings)."""
        raise NotImplementedError

    def encode(self) -> str:
        """The state's text in Redis; canonical (one text per state), "" for the empty state."""
        raise NotImplementedError

    def merge(self: E, event: Any, t_us: int) -> E:
        """The state after `event` (at t_us); self is unchanged."""
        new = self.copy()
        new.absorb(event, t_us)
        return new

    def persistent(self) -> bool:
        """True when the state must outlive the state TTL (it holds open "current" figures)."""
        return False


@dataclass(frozen=True)
class EntityKind:
    """A kind of joined entity: its name, key tag, the event types it consumes, its state decoder.

    `id_of` returns None when an event does not touch an entity of the kind (an
    order without a quote id touches no quote). `key_tag` names the kind in its
    Redis keys ('{prefix}:<key_tag>:<entity id>'): short on purpose, since it is
    repeated in every entity key (millions of them), and fixed once data is stored.
    """

    name: str
    key_tag: str
    types: frozenset[str]
    id_of: Callable[[Any], str | None]
    decode: Callable[[str | None], EntityState]


def earlier(current: int | None, candidate: int) -> bool:
    """True when `candidate` replaces `current` as the earliest time seen."""
    return current is None or candidate < current


S = TypeVar("S", bound="PackedState")


class PackedState(EntityState):
    """Base of dataclass states made of optional ints and strings, encoded '|'-joined.

    Fields whose names end in `_us` (µs since the epoch, or a duration) or
    `_micros` (an amount in micro-units) hold integers, every other field text;
    every field defaults to None. The encoding is canonical (one text per state),
    which lets the fold compare a state's new encoding with the raw value it read
    instead of decoding twice. No `__dict__` tricks: these classes are compiled
    by mypyc too (setup.py), and compiled instances have none.
    """

    def encode(self) -> str:
        # Runs for every entity a batch touches: _quote only for text that needs escaping.
        parts: list[str] = []
        for v in _layout(type(self)).values(self):
            if v is None:
                parts.append("")
            elif type(v) is int:
                parts.append(str(v))
            elif "%" in v or "|" in v:
                parts.append(_quote(v))
            else:
                parts.append(v)
        return "|".join(parts)

    @classmethod
    def decode(cls: type[S], raw: str | None) -> S:
        if not raw:
            return cls()
        # A text written with fewer fields (an older layout) leaves the new ones at None.
        values = [
            (int(part) if is_int else _unquote(part)) if part else None
            for is_int, part in zip(_layout(cls).ints, raw.split("|"), strict=False)
        ]
        return cls(*values)

    def copy(self: S) -> S:
        cls = type(self)
        return cls(*_layout(cls).values(self))


class _Layout:
    """A PackedState class's fields in order: which hold integers, and a getter of all values at once."""

    def __init__(self, cls: type) -> None:
        names = tuple(f.name for f in fields(cls))
        self.ints = tuple(name.endswith(("_us", "_micros")) for name in names)
        getter = operator.attrgetter(*names)
        self.values: Callable[[Any], tuple[Any, ...]] = getter if len(names) > 1 else lambda state: (getter(state),)


_LAYOUTS: dict[type, _Layout] = {}


def _layout(cls: type) -> _Layout:
    layout = _LAYOUTS.get(cls)
    if layout is None:
        layout = _LAYOUTS[cls] = _Layout(cls)
    return layout


def _quote(text: str) -> str:
    # Free-text parts (ids, labels) may hold the separator: escape it and the escape.
    return text.replace("%", "%25").replace("|", "%7C")


def _unquote(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%") if "%" in part else part
