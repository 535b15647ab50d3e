"""Tickets and surveys: openings, first answers under the SLA, resolutions, satisfaction."""

from __future__ import annotations

import math
from typing import Any

from stream.devtools.synthetic_crm.engine import Customer, Engine
from stream.devtools.synthetic_crm.world import (
    ANSWER_DELAY,
    CATEGORIES,
    CATEGORY_WEIGHTS,
    CATEGORY_WEIGHTS_CHURN,
    CHANNEL_WEIGHTS,
    CHANNELS,
    DAY,
    HOUR,
    PRIORITIES,
    PRIORITY_WEIGHTS,
    RESOLVE_MEDIAN_H,
    SLA_SECONDS,
    SLOW_RESPONSE_FACTOR,
    TRIAGE_ALWAYS,
    TRIAGE_AT,
    TRIAGE_MISS_S,
    TRIAGE_SAVES,
)

__all__ = ["Support"]


class Support(Engine):
    agents: tuple[str, ...]

    def first_answer_delay(self, priority: str, t: float) -> float:
        """Seconds from opening to the first public agent answer.

        A healthy team: lognormal per priority, and a draw that would pass 85 % of the
        SLA is escalated by the queue's SLA timer - urgent and high are then always
        answered in time, the others mostly (a miss is by at most 10 minutes). During
        slow-responses every delay is SLOW_RESPONSE_FACTOR times the healthy draw.
        """
        median, sigma = ANSWER_DELAY[priority]
        delay = max(20.0, self.lognormal(median, sigma))
        sla = SLA_SECONDS[priority]
        if delay > TRIAGE_AT * sla:
            if priority in TRIAGE_ALWAYS or self.rng.random() < TRIAGE_SAVES:
                delay = sla * self.rng.uniform(TRIAGE_AT, 0.98)
            else:
                delay = sla + self.rng.uniform(30.0, TRIAGE_MISS_S)
        if self.incident("slow-responses", t):
            delay *= SLOW_RESPONSE_FACTOR
        return delay

    def episode_ticket(self, t: float, customer: Customer) -> None:
        cid = customer.customer_id
        ticket_id = self.next_id("tkt")
        priority: str = self.choice(PRIORITIES, PRIORITY_WEIGHTS)
        spike = self.incident("churn-spike", t)
        category: str = self.choice(CATEGORIES, CATEGORY_WEIGHTS_CHURN if spike else CATEGORY_WEIGHTS)
        channel: str = self.choice(CHANNELS, CHANNEL_WEIGHTS)
        opened: dict[str, Any] = {"customer_id": cid, "ticket_id": ticket_id, "priority": priority, "channel": channel}
        if self.catalog:
            opened["category"] = category
        opened_us = self.push(t, "ticket.opened", "helpdesk", opened)
        base = {"customer_id": cid, "ticket_id": ticket_id}
        agent = self.rng.choice(self.agents)

        def answer(at: float, *, public: bool = True, author: str = "agent", first: bool = False) -> None:
            fields: dict[str, Any] = {**base, "public": public, "author": author}
            if author == "agent":
                fields["agent_id"] = agent
            if first or self.rng.random() < 0.5:
                fields["priority"] = priority
            if self.rng.random() < 0.5:
                fields["ticket_opened_at"] = self.ts(opened_us)
            self.push(at, "ticket.answered", "helpdesk", fields)

        # A chatbot's instant reply (chat and web more often); not a response (docs/kpi-definitions.md).
        if self.rng.random() < (0.35 if channel in ("chat", "web") else 0.05):
            answer(t + self.lognormal(20.0, 0.8), author="bot")
        delay = self.first_answer_delay(priority, t)
        if self.rng.random() < 0.12:  # an internal note before the first reply
            answer(t + delay * self.rng.uniform(0.2, 0.9), public=False)
        first = t + delay
        answer(first, first=True)
        last = first
        if self.rng.random() < 0.35:  # the customer writes back, the agent answers again
            last = first + self.lognormal(3 * HOUR, 1.0)
            answer(last)
        ratio = delay / SLA_SECONDS[priority]
        penalty = 0.1 * math.log2(1.0 + ratio) + (0.03 if last > first else 0.0)
        penalty += {"complaint": 0.08, "cancellation": 0.12}.get(category, 0.0)
        if self.rng.random() < 0.5 and self.rng.random() < 0.35:  # survey sent, and answered
            kind: str = self.choice(("csat", "nps", "ces"), (60, 20, 20))
            self.survey(last + self.lognormal(3 * HOUR, 1.0), customer, kind, penalty)
        if not self.catalog:
            return
        resolved = last + self.lognormal(RESOLVE_MEDIAN_H[category] * HOUR, 1.0)
        self.push(resolved, "ticket.resolved", "helpdesk", dict(base))
        if self.rng.random() < 0.08:
            reopened = resolved + self.lognormal(DAY, 1.0)
            self.push(reopened, "ticket.reopened", "helpdesk", dict(base))
            again = reopened + self.lognormal(2 * HOUR, 1.0)
            answer(again)
            self.push(again + self.lognormal(6 * HOUR, 1.0), "ticket.resolved", "helpdesk", dict(base))

    def survey(self, t: float, customer: Customer, kind: str, penalty: float) -> None:
        satisfaction = self.rng.gauss(0.88, 0.13) + customer.satisfaction - penalty
        if self.incident("churn-spike", t):
            satisfaction -= 0.3 if kind == "nps" else 0.1
        s = min(1.0, max(0.0, satisfaction))
        if kind == "nps":
            score = min(10, int(s * 11))
        elif kind == "csat":
            score = 1 + min(4, int(s * 5))
        else:  # ces: 1 (very easy) .. 7 (very hard)
            score = 1 + min(6, int((1.0 - s) * 7))
        fields = {"customer_id": customer.customer_id, "survey_id": self.next_id("srv"), "kind": kind, "score": score}
        self.push(t, "survey.submitted", "surveys", fields)

    def episode_nps(self, t: float, customer: Customer) -> None:
        """A relationship NPS answer from one of the customer's contacts (no ticket involved)."""
        self.survey(t, customer, "nps", 0.0)
