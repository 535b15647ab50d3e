"""A realistic, deterministic synthetic CRM event stream (docs/events.md, `crm-kpi simulate`).

Pure Python and no I/O: `generate()` yields plain JSON-ready dicts, one per
event, in non-decreasing `occurred_at` order. Everything random comes from one
`random.Random(seed)`, and event time is derived from the `start` argument, so
the same `SimConfig` and `start` always give the same sequence.

How the world works:

* A population of customers (segments smb, mid, enterprise; currency EUR or
  USD) is imported at `start` (one `customer.acquired` each, catalog only), so
  the worker's "active customers" starts from the real population.
* Operational episodes start as a non-homogeneous Poisson process whose
  intensity follows a weekly profile (busy weekday business hours UTC, quiet
  nights and weekends): tickets, leads, deals, quotes, re-orders, CRM user
  activities, marketing spend and relationship NPS surveys. Their volume scales
  with `rate`.
* Customer lifecycle events are per-customer hazards, independent of `rate`
  (monthly churn about 2.5 %, annual renewals, monthly subscription invoices,
  self-serve sign-ups), so churn and renewal ratios stay realistic whatever the
  event volume.
* Each episode is planned when it starts: its follow-ups (answers after an
  opening, a win after a creation, a payment after an invoice…) are pushed on
  a heap at their own later event time and interleaved with newer episodes.

`rate` is the long-run mean of all events per second, follow-ups included;
right after `start` only the episodes' first events and their fast follow-ups
exist, so the stream starts at roughly half that rate and fills up over the
following hours and days as deals, orders and invoices mature.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = [
    "INCIDENTS",
    "SLA_SECONDS",
    "SimConfig",
    "generate",
]

INCIDENTS: Final[frozenset[str]] = frozenset({"slow-responses", "churn-spike"})
"""Incident names `SimConfig.incidents` accepts."""

SLA_SECONDS: Final[dict[str, int]] = {"urgent": 15 * 60, "high": 3600, "normal": 4 * 3600, "low": 24 * 3600}
"""The default first-response SLA per priority (docs/kpi-definitions.md)."""

_US: Final = 1_000_000
_MIN: Final = 60.0
_HOUR: Final = 3600.0
_DAY: Final = 86400.0
_MONTH: Final = 30 * _DAY

SLOW_RESPONSE_FACTOR: Final = 6.0
CHURN_SPIKE_FACTOR: Final = 10.0

# --- weekly seasonality -------------------------------------------------------


def _weekly_profile() -> tuple[float, ...]:
    """168 hourly factors from Monday 00:00 UTC, normalised to a mean of 1."""
    weekday = [0.15] * 7 + [0.5, 1.2, 2.2, 2.2, 2.2, 1.7, 2.2, 2.2, 2.2, 2.0, 1.4, 0.8, 0.5, 0.5, 0.5, 0.3, 0.3]
    friday = [f * 0.85 if hour >= 13 else f for hour, f in enumerate(weekday)]
    saturday = [0.15] * 9 + [0.3] + [0.4] * 8 + [0.3] * 2 + [0.2] * 4
    sunday = [0.12] * 9 + [0.2] + [0.3] * 8 + [0.25] * 2 + [0.15] * 4
    raw = weekday * 4 + friday + saturday + sunday
    mean = sum(raw) / len(raw)
    return tuple(f / mean for f in raw)


_PROFILE: Final = _weekly_profile()
_PROFILE_MAX: Final = max(_PROFILE)

# --- catalogues (weights are relative) ---------------------------------------

_SEGMENTS: Final = ("smb", "mid", "enterprise")
_SEGMENT_SHARE: Final = (0.70, 0.24, 0.06)
_SEGMENT_ACTIVITY: Final = {"smb": 1.0, "mid": 3.0, "enterprise": 8.0}  # tickets, deals… per customer
_SEGMENT_CHURN: Final = {"smb": 1.4, "mid": 0.7, "enterprise": 0.3}
_DEAL_MEDIAN: Final = {"smb": 4_000.0, "mid": 25_000.0, "enterprise": 140_000.0}
_CYCLE_MEDIAN_DAYS: Final = {"smb": 10.0, "mid": 25.0, "enterprise": 50.0}
_ORDER_MEDIAN: Final = {"smb": 350.0, "mid": 1_800.0, "enterprise": 7_500.0}
_SUBSCRIPTION_FEE: Final = {"smb": (49.0, 499.0), "mid": (800.0, 3_000.0), "enterprise": (5_000.0, 20_000.0)}

_PRIORITIES: Final = ("urgent", "high", "normal", "low")
_PRIORITY_WEIGHTS: Final = (5, 15, 60, 20)
# First public agent answer: SLA × lognormal(ln(median fraction), sigma), z truncated at ±2.8.
_ANSWER_FRACTION: Final = {"urgent": (0.12, 0.6), "high": (0.18, 0.7), "normal": (0.22, 0.8), "low": (0.07, 0.9)}
_CATEGORIES: Final = ("question", "problem", "complaint", "cancellation", "other")
_CATEGORY_WEIGHTS: Final = (45, 30, 10, 5, 10)
_CATEGORY_WEIGHTS_CHURN: Final = (35, 28, 20, 12, 5)
_RESOLVE_MEDIAN_H: Final = {"question": 1.5, "problem": 8.0, "complaint": 20.0, "cancellation": 6.0, "other": 3.0}
_CHANNELS: Final = ("email", "chat", "phone", "web", "social")
_CHANNEL_WEIGHTS: Final = (40, 25, 15, 15, 5)

_LEAD_SOURCES: Final = (
    "web", "referral", "ads", "event", "partner", "email", "social",
    "webinar", "cold-call", "podcast", "trade-press", None,
)  # fmt: skip
_LEAD_SOURCE_WEIGHTS: Final = (30, 12, 20, 7, 8, 10, 8, 2, 1, 0.5, 0.5, 1)
_CAMPAIGN_SOURCES: Final = frozenset({"ads", "email", "social", "event", "webinar"})
_LEAD_LOST_REASONS: Final = (
    "no response", "not a fit", "no budget", "competitor", "duplicate", "bad timing", "spam",
    "student", "job seeker",
)  # fmt: skip
_LEAD_LOST_WEIGHTS: Final = (30, 20, 15, 10, 8, 10, 5, 1, 1)

_STAGES: Final = ("qualification", "proposal", "negotiation")
_DEAL_LOST_REASONS: Final = (
    "price", "competitor", "no budget", "timing", "no decision", "lost contact", "product fit",
    "merger", "champion left",
)  # fmt: skip
_DEAL_LOST_WEIGHTS: Final = (25, 22, 15, 12, 14, 5, 5, 1, 1)

_CHURN_REASONS: Final = (
    "price", "competitor", "no longer needed", "poor support", "budget cuts", "product gaps", "out of business",
)  # fmt: skip
_CHURN_WEIGHTS: Final = (25, 20, 15, 10, 12, 13, 5)
_CHURN_WEIGHTS_SPIKE: Final = (20, 30, 8, 25, 7, 8, 2)

_MARKETING_CHANNELS: Final = ("ads", "social", "email", "event", "partner", "web")
_MARKETING_WEIGHTS: Final = (40, 20, 12, 10, 8, 10)
_RETENTION_CHANNELS: Final = ("email", "event", "customer-success")

_ACTIVITY_KINDS: Final = ("call", "email", "meeting", "note", "other")
_ACTIVITY_WEIGHTS: Final = (30, 35, 12, 18, 5)
_USERS: Final = tuple(f"u{i}" for i in range(1, 21))
_AGENTS: Final = tuple(f"agent-{i}" for i in range(1, 26))

# Operational episode mix (share of episode starts) and the catalog-only ones.
_EPISODES: Final = ("ticket", "lead", "deal", "nps", "activity", "marketing", "quote", "order")
_EPISODE_WEIGHTS: Final = (14.0, 12.0, 4.0, 2.0, 22.0, 3.0, 3.0, 3.0)
_CATALOG_EPISODES: Final = frozenset({"activity", "marketing", "quote", "order"})
# Mean events per episode start in the long run (measured over simulated weeks);
# the episode rate is `rate` divided by it.
_EVENTS_PER_EPISODE: Final = {True: 2.43, False: 2.05}

_LEAD_QUALIFY: Final = 0.40
_LEAD_CONVERT_OF_QUALIFIED: Final = 0.50  # 20 % of all leads
_DEAL_WIN: Final = 0.30
_DEAL_LOSE: Final = 0.58  # the rest stall (stay open)
_MONTHLY_CHURN: Final = 0.025
_MONTHLY_ACQUISITION: Final = 0.03
_COST_PER_LEAD: Final = 60.0


# --- public API ----------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; all of it is deterministic given `seed` and the start time."""

    seed: int = 7
    customers: int = 500
    rate: float = 50.0
    """Long-run mean events per second of event time (follow-ups included)."""
    start: datetime | None = None
    """Event time of the first event (UTC, aware); None: the caller passes now."""
    incidents: frozenset[str] = field(default_factory=frozenset)
    """Any of INCIDENTS: "slow-responses" (first answers ~6x slower), "churn-spike" (churn ~10x, NPS down)."""
    catalog: bool = True
    """Include the full catalog's types besides the core ones."""

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError(f"customers must be >= 1, got {self.customers}")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, got {self.rate}")
        unknown = set(self.incidents) - INCIDENTS
        if unknown:
            raise ValueError(f"unknown incident(s) {sorted(unknown)}; known: {sorted(INCIDENTS)}")
        if self.start is not None and self.start.utcoffset() is None:
            raise ValueError("start must be an aware datetime")


