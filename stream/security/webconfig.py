"""`CRM_KPI_WEB_CONFIG_FILE`: TLS and basic auth for every /metrics endpoint (worker, exporter, lag exporter).

The file uses the Prometheus exporter-toolkit web configuration format, so one file
serves this project and any other exporter:

    tls_server_config:
      cert_file: /etc/crm-kpi/metrics.crt      # relative paths: from the file's directory
      key_file: /etc/crm-kpi/metrics.key
      client_auth_type: RequireAndVerifyClientCert   # optional: NoClientCert (default),
      client_ca_file: /etc/crm-kpi/clients-ca.crt    #   VerifyClientCertIfGiven, RequireAndVerifyClientCert
      min_version: TLS12                              # optional: TLS12 (default) or TLS13
    basic_auth_users:
      prometheus: $2b$12$...                          # bcrypt hashes (htpasswd -nBC 12 "" | tr -d ':')

The file is read and checked once at start (`load_web_config`): an unknown key, a missing
or mismatched certificate and key, an unsupported client-auth type or a value that is not
a bcrypt hash stops start-up with one line naming the file and the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from stream.security.tls import TlsSettingError, load_cert_chain, readable_file

__all__ = ["WebConfig", "WebConfigError", "load_web_config"]

SETTING = "CRM_KPI_WEB_CONFIG_FILE"
_TLS_KEYS = {
    "cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
    "cipher_suites", "curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans",
}
# Python's ssl module can ask for a client certificate only together with verifying it,
# so the toolkit's two "request without verifying" types cannot be honoured.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
REALM = "crm-kpi"


class WebConfigError(ValueError):
    """The web configuration file is wrong; str() names the setting, the file and the key."""


@dataclass
class WebConfig:
    """What a /metrics server needs: a TLS context (None: plain HTTP) and the basic-auth users."""

    path: str | None = None
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    _verified: set[bytes] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def scheme(self) -> str:
        """"https" with TLS, else "http"."""
        return "https" if self.tls is not None else "http"

    @property
    def auth_required(self) -> bool:
        """True when requests must carry basic-auth credentials."""
        return bool(self.users)

    def authorized(self, header: str | None) -> bool:
        """True if the Authorization header carries a user and password that match (or no auth is set).

        bcrypt costs ~0.1-0.3 s per check, so credentials once verified are remembered (as
        a keyed digest, never in clear) and later scrapes cost a hash lookup.
        """
        if not self.users:
            return True
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if not sep or hashed is None:
            return False
        memo = hmac.new(hashed, f"{user}:{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if memo in self._verified:
                return True
        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        with self._lock:
            if len(self._verified) < 1024:  # bounded: a few scrapers' credentials
                self._verified.add(memo)
        return True


def _fail(path: str, message: str) -> WebConfigError:
    return WebConfigError(f"{SETTING}={path}: {message}")


def load_web_config(path: str | None) -> WebConfig:
    """Read and check the web configuration file (None or "": plain HTTP without authentication)."""
    if not path:
        return WebConfig()
    try:
        readable_file(path, SETTING)
    except TlsSettingError as exc:
        raise WebConfigError(str(exc)) from None
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise _fail(path, f"not valid YAML{where}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _fail(path, "expected a mapping with tls_server_config and/or basic_auth_users")
    unknown = set(doc) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise _fail(path, f"unknown key {sorted(unknown)[0]!r} (known: tls_server_config, basic_auth_users)")
    if doc.get("http_server_config"):
        raise _fail(path, "http_server_config is not supported (HTTP/1.1 only, no extra headers)")
    base = Path(path).resolve().parent
    config = WebConfig(path=path)
    if doc.get("tls_server_config") is not None:
        config.tls = _server_context(path, doc["tls_server_config"], base)
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise _fail(path, "basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise _fail(path, f"basic_auth_users: invalid user name {user!r}")
        config.users[user] = _bcrypt_hash(path, user, hashed)
    return config


def _bcrypt_hash(path: str, user: str, hashed: Any) -> bytes:
    value = str(hashed).encode() if isinstance(hashed, str) else b""
    # A hash is "$2a$", "$2b$" or "$2y$", a two-digit cost and 53 characters of salt and digest.
    ok = len(value) == 60 and value[:4] in (b"$2a$", b"$2b$", b"$2y$") and value[4:6].isdigit() and value[6:7] == b"$"
    if ok:
        try:
            bcrypt.checkpw(b"", value)
        except ValueError:
            ok = False
    if not ok:
        raise _fail(path, f"basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 12 {user}`)")
    return value


def _server_context(path: str, tls: Any, base: Path) -> ssl.SSLContext:
    if not isinstance(tls, dict):
        raise _fail(path, "tls_server_config must be a mapping")
    unknown = set(tls) - _TLS_KEYS
    if unknown:
        raise _fail(path, f"tls_server_config: unknown key {sorted(unknown)[0]!r}")
    for key in ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans"):
        if tls.get(key):
            raise _fail(path, f"tls_server_config.{key} is not supported (Python's TLS defaults apply)")

    def file_of(key: str) -> str:
        value = tls.get(key)
        if not value or not isinstance(value, str):
            raise _fail(path, f"tls_server_config.{key} is required")
        full = value if os.path.isabs(value) else str(base / value)
        try:
            readable_file(full, f"tls_server_config.{key}")
        except TlsSettingError as exc:
            raise _fail(path, str(exc)) from None
        return full

    cert, key = file_of("cert_file"), file_of("key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        load_cert_chain(ctx, cert, key, None, "", "tls_server_config.cert_file", "tls_server_config.key_file")
    except TlsSettingError as exc:
        raise _fail(path, str(exc).replace("set _KEY_PASSWORD", "use an unencrypted key")) from None
    auth = tls.get("client_auth_type") or "NoClientCert"
    if auth not in _CLIENT_AUTH:
        raise _fail(
            path, f"tls_server_config.client_auth_type {auth!r} is not supported (use {', '.join(_CLIENT_AUTH)})"
        )
    ctx.verify_mode = _CLIENT_AUTH[auth]
    if tls.get("client_ca_file"):
        ca = file_of("client_ca_file")
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError:
            raise _fail(path, f"tls_server_config.client_ca_file={ca}: no PEM certificate in it") from None
    elif ctx.verify_mode != ssl.CERT_NONE:
        raise _fail(path, f"tls_server_config.client_ca_file is required with client_auth_type {auth}")
    for key_name, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        version = tls.get(key_name)
        if version is None:
            continue
        if version not in _VERSIONS:
            raise _fail(path, f"tls_server_config.{key_name} {version!r} is not supported (TLS12 or TLS13)")
        setattr(ctx, attr, _VERSIONS[version])
    if tls.get("min_version") is None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
