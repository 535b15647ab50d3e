"""Event-id digests and a batch's first copies (stream.events.dedupe)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from stream.events.dedupe import event_digest, first_copies


@dataclass(frozen=True)
class _Event:
    event_id: str
    payload: int


def test_digest_is_16_bytes_of_blake2b() -> None:
    assert event_digest("e-1") == hashlib.blake2b(b"e-1", digest_size=16).digest()
    assert len(event_digest("é" * 128)) == 16
    assert event_digest("a") != event_digest("b")


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 3), st.integers(0, 10**15)), max_size=60))
def test_first_copies_keep_the_first_of_each_id_in_batch_order(rows: list[tuple[str, int, int]]) -> None:
    valid = [(_Event(event_id, payload), t_us) for event_id, payload, t_us in rows]
    unique, digests = first_copies(valid)
    # The model: walk the batch, keep an item when its id was not seen before.
    expected, seen = [], set()
    for item in valid:
        if item[0].event_id not in seen:
            seen.add(item[0].event_id)
            expected.append(item)
    assert unique == expected
    assert all(u is v for u, v in zip(unique, expected, strict=True))  # the same tuples, not copies
    assert digests == [event_digest(event.event_id) for event, _ in expected]


def test_a_later_copy_with_other_content_is_still_a_repeat() -> None:
    first, retry = (_Event("e", 1), 5), (_Event("e", 2), 9)
    assert first_copies([first, retry]) == ([first], [event_digest("e")])
    assert first_copies([]) == ([], [])
