"""Redis I/O: the key layout (`keys`), the worker's atomic batch write (`writer`), the readers (`reader`).

Every Redis key name is spelled in `keys`; the Lua scripts in `lua/` receive
every key and counter name they touch as arguments.
"""

from stream.store.keys import Keys
from stream.store.reader import ReadCache, Snapshot, read_at_risk, read_snapshot
from stream.store.writer import ApplyOutcome, AsyncStore, BatchRead, LogMark

__all__ = [
    "ApplyOutcome",
    "AsyncStore",
    "BatchRead",
    "Keys",
    "LogMark",
    "ReadCache",
    "Snapshot",
    "read_at_risk",
    "read_snapshot",
]
