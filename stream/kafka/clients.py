"""Every Kafka client the product makes, built from the same settings, and a check that it can work.

`kafka_client_options` gives the keyword arguments of every aiokafka client (worker
consumer and dead-letter producer, `topics create`, `publish`, `simulate`, the demo):
bootstrap servers, TLS, and SASL with PLAIN, SCRAM-SHA-256/512 or OAUTHBEARER, whose
tokens `OidcTokenProvider` fetches from an OIDC token endpoint (client credentials).

`check_kafka` connects to the brokers the way those clients will and asks what the
credentials may do, so a failure is reported once, in one line, before any client
starts (`KafkaAccessError`): unreachable (where it tried), TLS handshake failed (why),
authentication failed (mechanism and user, never the password), a right missing (which
operation on which resource), or a topic missing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias
from urllib.parse import quote

import aiokafka.errors as Errors
from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import create_conn
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.coordination import FindCoordinatorRequest
from aiokafka.protocol.types import Array, Boolean, Bytes, Int16, Int32, Schema, String

from stream.security.redact import AccessError, redactor
from stream.security.tls import client_context

if TYPE_CHECKING:
    from stream.settings import Settings

__all__ = [
    "KafkaAccessError",
    "OidcTokenProvider",
    "check_kafka",
    "describe_kafka_error",
    "kafka_client_options",
]

# Failures no retry can fix without an operator (credentials, certificates, ACLs);
# the others ("unreachable", "topic") may heal on their own.
PERMANENT = frozenset({"tls", "auth", "acl", "config"})


class KafkaAccessError(AccessError):
    """Kafka cannot be used as configured; str() is one line, `kind` classifies it.

    kind: "unreachable", "tls", "auth", "acl", "topic" or "config".
    """

    PERMANENT_KINDS = PERMANENT


# --- client options ------------------------------------------------------------------


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: bootstrap servers, TLS, SASL and its credentials."""
    opts: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()],
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = client_context(settings.kafka_tls_files())
    if settings.kafka_security_protocol.startswith("SASL"):
        mechanism = settings.kafka_sasl_mechanism or "PLAIN"
        opts["sasl_mechanism"] = mechanism
        if mechanism == "OAUTHBEARER":
            opts["sasl_oauth_token_provider"] = OidcTokenProvider.from_settings(settings)
        else:
            opts["sasl_plain_username"] = settings.kafka_sasl_username
            password = settings.kafka_sasl_password
            opts["sasl_plain_password"] = password.get_secret_value() if password else None
    return opts


class OidcTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER tokens from an OIDC token endpoint with the client-credentials grant (RFC 6749, section 4.4).

    The client authenticates with HTTP basic auth (client id and secret); `scope` is sent
    when set. A token is reused until 60 s (at most a fifth of its lifetime) before it
    expires; concurrent connections share one request. The endpoint's certificate is
    checked against the system's CAs plus CRM_KPI_KAFKA_SSL_CAFILE. Tokens are added to
    the log redactor as they arrive.
    """

    _SHARED: ClassVar[dict[tuple[str, str, str | None], OidcTokenProvider]] = {}

    def __init__(
        self, url: str, client_id: str, client_secret: str, scope: str | None, cafile: str | None, timeout: float = 10
    ) -> None:
        self.url = url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.cafile = cafile
        self.timeout = timeout
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock: asyncio.Lock | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcTokenProvider:
        """The provider of these settings (one per endpoint and client in the process, so tokens are shared)."""
        secret = settings.kafka_sasl_oauth_client_secret
        key = (str(settings.kafka_sasl_oauth_token_url), str(settings.kafka_sasl_oauth_client_id),
               settings.kafka_sasl_oauth_scope)
        provider = cls._SHARED.get(key)
        if provider is None or provider._secret != (secret.get_secret_value() if secret else ""):
            provider = cls._SHARED[key] = cls(
                key[0], key[1], secret.get_secret_value() if secret else "", key[2], settings.kafka_ssl_cafile
            )
        return provider

    async def token(self) -> str:
        """A valid access token (fetched, or reused while it has more than its refresh margin left)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    async def _fetch(self) -> None:
        import aiohttp

        where = f"OAUTHBEARER token endpoint {self.url}"
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        context: ssl.SSLContext | bool = False
        if self.url.startswith("https:"):
            context = ssl.create_default_context()
            if self.cafile:
                context.load_verify_locations(cafile=self.cafile)
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.post(self.url, data=form, headers={"Authorization": self._basic_auth()}, ssl=context) as resp,
            ):
                body = await resp.read()
                status = resp.status
        except aiohttp.ClientSSLError as exc:
            raise KafkaAccessError("tls", f"{where}: TLS handshake failed: {_ssl_reason(exc)}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise KafkaAccessError("unreachable", f"{where} unreachable: {_os_reason(exc)}") from None
        import json

        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if status != 200:
            error = doc.get("error") or body[:100].decode(errors="replace").strip() or "no detail"
            kind = "auth" if status in (400, 401, 403) else "unreachable"
            raise KafkaAccessError(kind, f"{where} refused client id {self.client_id!r}: HTTP {status} {error}")
        token = doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise KafkaAccessError("auth", f"{where} answered without an access_token")
        redactor.add(token)
        lifetime = float(doc.get("expires_in") or 300)
        self._token = token
        self._refresh_at = time.monotonic() + max(1.0, lifetime - min(60.0, lifetime / 5))

    def _basic_auth(self) -> str:
        # RFC 6749, section 2.3.1: id and secret form-urlencoded, then base64 as HTTP basic auth.
        pair = f"{quote(self.client_id, safe='')}:{quote(self._secret, safe='')}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    def extensions(self) -> dict[str, str]:
        """No SASL extensions."""
        return {}


# --- the check -------------------------------------------------------------------------

# Operation codes of Kafka's ACLs (AclOperation), as the authorized-operations bit fields use them.
READ, WRITE, CREATE, DESCRIBE = 3, 4, 5, 8
_OPERATION = {READ: "Read", WRITE: "Write", CREATE: "Create", DESCRIBE: "Describe"}
_NOT_REQUESTED = -(2**31)


class _MetadataResponse_v8(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", Array(("node_id", Int32), ("host", String("utf-8")), ("port", Int32), ("rack", String("utf-8")))),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("topic", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition", Int32),
                        ("leader", Int32),
                        ("leader_epoch", Int32),
                        ("replicas", Array(Int32)),
                        ("isr", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequest_v8(RequestStruct):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponse_v8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


_MetadataStruct: TypeAlias = _MetadataRequest_v8


class _AuthorizedMetadata(Request[_MetadataStruct]):  # type: ignore[misc]
    """Metadata of some topics with what this principal may do with each (Kafka 2.3+)."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[_MetadataStruct]) -> _MetadataStruct:
        return request_struct_class(self.topics, False, True, True)


class _DescribeGroupsResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 15
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "groups",
            Array(
                ("error_code", Int16),
                ("group", String("utf-8")),
                ("state", String("utf-8")),
                ("protocol_type", String("utf-8")),
                ("protocol", String("utf-8")),
                (
                    "members",
                    Array(
                        ("member_id", String("utf-8")),
                        ("client_id", String("utf-8")),
                        ("client_host", String("utf-8")),
                        ("member_metadata", Bytes),
                        ("member_assignment", Bytes),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
    )


class _DescribeGroupsRequest_v3(RequestStruct):  # type: ignore[misc]
    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = _DescribeGroupsResponse_v3
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


_DescribeGroupsStruct: TypeAlias = _DescribeGroupsRequest_v3


class _AuthorizedGroup(Request[_DescribeGroupsStruct]):  # type: ignore[misc]
    API_KEY = 15

    def __init__(self, group: str) -> None:
        self.group = group

    def build(self, request_struct_class: type[_DescribeGroupsStruct]) -> _DescribeGroupsStruct:
        return request_struct_class([self.group], True)


def who(settings: Settings) -> str:
    """Who the clients authenticate as, for messages: mechanism and user, or the client certificate."""
    mechanism = settings.kafka_sasl_mechanism or "PLAIN"
    if settings.kafka_security_protocol.startswith("SASL"):
        user = settings.kafka_sasl_oauth_client_id if mechanism == "OAUTHBEARER" else settings.kafka_sasl_username
        return f"{mechanism} user {user!r}"
    if settings.kafka_ssl_certfile:
        return f"the client certificate {settings.kafka_ssl_certfile}"
    return "this client"


def _ssl_reason(exc: BaseException) -> str:
    inner: BaseException | None = exc
    while inner is not None and not isinstance(inner, ssl.SSLError):
        inner = inner.__cause__ or inner.__context__ or getattr(inner, "os_error", None)
    if isinstance(inner, ssl.SSLCertVerificationError):
        return str(inner.verify_message or inner.reason or inner)
    if isinstance(inner, ssl.SSLError):
        return re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(inner.reason or inner)).replace("_", " ").lower()
    return str(exc)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


def describe_kafka_error(exc: BaseException, settings: Settings, where: str) -> KafkaAccessError:
    """One line for a failure to connect or authenticate to Kafka at `where` (host:port)."""
    protocol = settings.kafka_security_protocol
    if isinstance(exc, KafkaAccessError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError) or (
        isinstance(exc, ssl.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc)
    ):
        return KafkaAccessError(
            "tls",
            f"TLS handshake with Kafka at {where} failed: {_ssl_reason(exc)} "
            "(check CRM_KPI_KAFKA_SSL_CAFILE and CRM_KPI_KAFKA_SSL_CHECK_HOSTNAME)",
        )
    if isinstance(exc, ssl.SSLError):
        reason = _ssl_reason(exc)
        hint = ""
        if any(w in reason for w in ("certificate required", "bad certificate", "handshake failure")):
            hint = " (does the listener require a client certificate? CRM_KPI_KAFKA_SSL_CERTFILE)"
        elif any(w in reason for w in ("wrong version number", "record layer failure", "packet length")):
            hint = f" (is it a TLS listener? CRM_KPI_KAFKA_SECURITY_PROTOCOL={protocol})"
        return KafkaAccessError("tls", f"TLS handshake with Kafka at {where} failed: {reason}{hint}")
    if isinstance(exc, Errors.IllegalSaslStateError):
        return KafkaAccessError(
            "config", f"Kafka at {where} does not expect SASL on this listener "
            f"(is it a SASL listener? CRM_KPI_KAFKA_SECURITY_PROTOCOL={protocol})",
        )
    if isinstance(exc, Errors.SaslAuthenticationFailed):
        detail = str(exc.args[0] if exc.args else exc) or "refused"
        detail = detail.removeprefix("[Error 58] SaslAuthenticationFailed: ")
        return KafkaAccessError("auth", f"Kafka at {where} refused {who(settings)}: {detail}")
    if isinstance(exc, Errors.UnsupportedSaslMechanismError):
        return KafkaAccessError(
            "auth", f"Kafka at {where} does not enable SASL mechanism {settings.kafka_sasl_mechanism or 'PLAIN'} "
            "on this listener (CRM_KPI_KAFKA_SASL_MECHANISM)",
        )
    if isinstance(exc, ConnectionResetError | BrokenPipeError) and protocol in ("SSL", "SASL_SSL"):
        return KafkaAccessError(
            "tls", f"TLS handshake with Kafka at {where} failed: the broker reset the connection "
            f"(is it a TLS listener? CRM_KPI_KAFKA_SECURITY_PROTOCOL={protocol})",
        )
    if isinstance(exc, ConnectionRefusedError | OSError) and not isinstance(exc, ssl.SSLError):
        return KafkaAccessError(
            "unreachable", f"Kafka broker unreachable at {where} (CRM_KPI_KAFKA_BOOTSTRAP_SERVERS): {_os_reason(exc)}"
        )
    if isinstance(exc, asyncio.TimeoutError):
        return KafkaAccessError(
            "unreachable",
            f"no answer from Kafka at {where} within the timeout "
            f"(is the listener's protocol CRM_KPI_KAFKA_SECURITY_PROTOCOL={protocol}?)",
        )
    if isinstance(exc, Errors.KafkaConnectionError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError | OSError) and not isinstance(cause, Errors.KafkaConnectionError):
            return describe_kafka_error(cause, settings, where)
        return KafkaAccessError(
            "config" if "closed" in str(exc) else "unreachable",
            f"Kafka at {where} closed the connection during the handshake: does the listener speak "
            f"CRM_KPI_KAFKA_SECURITY_PROTOCOL={protocol}"
            + (f" with CRM_KPI_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism or 'PLAIN'}" if "SASL" in protocol
               else "") + "?",
        )
    return KafkaAccessError("unreachable", f"Kafka at {where}: {type(exc).__name__}: {exc}")


async def _connect(settings: Settings, host: str, port: int, timeout: float) -> Any:
    opts = kafka_client_options(settings)
    opts.pop("bootstrap_servers")
    try:
        return await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=int(timeout * 1000), client_id="crm-kpi-check", **opts),
            timeout,
        )
    except (TimeoutError, OSError, Errors.KafkaError) as exc:
        raise describe_kafka_error(exc, settings, f"{host}:{port}") from None


def _hosts(settings: Settings) -> list[tuple[str, int]]:
    out = []
    for server in settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        out.append((host.strip("[]") or server.strip(), int(port) if port.isdigit() else 9092))
    return out


async def check_kafka(
    settings: Settings,
    *,
    read: Sequence[str] = (),
    write: Sequence[str] = (),
    describe: Sequence[str] = (),
    group: str | None = None,
    timeout: float = 10.0,
) -> None:
    """Connect as the product's clients will, then check the rights they need; raise KafkaAccessError if not.

    read/write/describe: topics needing that operation (each must exist); group: a
    consumer group needing Read. Tries each bootstrap server until one answers.
    """
    failures: list[KafkaAccessError] = []
    conn = None
    where = ""
    for host, port in _hosts(settings):
        try:
            conn = await _connect(settings, host, port, timeout)
        except KafkaAccessError as exc:
            failures.append(exc)
            if exc.permanent:
                raise
            continue
        where = f"{host}:{port}"
        break
    if conn is None:
        raise failures[0] if len(failures) == 1 else KafkaAccessError(
            failures[0].kind, f"{failures[0]} (and {len(failures) - 1} more bootstrap server(s) failed)"
        )
    try:
        # A metadata request even when no right is to be checked: a listener that expects
        # SASL (or TLS) the client did not do closes the connection here.
        await asyncio.wait_for(conn.send(_AuthorizedMetadata([])), timeout)
        await _check_rights(settings, conn, where, read, write, describe, group, timeout)
    except (TimeoutError, OSError, Errors.KafkaError) as exc:
        raise describe_kafka_error(exc, settings, where) from None
    finally:
        conn.close()


async def _check_rights(
    settings: Settings, conn: Any, where: str, read: Iterable[str], write: Iterable[str], describe: Iterable[str],
    group: str | None, timeout: float,
) -> None:
    needs: dict[str, set[int]] = {}
    for ops, topics in ((READ, read), (WRITE, write), (DESCRIBE, describe)):
        for topic in topics:
            needs.setdefault(topic, {DESCRIBE}).add(ops)
    principal = who(settings)
    if needs:
        md = await asyncio.wait_for(conn.send(_AuthorizedMetadata(sorted(needs))), timeout)
        for error, topic, _, _, allowed in sorted(md.topics, key=lambda t: str(t[1])):
            if error == Errors.TopicAuthorizationFailedError.errno:
                raise KafkaAccessError(
                    "acl", f"Kafka denies Describe on topic {topic} to {principal} (an ACL is missing)"
                )
            if error == Errors.UnknownTopicOrPartitionError.errno:
                raise KafkaAccessError(
                    "topic", f"topic {topic} does not exist on Kafka at {where} (run `crm-kpi topics create`)"
                )
            if error:
                message = Errors.for_code(error).message
                raise KafkaAccessError("unreachable", f"Kafka at {where}: topic {topic}: {message}")
            if allowed == _NOT_REQUESTED:
                continue  # a broker that does not report rights: the clients will find out
            for op in sorted(needs.get(topic, ())):
                if not allowed & (1 << op):
                    raise KafkaAccessError(
                        "acl", f"Kafka denies {_OPERATION[op]} on topic {topic} to {principal} (an ACL is missing)"
                    )
    if group is not None:
        await _check_group(settings, conn, where, group, principal, timeout)


async def _check_group(
    settings: Settings, conn: Any, where: str, group: str, principal: str, timeout: float
) -> None:
    found = await asyncio.wait_for(conn.send(FindCoordinatorRequest(group, 0)), timeout)
    if found.error_code == Errors.GroupAuthorizationFailedError.errno:
        raise KafkaAccessError("acl", f"Kafka denies Read on group {group} to {principal} (an ACL is missing)")
    if found.error_code:
        # The coordinator is not ready yet (a broker just started): the consumer will wait for it.
        return
    coordinator = conn
    own = False
    if (found.host, found.port) != (conn.host, conn.port):
        coordinator = await _connect(settings, found.host, found.port, timeout)
        own = True
    try:
        described = await asyncio.wait_for(coordinator.send(_AuthorizedGroup(group)), timeout)
    finally:
        if own:
            with contextlib.suppress(Exception):
                coordinator.close()
    for error, name, *_, allowed in described.groups:
        if error == Errors.GroupAuthorizationFailedError.errno or (
            not error and allowed != _NOT_REQUESTED and not allowed & (1 << READ)
        ):
            raise KafkaAccessError("acl", f"Kafka denies Read on group {name} to {principal} (an ACL is missing)")