def generate(
    config: SimConfig,
    start: datetime,
    count: int | None = None,
    duration_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield synthetic events from `start`, in non-decreasing event time.

    Stops after `count` events or once the next event would fall more than
    `duration_s` seconds of event time after `start`, whichever comes first;
    with neither, it never stops. The first event occurs exactly at `start`.
    """
    if start.utcoffset() is None:
        raise ValueError("start must be an aware datetime")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if duration_s is not None and not duration_s >= 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    end_us = None if duration_s is None else int(duration_s * _US)
    return _Simulation(config, start.astimezone(UTC)).run(count, end_us)


# --- internals -----------------------------------------------------------------

Hook = Callable[[], bool]
# (time in µs after start, sequence, type, source, fields, hook run at emission: False drops the event)
_Item = tuple[int, int, str, str, dict[str, Any], Hook | None]


@dataclass
class _Customer:
    customer_id: str
    segment: str
    currency: str
    satisfaction: float  # per-customer offset of the latent satisfaction


class _Population:
    """Active customers by segment, with O(1) add, remove and weighted pick."""

    def __init__(self) -> None:
        self.by_segment: dict[str, list[str]] = {s: [] for s in _SEGMENTS}
        self.index: dict[str, int] = {}
        self.info: dict[str, _Customer] = {}

    def __len__(self) -> int:
        return len(self.index)

    def add(self, customer: _Customer) -> None:
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

    def pick(self, rng: random.Random, weights: dict[str, float]) -> _Customer | None:
        totals = [len(self.by_segment[s]) * weights[s] for s in _SEGMENTS]
        if sum(totals) <= 0:
            return None
        segment = rng.choices(_SEGMENTS, weights=totals)[0]
        return self.info[rng.choice(self.by_segment[segment])]


class _Simulation:
    def __init__(self, config: SimConfig, start: datetime) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.start = start
        self.catalog = config.catalog
        self.slow = "slow-responses" in config.incidents
        self.spike = "churn-spike" in config.incidents
        start_s = start.timestamp()
        self.tag = f"{config.seed}-{int(start_s):x}"
        # Hours since Monday 00:00 UTC at `start` (1970-01-01 was a Thursday).
        self.week_offset_s = (start_s + 3 * _DAY) % (7 * _DAY)
        self.heap: list[_Item] = []
        self.seq = 0
        self.counters: dict[str, int] = {}
        self.population = _Population()
        self.churned: set[str] = set()
        self.customer_count = 0
        self.user_weights = [self.rng.paretovariate(1.5) for _ in _USERS]
        # Operational episodes.
        episodes = [(e, w) for e, w in zip(_EPISODES, _EPISODE_WEIGHTS, strict=True)]
        if not self.catalog:
            episodes = [(e, w) for e, w in episodes if e not in _CATALOG_EPISODES]
        self.episodes = tuple(e for e, _ in episodes)
        total = sum(w for _, w in episodes)
        self.episode_cum = tuple(_cumulative([w / total for _, w in episodes]))
        self.episode_rate = config.rate / _EVENTS_PER_EPISODE[self.catalog]
        lead_share = dict(episodes)["lead"] / total
        # Acquisitions: a per-customer hazard, partly through lead conversions.
        acquisition_rate = config.customers * _MONTHLY_ACQUISITION / _MONTH
        conversion_rate = self.episode_rate * lead_share * _LEAD_QUALIFY * _LEAD_CONVERT_OF_QUALIFIED
        self.p_new_customer = min(1.0, 0.6 * acquisition_rate / conversion_rate)
        self.direct_acquisition_rate = max(0.0, acquisition_rate - self.p_new_customer * conversion_rate)
        self._import_population()
        self.starters: dict[str, Callable[[float], None]] = {
            "ticket": self._episode_ticket,
            "lead": self._episode_lead,
            "deal": self._episode_deal,
            "nps": self._episode_nps,
            "activity": self._episode_activity,
            "marketing": self._episode_marketing,
            "quote": self._episode_quote,
            "order": self._episode_order,
            "churn": self._lifecycle_churn,
            "acquisition": self._lifecycle_acquisition,
            "renewal": self._lifecycle_renewal,
            "billing": self._lifecycle_billing,
        }
        # Root processes: name -> next time (s after start). Lifecycle ones only in the catalog.
        self.next_root: dict[str, float] = {"episode": 0.0}
        if self.catalog:
            for name in ("churn", "acquisition", "renewal", "billing"):
                self.next_root[name] = self._advance(0.0, self._root_rate(name))

    # -- helpers ---------------------------------------------------------------

    def _next_id(self, kind: str) -> str:
        n = self.counters.get(kind, 0) + 1
        self.counters[kind] = n
        return f"{kind}-{self.tag}-{n}"

    def _ts(self, us: int) -> str:
        return (self.start + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _push(self, t_s: float, etype: str, source: str, fields: dict[str, Any], hook: Hook | None = None) -> int:
        us = round(t_s * _US)
        self.seq += 1
        heapq.heappush(self.heap, (us, self.seq, etype, source, fields, hook))
        return us

    def _lognormal(self, median: float, sigma: float, z_cap: float = 3.0) -> float:
        z = max(-z_cap, min(z_cap, self.rng.gauss(0.0, 1.0)))
        return median * math.exp(sigma * z)

    def _choice(self, values: tuple[Any, ...], weights: tuple[float, ...]) -> Any:
        return self.rng.choices(values, weights=weights)[0]

    def _season(self, t_s: float) -> float:
        return _PROFILE[int((self.week_offset_s + t_s) // _HOUR) % 168]

    def _advance(self, t_s: float, rate: float) -> float:
        """Next arrival after t_s of a Poisson process of mean `rate`/s shaped by the weekly profile (thinning)."""
        if rate <= 0:
            return t_s + _DAY  # look again later (e.g. nobody left to churn)
        peak = rate * _PROFILE_MAX
        while True:
            t_s += self.rng.expovariate(peak)
            if self.rng.random() * _PROFILE_MAX < self._season(t_s):
                return t_s

    def _root_rate(self, name: str) -> float:
        active = len(self.population)
        if name == "episode":
            return self.episode_rate
        if name == "churn":
            return active * _MONTHLY_CHURN / _MONTH * (CHURN_SPIKE_FACTOR if self.spike else 1.0)
        if name == "acquisition":
            return self.direct_acquisition_rate
        if name == "renewal":
            return active / (365 * _DAY)
        if name == "billing":
            return active / _MONTH
        raise AssertionError(name)

    @staticmethod
    def _money(value: float) -> float:
        return round(max(value, 0.01), 2)

    def _new_customer(self, segment: str | None = None) -> _Customer:
        self.customer_count += 1
        if segment is None:
            segment = self._choice(_SEGMENTS, _SEGMENT_SHARE)
        return _Customer(
            customer_id=f"cus-{self.tag}-{self.customer_count:05d}",
            segment=segment,
            currency="EUR" if self.rng.random() < 0.7 else "USD",
            satisfaction=self.rng.gauss(0.0, 0.06),
        )

    def _pick(self) -> _Customer | None:
        return self.population.pick(self.rng, _SEGMENT_ACTIVITY)

    # -- main loop ---------------------------------------------------------------

    def run(self, count: int | None, end_us: int | None) -> Iterator[dict[str, Any]]:
        n = 0
        heap = self.heap
        while count is None or n < count:
            # Start every root due before the next scheduled event (and not after the end).
            while True:
                name = min(self.next_root, key=self.next_root.__getitem__)
                t_root = self.next_root[name]
                root_us = round(t_root * _US)
                if (heap and heap[0][0] <= root_us) or (end_us is not None and root_us > end_us):
                    break
                self._start_root(name, t_root)
                self.next_root[name] = self._advance(t_root, self._root_rate(name))
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
                "occurred_at": self._ts(us),
                "source": source,
            }
            event.update(fields)
            yield event

    def _import_population(self) -> None:
        """The initial customers; in the catalog, announced by a `customer.acquired` each at start."""
        for _ in range(self.config.customers):
            customer = self._new_customer()
            self.population.add(customer)
            if self.catalog:
                self._push(
                    0.0, "customer.acquired", "crm", {"customer_id": customer.customer_id, "segment": customer.segment}
                )

    def _start_root(self, name: str, t: float) -> None:
        if name == "episode":
            name = self.episodes[_bisect(self.episode_cum, self.rng.random())]
        self.starters[name](t)

    # -- tickets and surveys -------------------------------------------------------

    def _episode_ticket(self, t: float) -> None:
        customer = self._pick()
        if customer is None:
            return
        cid = customer.customer_id
        ticket_id = self._next_id("tkt")
        priority: str = self._choice(_PRIORITIES, _PRIORITY_WEIGHTS)
        category: str = self._choice(_CATEGORIES, _CATEGORY_WEIGHTS_CHURN if self.spike else _CATEGORY_WEIGHTS)
        channel: str = self._choice(_CHANNELS, _CHANNEL_WEIGHTS)
        opened: dict[str, Any] = {"customer_id": cid, "ticket_id": ticket_id, "priority": priority, "channel": channel}
        if self.catalog:
            opened["category"] = category
        opened_us = self._push(t, "ticket.opened", "helpdesk", opened)
        base = {"customer_id": cid, "ticket_id": ticket_id}

        def answer(at: float, *, public: bool = True, author: str = "agent", first: bool = False) -> None:
            fields: dict[str, Any] = {**base, "public": public, "author": author}
            if author == "agent":
                fields["agent_id"] = self.rng.choice(_AGENTS)
            if first or self.rng.random() < 0.5:
                fields["priority"] = priority
            if self.rng.random() < 0.5:
                fields["ticket_opened_at"] = self._ts(opened_us)
            self._push(at, "ticket.answered", "helpdesk", fields)

        # A chatbot's instant reply (chat and web more often); not a response (docs/kpi-definitions.md).
        if self.rng.random() < (0.35 if channel in ("chat", "web") else 0.05):
            answer(t + self._lognormal(20.0, 0.8), author="bot")
        median, sigma = _ANSWER_FRACTION[priority]
        delay = max(20.0, SLA_SECONDS[priority] * self._lognormal(median, sigma, z_cap=2.8))
        if self.slow:
            delay *= SLOW_RESPONSE_FACTOR * self._lognormal(1.0, 0.15)
        if self.rng.random() < 0.12:  # an internal note before the first reply
            answer(t + delay * self.rng.uniform(0.2, 0.9), public=False)
        first = t + delay
        answer(first, first=True)
        last = first
        if self.rng.random() < 0.35:  # the customer writes back, the agent answers again
            last = first + self._lognormal(3 * _HOUR, 1.0)
            answer(last)
        ratio = delay / SLA_SECONDS[priority]
        penalty = 0.1 * math.log2(1.0 + ratio) + (0.05 if last > first else 0.0)
        penalty += {"complaint": 0.1, "cancellation": 0.15}.get(category, 0.0)
        if self.rng.random() < 0.5 and self.rng.random() < 0.35:  # survey sent, and answered
            kind: str = self._choice(("csat", "nps", "ces"), (60, 20, 20))
            self._survey(last + self._lognormal(3 * _HOUR, 1.0), customer, kind, penalty)
        if not self.catalog:
            return
        if self.rng.random() < 0.92:
            resolved = last + self._lognormal(_RESOLVE_MEDIAN_H[category] * _HOUR, 1.0)
            self._push(resolved, "ticket.resolved", "helpdesk", dict(base))
            if self.rng.random() < 0.08:
                reopened = resolved + self._lognormal(_DAY, 1.0)
                self._push(reopened, "ticket.reopened", "helpdesk", dict(base))
                again = reopened + self._lognormal(2 * _HOUR, 1.0)
                answer(again)
                self._push(again + self._lognormal(6 * _HOUR, 1.0), "ticket.resolved", "helpdesk", dict(base))

    def _survey(self, t: float, customer: _Customer, kind: str, penalty: float) -> None:
        satisfaction = self.rng.gauss(0.86, 0.18) + customer.satisfaction - penalty
        if self.spike:
            satisfaction -= 0.2 if kind == "nps" else 0.08
        s = min(1.0, max(0.0, satisfaction))
        if kind == "nps":
            score = min(10, int(s * 11))
        elif kind == "csat":
            score = 1 + min(4, int(s * 5))
        else:  # ces: 1 (very easy) .. 7 (very hard)
            score = 1 + min(6, int((1.0 - s) * 7))
        fields = {"customer_id": customer.customer_id, "survey_id": self._next_id("srv"), "kind": kind, "score": score}
        self._push(t, "survey.submitted", "surveys", fields)

    def _episode_nps(self, t: float) -> None:
        """A relationship NPS survey answered by a customer (no ticket involved)."""
        customer = self._pick()
        if customer is not None:
            self._survey(t, customer, "nps", 0.0)

    # -- leads ---------------------------------------------------------------------

    def _episode_lead(self, t: float) -> None:
        lead_id = self._next_id("lead")
        source: str | None = self._choice(_LEAD_SOURCES, _LEAD_SOURCE_WEIGHTS)
        fields: dict[str, Any] = {"lead_id": lead_id}
        if source is not None:
            fields["lead_source"] = source
            if source in _CAMPAIGN_SOURCES and self.rng.random() < 0.9:
                fields["campaign_id"] = f"cmp-{source}-{self.rng.randint(1, 3)}"
        self._push(t, "lead.created", "marketing" if source in _CAMPAIGN_SOURCES else "crm", fields)
        lead = {"lead_id": lead_id}

        def lose(at: float) -> None:
            if self.catalog:
                reason: str = self._choice(_LEAD_LOST_REASONS, _LEAD_LOST_WEIGHTS)
                self._push(at, "lead.lost", "crm", dict(lead, reason=reason))

        if self.rng.random() >= _LEAD_QUALIFY:
            if self.rng.random() < 0.7:
                lose(t + self._lognormal(3 * _DAY, 0.8))
            return
        qualified = t + self._lognormal(8 * _HOUR, 1.0)
        if self.catalog:
            self._push(qualified, "lead.qualified", "crm", dict(lead))
        if self.rng.random() >= _LEAD_CONVERT_OF_QUALIFIED:
            if self.rng.random() < 0.8:
                lose(qualified + self._lognormal(7 * _DAY, 0.7))
            return
        converted = qualified + self._lognormal(4 * _DAY, 0.8)
        if self.rng.random() < self.p_new_customer:
            customer = self._new_customer()
            self._push(converted, "lead.converted", "crm", dict(lead, customer_id=customer.customer_id))
            self._acquire(converted, customer, "crm")
        else:  # the lead belonged to an existing account
            existing = self._pick()
            if existing is None:
                return
            customer = existing
            self._push(converted, "lead.converted", "crm", dict(lead, customer_id=customer.customer_id))
        if self.rng.random() < 0.8:
            self._deal(converted + self._lognormal(2 * _HOUR, 1.0), customer)

    def _acquire(self, t: float, customer: _Customer, source: str) -> None:
        def join() -> bool:
            self.population.add(customer)
            return True

        fields = {"customer_id": customer.customer_id, "segment": customer.segment}
        if self.catalog:
            self._push(t, "customer.acquired", source, fields, join)
        else:
            # No event for it in the core: the customer just joins the population then.
            self._push(t, "", source, fields, lambda: join() and False)

    # -- deals, quotes, orders, invoices -------------------------------------------

    def _episode_deal(self, t: float) -> None:
        customer = self._pick()
        if customer is not None:
            self._deal(t, customer)

    def _deal(self, t: float, customer: _Customer) -> None:
        cid, currency = customer.customer_id, customer.currency
        deal_id = self._next_id("deal")
        amount = self._money(round(self._lognormal(_DEAL_MEDIAN[customer.segment], 0.6), -1))
        created: dict[str, Any] = {"customer_id": cid, "deal_id": deal_id, "amount": amount, "currency": currency}
        if self.catalog:
            created["stage"] = "new"
        created_us = self._push(t, "deal.created", "crm", created)
        cycle = self._lognormal(_CYCLE_MEDIAN_DAYS[customer.segment] * _DAY, 0.6)
        outcome = self.rng.random()
        reached = len(_STAGES) if outcome < _DEAL_WIN else self.rng.randint(0, len(_STAGES))
        quote_id: str | None = None
        if self.catalog and self.rng.random() < 0.7:  # stage changes recorded
            for i, stage in enumerate(_STAGES[:reached]):
                at = t + cycle * (0.15, 0.4, 0.7)[i] * self.rng.uniform(0.8, 1.2)
                self._push(at, "deal.stage_changed", "crm", {"customer_id": cid, "deal_id": deal_id, "stage": stage})
                if stage == "proposal" and self.rng.random() < 0.8:
                    quote_id = self._next_id("quote")
                    quoted = self._money(amount * self.rng.uniform(0.9, 1.05))
                    fields = {"customer_id": cid, "quote_id": quote_id, "amount": quoted, "currency": currency}
                    self._push(at + self._lognormal(4 * _HOUR, 0.8), "quote.sent", "crm", dict(fields, deal_id=deal_id))
        closed = t + cycle
        if outcome < _DEAL_WIN:
            won_amount = self._money(round(amount * self.rng.uniform(0.85, 1.0), -1))
            won: dict[str, Any] = {"customer_id": cid, "deal_id": deal_id, "amount": won_amount, "currency": currency}
            if self.rng.random() < 0.5:
                won["deal_created_at"] = self._ts(created_us)
            self._push(closed, "deal.won", "crm", won)
            if self.catalog:
                self._order(closed + self._lognormal(_DAY, 0.8), customer, won_amount, quote_id)
        elif outcome < _DEAL_WIN + _DEAL_LOSE:
            reason: str = self._choice(_DEAL_LOST_REASONS, _DEAL_LOST_WEIGHTS)
            lost: dict[str, Any] = {"customer_id": cid, "deal_id": deal_id}
            if self.rng.random() < 0.85:
                lost["reason"] = reason
            self._push(closed, "deal.lost", "crm", lost)

    def _episode_quote(self, t: float) -> None:
        """An upsell quote without a deal; about 45 % become orders."""
        customer = self._pick()
        if customer is None:
            return
        quote_id = self._next_id("quote")
        amount = self._money(round(self._lognormal(_DEAL_MEDIAN[customer.segment] * 0.3, 0.6), -1))
        fields = {
            "customer_id": customer.customer_id,
            "quote_id": quote_id,
            "amount": amount,
            "currency": customer.currency,
        }
        self._push(t, "quote.sent", "crm", fields)
        if self.rng.random() < 0.45:
            ordered = self._money(amount * self.rng.uniform(0.95, 1.0))
            self._order(t + self._lognormal(3 * _DAY, 0.8), customer, ordered, quote_id)

    def _episode_order(self, t: float) -> None:
        """A re-order (consumables, seats, services) without a quote."""
        customer = self._pick()
        if customer is not None:
            self._order(t, customer, self._money(self._lognormal(_ORDER_MEDIAN[customer.segment], 0.7)), None)

    def _order(self, t: float, customer: _Customer, amount: float, quote_id: str | None) -> None:
        cid = customer.customer_id
        order_id = self._next_id("ord")
        lead_days = self.rng.uniform(3, 21 if customer.segment == "enterprise" else 10)
        promised = t + lead_days * _DAY
        fields: dict[str, Any] = {
            "customer_id": cid,
            "order_id": order_id,
            "amount": amount,
            "currency": customer.currency,
        }
        if quote_id is not None:
            fields["quote_id"] = quote_id
        promised_us = round(promised * _US)
        if self.rng.random() < 0.9:
            fields["promised_at"] = self._ts(promised_us)
        self._push(t, "order.placed", "billing", fields)
        if self.rng.random() < 0.85:
            delivered = t + (promised - t) * self.rng.uniform(0.5, 1.0)
        else:
            delivered = promised + self._lognormal(2 * _DAY, 0.8)
        self._push(delivered, "order.delivered", "billing", {"customer_id": cid, "order_id": order_id})
        self._invoice(t + self._lognormal(2 * _HOUR, 1.0), customer, amount)

    def _invoice(self, t: float, customer: _Customer, amount: float) -> None:
        cid = customer.customer_id
        invoice_id = self._next_id("inv")
        due = t + 30 * _DAY
        fields = {
            "customer_id": cid,
            "invoice_id": invoice_id,
            "amount": amount,
            "currency": customer.currency,
            "due_at": self._ts(round(t * _US) + round(30 * _DAY) * _US),
        }
        self._push(t, "invoice.issued", "billing", fields)  # due exactly 30 days after issue
        u = self.rng.random()
        if u < 0.80:
            paid = t + self.rng.uniform(2, 29.5) * _DAY
        elif u < 0.95:
            paid = due + self._lognormal(7 * _DAY, 0.8)
        else:
            return  # still unpaid
        self._push(paid, "invoice.paid", "billing", {"customer_id": cid, "invoice_id": invoice_id})

    # -- activities and marketing --------------------------------------------------

    def _episode_activity(self, t: float) -> None:
        fields: dict[str, Any] = {
            "user_id": self.rng.choices(_USERS, weights=self.user_weights)[0],
            "kind": self._choice(_ACTIVITY_KINDS, _ACTIVITY_WEIGHTS),
        }
        customer = self._pick() if self.rng.random() < 0.85 else None
        if customer is not None:
            fields["customer_id"] = customer.customer_id
        self._push(t, "activity.logged", "crm", fields)

    def _episode_marketing(self, t: float) -> None:
        retention = self.rng.random() < 0.2
        if retention:
            channel: str = self.rng.choice(_RETENTION_CHANNELS)
        else:
            channel = self._choice(_MARKETING_CHANNELS, _MARKETING_WEIGHTS)
        # Calibrated so that acquisition spend / leads is about _COST_PER_LEAD.
        mean = _COST_PER_LEAD * 12.0 / (3.0 * 0.8)
        amount = self._money(self._lognormal(mean / math.exp(0.32), 0.8))
        fields: dict[str, Any] = {
            "campaign_id": f"cmp-{channel}-{self.rng.randint(1, 3)}",
            "channel": channel,
            "amount": amount,
            "currency": "EUR" if self.rng.random() < 0.75 else "USD",
            "purpose": "retention" if retention else "acquisition",
        }
        self._push(t, "marketing.spend", "marketing", fields)

    # -- customer lifecycle (catalog) ----------------------------------------------

    def _churn(self, customer: _Customer) -> Hook:
        def leave() -> bool:
            if customer.customer_id in self.churned:
                return False
            self.population.remove(customer.customer_id)
            self.churned.add(customer.customer_id)
            return True

        return leave

    def _lifecycle_churn(self, t: float) -> None:
        customer = self.population.pick(self.rng, _SEGMENT_CHURN)
        if customer is None:
            return
        reason: str = self._choice(_CHURN_REASONS, _CHURN_WEIGHTS_SPIKE if self.spike else _CHURN_WEIGHTS)
        self._churn(customer)()  # leaves now: no new episodes pick it
        self._push(t, "customer.churned", "crm", {"customer_id": customer.customer_id, "reason": reason})

    def _lifecycle_acquisition(self, t: float) -> None:
        """A self-serve sign-up (mostly small businesses)."""
        segment: str = self._choice(_SEGMENTS, (0.9, 0.09, 0.01))
        self._acquire(t, self._new_customer(segment), "billing")

    def _lifecycle_renewal(self, t: float) -> None:
        customer = self.population.pick(self.rng, {s: 1.0 for s in _SEGMENTS})
        if customer is None:
            return
        sub = {"customer_id": customer.customer_id, "subscription_id": f"sub-{customer.customer_id}"}
        self._push(t, "subscription.renewal_due", "billing", dict(sub))
        if self.rng.random() < (0.65 if self.spike else 0.88):
            self._push(t + self._lognormal(2 * _DAY, 1.0), "subscription.renewed", "billing", dict(sub))
        elif self.rng.random() < 0.5:
            at = t + self._lognormal(10 * _DAY, 0.6)
            fields = {"customer_id": customer.customer_id, "reason": "non-renewal"}
            self._push(at, "customer.churned", "crm", fields, self._churn(customer))

    def _lifecycle_billing(self, t: float) -> None:
        """A monthly subscription invoice."""
        customer = self.population.pick(self.rng, {s: 1.0 for s in _SEGMENTS})
        if customer is not None:
            low, high = _SUBSCRIPTION_FEE[customer.segment]
            self._invoice(
                t, customer, self._money(round(self.rng.uniform(low, high), 0) - 0.01 * self.rng.randint(0, 1))
            )


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    out[-1] = 1.0
    return out


def _bisect(cumulative: tuple[float, ...], u: float) -> int:
    for i, c in enumerate(cumulative):
        if u < c:
            return i
    return len(cumulative) - 1
