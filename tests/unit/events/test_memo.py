"""FoldMemo: bounded, keeps the entities written last, never changes a figure (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace as E
from typing import Any

from stream.events.fold import FoldMemo, entity_keys, fold
from stream.events.windows import to_us
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


def _after_a_refused_write(memo: FoldMemo | None) -> tuple[Any, ...]:
    """Batch 1 written, batch 2 refused (Redis unchanged), batch 3 folded over the same states.

    The worker remembers each fold at once (the next batch is folded while it is written),
    so the refused batch's states are in the memo too, under raw values Redis never held.
    """
    first = fold([(e, to_us(e.occurred_at)) for e in BATCHES[0]], dict.fromkeys(entity_keys(BATCHES[0], CTX)), CTX)
    states = {key: new for key, (_, new) in first.entity_writes.items()}
    if memo is not None:
        memo.remember(first)

    def fold_over_redis(events: list[E]) -> Any:
        read = {k: states.get(k) for k in entity_keys(events, CTX)}
        return fold([(e, to_us(e.occurred_at)) for e in events], read, CTX, memo)

    refused = fold_over_redis([answered("a", 40), answered("b", 35)])
    if memo is not None:
        memo.remember(refused)
    later = fold_over_redis([opened("a", 50), answered("b", 20), opened("c", 60)])
    return later.entity_writes, later.buckets, refused.entity_writes


def test_a_refused_write_leaves_no_state_that_already_absorbed_its_batch() -> None:
    """The fold updates the memo's states in place, and the refused batch was remembered: a later batch
    over the same Redis state must not see them."""
    assert _after_a_refused_write(FoldMemo()) == _after_a_refused_write(None)


def test_an_entity_the_batch_leaves_unchanged_stays_in_the_memo() -> None:
    memo = FoldMemo()
    batch = [(e, to_us(e.occurred_at)) for e in BATCHES[0]]
    delta = fold(batch, dict.fromkeys(entity_keys(BATCHES[0], CTX)), CTX, memo)
    memo.remember(delta)
    states = {k: new for k, (_, new) in delta.entity_writes.items()}
    kept = dict(memo.entries)
    again = fold(batch, states, CTX, memo)  # the same openings again: no state changes
    assert again.entity_writes == {}
    assert memo.entries == kept
