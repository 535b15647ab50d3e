"""Per-customer churn-risk points over a trailing 30 days (docs/kpi-definitions.md). Pure.

Points, each counted per occurrence within the 30 days before the moment of
reading: complaint ticket 2, cancellation ticket 3, each ticket beyond the
third 1, NPS 0–6 2, CSAT ≤ 2 2, CES ≥ 6 1. A customer is at risk while not
churned and their points reach the threshold (default 4).

Points only fall as time passes (items leave the 30 days), so the moment a
customer falls under the threshold is known when their items are: `expiry_us`.
The worker keeps one sorted set of at-risk customers scored by that moment;
the exporter counts the scores still ahead of now (one ZCOUNT per scrape,
whatever the number of customers), and `crm-kpi at-risk` recomputes points and
reasons for those customers from their stored items.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Final

__all__ = [
    "FREE_TICKETS",
    "POINTS",
    "TICKETS",
    "TYPES",
    "WINDOW_US",
    "Item",
    "expiry_us",
    "item_of",
    "points",
    "reasons",
    "relevant",
]

WINDOW_US: Final = 30 * 86400 * 1_000_000
TYPES: Final = frozenset({"ticket.opened", "survey.submitted", "customer.churned"})

# Item codes: T ticket, C complaint ticket, X cancellation ticket, N NPS 0-6, S CSAT <= 2, E CES >= 6.
TICKETS: Final = frozenset("TCX")
"""The item codes that are tickets (each ticket beyond the third scores 1)."""
POINTS: Final = {"C": 2, "X": 3, "N": 2, "S": 2, "E": 1}
"""Points of an item by code, besides the ticket rule (a plain ticket "T" scores only through it)."""
FREE_TICKETS: Final = 3
_LABEL: Final = {
    "C": "complaint ticket",
    "X": "cancellation ticket",
    "N": "NPS 0-6",
    "S": "CSAT <= 2",
    "E": "CES >= 6",
    "T": "ticket beyond the third",
}

Item = tuple[int, str, str]  # (occurred_at µs, code, key: ticket id or survey event id)


def relevant(event: Any) -> bool:
    """Whether an event can change a customer's risk (every ticket counts toward the ticket rule)."""
    kind = event.type
    if kind == "survey.submitted":
        s: int = event.score
        return (event.kind == "nps" and s <= 6) or (event.kind == "csat" and s <= 2) or (event.kind == "ces" and s >= 6)
    return kind in ("ticket.opened", "customer.churned")


_TICKET_CODE: Final = {"complaint": "C", "cancellation": "X"}
_SURVEY_CODE: Final = {"nps": "N", "csat": "S", "ces": "E"}


def item_of(event: Any) -> tuple[str, str]:
    """(code, key) of a relevant ticket or survey event."""
    if event.type == "ticket.opened":
        return _TICKET_CODE.get(getattr(event, "category", None) or "", "T"), "t:" + event.ticket_id
    return _SURVEY_CODE[event.kind], "s:" + event.event_id


def _score(counts: Counter[str]) -> int:
    tickets = sum(counts[c] for c in TICKETS)
    return sum(POINTS[c] * counts[c] for c in POINTS) + max(0, tickets - FREE_TICKETS)


def points(items: Iterable[Item], now_us: int) -> int:
    """Points at `now_us`: items strictly less than 30 days old (future ones included)."""
    return _score(Counter(code for t, code, _ in items if t > now_us - WINDOW_US))


def reasons(items: Iterable[Item], now_us: int) -> list[dict[str, Any]]:
    """What makes up the points at `now_us`: [{'reason', 'count', 'points'}], largest first."""
    counts = Counter(code for t, code, _ in items if t > now_us - WINDOW_US)
    out = [{"reason": _LABEL[c], "count": counts[c], "points": POINTS[c] * counts[c]} for c in POINTS if counts[c]]
    extra = sum(counts[c] for c in TICKETS) - FREE_TICKETS
    if extra > 0:
        out.append({"reason": _LABEL["T"], "count": extra, "points": extra})
    return sorted(out, key=lambda r: (-r["points"], r["reason"]))


def expiry_us(items: Sequence[Item], threshold: int) -> int | None:
    """The first moment the points fall under `threshold` as items age out; None if never reached.

    Points are read with every item counted (the moment of the newest item);
    after that they only fall. The customer is at risk at t while t < expiry.
    `items` must be sorted (as RiskState keeps them); empty: None.

    The items still counted at any moment are a suffix of the sorted items, and
    a suffix's points only grow with its length. So the answer comes from the
    newest items backwards: the oldest group of equal times without which the
    newer items score under the threshold. It costs as many items as reaching
    the threshold takes, not the customer's whole history.
    """
    fixed = tickets = 0
    i = len(items) - 1
    while i >= 0:
        t = items[i][0]
        while i >= 0 and items[i][0] == t:
            code = items[i][1]
            fixed += POINTS.get(code, 0)
            tickets += code in TICKETS
            i -= 1
        extra = tickets - FREE_TICKETS
        if fixed + (extra if extra > 0 else 0) >= threshold:  # not max(): a call per group of times
            return t + WINDOW_US
    return None
