"""Whether the worker can make progress: one log line per change of state, a metric, a health page.

A dependency (Kafka, Redis) that fails is logged once when it starts failing, again only
when the failure changes or every `REPEAT_S` while it lasts (ERROR for failures no retry
can fix: credentials, certificates, ACLs; WARNING for outages), and once when it is back.
`crm_worker_healthy` is 0 while any dependency fails, `crm_worker_misconfigured` is 1
while a failure needs an operator (docs/security.md, docs/alerts.md).

`RepeatFilter` does the same for the Kafka client library's own log lines: during a
broker outage aiokafka logs each reconnection attempt (dozens a second); the filter lets
one line per distinct message through per `REPEAT_S`, counting the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["REPEAT_S", "Health", "RepeatFilter"]

log = logging.getLogger("stream.worker")

REPEAT_S = 60.0
"""While a failure lasts, its line is repeated at most this often (seconds)."""


@dataclass
class _Failure:
    kind: str
    message: str
    permanent: bool
    since: float
    logged_at: float
    attempts: int = 1


class Health:
    """The failing dependencies of one worker, their metrics and log lines."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._now = time.monotonic
        self._failing: dict[str, _Failure] = {}
        self.started = False
        self.failures = Counter(
            "crm_worker_dependency_failures_total",
            "Failed attempts to use Kafka or Redis, by dependency and kind (unreachable, timeout, tls, auth, acl).",
            ["dependency", "kind"],
            registry=registry,
        )
        up = Gauge(
            "crm_worker_dependency_up", "1 while the worker can use this dependency (kafka, redis).", ["dependency"],
            registry=registry,
        )
        for dependency in ("kafka", "redis"):
            up.labels(dependency).set_function(self._up_of(dependency))
        healthy = Gauge(
            "crm_worker_healthy", "1 while the worker can make progress (started, Kafka and Redis usable).",
            registry=registry,
        )
        healthy.set_function(lambda: 1.0 if self.healthy else 0.0)
        misconfigured = Gauge(
            "crm_worker_misconfigured",
            "1 while a failure that no retry can fix (credentials, certificates, ACLs) stops the worker.",
            registry=registry,
        )
        misconfigured.set_function(lambda: 1.0 if self.misconfigured else 0.0)

    def _up_of(self, dependency: str) -> Callable[[], float]:
        return lambda: 0.0 if dependency in self._failing else 1.0

    @property
    def healthy(self) -> bool:
        """True once started and while nothing fails."""
        return self.started and not self._failing

    @property
    def misconfigured(self) -> bool:
        """True while a failure needs an operator."""
        return any(f.permanent for f in self._failing.values())

    def failing(self, dependency: str) -> bool:
        """True while `dependency` is failing."""
        return dependency in self._failing

    def failed(self, dependency: str, kind: str, message: str, permanent: bool, retry_in: float) -> None:
        """Record a failed attempt; log it if it is new, of another kind, or last logged `REPEAT_S` ago.

        The state is the kind of failure, not its text: a broker outage whose attempts fail
        with alternating messages is one state, logged once.
        """
        self.failures.labels(dependency, kind).inc()
        now = self._now()
        known = self._failing.get(dependency)
        if known is not None and known.kind == kind:
            known.attempts += 1
            if now - known.logged_at < REPEAT_S:
                return
            known.logged_at = now
            known.message = message
            self._log(permanent, f"{message}; still failing after {now - known.since:.0f}s "
                                 f"({known.attempts} attempts), retrying every {retry_in:.0f}s")
            return
        self._failing[dependency] = _Failure(kind, message, permanent, known.since if known else now, now)
        if permanent:
            self._log(True, f"{message}; retrying every {retry_in:.0f}s until it is fixed")
        else:
            self._log(False, f"{message}; retrying with backoff (next in {retry_in:.1f}s)")

    def recovered(self, dependency: str) -> None:
        """Record a success; log once if the dependency was failing."""
        known = self._failing.pop(dependency, None)
        if known is not None:
            log.warning("%s is usable again after %.0fs", dependency.capitalize(), self._now() - known.since)

    @staticmethod
    def _log(permanent: bool, message: str) -> None:
        log.log(logging.ERROR if permanent else logging.WARNING, "%s", message)


class RepeatFilter(logging.Filter):
    """Lets each distinct message of a logger through once per `interval` seconds; counts the others.

    Messages are told apart by their format string (not their arguments), so "Unable
    connect to node 1: ..." repeated with a new error text each time is one message.
    """

    def __init__(self, interval: float = REPEAT_S, max_keys: int = 256) -> None:
        super().__init__()
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # debug output is asked for explicitly: keep it whole
        key = (record.name, str(getattr(record, "template", record.msg))[:200])
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._seen[key] = (seen[0], seen[1] + 1)
            self.suppressed += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.getMessage()} (and {seen[1]} similar lines in the last {now - seen[0]:.0f}s)"
            record.args = ()
        if len(self._seen) >= self.max_keys:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True
