"""Support KPIs: first response (all hours and business hours), SLA, backlog, resolution, reopens.

A ticket is a joined entity (`TicketState`): its first response time needs the
opening (or the opening time an answer carries) and the earliest public agent
answer, whichever order they arrive in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stream.events.entities import Contribution, EntityKind, PackedState, earlier
from stream.events.windows import to_us
from stream.kpis import sketch
from stream.kpis.business_hours import business_us
from stream.kpis.event_counts import events_of
from stream.kpis.registry import (
    Current,
    KpiConfig,
    Metric,
    Sample,
    SortedSetFamily,
    Tally,
    TallyFamily,
    Totals,
    quantiles,
    ratio,
)

__all__ = ["ENTITIES", "METRICS", "TicketState", "sorted_set_queries"]

FIRST_RESPONSES = Tally("fr_n")  # tickets first answered in the bucket
FIRST_RESPONSE_TOTAL_US = Tally("fr_us")  # their summed first response times (µs)
FIRST_RESPONSE_SKETCH = TallyFamily("frq")  # their response times, as sketch bucket counts
FIRST_RESPONSES_BY_PRIORITY = TallyFamily("frp")
SLA_BREACHES_BY_PRIORITY = TallyFamily("frb")  # of those, slower than the priority's SLA
BUSINESS_FIRST_RESPONSE_SKETCH = TallyFamily("frbq")  # business-hours response times, at the first answer
RESOLUTION_SKETCH = TallyFamily("rsq")  # first resolution times, at the first resolution
TICKETS_OPEN = TallyFamily("topen")  # current: backlog by priority
AWAITING_RESPONSE = SortedSetFamily("aw")  # current: unanswered tickets by priority, scored by opening (s)

_RESOLVED = events_of("ticket.resolved")
_REOPENED = events_of("ticket.reopened")


@dataclass
class TicketState(PackedState):
    """A ticket: its opening, a hinted opening from answers, its first response and resolutions."""

    opened_us: int | None = None
    priority: str | None = None
    hint_us: int | None = None
    hint_priority: str | None = None
    answered_us: int | None = None
    resolved_us: int | None = None  # first resolution
    last_resolved_us: int | None = None
    last_reopened_us: int | None = None

    def in_backlog(self) -> bool:
        """Opened, and not resolved unless reopened at or after its latest resolution."""
        if self.opened_us is None:
            return False
        if self.last_resolved_us is None:
            return True
        return self.last_reopened_us is not None and self.last_reopened_us >= self.last_resolved_us

    def persistent(self) -> bool:
        return self.in_backlog()

    def absorb(self, event: Any, t_us: int) -> None:
        """Merge a ticket event into this state."""
        if event.type == "ticket.opened":
            if earlier(self.opened_us, t_us):
                self.opened_us, self.priority = t_us, event.priority
        elif event.type == "ticket.answered":
            if event.ticket_opened_at is not None:
                hint = to_us(event.ticket_opened_at)
                if earlier(self.hint_us, hint):
                    self.hint_us, self.hint_priority = hint, event.priority
            # Only a public answer by an agent is a response (docs/kpis.md).
            if event.public and event.author == "agent" and earlier(self.answered_us, t_us):
                self.answered_us = t_us
        elif event.type == "ticket.resolved":
            if earlier(self.resolved_us, t_us):
                self.resolved_us = t_us
            if self.last_resolved_us is None or t_us > self.last_resolved_us:
                self.last_resolved_us = t_us
        elif event.type == "ticket.reopened" and (self.last_reopened_us is None or t_us > self.last_reopened_us):
            self.last_reopened_us = t_us

    def contribute(self, entity_id: str, config: KpiConfig) -> Contribution:
        """First-response samples at the first answer's time; resolution; backlog; the awaiting set."""
        out = Contribution()
        opening = self.opened_us if self.opened_us is not None else self.hint_us
        if self.answered_us is not None and opening is not None:
            # An answer stamped before its opening (producer clocks) counts as instant.
            rt_us = max(0, self.answered_us - opening)
            prio = self.priority or self.hint_priority or "normal"
            at = self.answered_us
            out.window += [
                (at, FIRST_RESPONSES.code, 1),
                (at, FIRST_RESPONSE_TOTAL_US.code, rt_us),
                (at, FIRST_RESPONSE_SKETCH.field(sketch.bucket_index(rt_us / 1e6)), 1),
                (at, FIRST_RESPONSES_BY_PRIORITY.field(prio), 1),
            ]
            if rt_us > config.sla[prio] * 1_000_000:
                out.window.append((at, SLA_BREACHES_BY_PRIORITY.field(prio), 1))
            business = business_us(opening, self.answered_us, config.schedule)
            out.window.append((at, BUSINESS_FIRST_RESPONSE_SKETCH.field(sketch.bucket_index(business / 1e6)), 1))
        if self.opened_us is not None and self.answered_us is None:
            awaiting = AWAITING_RESPONSE.of(self.priority or "normal")
            out.zmembers.add((awaiting.name, entity_id, self.opened_us / 1e6))
        if self.resolved_us is not None and opening is not None:
            resolution = max(0, self.resolved_us - opening)
            out.window.append((self.resolved_us, RESOLUTION_SKETCH.field(sketch.bucket_index(resolution / 1e6)), 1))
        if self.in_backlog():
            out.counters[TICKETS_OPEN.field(self.priority or "normal")] = 1
        return out


