"""The building blocks every KPI is made of (pure, no I/O).

* **Counters** (`Tally`, `TallyFamily`, `DistinctCount`, `SortedSet`): the integer
  counters a KPI keeps per window bucket or in the current state. Each object
  spells its Redis field name once and both writes it (the fold) and reads it
  back (the read-outs); Redis only ever sums them.
* **`Metric`**: one Prometheus gauge family — name, help (its definition),
  labels, unit, domain, and the read-out that computes its samples from the
  summed counters of one window (`Totals`) or from the current state
  (`Current`).
* **`KpiConfig`**: the settings the fold and the read-outs use, passed in
  explicitly (built by `Settings.kpi_config()`; defaults live in `Settings`).

Amounts are kept as integer micro-units of their currency, durations as integer
microseconds, so sums are exact and retractable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from stream.kpis import sketch
from stream.kpis.business_hours import Schedule

__all__ = [
    "DISTINCT_CODE",
    "QUANTILES",
    "REPEATED_CODE",
    "Current",
    "DistinctCount",
    "Domain",
    "KpiConfig",
    "Metric",
    "Sample",
    "SortedSet",
    "Tally",
    "TallyFamily",
    "Totals",
    "Unit",
    "ZStat",
    "amount_micros",
    "cap_label",
    "nonzero_amounts",
    "one",
    "per_currency_ratio",
    "per_label",
    "quantiles",
    "ratio",
]

QUANTILES = (0.5, 0.9, 0.99)
_MICRO = Decimal(1_000_000)


def amount_micros(amount: Decimal) -> int:
    """An amount as integer micro-units (6 decimals, banker's rounding beyond that)."""
    return int((amount * _MICRO).to_integral_value(rounding=ROUND_HALF_EVEN))


def cap_label(value: str | None, allowed: frozenset[str], absent: str = "unknown") -> str:
    """Bound a free-form label: allowed values pass, others become 'other', None `absent`."""
    if value is None:
        return absent
    return value if value in allowed else "other"


# --- counters -----------------------------------------------------------------------------

_FIELDS_MAX = 4096  # cached field texts per family; labels are capped, this only bounds memory


@dataclass(frozen=True)
class Tally:
    """One integer counter, stored under the field `code` of a window bucket (or the current hash)."""

    code: str

    def of(self, values: Mapping[str, int]) -> int:
        """The counter's value in summed counters (0 when absent)."""
        return int(values.get(self.code, 0))


@dataclass(frozen=True)
class TallyFamily:
    """Integer counters split by one label value, stored as fields 'code|label'."""

    code: str
    # label -> field, so the fold builds each field text once (labels are bounded sets).
    _fields: dict[str | int, str] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def field(self, label: str | int) -> str:
        """The field of one label value (e.g. a priority, a currency, a sketch bucket index)."""
        found = self._fields.get(label)
        if found is None:
            if len(self._fields) >= _FIELDS_MAX:
                self._fields.clear()
            found = self._fields[label] = f"{self.code}|{label}"
        return found

    def by_label(self, values: Mapping[str, int]) -> dict[str, int]:
        """{label: value} of every field of this family in summed counters."""
        if isinstance(values, Totals):
            return values.family(self.code)
        prefix = self.code + "|"
        cut = len(prefix)
        return {k[cut:]: int(v) for k, v in values.items() if k.startswith(prefix)}

    def sketch(self, values: Mapping[str, int]) -> dict[int, int]:
        """The family read as a quantile sketch: {bucket index: count}."""
        return {int(k): v for k, v in self.by_label(values).items()}


DISTINCT_CODE = "dn"
"""Prefix of the totals field the exporter's read answers with a distinct count's members (read.lua gets it)."""
REPEATED_CODE = "d2"
"""Prefix of the totals field with the members counted at least twice."""
# Module constants, not class attributes: this module is also compiled (mypyc), and a
# compiled dataclass keeps no plain class attributes.


@dataclass(frozen=True)
class DistinctCount:
    """An exact count of distinct members (users, buyers) over a window.

    Stored per window bucket as member -> count hashes; the exporter's read sums
    them over the window and answers two fields per name: how many members were
    seen (`distinct`) and how many at least twice (`repeated`).
    """

    name: str

    @property
    def distinct_field(self) -> str:
        """The totals field the read answers with the number of distinct members."""
        return f"{DISTINCT_CODE}|{self.name}"

    @property
    def repeated_field(self) -> str:
        """The totals field the read answers with the number of members counted at least twice."""
        return f"{REPEATED_CODE}|{self.name}"

    def distinct(self, totals: Mapping[str, int]) -> int:
        """Members counted at least once in the window."""
        return int(totals.get(self.distinct_field, 0))

    def repeated(self, totals: Mapping[str, int]) -> int:
        """Members counted at least twice in the window."""
        return int(totals.get(self.repeated_field, 0))


@dataclass(frozen=True)
class SortedSet:
    """A sorted set of current state (members scored by a time in unix seconds).

    `pruned`: members older than the state TTL are dropped by the batch write
    (bounded memory); unpruned sets keep members however old their score.
    """

    name: str
    pruned: bool = True


@dataclass(frozen=True)
class SortedSetFamily:
    """Sorted sets split by one label value (e.g. tickets awaiting response, per priority)."""

    code: str
    _sets: dict[str, SortedSet] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def of(self, label: str) -> SortedSet:
        found = self._sets.get(label)
        if found is None:
            if len(self._sets) >= _FIELDS_MAX:
                self._sets.clear()
            found = self._sets[label] = SortedSet(f"{self.code}|{label}")
        return found


# --- what a read-out sees -------------------------------------------------------------------


class Totals(dict[str, int]):
    """Summed counters of one window (or the current ones): field -> integer.

    `current` holds the non-windowed counters read in the same call, for the
    figures that combine both (active customers at the window's start).
    `family(code)` indexes the 'code|label' fields on first use: a scrape asks
    for about thirty families per window, and scanning every field for each was
    most of the exporter's CPU time (bench/scrape.py).
    """

    def __init__(self, *args: Any, **kwargs: int) -> None:
        # Instance attributes set here, not as class defaults: a compiled (mypyc) dict
        # subclass does not fall back to class attributes.
        super().__init__(*args, **kwargs)
        self.current: Mapping[str, int] = {}
        self._families: dict[str, dict[str, int]] | None = None

    def family(self, code: str) -> dict[str, int]:
        """{label: value} of the fields 'code|label' (a copy)."""
        if self._families is None:
            families: dict[str, dict[str, int]] = {}
            for name, value in self.items():
                head, sep, label = name.partition("|")
                if sep:
                    families.setdefault(head, {})[label] = int(value)
            self._families = families
        return dict(self._families.get(code, {}))


@dataclass(frozen=True)
class ZStat:
    """A sorted set read at scrape time: size, members at or below a score, lowest score."""

    size: int
    at_or_below: int
    lowest: float | None


@dataclass(frozen=True)
class Current:
    """Non-windowed state at scrape time: counters, sorted-set stats, settings, clock (unix s)."""

    counters: Mapping[str, int]
    zsets: Mapping[str, ZStat]
    now: float
    config: KpiConfig
    windows: Mapping[str, Totals] = field(default_factory=dict)


@dataclass(frozen=True)
class KpiConfig:
    """The settings the fold and the read-outs use beyond windows (built by `Settings.kpi_config`).

    `sla`: first-response SLA per ticket priority, in seconds. The allow-lists
    bound label values (others become 'other'); `schedule` is the business-hours
    clock; `risk_threshold` the churn-risk points that put a customer at risk.
    """

    sla: Mapping[str, float]
    lead_sources: frozenset[str]
    lost_reasons: frozenset[str]
    stages: tuple[str, ...]
    schedule: Schedule
    risk_threshold: int


# --- metrics ----------------------------------------------------------------------------------

Sample = tuple[tuple[str, ...], float]
Unit = Literal["count", "ratio", "seconds", "amount", "score"]
Domain = Literal["events", "sales", "marketing", "support", "satisfaction", "customers", "commerce", "activity"]


@dataclass(frozen=True)
class Metric:
    """One Prometheus gauge family: name, help (its definition), labels, unit, domain and read-out.

    `unit`: 'count', 'ratio' (0..1), 'seconds', 'amount' (in the `currency`
    label's currency) or 'score' (NPS −100..100, CES 1..7). `core`: one of the
    KPIs of the four core event families (leads, deals, tickets, surveys);
    the others need the full event catalog.
    """

    name: str
    help: str
    labels: tuple[str, ...]
    compute: Callable[[Any], Iterable[Sample]]
    unit: Unit
    domain: Domain
    windowed: bool = True
    core: bool = False

    @property
    def all_labels(self) -> tuple[str, ...]:
        """Label names as exported, `window` first for windowed metrics."""
        return ("window", *self.labels) if self.windowed else self.labels


def ratio(num: int | float, den: int | float) -> Iterator[Sample]:
    """num / den as one sample; a zero denominator exports no series, never NaN."""
    if den:
        yield (), num / den


def one(value: float) -> Iterator[Sample]:
    yield (), value


def per_label(values: Mapping[str, int], scale: float = 1.0) -> Iterator[Sample]:
    for label, v in sorted(values.items()):
        yield (label,), v * scale


def quantiles(counts: Mapping[int, int]) -> Iterator[Sample]:
    """The 0.5/0.9/0.99 quantiles of a sketch, labelled by quantile; nothing for an empty sketch."""
    for q, value in zip(QUANTILES, sketch.quantiles(counts, QUANTILES), strict=True):
        if value is not None:
            yield (str(q),), value


def per_currency_ratio(amounts: Mapping[str, int], den: int | Mapping[str, int]) -> Iterator[Sample]:
    """amount (µ) per currency / a count (the same for every currency, or per currency)."""
    for cur, amount in sorted(amounts.items()):
        d = den if isinstance(den, int) else den.get(cur, 0)
        if d:
            yield (cur,), amount * 1e-6 / d


def nonzero_amounts(amounts: Mapping[str, int]) -> Iterator[Sample]:
    """Current amounts (µ) per currency; currencies at 0 export no series.

    A 0 left behind by retractions would otherwise depend on how events were batched.
    """
    for cur, micros in sorted(amounts.items()):
        if micros:
            yield (cur,), micros * 1e-6
