"""Invalid records of every dead-letter reason, hostile bytes included (issue #11's poison flood).

Shared by the fault test (`test_poison_flood_…`) and `python -m bench.poison`, so the
benchmark measures the stream the test proves exact. Imports nothing from the product:
a record's expected reason is written here, independently of `stream.events.decode`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

__all__ = ["Poison", "hostile_records", "interleave"]

Poison = tuple[str, bytes, bytes, str]
"""(topic, key, value, the dead-letter reason the worker must give)."""


def hostile_records(topic: Callable[[str], str], rnd: random.Random, n: int, now: datetime) -> list[Poison]:
    """`n` invalid records, of every dead-letter reason and hostile bytes, shuffled.

    `topic` maps a family ('leads') to its topic name (`Settings.topic`).
    """
    leads, deals, surveys = topic("leads"), topic("deals"), topic("surveys")
    at = now.replace(microsecond=0).isoformat()
    deep = b"[" * 10_000 + b"]" * 10_000

    def new_id() -> str:
        return f"p{rnd.getrandbits(64)}"

    def lead(**extra: Any) -> bytes:
        body = {"event_id": new_id(), "type": "lead.created", "occurred_at": at, "lead_id": "l1"}
        return json.dumps(body | extra).encode()

    def won(amount: bytes, currency: str = "EUR") -> bytes:
        head = {"event_id": new_id(), "type": "deal.won", "occurred_at": at, "customer_id": "c1", "deal_id": "d1"}
        return json.dumps(head | {"currency": currency})[:-1].encode() + b', "amount": ' + amount + b"}"

    def survey(score: int) -> bytes:
        body = {"event_id": new_id(), "type": "survey.submitted", "occurred_at": at, "customer_id": "c1"}
        return json.dumps(body | {"survey_id": "s1", "kind": "nps", "score": score}).encode()

    kinds: list[tuple[str, Callable[[], bytes], str]] = [
        (leads, lambda: b"{not json", "invalid_json"),
        (leads, lambda: b"\xff\xfe invalid UTF-8 " + bytes(rnd.randrange(128, 256) for _ in range(20)), "invalid_json"),
        (leads, lambda: deep, "invalid_json"),  # 10,000-deep nesting
        (leads, lambda: lead()[:-1] + b', "x": ' + deep + b"}", "invalid_json"),
        (deals, lambda: won(b"9" * 5000), "invalid_json"),  # a 5,000-digit number
        (deals, lambda: won(b"NaN"), "invalid_json"),
        (deals, lambda: won(b"-Infinity"), "invalid_json"),
        (leads, lambda: b"\x00" * rnd.randrange(1, 64), "invalid_json"),
        (leads, lambda: lead().replace(b'"l1"', b'"l\x001"'), "invalid_json"),  # a raw NUL inside a string
        (leads, lambda: b"", "invalid_json"),
        (leads, lambda: b"\xef\xbb\xbf" + lead(), "invalid_json"),  # a byte-order mark
        (leads, lambda: b"[1, 2, 3]", "not_an_object"),
        (leads, lambda: b'"a string"', "not_an_object"),
        (leads, lambda: b"null", "not_an_object"),
        (leads, lambda: lead(event_id=None), "invalid_fields"),
        (surveys, lambda: survey(11), "invalid_fields"),
        (deals, lambda: won(b"-5"), "invalid_fields"),
        (deals, lambda: won(b"5", currency="euro"), "invalid_fields"),
        (leads, lambda: lead(type="lead.teleported"), "unknown_type"),
        (deals, lambda: lead(), "wrong_topic"),
        (leads, lambda: lead(occurred_at="2999-01-01T00:00:00Z"), "future_timestamp"),
    ]
    big = min(20, n // 10)  # 200 KB records: a few are enough, each costs 0.2 MB three times over
    out = [(leads, b"k-big", lead(padding="x" * 200_000), "too_large") for _ in range(big)]
    for i in range(n - big):
        where, make, reason = kinds[i % len(kinds)]
        out.append((where, f"k{rnd.randrange(500)}".encode(), make(), reason))
    rnd.shuffle(out)
    return out


def interleave(
    valid: Sequence[tuple[str, bytes, bytes]], poison: Sequence[Poison], rnd: random.Random
) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) to publish: the valid records in their order, each poison record anywhere."""
    # A slot per gap between valid records (list.insert per record is quadratic at bench sizes).
    slots: list[list[tuple[str, bytes, bytes]]] = [[] for _ in range(len(valid) + 1)]
    for where, key, value, _ in poison:
        slots[rnd.randrange(len(slots))].append((where, key, value))
    mixed = []
    for before, record in zip(slots, valid, strict=False):
        mixed.extend(before)
        mixed.append(record)
    mixed.extend(slots[-1])
    return mixed
