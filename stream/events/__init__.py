"""The pure event path: bytes → typed event (`decode`), event ids as digests and a batch's
first copies (`dedupe`), event-time windows (`windows`), entity-state machinery
(`entities`), and one batch folded into one Redis delta (`fold`).

No I/O and no settings look-ups here: what to count arrives as `FoldRules`
from the KPI domain, the clock and windows as arguments.
"""

from stream.events.decode import REASONS, Rejection, decode
from stream.events.dedupe import event_digest, first_copies
from stream.events.entities import Contribution, EntityKind, PackedState
from stream.events.fold import BatchDelta, FoldContext, FoldMemo, FoldRules, entity_keys, fold
from stream.events.windows import Window, make_windows, to_us

__all__ = [
    "REASONS",
    "BatchDelta",
    "Contribution",
    "EntityKind",
    "FoldContext",
    "FoldMemo",
    "FoldRules",
    "PackedState",
    "Rejection",
    "Window",
    "decode",
    "entity_keys",
    "event_digest",
    "first_copies",
    "fold",
    "make_windows",
    "to_us",
]
