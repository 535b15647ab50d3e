"""Client TLS contexts built from file settings, each failure named after its setting.

Every file is read when the settings are loaded (before any connection), so a missing
CA file, an unreadable key, a key that does not match its certificate or a wrong key
password stops start-up with one line naming the setting (docs/security.md).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

__all__ = ["TlsFiles", "TlsSettingError", "client_context", "readable_file"]


class TlsSettingError(ValueError):
    """A TLS file setting is wrong; str() names the setting (e.g. CRM_KPI_KAFKA_SSL_KEYFILE)."""


@dataclass(frozen=True)
class TlsFiles:
    """The file settings of one TLS client, and the environment names they come from.

    `prefix` is the settings' common name, e.g. "CRM_KPI_KAFKA_SSL" (cafile, certfile,
    keyfile and key password are `{prefix}_CAFILE` ... `{prefix}_KEY_PASSWORD`).
    """

    prefix: str
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    key_password: str | None = None
    check_hostname: bool = True


def readable_file(path: str, setting: str) -> None:
    """Raise TlsSettingError unless `path` is a readable regular file."""
    if not os.path.exists(path):
        raise TlsSettingError(f"{setting}={path}: no such file")
    if not os.path.isfile(path):
        raise TlsSettingError(f"{setting}={path}: not a file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise TlsSettingError(f"{setting}={path}: cannot be read ({exc.strerror or exc})") from None


class _NeedsPassword(Exception):
    pass


def _no_password() -> bytes:
    # Called by OpenSSL only for an encrypted key: without this it would prompt on the terminal.
    raise _NeedsPassword


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS client context: the CA file (else the system's CAs), an optional client certificate.

    Raises TlsSettingError naming the setting for a missing or unreadable file, a CA file
    holding no certificate, a certificate without its key (or the reverse), a key that does
    not match the certificate, an encrypted key without a password, or a wrong password.
    """
    p = files.prefix
    for name, path in (("CAFILE", files.cafile), ("CERTFILE", files.certfile), ("KEYFILE", files.keyfile)):
        if path:
            readable_file(path, f"{p}_{name}")
    if bool(files.certfile) != bool(files.keyfile):
        missing = "KEYFILE" if files.certfile else "CERTFILE"
        raise TlsSettingError(f"{p}_{missing} is required with {p}_{'CERTFILE' if files.certfile else 'KEYFILE'}")
    if files.key_password and not files.keyfile:
        raise TlsSettingError(f"{p}_KEY_PASSWORD is set but {p}_KEYFILE is not")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if files.cafile:
        try:
            ctx.load_verify_locations(cafile=files.cafile)
        except ssl.SSLError as exc:
            raise TlsSettingError(
                f"{p}_CAFILE={files.cafile}: no PEM certificate in it ({exc.reason or exc})"
            ) from None
    ctx.check_hostname = files.check_hostname
    if files.certfile and files.keyfile:
        load_cert_chain(ctx, files.certfile, files.keyfile, files.key_password, p)
    return ctx


def load_cert_chain(
    ctx: ssl.SSLContext, certfile: str, keyfile: str, password: str | None, prefix: str,
    cert_setting: str | None = None, key_setting: str | None = None,
) -> None:
    """`ctx.load_cert_chain` with one-line errors naming the settings (never prompts for a password)."""
    cert_name = cert_setting or f"{prefix}_CERTFILE"
    key_name = key_setting or f"{prefix}_KEYFILE"
    try:
        ctx.load_cert_chain(certfile, keyfile, password=password if password else _no_password)
    except _NeedsPassword:
        raise TlsSettingError(f"{key_name}={keyfile} is encrypted: set {prefix}_KEY_PASSWORD") from None
    except ssl.SSLError as exc:
        reason = exc.reason or ""
        if reason == "KEY_VALUES_MISMATCH":
            raise TlsSettingError(f"{key_name}={keyfile} does not match the certificate in {cert_name}") from None
        if "PEM" in reason or "PEM lib" in str(exc) or reason in ("BAD_DECRYPT", "NO_START_LINE"):
            what = (
                f"cannot be decrypted with {prefix}_KEY_PASSWORD (wrong password?), or"
                if password
                else "or"
            )
            raise TlsSettingError(
                f"{cert_name}={certfile} / {key_name}={keyfile}: {what} not a PEM certificate and key"
            ) from None
        raise TlsSettingError(f"{cert_name}={certfile} / {key_name}={keyfile}: {reason or exc}") from None
