"""A believable, deterministic synthetic CRM event stream (docs/configuration.md, `crm-kpi simulate`).

Pure Python and no I/O: `generate()` yields plain JSON-ready dicts, one per
event, in non-decreasing `occurred_at` order. Everything random comes from one
`random.Random(seed)`, and event time is derived from the `start` argument, so
the same `SimConfig` and `start` always give the same sequence.

How the world works (numbers in `world`):

* The customer base (segments smb, mid, enterprise; currency EUR or USD) exists
  before the first event: one `customer.acquired` each, dated at its sign-up
  over the previous four years, comes first (catalog only), so "active
  customers" is right from the first second of a backfill.
* Every episode kind is an arrival process whose rate is per active customer
  (tickets about once a month for a small business, five times for an
  enterprise; orders, quotes, expansion deals, NPS answers, account
  activities) or follows the base (inbound leads, marketing spend), shaped by
  a weekly profile (busy weekday business hours UTC, quiet nights and
  weekends). Churn and self-serve sign-ups arrive evenly (no weekly profile).
* Each episode is planned when it starts (`engine`); its follow-ups (answers
  after an opening, a win after a creation, a payment after an invoice…) come
  out at their own later event time.
* Incidents (`SimConfig.incidents`) change the world from `incident_start` on.

`support`, `sales` and `accounts` hold the episodes of each part of the company.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from stream.devtools.synthetic_crm.accounts import Accounts
from stream.devtools.synthetic_crm.engine import Customer, SimConfig, utc
from stream.devtools.synthetic_crm.support import Support
from stream.devtools.synthetic_crm.world import (
    CHURN_SPIKE_FACTOR,
    CORE_KINDS,
    INCIDENT_ALERTS,
    INCIDENT_LEAD_S,
    INCIDENTS,
    LEAD_CONVERT_OF_QUALIFIED,
    LEAD_QUALIFY,
    LEADS_PER_CUSTOMER_MONTH,
    MARKETING_PER_LEAD,
    MONTH,
    MONTHLY_ACQUISITION,
    MONTHLY_CHURN,
    PER_CUSTOMER_MONTHLY,
    SEGMENT_CHURN,
    SEGMENT_SHARE,
    SEGMENTS,
    SLA_SECONDS,
    SLOW_RESPONSE_FACTOR,
    TICKETS_PER_AGENT_MONTH,
    US,
    USERS_PER_CUSTOMERS,
    YEAR,
)

__all__ = [
    "CHURN_SPIKE_FACTOR",
    "INCIDENTS",
    "INCIDENT_ALERTS",
    "INCIDENT_LEAD_S",
    "SLA_SECONDS",
    "SLOW_RESPONSE_FACTOR",
    "SimConfig",
    "agents_for",
    "generate",
    "natural_rate",
]

# Long-run events per active customer and month (follow-ups included), measured over
# simulated months: the activity that `SimConfig.rate` scales, and the rest.
_SCALED_EVENTS_PER_CUSTOMER_MONTH = {True: 12.8, False: 5.7}
_OTHER_EVENTS_PER_CUSTOMER_MONTH = {True: 2.15, False: 0.0}


def natural_rate(customers: int, catalog: bool = True) -> float:
    """About how many events per second (long-run mean) a world of `customers` produces unscaled."""
    per_month = _SCALED_EVENTS_PER_CUSTOMER_MONTH[catalog] + _OTHER_EVENTS_PER_CUSTOMER_MONTH[catalog]
    return customers * per_month / MONTH


def agents_for(customers: int) -> int:
    """Support agents the simulated company staffs for a base of `customers` (at least 3)."""
    mean_tickets = sum(share * rate for share, rate in zip(SEGMENT_SHARE, PER_CUSTOMER_MONTHLY["ticket"], strict=True))
    return max(3, round(customers * mean_tickets / TICKETS_PER_AGENT_MONTH))


def generate(
    config: SimConfig,
    start: datetime,
    count: int | None = None,
    duration_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield synthetic events from `start`, in non-decreasing event time.

    The customer base's `customer.acquired` events come first, dated before
    `start`; every later event occurs at or after `start`. Stops after `count`
    events or once the next event would fall more than `duration_s` seconds of
    event time after `start`, whichever comes first; with neither, it never stops.
    """
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if duration_s is not None and not duration_s >= 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    end_us = None if duration_s is None else int(duration_s * US)
    return _Simulation(config, utc(start)).run(count, end_us)


