"""Settings: environment variables with the prefix `CRM_KPI_` (README "Settings").

A bad value stops start-up with one line naming the setting (`SettingsError`).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas import TOPIC_FAMILY
from stream.events.windows import format_duration
from stream.kpis.business_hours import Schedule, parse_calendar, parse_hours
from stream.kpis.registry import KpiConfig

__all__ = ["Priority", "Settings", "SettingsError", "format_duration", "load_settings", "parse_duration"]

Priority = Literal["urgent", "high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("urgent", "high", "normal", "low")

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


class SettingsError(Exception):
    """A setting is invalid; str() is one line naming the environment variable."""


def parse_duration(text: str) -> float:
    """Parse '90s', '15m', '1h', '7d', '2w' or '250ms' into seconds (a bare number is seconds)."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


def _windows(value: Any) -> Any:
    items = _csv(value)
    if isinstance(items, list):
        return [_duration(v) for v in items]
    return items


def _sla(value: Any) -> Any:
    if isinstance(value, str):
        out: dict[str, float] = {}
        for part in _csv(value):
            name, sep, dur = part.partition("=")
            if not sep:
                raise ValueError(f"expected priority=duration, got {part!r}")
            out[name.strip()] = parse_duration(dur)
        return out
    return value


def _holiday_date(text: str) -> date | None:
    """An ISO date ('2026-12-24'), or None for anything else (a calendar name)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


Seconds = Annotated[float, BeforeValidator(_duration), Field(gt=0)]


class Settings(BaseSettings):
    """Every knob of worker, exporter and tools; see README 'Settings'."""

    model_config = SettingsConfigDict(env_prefix="CRM_KPI_", extra="ignore", frozen=True)

    # Kafka
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_group_id: str = "crm-kpi-worker"
    topic_prefix: str = Field("crm.", pattern=r"^[A-Za-z0-9._-]*$")
    topic_partitions: int = Field(4, ge=1, le=1024)
    topic_replication_factor: int = Field(1, ge=1, le=16)

    # Redis
    redis_url: str = Field("redis://localhost:6379/0", pattern=r"^(redis|rediss|unix)://")
    redis_password: SecretStr | None = None
    redis_key_prefix: str = Field("crm", pattern=r"^[A-Za-z0-9_.:-]+$")

    # Windows and state
    windows: Annotated[list[float], NoDecode, BeforeValidator(_windows)] = Field(
        default_factory=lambda: [3600.0, 86400.0, 604800.0, 2592000.0], min_length=1
    )
    dedupe_horizon: Seconds = 86400.0
    state_ttl: Seconds = 90 * 86400.0
    max_event_bytes: int = Field(65536, ge=256)
    max_future_skew: Seconds = 300.0
    sla: Annotated[dict[str, float], NoDecode, BeforeValidator(_sla)] = Field(
        default_factory=lambda: {"urgent": 900.0, "high": 3600.0, "normal": 14400.0, "low": 86400.0}
    )
    lead_sources: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(
        default_factory=lambda: ["web", "referral", "ads", "event", "partner", "email", "social"]
    )

    # Full catalog: label allow-lists, business hours, churn risk
    lead_lost_reasons: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(
        default_factory=lambda: [
            "no response",
            "not a fit",
            "no budget",
            "competitor",
            "duplicate",
            "bad timing",
            "spam",
        ]
    )
    deal_stages: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(
        default_factory=lambda: ["new", "qualification", "proposal", "negotiation"]
    )
    business_hours: str = "mon-fri 09:00-17:00"
    business_timezone: str = "UTC"
    business_holidays: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(default_factory=list)
    """Closed days: dates (2026-12-24) and public-holiday calendars by country[-region] (DE-BY, US, FR)."""
    churn_risk_threshold: int = Field(4, ge=1, le=1000)

    # Worker batching
    batch_max_records: int = Field(4000, ge=1, le=100_000)
    batch_timeout_ms: int = Field(50, ge=0, le=60_000)
    commit_interval: Seconds = 1.0
    worker_stall_timeout: Seconds = 120.0
    """/health turns 503 when records wait and no batch was applied for this long."""

    # Ports
    worker_port: int = Field(6066, ge=1, le=65535)
    worker_host: str = "0.0.0.0"
    exporter_port: int = Field(9464, ge=1, le=65535)
    lag_exporter_port: int = Field(9308, ge=1, le=65535)
    exporter_host: str = "0.0.0.0"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, v: list[float]) -> list[float]:
        for w in v:
            if w < 60 or w % 60:
                raise ValueError("each window must be a whole number of minutes (>= 1m)")
        if len(set(v)) != len(v):
            raise ValueError("windows repeat")
        return sorted(v)

    @field_validator("business_hours")
    @classmethod
    def _check_hours(cls, v: str) -> str:
        parse_hours(v)
        return v

    @field_validator("business_timezone")
    @classmethod
    def _check_tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin)") from None
        return v

    @field_validator("business_holidays")
    @classmethod
    def _check_holidays(cls, v: list[str]) -> list[str]:
        for item in v:
            if _holiday_date(item) is not None:
                continue
            if re.match(r"^\d{4}-", item):
                raise ValueError(f"not a date: {item!r} (use YYYY-MM-DD)")
            parse_calendar(item)  # ValueError: neither a date nor a calendar
        return v

    @field_validator("lead_lost_reasons", "deal_stages")
    @classmethod
    def _check_labels(cls, v: list[str]) -> list[str]:
        if any("|" in x or len(x) > 64 for x in v):
            raise ValueError("labels must be at most 64 characters and contain no '|'")
        return v

    @field_validator("sla")
    @classmethod
    def _check_sla(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(PRIORITIES)
        if unknown:
            raise ValueError(f"unknown priorities {sorted(unknown)}; use {list(PRIORITIES)}")
        missing = set(PRIORITIES) - set(v)
        if missing:
            raise ValueError(f"missing priorities {sorted(missing)}")
        if any(d <= 0 for d in v.values()):
            raise ValueError("SLA durations must be > 0")
        return v

    def kpi_config(self) -> KpiConfig:
        """The settings the KPI fold and read-outs need (SLAs, allow-lists, schedule, thresholds)."""
        return KpiConfig(
            sla=dict(self.sla),
            lead_sources=frozenset(self.lead_sources),
            lost_reasons=frozenset(self.lead_lost_reasons),
            stages=tuple(self.deal_stages),
            schedule=Schedule(
                self.business_timezone,
                parse_hours(self.business_hours),
                frozenset(d for d in map(_holiday_date, self.business_holidays) if d is not None),
                tuple(parse_calendar(x) for x in self.business_holidays if _holiday_date(x) is None),
            ),
            risk_threshold=self.churn_risk_threshold,
        )

    def topic(self, family: str) -> str:
        """Full topic name of a family ('tickets' -> 'crm.tickets')."""
        return f"{self.topic_prefix}{family}"

    def event_topics(self) -> dict[str, str]:
        """{topic name: family} of every event topic the worker consumes."""
        return {self.topic(f): f for f in sorted(set(TOPIC_FAMILY.values()))}

    @property
    def dead_letter_topic(self) -> str:
        """The dead-letter topic (docs/events.md)."""
        return self.topic("dead-letter")

    @property
    def longest_window(self) -> float:
        """Seconds of the longest window; older events are late."""
        return max(self.windows)

    def kafka_client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients: bootstrap servers, TLS and SASL."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers.split(","),
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            opts["ssl_context"] = create_ssl_context(
                cafile=self.kafka_ssl_cafile,
                certfile=self.kafka_ssl_certfile,
                keyfile=self.kafka_ssl_keyfile,
            )
        if self.kafka_security_protocol.startswith("SASL"):
            opts["sasl_mechanism"] = self.kafka_sasl_mechanism or "PLAIN"
            opts["sasl_plain_username"] = self.kafka_sasl_username
            opts["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return opts


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise SettingsError naming the first bad one."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        value = err.get("input")
        shown = "***" if "password" in name else repr(value)
        raise SettingsError(f"invalid setting CRM_KPI_{name.upper()}={shown}: {err['msg']}") from None
