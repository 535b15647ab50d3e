"""Whether a partition's log is the one Redis's offsets count (stream/kafka/logs.py): the pure decisions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stream.kafka.logs import Fingerprint, Verdict, judge, needs_record
from stream.store import LogMark


def _record(offset: int, key: bytes | None = b"k", value: bytes | None = b"v", timestamp: int = 1000) -> object:
    return SimpleNamespace(offset=offset, key=key, value=value, timestamp=timestamp)


def test_a_fingerprint_tells_records_apart_and_survives_its_encoding() -> None:
    one = Fingerprint.of(_record(7))
    assert Fingerprint.parse(one.encode()) == one
    assert one == Fingerprint.of(_record(7))
    others = [
        _record(8),
        _record(7, value=b"w"),
        _record(7, key=b"kv", value=b""),  # no ambiguity between key and value bytes
        _record(7, key=None),
        _record(7, value=None),
        _record(7, timestamp=1001),
    ]
    assert len({Fingerprint.of(r) for r in others} | {one}) == len(others) + 1
    assert Fingerprint.parse(None) is None
    assert Fingerprint.parse("garbage") is None


MARK = LogMark(100, Fingerprint(99, 5, "ab").encode())


@pytest.mark.parametrize(
    ("mark", "start", "end", "found", "verdict"),
    [
        (MARK, 0, 100, Fingerprint(99, 5, "ab"), Verdict.OK),  # caught up, same log
        (MARK, 0, 250, Fingerprint(99, 5, "ab"), Verdict.OK),  # more records since
        (MARK, 0, 40, None, Verdict.LOG_BEHIND),  # recreated, shorter than what was applied
        (MARK, 0, 250, Fingerprint(99, 6, "cd"), Verdict.LOG_REPLACED),  # recreated and refilled past it
        (MARK, 0, 250, None, Verdict.LOG_REPLACED),  # no record where the last applied one was
        (MARK, 120, 250, None, Verdict.RETENTION_LOSS),  # 100..119 deleted before they were applied
        (MARK, 100, 250, None, Verdict.OK),  # the fingerprinted record is gone: bounds only
        (LogMark(100, None), 0, 250, None, Verdict.OK),  # re-anchored by an operator: no mark
        (LogMark(None, None), 0, 10, None, Verdict.UNANCHORED),
        (LogMark(None, MARK.last), 0, 10, None, Verdict.UNANCHORED),  # offsets deleted, marks left over
    ],
)
def test_judge(mark: LogMark, start: int, end: int, found: Fingerprint | None, verdict: Verdict) -> None:
    assert judge(mark, start, end, found) is verdict
    assert verdict.blocks == (verdict in (Verdict.LOG_BEHIND, Verdict.LOG_REPLACED))


def test_only_a_record_the_log_still_should_hold_is_fetched() -> None:
    assert needs_record(MARK, 0, 250) == 99
    assert needs_record(MARK, 100, 250) is None  # deleted by retention
    assert needs_record(MARK, 0, 50) is None  # the log ends below: judged on bounds
    assert needs_record(LogMark(100, None), 0, 250) is None
