"""The simulation's machinery: customers, the event heap, arrival processes, the main loop.

Episodes (a ticket, a lead, an order…) start as arrival processes ("roots")
whose rate follows the active population; each episode is planned when it
starts: its follow-ups are pushed on a heap at their own later event time and
interleaved with newer episodes, so events come out in event-time order.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from stream.devtools.synthetic_crm.world import (
    DAY,
    HOUR,
    INCIDENTS,
    PROFILE,
    PROFILE_MAX,
    SEGMENT_SHARE,
    SEGMENTS,
    US,
)

__all__ = ["Customer", "Engine", "Population", "SimConfig"]

Hook = Callable[[], bool]
# (time in µs after start, sequence, type, source, fields, hook run at emission: False drops the event)
Item = tuple[int, int, str, str, dict[str, Any], Hook | None]


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; all of it is deterministic given `seed` and the start time."""

    seed: int = 7
    customers: int = 500
    """Active customers at the start (the imported base, signed up over the previous years)."""
    rate: float | None = None
    """None: every rate is the realistic per-customer one (world.py). A number: the long-run mean
    events per second of event time, reached by multiplying the per-customer activity (tickets,
    orders, deals, surveys, activities, leads) - a busier world for load tests, less believable."""
    incidents: frozenset[str] = field(default_factory=frozenset)
    """Any of INCIDENTS: "slow-responses" (first answers 6x slower), "churn-spike" (churn 10x, NPS down)."""
    incident_start: datetime | None = None
    """When the incidents begin (aware); None: at the first event."""
    catalog: bool = True
    """Include the full catalog's types besides the core ones."""

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError(f"customers must be >= 1, got {self.customers}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, got {self.rate}")
        unknown = set(self.incidents) - INCIDENTS
        if unknown:
            raise ValueError(f"unknown incident(s) {sorted(unknown)}; known: {sorted(INCIDENTS)}")
        if self.incident_start is not None and self.incident_start.utcoffset() is None:
            raise ValueError("incident_start must be an aware datetime")


@dataclass
class Customer:
    customer_id: str
    segment: str
    currency: str
    satisfaction: float  # per-customer offset of the latent satisfaction


class Population:
    """Active customers by segment, with O(1) add, remove and weighted pick."""

    def __init__(self) -> None:
        self.by_segment: dict[str, list[str]] = {s: [] for s in SEGMENTS}
        self.index: dict[str, int] = {}
        self.info: dict[str, Customer] = {}

    def __len__(self) -> int:
        return len(self.index)

    def add(self, customer: Customer) -> None:
        self.info[customer.customer_id] = customer
        members = self.by_segment[customer.segment]
        self.index[customer.customer_id] = len(members)
        members.append(customer.customer_id)

    def remove(self, customer_id: str) -> bool:
        position = self.index.pop(customer_id, None)
        if position is None:
            return False
        members = self.by_segment[self.info[customer_id].segment]
        last = members.pop()
        if last != customer_id:
            members[position] = last
            self.index[last] = position
        return True

    def weighted(self, weights: tuple[float, ...]) -> float:
        """Sum over segments of (active customers x the segment's weight)."""
        return sum(len(self.by_segment[s]) * w for s, w in zip(SEGMENTS, weights, strict=True))

    def pick(self, rng: random.Random, weights: tuple[float, ...]) -> Customer | None:
        totals = [len(self.by_segment[s]) * w for s, w in zip(SEGMENTS, weights, strict=True)]
        if sum(totals) <= 0:
            return None
        segment = rng.choices(SEGMENTS, weights=totals)[0]
        return self.info[rng.choice(self.by_segment[segment])]


