"""Event ids as digests, and a batch's first copy of each event (pure, no I/O).

A producer retry or a mirror's re-send is the same `event_id` at a new offset.
Redis records each applied id as a fixed-size digest (`stream/store/lua/apply.lua`);
this module makes those digests and drops the repeats inside one batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = ["event_digest", "first_copies"]


def event_digest(event_id: str) -> bytes:
    """16-byte BLAKE2b digest of an event id: what the dedupe sets store (fixed size, ~56 B/id)."""
    return hashlib.blake2b(event_id.encode(), digest_size=16).digest()


def first_copies(valid: Sequence[tuple[Any, int]]) -> tuple[list[tuple[Any, int]], list[bytes]]:
    """The first copy of each event id among `valid` ((event, occurred_at µs), batch order), and their digests.

    Both lists keep batch order and are aligned: `digests[i]` is the digest of
    `unique[i][0].event_id`. Later copies of an id are left out whatever their
    content (a retry carries the same event). The worker's per-record loop:
    compiled with the fold.
    """
    unique: list[Any] = []
    digests: list[bytes] = []
    seen: set[bytes] = set()
    # Untyped rows: compiled, a typed tuple would be unpacked and a new one built for `unique`.
    rows: Sequence[Any] = valid
    for item in rows:
        digest = event_digest(item[0].event_id)  # a native call, compiled
        if digest not in seen:
            seen.add(digest)
            digests.append(digest)
            unique.append(item)
    return unique, digests
