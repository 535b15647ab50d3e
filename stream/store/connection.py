"""Redis clients built from the settings (URL, ACL user, password, TLS files), and one-line failures.

`async_client` serves the worker, `sync_client` the exporter and the one-shot commands;
both take the user and password from the URL or from CRM_KPI_REDIS_USERNAME /
CRM_KPI_REDIS_PASSWORD (never both: the settings refuse it), and with a `rediss://` URL
verify the server against CRM_KPI_REDIS_TLS_CAFILE (else the system's CAs), host name
included, optionally presenting a client certificate.

`describe_redis_error` turns any failure into one line saying what failed and where:
unreachable, TLS handshake, WRONGPASS / NOAUTH (user, never the password), NOPERM (the
command or key the ACL refused), timeout.
"""

from __future__ import annotations

import re
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
import redis.exceptions as rex

from stream.security.redact import AccessError

if TYPE_CHECKING:
    from stream.settings import Settings

__all__ = [
    "PERMANENT",
    "AsyncClient",
    "RedisAccessError",
    "SyncClient",
    "async_client",
    "describe_redis_error",
    "redis_where",
    "sync_client",
]

# A single Redis or a Redis Cluster (CRM_KPI_REDIS_CLUSTER): the callers use the commands both share.
AsyncClient = aioredis.Redis | aiocluster.RedisCluster
SyncClient = redis.Redis | redis.cluster.RedisCluster

# Failures no retry fixes without an operator.
PERMANENT = frozenset({"tls", "auth", "acl"})


class RedisAccessError(AccessError):
    """Redis cannot be used as configured; str() is one line, `kind` classifies it.

    kind: "unreachable", "timeout", "tls", "auth", "acl", "loading" or "error".
    """

    PERMANENT_KINDS = PERMANENT


def _options(settings: Settings) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if settings.redis_username is not None:
        opts["username"] = settings.redis_username
    if settings.redis_password is not None:
        opts["password"] = settings.redis_password.get_secret_value()
    if urlsplit(settings.redis_url).scheme == "rediss":
        opts["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        opts["ssl_check_hostname"] = True
        if settings.redis_tls_cafile:
            opts["ssl_ca_certs"] = settings.redis_tls_cafile
        if settings.redis_tls_certfile:
            opts["ssl_certfile"] = settings.redis_tls_certfile
            opts["ssl_keyfile"] = settings.redis_tls_keyfile
            if settings.redis_tls_key_password is not None:
                opts["ssl_password"] = settings.redis_tls_key_password.get_secret_value()
    return opts


def _startup_nodes(settings: Settings) -> list[tuple[str, int]]:
    """CRM_KPI_REDIS_CLUSTER_NODES as (host, port); the URL's node is the clients' own first."""
    out = []
    for node in settings.redis_cluster_nodes:
        host, _, port = node.rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


def async_client(settings: Settings, socket_timeout: float = 10, connect_timeout: float = 5) -> AsyncClient:
    """An asyncio Redis client (the worker's); a cluster client with CRM_KPI_REDIS_CLUSTER."""
    if settings.redis_cluster:
        # Redirects (MOVED, ASK) and a slot map refresh are the client's own business; what it
        # still raises after its retries (CLUSTERDOWN, TRYAGAIN, connection errors during a
        # failover) the worker treats as an outage and retries (stream/worker/batch.py).
        return aiocluster.RedisCluster.from_url(
            settings.redis_url,
            startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in _startup_nodes(settings)],
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            **_options(settings),
        )
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=0,
        **_options(settings),
    )


def sync_client(settings: Settings, socket_timeout: float = 5, connect_timeout: float = 3) -> SyncClient:
    """A blocking Redis client (the exporter's and the one-shot commands'); a cluster client with
    CRM_KPI_REDIS_CLUSTER."""
    if settings.redis_cluster:
        return redis.cluster.RedisCluster.from_url(
            settings.redis_url,
            startup_nodes=[
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                for host, port in _startup_nodes(settings)
            ],
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            **_options(settings),
        )
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, **_options(settings)
    )