class Engine:
    """State and helpers every episode uses; `run` yields the events."""

    def __init__(self, config: SimConfig, start: datetime) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.start = start
        self.catalog = config.catalog
        start_s = start.timestamp()
        self.tag = f"{config.seed}-{int(start_s):x}"
        # Seconds since Monday 00:00 UTC at `start` (1970-01-01 was a Thursday).
        self.week_offset_s = (start_s + 3 * DAY) % (7 * DAY)
        incident_at = config.incident_start.timestamp() - start_s if config.incident_start is not None else 0.0
        self.incident_from_s = max(0.0, incident_at) if config.incidents else math.inf
        self.heap: list[Item] = []
        self.seq = 0
        self.counters: dict[str, int] = {}
        self.population = Population()
        self.churned: set[str] = set()
        self.customer_count = 0
        self.roots: dict[str, tuple[Callable[[float], None], Callable[[float], float], bool]] = {}
        self.next_root: dict[str, float] = {}

    # -- incidents --------------------------------------------------------------------

    def incident(self, name: str, t_s: float) -> bool:
        """Whether incident `name` is on at `t_s` seconds after the start."""
        return name in self.config.incidents and t_s >= self.incident_from_s

    # -- helpers ----------------------------------------------------------------------

    def next_id(self, kind: str) -> str:
        n = self.counters.get(kind, 0) + 1
        self.counters[kind] = n
        return f"{kind}-{self.tag}-{n}"

    def ts(self, us: int) -> str:
        return (self.start + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def push(self, t_s: float, etype: str, source: str, fields: dict[str, Any], hook: Hook | None = None) -> int:
        us = round(t_s * US)
        self.seq += 1
        heapq.heappush(self.heap, (us, self.seq, etype, source, fields, hook))
        return us

    def lognormal(self, median: float, sigma: float, z_cap: float = 3.0) -> float:
        z = max(-z_cap, min(z_cap, self.rng.gauss(0.0, 1.0)))
        return median * math.exp(sigma * z)

    def choice(self, values: tuple[Any, ...], weights: tuple[float, ...]) -> Any:
        return self.rng.choices(values, weights=weights)[0]

    @staticmethod
    def money(value: float) -> float:
        return round(max(value, 0.01), 2)

    def new_customer(self, segment: str | None = None) -> Customer:
        self.customer_count += 1
        if segment is None:
            segment = self.choice(SEGMENTS, SEGMENT_SHARE)
        return Customer(
            customer_id=f"cus-{self.tag}-{self.customer_count:05d}",
            segment=segment,
            currency="EUR" if self.rng.random() < 0.7 else "USD",
            satisfaction=self.rng.gauss(0.0, 0.05),
        )

    # -- arrival processes --------------------------------------------------------------

    def add_root(
        self, name: str, start: Callable[[float], None], rate: Callable[[float], float], regular: bool
    ) -> None:
        """An arrival process: `start(t)` runs at each arrival; `rate(t)` is its mean per second then.

        Seasonal (`regular` False) roots follow the weekly profile; regular ones (churn, sign-ups)
        arrive evenly spaced with some jitter, so a day's count varies little around its mean.
        """
        self.roots[name] = (start, rate, regular)
        self.next_root[name] = self._advance(0.0, rate(0.0), regular)

    def _season(self, t_s: float) -> float:
        return PROFILE[int((self.week_offset_s + t_s) // HOUR) % 168]

    def _advance(self, t_s: float, rate: float, regular: bool) -> float:
        """The next arrival after `t_s` of a process of mean `rate` per second."""
        if rate <= 0:
            return t_s + DAY  # look again later (e.g. nobody left to churn)
        if regular:  # gamma(4) gaps: the count over a day has a quarter of a Poisson's variance
            return t_s + self.rng.gammavariate(4.0, 1.0 / (4.0 * rate))
        peak = rate * PROFILE_MAX
        while True:  # thinning of a Poisson process by the weekly profile
            t_s += self.rng.expovariate(peak)
            if self.rng.random() * PROFILE_MAX < self._season(t_s):
                return t_s

    def run(self, count: int | None, end_us: int | None) -> Iterator[dict[str, Any]]:
        n = 0
        heap = self.heap
        while count is None or n < count:
            # Start every root due before the next scheduled event (and not after the end).
            while self.next_root:
                name = min(self.next_root, key=self.next_root.__getitem__)
                t_root = self.next_root[name]
                root_us = round(t_root * US)
                if (heap and heap[0][0] <= root_us) or (end_us is not None and root_us > end_us):
                    break
                start, rate, regular = self.roots[name]
                start(t_root)
                self.next_root[name] = self._advance(t_root, rate(t_root), regular)
            if not heap:
                return
            us, _, etype, source, fields, hook = heapq.heappop(heap)
            if end_us is not None and us > end_us:
                return
            if hook is not None and not hook():
                continue
            n += 1
            event: dict[str, Any] = {
                "event_id": f"sim-{self.tag}-{n}",
                "type": etype,
                "occurred_at": self.ts(us),
                "source": source,
            }
            event.update(fields)
            yield event


def utc(start: datetime) -> datetime:
    if start.utcoffset() is None:
        raise ValueError("start must be an aware datetime")
    return start.astimezone(UTC)
