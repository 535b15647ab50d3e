"""Redis key names: the one module that spells them.

State is co-partitioned with Kafka (docs/design.md "Scaling out"): every key of
partition group `p` (Kafka partition number p of every event topic) carries the
hash tag `{prefix:p<p>}`, so one group's keys live in one Redis Cluster slot and
one Lua script may write them atomically, while the groups spread over the
cluster's slots. The one key outside any group is the registry of groups
(`{prefix:groups}`), which tells readers which groups to read.
An ACL key pattern `~{prefix:*` covers every key of a prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUCKET_TOKEN_FIELD", "Keys"]

BUCKET_TOKEN_FIELD = "~v"
"""Field of every window bucket hash holding the token of the batch that last wrote it.

A new token per batch (never a counter, which a restored Redis could repeat), so the
exporter can keep the buckets it summed and re-read only those whose token changed.
No counter code contains `~`.
"""


@dataclass(frozen=True)
class Keys:
    """Key builder for one key prefix (setting CRM_KPI_REDIS_KEY_PREFIX) and one partition group.

    `Keys(prefix)` is group 0; `keys.group(g)` the same prefix for group g. A Lua call
    only ever touches the keys of one group (one Redis Cluster slot).

    `spread`: one group per Kafka partition number (Redis Cluster: the groups spread
    over the slots; producers must key events by customer_id, docs/events.md), or
    False: every partition in group 0 — a single Redis needs no spreading, and one
    group keeps every entity's events and every redelivery together however the
    producers key them.
    """

    prefix: str = "crm"
    partition: int = 0
    spread: bool = False

    def group(self, partition: int) -> Keys:
        """The keys of partition group `partition` (see `group_for`)."""
        return self if partition == self.partition else Keys(self.prefix, partition, self.spread)

    def group_for(self, partition: int) -> int:
        """The partition group holding the state of Kafka partition number `partition` of every event topic."""
        return partition if self.spread else 0

    def group_of(self, field: str) -> int:
        """The partition group of an offsets field 'topic:partition'."""
        return self.group_for(int(field.rpartition(":")[2]))

    @property
    def registry(self) -> str:
        """Set of the partition groups ever written: what a reader reads.

        Its own slot; never expires, like the offsets (at most 1024 small members).
        """
        return "{" + self.prefix + ":groups}"

    @property
    def pattern(self) -> str:
        """A SCAN / ACL pattern matching every key of the prefix, all groups and the registry."""
        return "{" + self.prefix + ":*"

    @property
    def tag(self) -> str:
        return "{" + self.prefix + ":p" + str(self.partition) + "}"

    @property
    def offsets(self) -> str:
        """Hash 'topic:partition' -> next offset to apply (the applied-record fence)."""
        return f"{self.tag}:offsets"

    @property
    def log_marks(self) -> str:
        """Hash 'topic:partition' -> fingerprint of the last record applied (which log the offset belongs to)."""
        return f"{self.tag}:logs"

    @property
    def gaps(self) -> str:
        """Hash 'topic:partition' -> 'records:unix seconds': history the KPIs are known to miss, and since when."""
        return f"{self.tag}:gaps"

    @property
    def current(self) -> str:
        """Hash of non-windowed counters."""
        return f"{self.tag}:cur"

    def bucket(self, window_label: str, bucket: int) -> str:
        """Hash of counters of one window bucket."""
        return f"{self.tag}:w:{window_label}:{bucket}"

    def bucket_prefix(self, window_label: str) -> str:
        return f"{self.tag}:w:{window_label}:"

    def distinct(self, window_label: str, bucket: int, name: str) -> str:
        """Hash member -> count of one exact distinct count (e.g. active users) in one window bucket."""
        return f"{self.tag}:wd:{window_label}:{bucket}:{name}"

    def distinct_prefix(self, window_label: str) -> str:
        return f"{self.tag}:wd:{window_label}:"

    def dedupe(self, slot: int) -> str:
        """Set of event-id digests first seen in dedupe slot `slot` (processing time)."""
        return f"{self.tag}:dd:{slot}"

    def entity(self, key_tag: str, entity_id: str) -> str:
        """String holding the encoded state of one joined entity (`EntityKind.key_tag`)."""
        return f"{self.tag}:{key_tag}:{entity_id}"

    def entity_prefix(self, key_tag: str) -> str:
        """What every state key of one entity kind starts with (the fold appends the id)."""
        return self.entity(key_tag, "")

    def zset(self, name: str) -> str:
        """A sorted set of current state (e.g. tickets awaiting response)."""
        return f"{self.tag}:z:{name}"
