"""The simulated company in numbers: rates, mixes, delays, weekly profile (pure constants).

Every rate is per *active customer* per month unless said otherwise, so a world
of 500 customers and one of 50,000 look alike per customer: a small business
opens a ticket about once a month, an enterprise account about five times; a
support agent handles about 400 tickets a month. What the numbers give at the
KPI level (at-risk share, backlog per agent, SLA breach ratio) is asserted by
tests/unit/devtools/test_synthetic_crm.py and documented in docs/configuration.md.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CHURN_SPIKE_FACTOR",
    "INCIDENTS",
    "INCIDENT_LEAD_S",
    "SEGMENTS",
    "SLA_SECONDS",
    "SLOW_RESPONSE_FACTOR",
    "TICKETS_PER_AGENT_MONTH",
]

US: Final = 1_000_000
MIN: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0
MONTH: Final = 30 * DAY
YEAR: Final = 365 * DAY

INCIDENTS: Final[frozenset[str]] = frozenset({"slow-responses", "churn-spike"})
"""Incident names `SimConfig.incidents` accepts."""

SLOW_RESPONSE_FACTOR: Final = 6.0
"""slow-responses: every first answer takes this many times longer (the median moves by exactly this factor)."""
CHURN_SPIKE_FACTOR: Final = 10.0
"""churn-spike: the churn hazard is multiplied by this; satisfaction drops (NPS by about 40 points)."""
INCIDENT_LEAD_S: Final = 12 * HOUR
"""`crm-kpi demo` and `crm-kpi simulate` start an incident this long before the live edge (or at the first event)."""

SLA_SECONDS: Final[dict[str, int]] = {"urgent": 15 * 60, "high": 3600, "normal": 4 * 3600, "low": 24 * 3600}
"""The default first-response SLA per priority (docs/kpi-definitions.md)."""

# --- customers ------------------------------------------------------------------------

SEGMENTS: Final = ("smb", "mid", "enterprise")
SEGMENT_SHARE: Final = (0.70, 0.24, 0.06)
# Per active customer and month, by segment (smb, mid, enterprise).
PER_CUSTOMER_MONTHLY: Final[dict[str, tuple[float, float, float]]] = {
    "ticket": (1.0, 2.0, 4.0),
    "order": (0.3, 0.8, 2.0),  # re-orders (consumables, seats, services)
    "quote": (0.04, 0.15, 0.4),  # upsell quotes without a deal
    "deal": (0.04, 0.12, 0.35),  # expansion deals
    "nps": (0.3, 0.8, 2.0),  # relationship NPS answers (several contacts per account)
    "activity": (1.0, 4.0, 12.0),  # account managers' calls, emails, meetings logged
}
CORE_KINDS: Final = frozenset({"ticket", "deal", "nps"})
LEADS_PER_CUSTOMER_MONTH: Final = 0.15  # inbound leads, per customer of the current base
MARKETING_PER_LEAD: Final = 0.25  # marketing.spend entries per lead
MONTHLY_CHURN: Final = 0.015  # hazard of an average customer; by segment below
SEGMENT_CHURN: Final = {"smb": 1.4, "mid": 0.7, "enterprise": 0.3}
MONTHLY_ACQUISITION: Final = 0.03
CUSTOMER_HISTORY_S: Final = 4 * YEAR  # the imported base signed up over this much time before the start
TICKETS_PER_AGENT_MONTH: Final = 400.0
USERS_PER_CUSTOMERS: Final = 250.0  # one CRM user (sales, success) per this many customers, at least 5

# --- tickets --------------------------------------------------------------------------

PRIORITIES: Final = ("urgent", "high", "normal", "low")
PRIORITY_WEIGHTS: Final = (5, 15, 60, 20)
# First public agent answer: lognormal(median seconds, sigma), healthy team.
ANSWER_DELAY: Final[dict[str, tuple[float, float]]] = {
    "urgent": (4 * MIN, 0.6),
    "high": (12 * MIN, 0.7),
    "normal": (45 * MIN, 0.8),
    "low": (90 * MIN, 1.0),
}
# A ticket whose draw passes this share of its SLA is escalated by the queue's SLA timer:
# urgent and high always make it; the others do with TRIAGE_SAVES, else miss by at most TRIAGE_MISS_S.
TRIAGE_AT: Final = 0.85
TRIAGE_ALWAYS: Final = frozenset({"urgent", "high"})
TRIAGE_SAVES: Final = 0.65
TRIAGE_MISS_S: Final = 10 * MIN
CATEGORIES: Final = ("question", "problem", "complaint", "cancellation", "other")
CATEGORY_WEIGHTS: Final = (49, 32, 7, 2, 10)
CATEGORY_WEIGHTS_CHURN: Final = (35, 28, 20, 12, 5)
RESOLVE_MEDIAN_H: Final = {"question": 1.5, "problem": 8.0, "complaint": 20.0, "cancellation": 6.0, "other": 3.0}
CHANNELS: Final = ("email", "chat", "phone", "web", "social")
CHANNEL_WEIGHTS: Final = (40, 25, 15, 15, 5)

# --- sales ----------------------------------------------------------------------------

DEAL_MEDIAN: Final = {"smb": 4_000.0, "mid": 25_000.0, "enterprise": 140_000.0}
CYCLE_MEDIAN_DAYS: Final = {"smb": 10.0, "mid": 25.0, "enterprise": 50.0}
ORDER_MEDIAN: Final = {"smb": 350.0, "mid": 1_800.0, "enterprise": 7_500.0}
SUBSCRIPTION_FEE: Final = {"smb": (49.0, 499.0), "mid": (800.0, 3_000.0), "enterprise": (5_000.0, 20_000.0)}
LEAD_SOURCES: Final = (
    "web", "referral", "ads", "event", "partner", "email", "social",
    "webinar", "cold-call", "podcast", "trade-press", None,
)  # fmt: skip
LEAD_SOURCE_WEIGHTS: Final = (30, 12, 20, 7, 8, 10, 8, 2, 1, 0.5, 0.5, 1)
CAMPAIGN_SOURCES: Final = frozenset({"ads", "email", "social", "event", "webinar"})
LEAD_LOST_REASONS: Final = (
    "no response", "not a fit", "no budget", "competitor", "duplicate", "bad timing", "spam",
    "student", "job seeker",
)  # fmt: skip
LEAD_LOST_WEIGHTS: Final = (30, 20, 15, 10, 8, 10, 5, 1, 1)
LEAD_QUALIFY: Final = 0.40
LEAD_CONVERT_OF_QUALIFIED: Final = 0.50  # 20 % of all leads
STAGES: Final = ("qualification", "proposal", "negotiation")
DEAL_WIN: Final = 0.30
DEAL_LOSE: Final = 0.58  # the rest stall (stay open)
DEAL_LOST_REASONS: Final = (
    "price", "competitor", "no budget", "timing", "no decision", "lost contact", "product fit",
    "merger", "champion left",
)  # fmt: skip
DEAL_LOST_WEIGHTS: Final = (25, 22, 15, 12, 14, 5, 5, 1, 1)
CHURN_REASONS: Final = (
    "price", "competitor", "no longer needed", "poor support", "budget cuts", "product gaps", "out of business",
)  # fmt: skip
CHURN_WEIGHTS: Final = (25, 20, 15, 10, 12, 13, 5)
CHURN_WEIGHTS_SPIKE: Final = (20, 30, 8, 25, 7, 8, 2)
MARKETING_CHANNELS: Final = ("ads", "social", "email", "event", "partner", "web")
MARKETING_WEIGHTS: Final = (40, 20, 12, 10, 8, 10)
RETENTION_CHANNELS: Final = ("email", "event", "customer-success")
COST_PER_LEAD: Final = 60.0
ACTIVITY_KINDS: Final = ("call", "email", "meeting", "note", "other")
ACTIVITY_WEIGHTS: Final = (30, 35, 12, 18, 5)


def _weekly_profile() -> tuple[float, ...]:
    """168 hourly factors from Monday 00:00 UTC, normalised to a mean of 1."""
    weekday = [0.15] * 7 + [0.5, 1.2, 2.2, 2.2, 2.2, 1.7, 2.2, 2.2, 2.2, 2.0, 1.4, 0.8, 0.5, 0.5, 0.5, 0.3, 0.3]
    friday = [f * 0.85 if hour >= 13 else f for hour, f in enumerate(weekday)]
    saturday = [0.15] * 9 + [0.3] + [0.4] * 8 + [0.3] * 2 + [0.2] * 4
    sunday = [0.12] * 9 + [0.2] + [0.3] * 8 + [0.25] * 2 + [0.15] * 4
    raw = weekday * 4 + friday + saturday + sunday
    mean = sum(raw) / len(raw)
    return tuple(f / mean for f in raw)


PROFILE: Final = _weekly_profile()
PROFILE_MAX: Final = max(PROFILE)

INCIDENT_ALERTS: Final[dict[str, frozenset[str]]] = {
    "slow-responses": frozenset({"CrmKpiTicketsAwaitingOverSla", "CrmKpiFirstResponseSlaBreachRatioHigh"}),
    "churn-spike": frozenset({"CrmKpiChurnSpike", "CrmKpiNpsDrop"}),
}
"""The shipped alerts each incident makes fire once it has run for 12 hours, on a weekday at 15:00 UTC
(tests/integration/monitoring/). The 24h windows' mix follows the time of day: run into the evening, a
churn spike also pulls the 24h CSAT under its threshold (CrmKpiCsatLow)."""