def redis_where(settings: Settings) -> str:
    """Where Redis is, for messages: host:port (or the socket path), never the user-info."""
    parts = urlsplit(settings.redis_url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _user(settings: Settings) -> str:
    return settings.redis_username or urlsplit(settings.redis_url).username or "default"


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def describe_redis_error(exc: BaseException, settings: Settings) -> RedisAccessError:
    """One line for a failed Redis call: what failed, where, and what to check."""
    if isinstance(exc, RedisAccessError):
        return exc
    where = redis_where(settings)
    tls = urlsplit(settings.redis_url).scheme == "rediss"
    text = str(exc)
    if isinstance(exc, rex.NoPermissionError):
        return RedisAccessError("acl", f"Redis user {_user(settings)!r} at {where} lacks a permission: {text}")
    if isinstance(exc, rex.AuthenticationError | rex.AuthenticationWrongNumberOfArgsError) or text.startswith(
        ("WRONGPASS", "NOAUTH", "invalid username-password")
    ):
        if "NOAUTH" in text or "Authentication required" in text or "HELLO must be called" in text:
            return RedisAccessError(
                "auth", f"Redis at {where} requires authentication: set CRM_KPI_REDIS_PASSWORD (and a user name)"
            )
        return RedisAccessError(
            "auth", f"Redis at {where} refused user {_user(settings)!r}: wrong password, or the user is disabled"
        )
    cause = _ssl_cause(exc)
    if cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = str(cause.verify_message or cause.reason)
            return RedisAccessError(
                "tls", f"TLS handshake with Redis at {where} failed: {reason} (check CRM_KPI_REDIS_TLS_CAFILE)"
            )
        reason = re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(cause.reason or cause)).replace("_", " ").lower()
        hint = ""
        if "wrong version number" in reason or "record layer" in reason or "packet length" in reason:
            hint = " (is it a TLS port? a plain port needs redis://)"
        elif "certificate required" in reason or "handshake failure" in reason or (
            "eof" in reason and not settings.redis_tls_certfile
        ):
            hint = " (does Redis require a client certificate? CRM_KPI_REDIS_TLS_CERTFILE)"
        return RedisAccessError("tls", f"TLS handshake with Redis at {where} failed: {reason}{hint}")
    if isinstance(exc, rex.ClusterError | rex.TryAgainError | rex.AskError | rex.SlotNotCoveredError) or (
        isinstance(exc, rex.ResponseError) and ("non local key" in text or "CLUSTERDOWN" in text)
    ):
        return RedisAccessError("unreachable", f"Redis Cluster at {where} is failing over or resharding: {text}")
    if isinstance(exc, rex.RedisClusterException) and "cluster" in text.lower():
        # e.g. CRM_KPI_REDIS_CLUSTER=true against a Redis without cluster mode, or no node answering.
        return RedisAccessError("unreachable", f"Redis Cluster unusable at {where} (CRM_KPI_REDIS_CLUSTER): {text}")
    if isinstance(exc, rex.BusyLoadingError):
        return RedisAccessError("loading", f"Redis at {where} is loading its data")
    if isinstance(exc, rex.TimeoutError):
        if tls and "handshake" in str(exc.__context__ or exc.__cause__ or ""):
            return RedisAccessError(
                "timeout", f"TLS handshake with Redis at {where} timed out (is it a TLS port? a plain port needs "
                "redis://)",
            )
        return RedisAccessError("timeout", f"Redis at {where} did not answer in time")
    if isinstance(exc, rex.ConnectionError | OSError):
        if not tls and ("Connection closed by server" in text or "reset by peer" in text):
            # Also what a restarting Redis does: an outage to wait out, with a hint for the likelier cause at start.
            return RedisAccessError(
                "unreachable", f"Redis at {where} closed the connection (is it a TLS port? use a rediss:// URL)"
            )
        reason = text.split(". ", 1)[-1].rstrip(".") if text.startswith("Error ") else text
        return RedisAccessError("unreachable", f"Redis unreachable at {where} (CRM_KPI_REDIS_URL): {reason}")
    return RedisAccessError("error", f"Redis at {where}: {text}")
