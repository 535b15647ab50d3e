"""Entity joins: the figures do not depend on arrival order or batch boundaries (pure)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace as E

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.events.fold import FoldMemo
from stream.events.windows import to_us
from stream.kpis.sales import CYCLE_COUNT, CYCLE_TOTAL_US, DealState
from stream.kpis.support import (
    AWAITING_RESPONSE,
    FIRST_RESPONSE_TOTAL_US,
    FIRST_RESPONSES,
    SLA_BREACHES_BY_PRIORITY,
    TicketState,
)
from stream.store import Keys
from tests.support.config import fold_context
from tests.support.memory_store import MemoryStore

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CTX = fold_context(NOW.timestamp(), [3600, 86400], key_prefix="p")


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def opened(tid: str, minutes: float, priority: str = "normal") -> E:
    return E(type="ticket.opened", ticket_id=tid, occurred_at=ago(minutes), priority=priority)


def answered(
    tid: str,
    minutes: float,
    public: bool = True,
    author: str = "agent",
    hint: float | None = None,
    priority: str | None = None,
) -> E:
    return E(
        type="ticket.answered",
        ticket_id=tid,
        occurred_at=ago(minutes),
        public=public,
        author=author,
        ticket_opened_at=None if hint is None else ago(hint),
        priority=priority,
    )


SCENARIO = [
    opened("a", 50, "urgent"),
    answered("a", 20),
    answered("a", 30),  # later answer arrives first
    opened("b", 30, "high"),
    answered("b", 29, author="bot"),
    answered("b", 10, public=False),
    answered("c", 20, hint=25, priority="low"),  # opening known only from the answer
    answered("d", 5),  # opening unknown: answered, no response time
    opened("e", 59),
    opened("e", 58),  # still awaiting; earliest opening wins
    E(type="deal.created", deal_id="x", occurred_at=ago(600)),
    E(type="deal.won", deal_id="x", occurred_at=ago(30), deal_created_at=None, amount=Decimal(1), currency="EUR"),
    E(type="deal.won", deal_id="y", occurred_at=ago(20), deal_created_at=ago(80), amount=Decimal(2), currency="EUR"),
    E(type="deal.won", deal_id="z", occurred_at=ago(15), deal_created_at=None, amount=Decimal(1), currency="EUR"),
    # Won three times: the creation time is the one carried by the earliest win that carries one.
    E(type="deal.won", deal_id="w", occurred_at=ago(25), deal_created_at=None, amount=Decimal(1), currency="EUR"),
    E(type="deal.won", deal_id="w", occurred_at=ago(18), deal_created_at=ago(70), amount=Decimal(1), currency="EUR"),
    E(type="deal.won", deal_id="w", occurred_at=ago(12), deal_created_at=ago(90), amount=Decimal(1), currency="EUR"),
]


def test_scenario_figures() -> None:
    r = MemoryStore(CTX)
    r.run(SCENARIO)
    h = r.window_counters("1h")
    # first responses: a 20 min (urgent, breach), c 5 min (low) -> n=2, sum 25 min
    assert FIRST_RESPONSES.of(h) == 2 and FIRST_RESPONSE_TOTAL_US.of(h) == 25 * 60 * 10**6
    assert SLA_BREACHES_BY_PRIORITY.by_label(h) == {"urgent": 1}
    # awaiting: b (high, only bot/private answers) and e (normal)
    assert r.zsets[AWAITING_RESPONSE.of("high").name] == {"b": ago(30).timestamp()}
    assert r.zsets[AWAITING_RESPONSE.of("normal").name] == {"e": ago(59).timestamp()}
    assert r.zsets[AWAITING_RESPONSE.of("urgent").name] == {}
    # sales cycle: x 570 min (stored creation), y 60 min (carried creation), w 45 min (its first win,
    # 25 min ago, against the creation its second win carried, 70 min ago); z unknown
    assert CYCLE_COUNT.of(h) == 3 and CYCLE_TOTAL_US.of(h) == (570 + 60 + 45) * 60 * 10**6


@settings(max_examples=60, deadline=None)
@given(st.permutations(SCENARIO), st.lists(st.integers(min_value=1, max_value=len(SCENARIO)), max_size=5))
def test_order_and_batching_do_not_change_figures(order: list[E], cuts: list[int]) -> None:
    reference = MemoryStore(CTX)
    reference.run(SCENARIO)
    r = MemoryStore(CTX, FoldMemo())  # batched as the worker does, reusing decoded states
    bounds = sorted({0, len(order), *cuts})
    for lo, hi in itertools.pairwise(bounds):
        r.run(order[lo:hi])
    for label in ("1h", "24h"):
        assert r.window_counters(label) == reference.window_counters(label)
    assert {z: m for z, m in r.zsets.items() if m} == {z: m for z, m in reference.zsets.items() if m}


def test_a_memo_never_stands_in_for_a_state_changed_elsewhere() -> None:
    first, rest = SCENARIO[:4], SCENARIO[4:]
    with_memo, without = MemoryStore(CTX, FoldMemo()), MemoryStore(CTX)
    for r in (with_memo, without):
        r.run(first)
        # Another worker answered ticket "a" in between: Redis holds a state this worker did not write.
        key = Keys("p").entity("t", "a")
        r.states[key] = TicketState.decode(r.states[key]).merge(answered("a", 40), to_us(ago(40))).encode()
        r.run([*rest, answered("a", 45)])
    assert with_memo.states == without.states
    for label in ("1h", "24h"):
        assert with_memo.window_counters(label) == without.window_counters(label)
    assert with_memo.zsets == without.zsets


def test_state_encoding_round_trips() -> None:
    t = TicketState(1, "high", None, None, 5)
    assert TicketState.decode(t.encode()) == t
    assert DealState.decode(None) == DealState()
