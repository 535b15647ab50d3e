"""Sales KPIs: leads (created, qualified, converted, lost) and deals (won, cycle, open pipeline).

A deal is a joined entity (`DealState`): the sales cycle needs its creation
time, which a `deal.won` carries or an earlier `deal.created` stored; the open
pipeline needs to know which deals are neither won nor lost yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stream.events.entities import Contribution, EntityKind, PackedState, earlier
from stream.events.windows import to_us
from stream.kpis.event_counts import events_of
from stream.kpis.registry import (
    Current,
    KpiConfig,
    Metric,
    Sample,
    Tally,
    TallyFamily,
    Totals,
    amount_micros,
    cap_label,
    nonzero_amounts,
    one,
    per_label,
    ratio,
)

__all__ = ["ENTITIES", "EVENT_COUNTERS", "METRICS", "DealState"]

LEADS_BY_SOURCE = TallyFamily("lead")  # lead.created by capped lead_source
LEADS_LOST_BY_REASON = TallyFamily("llost")  # lead.lost by capped reason
WON_AMOUNT = TallyFamily("wamt")  # µ of won deals, per currency
WON_COUNT = TallyFamily("wn")  # won deals, per currency
CYCLE_COUNT = Tally("cyc_n")  # won deals whose creation is known, at the win
CYCLE_TOTAL_US = Tally("cyc_us")  # their summed sales cycles (µs)
DEALS_OPEN = TallyFamily("dopen")  # current: open deals by capped latest stage
PIPELINE = TallyFamily("pipe")  # current: created amount (µ) of open deals, per currency

_LEAD_CREATED = events_of("lead.created")
_LEAD_QUALIFIED = events_of("lead.qualified")
_LEAD_CONVERTED = events_of("lead.converted")
_DEAL_WON = events_of("deal.won")
_DEAL_LOST = events_of("deal.lost")


def _lead_created(event: Any, config: KpiConfig) -> Iterator[tuple[str, int]]:
    yield LEADS_BY_SOURCE.field(cap_label(event.lead_source, config.lead_sources)), 1


def _lead_lost(event: Any, config: KpiConfig) -> Iterator[tuple[str, int]]:
    yield LEADS_LOST_BY_REASON.field(cap_label(event.reason, config.lost_reasons)), 1


def _deal_won(event: Any, config: KpiConfig) -> Iterator[tuple[str, int]]:
    yield WON_AMOUNT.field(event.currency), amount_micros(event.amount)
    yield WON_COUNT.field(event.currency), 1


EVENT_COUNTERS = {"lead.created": _lead_created, "lead.lost": _lead_lost, "deal.won": _deal_won}
"""Counters one valid, new event adds to the bucket of its occurred_at, by event type."""


@dataclass
class DealState(PackedState):
    """A deal: its stored creation, the creation time a won event carried, its win or loss, its stage."""

    created_us: int | None = None
    created_hint_us: int | None = None
    won_us: int | None = None
    lost_us: int | None = None
    stage_us: int | None = None  # time of the latest stage seen
    stage: str | None = None
    amount_micros: int | None = None  # of the (earliest) deal.created
    currency: str | None = None
    hint_won_us: int | None = None  # time of the win that carried created_hint_us (the earliest that carries one)

    def is_open(self) -> bool:
        return self.created_us is not None and self.won_us is None and self.lost_us is None

    def persistent(self) -> bool:
        return self.is_open()

    def _see_stage(self, t_us: int, stage: str) -> None:
        # Latest stage wins; equal times break on the name, so arrival order never matters.
        if self.stage_us is None or (t_us, stage) > (self.stage_us, self.stage or ""):
            self.stage_us, self.stage = t_us, stage

    def absorb(self, event: Any, t_us: int) -> None:
        """Merge a deal event into this state."""
        if event.type == "deal.created":
            if earlier(self.created_us, t_us):
                self.created_us = t_us
                amount = getattr(event, "amount", None)
                self.amount_micros = None if amount is None else amount_micros(amount)
                self.currency = getattr(event, "currency", None)
            self._see_stage(t_us, getattr(event, "stage", "new"))
        elif event.type == "deal.stage_changed":
            self._see_stage(t_us, event.stage)
        elif event.type == "deal.lost":
            if earlier(self.lost_us, t_us):
                self.lost_us = t_us
        elif event.type == "deal.won":
            if earlier(self.won_us, t_us):
                self.won_us = t_us
            # The creation time carried by the earliest win that carries one, whatever the arrival order.
            # (A state stored before hint_won_us existed takes the next one that carries a creation.)
            if event.deal_created_at is not None and earlier(self.hint_won_us, t_us):
                self.created_hint_us, self.hint_won_us = to_us(event.deal_created_at), t_us

    def contribute(self, entity_id: str, config: KpiConfig) -> Contribution:
        """One sales-cycle sample at the win, when the creation time is known; open deal figures."""
        out = Contribution()
        created = self.created_hint_us if self.created_hint_us is not None else self.created_us
        if self.won_us is not None and created is not None:
            out.window += [
                (self.won_us, CYCLE_COUNT.code, 1),
                (self.won_us, CYCLE_TOTAL_US.code, self.won_us - created),
            ]
        if self.is_open():
            stage = self.stage if self.stage in config.stages else "other"
            out.counters[DEALS_OPEN.field(stage)] = 1
            if self.currency is not None and self.amount_micros:
                out.counters[PIPELINE.field(self.currency)] = self.amount_micros
        return out


ENTITIES = (
    EntityKind(
        "deal",
        "d",
        frozenset({"deal.created", "deal.won", "deal.lost", "deal.stage_changed"}),
        lambda e: e.deal_id,
        DealState.decode,
    ),
)


# --- read-outs ---------------------------------------------------------------------------------


def _leads_created(t: Totals) -> Iterator[Sample]:
    return per_label(LEADS_BY_SOURCE.by_label(t))


def _conversion(t: Totals) -> Iterator[Sample]:
    return ratio(_LEAD_CONVERTED.of(t), _LEAD_CREATED.of(t))


def _qualification(t: Totals) -> Iterator[Sample]:
    return ratio(_LEAD_QUALIFIED.of(t), _LEAD_CREATED.of(t))


def _leads_lost(t: Totals) -> Iterator[Sample]:
    return per_label(LEADS_LOST_BY_REASON.by_label(t))


def _deals_won(t: Totals) -> Iterator[Sample]:
    return one(_DEAL_WON.of(t))


def _win_ratio(t: Totals) -> Iterator[Sample]:
    won, lost = _DEAL_WON.of(t), _DEAL_LOST.of(t)
    return ratio(won, won + lost)


def _won_amount(t: Totals) -> Iterator[Sample]:
    return per_label(WON_AMOUNT.by_label(t), 1e-6)


def _deal_size(t: Totals) -> Iterator[Sample]:
    counts = WON_COUNT.by_label(t)
    for cur, amount in sorted(WON_AMOUNT.by_label(t).items()):
        if counts.get(cur):
            yield (cur,), amount * 1e-6 / counts[cur]


def _sales_cycle(t: Totals) -> Iterator[Sample]:
    return ratio(CYCLE_TOTAL_US.of(t) * 1e-6, CYCLE_COUNT.of(t))


def _deals_open(c: Current) -> Iterator[Sample]:
    by_stage = DEALS_OPEN.by_label(c.counters)
    for stage in c.config.stages:
        yield (stage,), by_stage.pop(stage, 0)
    if by_stage.get("other"):
        yield ("other",), by_stage["other"]


def _pipeline(c: Current) -> Iterator[Sample]:
    return nonzero_amounts(PIPELINE.by_label(c.counters))


METRICS: tuple[Metric, ...] = (
    Metric(
        "crm_leads_created",
        "lead.created count, by capped lead_source.",
        ("lead_source",),
        _leads_created,
        unit="count",
        domain="sales",
        core=True,
    ),
    Metric(
        "crm_lead_conversion_ratio",
        "lead.converted count / lead.created count.",
        (),
        _conversion,
        unit="ratio",
        domain="sales",
        core=True,
    ),
    Metric("crm_deals_won", "deal.won count.", (), _deals_won, unit="count", domain="sales", core=True),
    Metric("crm_deal_win_ratio", "won / (won + lost).", (), _win_ratio, unit="ratio", domain="sales", core=True),
    Metric(
        "crm_deal_won_amount",
        "Sum of amount of won deals, per currency.",
        ("currency",),
        _won_amount,
        unit="amount",
        domain="sales",
        core=True,
    ),
    Metric(
        "crm_deal_size_average",
        "Won amount / won count, per currency.",
        ("currency",),
        _deal_size,
        unit="amount",
        domain="sales",
        core=True,
    ),
    Metric(
        "crm_sales_cycle_seconds_average",
        "Mean of won occurred_at - deal creation time (deal_created_at, else the stored deal.created), "
        "over won deals whose creation is known.",
        (),
        _sales_cycle,
        unit="seconds",
        domain="sales",
        core=True,
    ),
    Metric(
        "crm_lead_qualification_ratio",
        "lead.qualified / lead.created in the window.",
        (),
        _qualification,
        unit="ratio",
        domain="sales",
    ),
    Metric(
        "crm_leads_lost",
        "lead.lost count, by capped reason (absent: unknown).",
        ("reason",),
        _leads_lost,
        unit="count",
        domain="sales",
    ),
    Metric(
        "crm_deals_open",
        "Deals created and not yet won or lost, now, by their latest stage (capped to the allow-list).",
        ("stage",),
        _deals_open,
        unit="count",
        domain="sales",
        windowed=False,
    ),
    Metric(
        "crm_pipeline_open_amount",
        "Sum of the created amount of those open deals, per currency, now.",
        ("currency",),
        _pipeline,
        unit="amount",
        domain="sales",
        windowed=False,
    ),
)
