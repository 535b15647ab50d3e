"""The customer base over time (sign-ups, churn, renewals, subscription invoices), CRM users, marketing."""

from __future__ import annotations

import math
from typing import Any

from stream.devtools.synthetic_crm.engine import Customer, Hook
from stream.devtools.synthetic_crm.sales import Sales
from stream.devtools.synthetic_crm.world import (
    ACTIVITY_KINDS,
    ACTIVITY_WEIGHTS,
    CHURN_REASONS,
    CHURN_WEIGHTS,
    CHURN_WEIGHTS_SPIKE,
    COST_PER_LEAD,
    CUSTOMER_HISTORY_S,
    DAY,
    MARKETING_CHANNELS,
    MARKETING_PER_LEAD,
    MARKETING_WEIGHTS,
    RETENTION_CHANNELS,
    SEGMENTS,
    SUBSCRIPTION_FEE,
)

__all__ = ["Accounts"]

_EVEN = (1.0, 1.0, 1.0)


class Accounts(Sales):
    users: tuple[str, ...]
    user_weights: list[float]

    def import_base(self) -> None:
        """The customers active at the start, each announced by a `customer.acquired` dated at their
        sign-up, spread over the previous years (older than every window but the current state's):
        active customers are right from the first event and acquisitions in a window stay realistic."""
        signed_up = sorted(-self.rng.uniform(0.0, CUSTOMER_HISTORY_S) for _ in range(self.config.customers))
        for at in signed_up:
            customer = self.new_customer()
            self.population.add(customer)
            if self.catalog:
                fields = {"customer_id": customer.customer_id, "segment": customer.segment}
                self.push(at, "customer.acquired", "crm", fields)

    def acquire(self, t: float, customer: Customer, source: str) -> None:
        def join() -> bool:
            self.population.add(customer)
            return True

        fields = {"customer_id": customer.customer_id, "segment": customer.segment}
        if self.catalog:
            self.push(t, "customer.acquired", source, fields, join)
        else:
            # No event for it in the core: the customer just joins the population then.
            self.push(t, "", source, fields, lambda: join() and False)

    def _leave(self, customer: Customer) -> Hook:
        def leave() -> bool:
            if customer.customer_id in self.churned:
                return False
            self.population.remove(customer.customer_id)
            self.churned.add(customer.customer_id)
            return True

        return leave

    def lifecycle_churn(self, t: float) -> None:
        customer = self.pick("churn")
        if customer is None:
            return
        weights = CHURN_WEIGHTS_SPIKE if self.incident("churn-spike", t) else CHURN_WEIGHTS
        reason: str = self.choice(CHURN_REASONS, weights)
        self._leave(customer)()  # leaves now: no new episodes pick it
        self.push(t, "customer.churned", "crm", {"customer_id": customer.customer_id, "reason": reason})

    def lifecycle_acquisition(self, t: float) -> None:
        """A self-serve sign-up (mostly small businesses)."""
        segment: str = self.choice(SEGMENTS, (0.9, 0.09, 0.01))
        self.acquire(t, self.new_customer(segment), "billing")

    def lifecycle_renewal(self, t: float) -> None:
        customer = self.population.pick(self.rng, _EVEN)
        if customer is None:
            return
        sub = {"customer_id": customer.customer_id, "subscription_id": f"sub-{customer.customer_id}"}
        self.push(t, "subscription.renewal_due", "billing", dict(sub))
        if self.rng.random() < (0.65 if self.incident("churn-spike", t) else 0.9):
            self.push(t + self.lognormal(2 * DAY, 1.0), "subscription.renewed", "billing", dict(sub))
        elif self.rng.random() < 0.5:
            at = t + self.lognormal(10 * DAY, 0.6)
            fields = {"customer_id": customer.customer_id, "reason": "non-renewal"}
            self.push(at, "customer.churned", "crm", fields, self._leave(customer))

    def lifecycle_billing(self, t: float) -> None:
        """A monthly subscription invoice."""
        customer = self.population.pick(self.rng, _EVEN)
        if customer is not None:
            low, high = SUBSCRIPTION_FEE[customer.segment]
            amount = self.money(round(self.rng.uniform(low, high), 0) - 0.01 * self.rng.randint(0, 1))
            self.invoice(t, customer, amount)

    def episode_activity(self, t: float, customer: Customer) -> None:
        """A CRM user logs a call, email, meeting or note about a customer (some about no one)."""
        fields: dict[str, Any] = {
            "user_id": self.rng.choices(self.users, weights=self.user_weights)[0],
            "kind": self.choice(ACTIVITY_KINDS, ACTIVITY_WEIGHTS),
        }
        if self.rng.random() < 0.9:
            fields["customer_id"] = customer.customer_id
        self.push(t, "activity.logged", "crm", fields)

    def episode_marketing(self, t: float) -> None:
        retention = self.rng.random() < 0.2
        if retention:
            channel: str = self.rng.choice(RETENTION_CHANNELS)
        else:
            channel = self.choice(MARKETING_CHANNELS, MARKETING_WEIGHTS)
        # Acquisition spend / leads is about COST_PER_LEAD (80 % of the entries are acquisition).
        mean = COST_PER_LEAD / (MARKETING_PER_LEAD * 0.8)
        amount = self.money(self.lognormal(mean / math.exp(0.32), 0.8))
        fields: dict[str, Any] = {
            "campaign_id": f"cmp-{channel}-{self.rng.randint(1, 3)}",
            "channel": channel,
            "amount": amount,
            "currency": "EUR" if self.rng.random() < 0.75 else "USD",
            "purpose": "retention" if retention else "acquisition",
        }
        self.push(t, "marketing.spend", "marketing", fields)