ENTITIES = (
    EntityKind(
        "ticket",
        "t",
        frozenset({"ticket.opened", "ticket.answered", "ticket.resolved", "ticket.reopened"}),
        lambda e: e.ticket_id,
        TicketState.decode,
    ),
)


def sorted_set_queries(now_s: float, config: KpiConfig) -> dict[str, float]:
    """Awaiting sets read at scrape time: name -> score at or below which a ticket is over its SLA."""
    return {AWAITING_RESPONSE.of(prio).name: now_s - seconds for prio, seconds in config.sla.items()}


# --- read-outs ---------------------------------------------------------------------------------


def _fr_quantiles(t: Totals) -> Iterator[Sample]:
    return quantiles(FIRST_RESPONSE_SKETCH.sketch(t))


def _fr_average(t: Totals) -> Iterator[Sample]:
    return ratio(FIRST_RESPONSE_TOTAL_US.of(t) * 1e-6, FIRST_RESPONSES.of(t))


def _fr_breach(t: Totals) -> Iterator[Sample]:
    breaches = SLA_BREACHES_BY_PRIORITY.by_label(t)
    for prio, n in sorted(FIRST_RESPONSES_BY_PRIORITY.by_label(t).items()):
        if n:
            yield (prio,), breaches.get(prio, 0) / n


def _awaiting(c: Current) -> Iterator[Sample]:
    for prio in c.config.sla:
        yield (prio,), c.zsets[AWAITING_RESPONSE.of(prio).name].size


def _awaiting_over_sla(c: Current) -> Iterator[Sample]:
    for prio in c.config.sla:
        yield (prio,), c.zsets[AWAITING_RESPONSE.of(prio).name].at_or_below


def _oldest_awaiting(c: Current) -> Iterator[Sample]:
    for prio in c.config.sla:
        lowest = c.zsets[AWAITING_RESPONSE.of(prio).name].lowest
        if lowest is not None:
            yield (prio,), max(0.0, c.now - lowest)


def _resolution(t: Totals) -> Iterator[Sample]:
    return quantiles(RESOLUTION_SKETCH.sketch(t))


def _reopen(t: Totals) -> Iterator[Sample]:
    return ratio(_REOPENED.of(t), _RESOLVED.of(t))


def _tickets_open(c: Current) -> Iterator[Sample]:
    by_prio = TICKETS_OPEN.by_label(c.counters)
    for prio in c.config.sla:
        yield (prio,), by_prio.get(prio, 0)


def _business_fr(t: Totals) -> Iterator[Sample]:
    return quantiles(BUSINESS_FIRST_RESPONSE_SKETCH.sketch(t))


METRICS: tuple[Metric, ...] = (
    Metric(
        "crm_first_response_seconds",
        "Quantiles 0.5/0.9/0.99 of first public agent answer - ticket opening, over tickets whose "
        "first answer is in the window (relative error <= 1%).",
        ("quantile",),
        _fr_quantiles,
        unit="seconds",
        domain="support",
        core=True,
    ),
    Metric(
        "crm_first_response_seconds_average",
        "Mean first response time over the same tickets.",
        (),
        _fr_average,
        unit="seconds",
        domain="support",
        core=True,
    ),
    Metric(
        "crm_first_response_sla_breach_ratio",
        "Share of those first responses slower than the SLA of the ticket's priority.",
        ("priority",),
        _fr_breach,
        unit="ratio",
        domain="support",
        core=True,
    ),
    Metric(
        "crm_tickets_awaiting_response",
        "Tickets opened and not yet answered by a public agent answer, now.",
        ("priority",),
        _awaiting,
        unit="count",
        domain="support",
        windowed=False,
        core=True,
    ),
    Metric(
        "crm_tickets_awaiting_response_over_sla",
        "Of those, the ones already past their SLA at scrape time.",
        ("priority",),
        _awaiting_over_sla,
        unit="count",
        domain="support",
        windowed=False,
        core=True,
    ),
    Metric(
        "crm_ticket_oldest_awaiting_response_seconds",
        "Age of the oldest ticket awaiting a first response.",
        ("priority",),
        _oldest_awaiting,
        unit="seconds",
        domain="support",
        windowed=False,
        core=True,
    ),
    Metric(
        "crm_ticket_first_resolution_seconds",
        "Quantiles 0.5/0.9/0.99 of first ticket.resolved - opening, over tickets whose first resolution "
        "is in the window.",
        ("quantile",),
        _resolution,
        unit="seconds",
        domain="support",
    ),
    Metric(
        "crm_ticket_reopen_ratio",
        "ticket.reopened / ticket.resolved in the window.",
        (),
        _reopen,
        unit="ratio",
        domain="support",
    ),
    Metric(
        "crm_tickets_open",
        "Backlog now: tickets opened and not resolved (a reopen puts one back), by priority.",
        ("priority",),
        _tickets_open,
        unit="count",
        domain="support",
        windowed=False,
    ),
    Metric(
        "crm_first_response_business_seconds",
        "Quantiles 0.5/0.9/0.99 of first response time counting only business hours "
        "(CRM_KPI_BUSINESS_HOURS in CRM_KPI_BUSINESS_TIMEZONE, minus CRM_KPI_BUSINESS_HOLIDAYS).",
        ("quantile",),
        _business_fr,
        unit="seconds",
        domain="support",
    ),
)
