"""FoldMemo: bounded, keeps the entities written last, never changes a figure (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace as E

from stream.events.fold import FoldMemo
from tests.support.config import fold_context
from tests.support.memory_store import MemoryStore

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CTX = fold_context(NOW.timestamp(), [3600, 86400])


def opened(tid: str, minutes: float) -> E:
    return E(type="ticket.opened", ticket_id=tid, occurred_at=NOW - timedelta(minutes=minutes), priority="high")


def answered(tid: str, minutes: float) -> E:
    return E(
        type="ticket.answered",
        ticket_id=tid,
        occurred_at=NOW - timedelta(minutes=minutes),
        public=True,
        author="agent",
        ticket_opened_at=None,
        priority=None,
    )


BATCHES = [
    [opened("a", 50), opened("b", 49), opened("c", 48)],
    [answered("a", 40), opened("d", 45)],  # a written again: the most recent with d
    [opened("e", 44)],
    [answered("b", 30), answered("c", 30), answered("d", 30), answered("e", 30), answered("a", 45)],
]


def test_a_small_memo_keeps_the_last_written_and_changes_nothing() -> None:
    memo = FoldMemo(limit=3)
    with_memo, without = MemoryStore(CTX, memo), MemoryStore(CTX)
    for i, batch in enumerate(BATCHES):
        with_memo.run(batch)
        without.run(batch)
        assert len(memo.entries) <= 3
        if i == 2:
            assert list(memo.entries) == ["{p:p0}:t:a", "{p:p0}:t:d", "{p:p0}:t:e"]  # b and c, written first, left
    assert with_memo.states == without.states
    assert with_memo.buckets == without.buckets
    assert with_memo.zsets == without.zsets
