"""Leads, deals, quotes, orders and invoices."""

from __future__ import annotations

from typing import Any

from stream.devtools.synthetic_crm.engine import Customer, Engine
from stream.devtools.synthetic_crm.world import (
    CAMPAIGN_SOURCES,
    CYCLE_MEDIAN_DAYS,
    DAY,
    DEAL_LOSE,
    DEAL_LOST_REASONS,
    DEAL_LOST_WEIGHTS,
    DEAL_MEDIAN,
    DEAL_WIN,
    HOUR,
    LEAD_CONVERT_OF_QUALIFIED,
    LEAD_LOST_REASONS,
    LEAD_LOST_WEIGHTS,
    LEAD_QUALIFY,
    LEAD_SOURCE_WEIGHTS,
    LEAD_SOURCES,
    ORDER_MEDIAN,
    STAGES,
    US,
)

__all__ = ["Sales"]


class Sales(Engine):
    p_new_customer: float

    def acquire(self, t: float, customer: Customer, source: str) -> None:
        raise NotImplementedError  # accounts.Accounts

    def pick(self, kind: str) -> Customer | None:
        raise NotImplementedError  # the composed simulation

    def episode_lead(self, t: float) -> None:
        lead_id = self.next_id("lead")
        source: str | None = self.choice(LEAD_SOURCES, LEAD_SOURCE_WEIGHTS)
        fields: dict[str, Any] = {"lead_id": lead_id}
        if source is not None:
            fields["lead_source"] = source
            if source in CAMPAIGN_SOURCES and self.rng.random() < 0.9:
                fields["campaign_id"] = f"cmp-{source}-{self.rng.randint(1, 3)}"
        self.push(t, "lead.created", "marketing" if source in CAMPAIGN_SOURCES else "crm", fields)
        lead = {"lead_id": lead_id}

        def lose(at: float) -> None:
            if self.catalog:
                reason: str = self.choice(LEAD_LOST_REASONS, LEAD_LOST_WEIGHTS)
                self.push(at, "lead.lost", "crm", dict(lead, reason=reason))

        if self.rng.random() >= LEAD_QUALIFY:
            if self.rng.random() < 0.7:
                lose(t + self.lognormal(3 * DAY, 0.8))
            return
        qualified = t + self.lognormal(8 * HOUR, 1.0)
        if self.catalog:
            self.push(qualified, "lead.qualified", "crm", dict(lead))
        if self.rng.random() >= LEAD_CONVERT_OF_QUALIFIED:
            if self.rng.random() < 0.8:
                lose(qualified + self.lognormal(7 * DAY, 0.7))
            return
        converted = qualified + self.lognormal(4 * DAY, 0.8)
        if self.rng.random() < self.p_new_customer:
            customer = self.new_customer()
            self.push(converted, "lead.converted", "crm", dict(lead, customer_id=customer.customer_id))
            self.acquire(converted, customer, "crm")
        else:  # the lead belonged to an existing account
            existing = self.pick("deal")
            if existing is None:
                return
            customer = existing
            self.push(converted, "lead.converted", "crm", dict(lead, customer_id=customer.customer_id))
        if self.rng.random() < 0.8:
            self.deal(converted + self.lognormal(2 * HOUR, 1.0), customer)

    def deal(self, t: float, customer: Customer) -> None:
        cid, currency = customer.customer_id, customer.currency
        deal_id = self.next_id("deal")
        amount = self.money(round(self.lognormal(DEAL_MEDIAN[customer.segment], 0.6), -1))
        created: dict[str, Any] = {"customer_id": cid, "deal_id": deal_id, "amount": amount, "currency": currency}
        if self.catalog:
            created["stage"] = "new"
        created_us = self.push(t, "deal.created", "crm", created)
        cycle = self.lognormal(CYCLE_MEDIAN_DAYS[customer.segment] * DAY, 0.6)
        outcome = self.rng.random()
        reached = len(STAGES) if outcome < DEAL_WIN else self.rng.randint(0, len(STAGES))
        quote_id: str | None = None
        if self.catalog and self.rng.random() < 0.7:  # stage changes recorded
            for i, stage in enumerate(STAGES[:reached]):
                at = t + cycle * (0.15, 0.4, 0.7)[i] * self.rng.uniform(0.8, 1.2)
                self.push(at, "deal.stage_changed", "crm", {"customer_id": cid, "deal_id": deal_id, "stage": stage})
                if stage == "proposal" and self.rng.random() < 0.8:
                    quote_id = self.next_id("quote")
                    quoted = self.money(amount * self.rng.uniform(0.9, 1.05))
                    fields = {"customer_id": cid, "quote_id": quote_id, "amount": quoted, "currency": currency}
                    self.push(at + self.lognormal(4 * HOUR, 0.8), "quote.sent", "crm", dict(fields, deal_id=deal_id))
        closed = t + cycle
        if outcome < DEAL_WIN:
            won_amount = self.money(round(amount * self.rng.uniform(0.85, 1.0), -1))
            won: dict[str, Any] = {"customer_id": cid, "deal_id": deal_id, "amount": won_amount, "currency": currency}
            if self.rng.random() < 0.5:
                won["deal_created_at"] = self.ts(created_us)
            self.push(closed, "deal.won", "crm", won)
            if self.catalog:
                self.order(closed + self.lognormal(DAY, 0.8), customer, won_amount, quote_id)
        elif outcome < DEAL_WIN + DEAL_LOSE:
            reason: str = self.choice(DEAL_LOST_REASONS, DEAL_LOST_WEIGHTS)
            lost: dict[str, Any] = {"customer_id": cid, "deal_id": deal_id}
            if self.rng.random() < 0.85:
                lost["reason"] = reason
            self.push(closed, "deal.lost", "crm", lost)

    def episode_quote(self, t: float, customer: Customer) -> None:
        """An upsell quote without a deal; about 45 % become orders."""
        quote_id = self.next_id("quote")
        amount = self.money(round(self.lognormal(DEAL_MEDIAN[customer.segment] * 0.3, 0.6), -1))
        fields = {
            "customer_id": customer.customer_id,
            "quote_id": quote_id,
            "amount": amount,
            "currency": customer.currency,
        }
        self.push(t, "quote.sent", "crm", fields)
        if self.rng.random() < 0.45:
            ordered = self.money(amount * self.rng.uniform(0.95, 1.0))
            self.order(t + self.lognormal(3 * DAY, 0.8), customer, ordered, quote_id)

    def episode_order(self, t: float, customer: Customer) -> None:
        """A re-order (consumables, seats, services) without a quote."""
        self.order(t, customer, self.money(self.lognormal(ORDER_MEDIAN[customer.segment], 0.7)), None)

    def order(self, t: float, customer: Customer, amount: float, quote_id: str | None) -> None:
        cid = customer.customer_id
        order_id = self.next_id("ord")
        lead_days = self.rng.uniform(3, 21 if customer.segment == "enterprise" else 10)
        promised = t + lead_days * DAY
        fields: dict[str, Any] = {
            "customer_id": cid,
            "order_id": order_id,
            "amount": amount,
            "currency": customer.currency,
        }
        if quote_id is not None:
            fields["quote_id"] = quote_id
        if self.rng.random() < 0.9:
            fields["promised_at"] = self.ts(round(promised * US))
        self.push(t, "order.placed", "billing", fields)
        if self.rng.random() < 0.85:
            delivered = t + (promised - t) * self.rng.uniform(0.5, 1.0)
        else:
            delivered = promised + self.lognormal(2 * DAY, 0.8)
        self.push(delivered, "order.delivered", "billing", {"customer_id": cid, "order_id": order_id})
        self.invoice(t + self.lognormal(2 * HOUR, 1.0), customer, amount)

    def invoice(self, t: float, customer: Customer, amount: float) -> None:
        cid = customer.customer_id
        invoice_id = self.next_id("inv")
        due = t + 30 * DAY
        fields = {
            "customer_id": cid,
            "invoice_id": invoice_id,
            "amount": amount,
            "currency": customer.currency,
            "due_at": self.ts(round(t * US) + round(30 * DAY) * US),
        }
        self.push(t, "invoice.issued", "billing", fields)  # due exactly 30 days after issue
        u = self.rng.random()
        if u < 0.80:
            paid = t + self.rng.uniform(2, 29.5) * DAY
        elif u < 0.95:
            paid = due + self.lognormal(7 * DAY, 0.8)
        else:
            return  # still unpaid
        self.push(paid, "invoice.paid", "billing", {"customer_id": cid, "invoice_id": invoice_id})
