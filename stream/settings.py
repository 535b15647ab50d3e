"""Settings: environment variables with the prefix `CRM_KPI_` (README "Settings").

A bad value stops start-up with one line naming the setting (`SettingsError`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import date
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas import TOPIC_FAMILY
from stream.events.windows import format_duration
from stream.kpis.business_hours import Schedule, parse_calendar, parse_hours
from stream.kpis.registry import KpiConfig

__all__ = [
    "SECRET_SETTINGS",
    "Priority",
    "Settings",
    "SettingsError",
    "format_duration",
    "load_settings",
    "parse_duration",
]

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


def _none_if_empty(value: Any) -> Any:
    # Compose files pass optional secrets through as `${VAR:-}`: empty means "not set".
    return None if isinstance(value, str) and not value.strip() else value


OptStr = Annotated[str | None, BeforeValidator(_none_if_empty)]
OptSecret = Annotated[SecretStr | None, BeforeValidator(_none_if_empty)]

# Settings whose values are never shown, in messages or logs (docs/security.md).
SECRET_SETTINGS = (
    "kafka_sasl_password",
    "kafka_sasl_oauth_client_secret",
    "kafka_ssl_key_password",
    "redis_password",
    "redis_tls_key_password",
)
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def _env(name: str) -> str:
    return f"CRM_KPI_{name.upper()}"


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every knob of worker, exporter and tools; see README 'Settings'."""

    model_config = SettingsConfigDict(env_prefix="CRM_KPI_", extra="ignore", frozen=True)

    # Kafka (security: docs/security.md)
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None, BeforeValidator(_none_if_empty)
    ] = None
    kafka_sasl_username: OptStr = None
    kafka_sasl_password: OptSecret = None
    kafka_sasl_oauth_token_url: OptStr = None
    kafka_sasl_oauth_client_id: OptStr = None
    kafka_sasl_oauth_client_secret: OptSecret = None
    kafka_sasl_oauth_scope: OptStr = None
    kafka_ssl_cafile: OptStr = None
    kafka_ssl_certfile: OptStr = None
    kafka_ssl_keyfile: OptStr = None
    kafka_ssl_key_password: OptSecret = None
    kafka_ssl_check_hostname: bool = True
    kafka_group_id: str = "crm-kpi-worker"
    topic_prefix: str = Field("crm.", pattern=r"^[A-Za-z0-9._-]*$")
    topic_partitions: int = Field(4, ge=1, le=1024)
    topic_replication_factor: int = Field(1, ge=1, le=16)

    # Redis
    redis_url: str = Field("redis://localhost:6379/0", pattern=r"^(redis|rediss|unix)://")
    redis_username: OptStr = None
    redis_password: OptSecret = None
    redis_tls_cafile: OptStr = None
    redis_tls_certfile: OptStr = None
    redis_tls_keyfile: OptStr = None
    redis_tls_key_password: OptSecret = None
    redis_key_prefix: str = Field("crm", pattern=r"^[A-Za-z0-9_.:-]+$")
    # A Redis Cluster: cluster-aware clients (MOVED/ASK followed); the key layout is the same.
    redis_cluster: bool = False
    # More startup nodes (host:port, comma-separated) besides CRM_KPI_REDIS_URL's: a client
    # starting while one node is down loads the slot map from another.
    redis_cluster_nodes: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(default_factory=list)

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

    # Endpoints: bind addresses, ports, TLS and basic auth of every /metrics (docs/security.md)
    worker_host: str = "0.0.0.0"
    worker_port: int = Field(6066, ge=1, le=65535)
    exporter_host: str = "0.0.0.0"
    exporter_port: int = Field(9464, ge=1, le=65535)
    lag_exporter_port: int = Field(9308, ge=1, le=65535)
    web_config_file: OptStr = None
    # Where secret files are read from (docs/security.md); read by `load_settings`, kept for reference.
    secrets_dir: OptStr = None
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

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        """Every security setting is complete and its files usable, before any connection is made."""
        self._check_kafka_security()
        self._check_redis_security()
        if self.web_config_file:
            from stream.security.webconfig import load_web_config

            load_web_config(self.web_config_file)
        return self

    def _check_kafka_security(self) -> None:
        protocol = self.kafka_security_protocol
        proto = f"CRM_KPI_KAFKA_SECURITY_PROTOCOL={protocol}"
        sasl_fields = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
                       "kafka_sasl_oauth_token_url", "kafka_sasl_oauth_client_id",
                       "kafka_sasl_oauth_client_secret", "kafka_sasl_oauth_scope")
        if protocol not in _SASL_PROTOCOLS:
            for name in sasl_fields:
                if getattr(self, name) is not None:
                    raise ValueError(f"{_env(name)} is set but {proto} does not use SASL (use SASL_SSL)")
        else:
            mechanism = self.kafka_sasl_mechanism or "PLAIN"
            mech = f"CRM_KPI_KAFKA_SASL_MECHANISM={mechanism}"
            needed: tuple[str, ...]
            unused: tuple[str, ...]
            if mechanism == "OAUTHBEARER":
                needed = ("kafka_sasl_oauth_token_url", "kafka_sasl_oauth_client_id", "kafka_sasl_oauth_client_secret")
                unused = ("kafka_sasl_username", "kafka_sasl_password")
            else:
                needed = ("kafka_sasl_username", "kafka_sasl_password")
                unused = ("kafka_sasl_oauth_token_url", "kafka_sasl_oauth_client_id",
                          "kafka_sasl_oauth_client_secret", "kafka_sasl_oauth_scope")
            for name in needed:
                if getattr(self, name) is None:
                    raise ValueError(f"{_env(name)} is required with {proto} and {mech}")
            for name in unused:
                if getattr(self, name) is not None:
                    raise ValueError(f"{_env(name)} is set but {mech} does not use it")
            if mechanism == "OAUTHBEARER":
                self._check_token_url(str(self.kafka_sasl_oauth_token_url))
        tls_fields = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password")
        if protocol not in _TLS_PROTOCOLS:
            for name in tls_fields:
                if getattr(self, name) is not None:
                    raise ValueError(f"{_env(name)} is set but {proto} does not use TLS (use SSL or SASL_SSL)")
        else:
            from stream.security.tls import client_context

            client_context(self.kafka_tls_files())

    @staticmethod
    def _check_token_url(url: str) -> None:
        name = "CRM_KPI_KAFKA_SASL_OAUTH_TOKEN_URL"
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{name} must be an https:// URL of the OIDC token endpoint")
        if parts.username or parts.password:
            raise ValueError(f"{name} must not carry credentials (use CRM_KPI_KAFKA_SASL_OAUTH_CLIENT_SECRET)")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError(f"{name} must be https:// (the client secret would travel in the clear)")

    def _check_redis_security(self) -> None:
        url = urlsplit(self.redis_url)
        if self.redis_cluster and url.scheme == "unix":
            raise ValueError("CRM_KPI_REDIS_CLUSTER=true needs a redis:// or rediss:// URL of one cluster node")
        if self.redis_cluster_nodes and not self.redis_cluster:
            raise ValueError("CRM_KPI_REDIS_CLUSTER_NODES is set but CRM_KPI_REDIS_CLUSTER is not true")
        for node in self.redis_cluster_nodes:
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host or "@" in host:
                raise ValueError(f"CRM_KPI_REDIS_CLUSTER_NODES: {node!r} is not host:port (e.g. redis-2:6379)")
        if self.redis_cluster and url.path not in ("", "/", "/0"):
            raise ValueError("CRM_KPI_REDIS_URL names a database other than 0: a Redis Cluster has only database 0")
        if url.password is not None and self.redis_password is not None:
            raise ValueError(
                "CRM_KPI_REDIS_PASSWORD and a password in CRM_KPI_REDIS_URL are both set: keep only one"
            )
        if url.username and self.redis_username is not None:
            raise ValueError(
                "CRM_KPI_REDIS_USERNAME and a user name in CRM_KPI_REDIS_URL are both set: keep only one"
            )
        tls_fields = ("redis_tls_cafile", "redis_tls_certfile", "redis_tls_keyfile", "redis_tls_key_password")
        if url.scheme != "rediss":
            for name in tls_fields:
                if getattr(self, name) is not None:
                    raise ValueError(f"{_env(name)} is set but CRM_KPI_REDIS_URL is not a rediss:// (TLS) URL")
        else:
            from stream.security.tls import client_context

            client_context(self.redis_tls_files())

    def kafka_tls_files(self) -> Any:
        """The Kafka TLS file settings (`stream.security.TlsFiles`)."""
        from stream.security.tls import TlsFiles

        return TlsFiles(
            "CRM_KPI_KAFKA_SSL",
            self.kafka_ssl_cafile,
            self.kafka_ssl_certfile,
            self.kafka_ssl_keyfile,
            self.kafka_ssl_key_password.get_secret_value() if self.kafka_ssl_key_password else None,
            self.kafka_ssl_check_hostname,
        )

    def redis_tls_files(self) -> Any:
        """The Redis TLS file settings (`stream.security.TlsFiles`); host names are always checked."""
        from stream.security.tls import TlsFiles

        password = self.redis_tls_key_password.get_secret_value() if self.redis_tls_key_password else None
        return TlsFiles(
            "CRM_KPI_REDIS_TLS", self.redis_tls_cafile, self.redis_tls_certfile, self.redis_tls_keyfile, password
        )

    def secret_values(self) -> list[str]:
        """Every secret these settings hold (passwords, client secret, the URL's password), for redaction."""
        values = [v.get_secret_value() for v in (getattr(self, n) for n in SECRET_SETTINGS) if v is not None]
        url_password = urlsplit(self.redis_url).password
        if url_password:
            values += [url_password, unquote(url_password)]
        return values

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

    def consumed_topics(self) -> list[str]:
        """Every topic the worker consumes: the event topics, and with Redis Cluster the repartition topic."""
        return [*self.event_topics(), *([self.repartition_topic] if self.redis_cluster else [])]

    @property
    def repartition_topic(self) -> str:
        """The internal topic forwarding events read off their home partition (Redis Cluster mode, docs/design.md)."""
        return self.topic("repartition")

    @property
    def longest_window(self) -> float:
        """Seconds of the longest window; older events are late."""
        return max(self.windows)