class _Simulation(Accounts, Support):
    def __init__(self, config: SimConfig, start: datetime) -> None:
        super().__init__(config, start)
        catalog = self.catalog
        self.agents = tuple(f"agent-{i}" for i in range(1, agents_for(config.customers) + 1))
        users = max(5, round(config.customers / USERS_PER_CUSTOMERS))
        self.users = tuple(f"u{i}" for i in range(1, users + 1))
        self.user_weights = [self.rng.paretovariate(1.5) for _ in self.users]
        scale = 1.0
        if config.rate is not None:
            other = config.customers * _OTHER_EVENTS_PER_CUSTOMER_MONTH[catalog] / MONTH
            scaled = config.customers * _SCALED_EVENTS_PER_CUSTOMER_MONTH[catalog] / MONTH
            scale = max(config.rate - other, 0.05 * config.rate) / scaled
        self.scale = scale
        lead_rate = config.customers * LEADS_PER_CUSTOMER_MONTH / MONTH * scale
        acquisition_rate = config.customers * MONTHLY_ACQUISITION / MONTH
        conversion_rate = lead_rate * LEAD_QUALIFY * LEAD_CONVERT_OF_QUALIFIED
        self.p_new_customer = min(1.0, 0.6 * acquisition_rate / conversion_rate)
        direct = max(0.0, acquisition_rate - self.p_new_customer * conversion_rate)
        self.import_base()
        episodes: dict[str, Callable[[float, Customer], None]] = {
            "ticket": self.episode_ticket,
            "deal": self.deal,
            "nps": self.episode_nps,
            "order": self.episode_order,
            "quote": self.episode_quote,
            "activity": self.episode_activity,
        }
        for kind, episode in episodes.items():
            if catalog or kind in CORE_KINDS:
                self.add_root(kind, self._per_customer(kind, episode), self._customer_rate(kind), regular=False)
        self.add_root("lead", self.episode_lead, lambda t: lead_rate, regular=False)
        if not catalog:
            return
        self.add_root("marketing", self.episode_marketing, lambda t: lead_rate * MARKETING_PER_LEAD, regular=False)
        self.add_root("churn", self.lifecycle_churn, self._churn_rate, regular=True)
        self.add_root("acquisition", self.lifecycle_acquisition, lambda t: direct, regular=True)
        self.add_root("renewal", self.lifecycle_renewal, lambda t: len(self.population) / YEAR, regular=False)
        self.add_root("billing", self.lifecycle_billing, lambda t: len(self.population) / MONTH, regular=False)

    def pick(self, kind: str) -> Customer | None:
        """An active customer, segments weighted by their rate of `kind` (or churn)."""
        if kind == "churn":
            return self.population.pick(self.rng, tuple(SEGMENT_CHURN[s] for s in SEGMENTS))
        return self.population.pick(self.rng, PER_CUSTOMER_MONTHLY[kind])

    def _per_customer(self, kind: str, episode: Callable[[float, Customer], None]) -> Callable[[float], None]:
        def start(t: float) -> None:
            customer = self.pick(kind)
            if customer is not None:
                episode(t, customer)

        return start

    def _customer_rate(self, kind: str) -> Callable[[float], float]:
        weights = PER_CUSTOMER_MONTHLY[kind]
        return lambda t: self.population.weighted(weights) / MONTH * self.scale

    def _churn_rate(self, t: float) -> float:
        factor = CHURN_SPIKE_FACTOR if self.incident("churn-spike", t) else 1.0
        per_month = self.population.weighted(tuple(SEGMENT_CHURN[s] for s in SEGMENTS)) * MONTHLY_CHURN
        return per_month / MONTH * factor
