"""`crm-kpi offsets show` and `crm-kpi offsets reset`: Redis's applied offsets against the Kafka logs.

`show` lists, per partition, the next offset Redis holds, where the log starts and
ends, the group's committed offset, the records the KPIs are known to miss, and what
the worker concludes (`stream.kafka.logs.judge`). `reset` re-anchors partitions whose
log is not the one Redis's offsets count (a recreated or truncated topic): the worker
pauses those and resumes by itself within seconds of the reset (docs/runbooks.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.table import Table

from stream.kafka.clients import kafka_client_options
from stream.kafka.logs import LogProbe, Verdict, fetch_target, judge, needs_record
from stream.settings import Settings
from stream.store import AsyncStore, Keys

__all__ = [
    "PartitionState",
    "ResetResult",
    "as_json_rows",
    "offsets_table",
    "read_offsets",
    "reset_offsets",
    "store_for",
]

Target = Literal["log-start", "log-end"]

_ADVICE = {
    Verdict.OK: "ok",
    Verdict.UNANCHORED: "no offset in Redis: the worker starts at the log start",
    Verdict.RETENTION_LOSS: "records deleted by retention before they were applied: the worker skips to the log start",
    Verdict.LOG_BEHIND: "log ends below Redis's offset: paused, needs `offsets reset`",
    Verdict.LOG_REPLACED: "log holds other records than the ones applied: paused, needs `offsets reset`",
}


@dataclass(frozen=True)
class PartitionState:
    """One partition as `crm-kpi offsets show` reports it."""

    topic: str
    partition: int
    redis_next: int | None
    log_start: int
    log_end: int
    committed: int | None
    gap_records: int
    verdict: str

    @property
    def field(self) -> str:
        return f"{self.topic}:{self.partition}"

    @property
    def lag(self) -> int | None:
        """Records in the log not yet applied (None when the log is not the one Redis counts)."""
        if self.verdict in (Verdict.LOG_BEHIND.value, Verdict.LOG_REPLACED.value):
            return None
        return max(0, self.log_end - max(self.redis_next or 0, self.log_start))


@dataclass(frozen=True)
class ResetResult:
    """What `reset_offsets` did (or would do) to one partition."""

    field: str
    before: int | None
    after: int
    skipped: int
    """Records of the log that will never be applied (a reset to the log end)."""
    done: bool


async def _partitions(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> list[TopicPartition]:
    described = await admin.describe_topics(list(topics))
    return sorted(
        TopicPartition(t["topic"], p["partition"]) for t in described if t["error_code"] == 0 for p in t["partitions"]
    )


async def read_offsets(
    settings: Settings, store: AsyncStore, topics: Iterable[str] | None = None
) -> list[PartitionState]:
    """Every partition of `topics` (default: every topic the workers consume) with Redis's offset and log bounds."""
    names = list(topics) if topics is not None else settings.consumed_topics()
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        partitions = await _partitions(admin, names)
        try:
            committed = await admin.list_consumer_group_offsets(settings.kafka_group_id, partitions=partitions)
        except Exception:  # informative only: a group that never committed
            committed = {}
    finally:
        await admin.close()
    fields = {f"{tp.topic}:{tp.partition}": tp for tp in partitions}
    marks = await store.load_marks(fields)
    gaps = await store.load_gaps(fields)
    targets = {tp: fetch_target(marks[f]) for f, tp in fields.items()}
    probe = LogProbe(kafka_client_options(settings))
    await probe.start()
    try:
        views = await probe.inspect(targets)
    finally:
        await probe.stop()
    out = []
    for f, tp in fields.items():
        meta, view, mark = committed.get(tp), views[tp], marks[f]
        checked = needs_record(mark, view.start, view.end) == targets[tp]
        out.append(
            PartitionState(
                tp.topic,
                tp.partition,
                mark.next,
                view.start,
                view.end,
                meta.offset if meta is not None and meta.offset >= 0 else None,
                gaps.get(f, (0, 0.0))[0],
                judge(mark, view.start, view.end, view.record if checked else None).value,
            )
        )
    return out


async def reset_offsets(
    settings: Settings,
    store: AsyncStore,
    topics: Iterable[str],
    partitions: Iterable[int] | None,
    to: Target,
    dry_run: bool,
) -> list[ResetResult]:
    """Set Redis's applied offset of the chosen partitions to their log start or end.

    Each change is a compare-and-set against the offset just read (a worker that applied
    meanwhile wins: that partition reports done=False). The last-record fingerprint is
    dropped (the log it described is gone), and records a reset to the log end skips are
    added to the partition's gap, so `crm_kpi_history_gap_records` shows them.
    """
    chosen = set(partitions) if partitions is not None else None
    states = [s for s in await read_offsets(settings, store, topics) if chosen is None or s.partition in chosen]
    results = []
    for s in states:
        after = s.log_start if to == "log-start" else s.log_end
        behind = s.verdict in (Verdict.LOG_BEHIND.value, Verdict.LOG_REPLACED.value)
        # Records of the (new) log the KPIs will never see: from where applying would resume to the target.
        resume = s.log_start if behind or s.redis_next is None else max(s.redis_next, s.log_start)
        skipped = max(0, after - resume)
        done = False
        if not dry_run:
            done, _ = await store.anchor(s.field, s.redis_next, after, None, skipped)
        results.append(ResetResult(s.field, s.redis_next, after, skipped, done))
    return results


def offsets_table(states: list[PartitionState]) -> Table:
    """`crm-kpi offsets show` as a rich table."""
    table = Table(title="Applied offsets (Redis) against the Kafka logs")
    for name, justify in (
        ("partition", "left"),
        ("Redis next", "right"),
        ("log start", "right"),
        ("log end", "right"),
        ("lag", "right"),
        ("group committed", "right"),
        ("gap records", "right"),
        ("state", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in states:
        table.add_row(
            s.field,
            _text(s.redis_next),
            str(s.log_start),
            str(s.log_end),
            _text(s.lag),
            _text(s.committed),
            str(s.gap_records),
            _ADVICE[Verdict(s.verdict)],
        )
    return table


def as_json_rows(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Dataclasses as dicts, with the derived fields the table shows."""
    out = []
    for item in items:
        row = asdict(item)
        if isinstance(item, PartitionState):
            row["lag"] = item.lag
        out.append(row)
    return out


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def store_for(settings: Settings) -> tuple[Any, AsyncStore]:
    """(client, AsyncStore) for the configured Redis."""
    from stream.worker.consumer import redis_client

    client = redis_client(settings)
    return client, AsyncStore(
        client,
        Keys(settings.redis_key_prefix, spread=settings.redis_cluster),
        settings.dedupe_horizon,
        settings.state_ttl,
    )