def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and secret files); raise SettingsError naming the first bad one.

    Secret files: with `CRM_KPI_SECRETS_DIR` (or the `secrets_dir` override) set, a file in
    that directory named after a setting (`CRM_KPI_REDIS_PASSWORD`, any case) gives its
    value, surrounding whitespace stripped; an environment variable of the same name wins.
    """
    from stream.security.redact import mask_url
    from stream.security.tls import TlsSettingError

    secrets_dir = overrides.get("secrets_dir") or os.environ.get("CRM_KPI_SECRETS_DIR") or None
    if secrets_dir is not None and not os.path.isdir(secrets_dir):
        raise SettingsError(f"invalid setting CRM_KPI_SECRETS_DIR={secrets_dir}: not a directory")
    try:
        return Settings(_secrets_dir=secrets_dir, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a check across settings: the message names them
            message = str(err.get("ctx", {}).get("error", err["msg"]))
            raise SettingsError(f"invalid settings: {mask_url(message)}") from None
        name = str(err["loc"][0])
        value = err.get("input")
        shown = "***" if name in SECRET_SETTINGS else mask_url(repr(value))
        raise SettingsError(f"invalid setting CRM_KPI_{name.upper()}={shown}: {mask_url(err['msg'])}") from None
    except (TlsSettingError, ValueError) as exc:  # raised outside pydantic's wrapping
        raise SettingsError(f"invalid settings: {mask_url(str(exc))}") from None
