"""No secret in any output: URL user-info masked, known secret values replaced in every log record.

`install_redaction()` wraps the logging record factory, so every record from every
library (aiokafka logs its SASL requests at debug level, redis-py may name a URL) is
redacted before any handler formats it, exception text included. The secrets known are
the secret settings' values, and tokens as the OAUTHBEARER provider fetches them
(`redactor.add`).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Iterable
from typing import Any, ClassVar

__all__ = ["MASK", "AccessError", "Redactor", "install_redaction", "mask_url", "redactor"]

MASK = "***"
# The user-info of any URL-ish text: after "//" or a scheme's ":" (also the malformed
# "redis:/:pw@host"), everything up to the last "@" before the host.
_USERINFO = re.compile(r"(?P<lead>[A-Za-z][A-Za-z0-9+.-]*:/{0,2})(?P<info>[^\s/'\"]*)@")


def mask_url(text: str) -> str:
    """`text` with the user-info of every URL in it replaced: `redis://u:pw@h` → `redis://u:***@h`."""

    def repl(m: re.Match[str]) -> str:
        info = m.group("info")
        user, sep, _ = info.partition(":")
        return f"{m.group('lead')}{user + ':' if sep else ''}{MASK}@"

    return _USERINFO.sub(repl, text)


class AccessError(Exception):
    """A server (Kafka, Redis) cannot be used as configured: str() is one line, no secret in it.

    `kind` classifies the failure; a subclass names the kinds that are `permanent`.
    """

    PERMANENT_KINDS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(mask_url(message))
        self.kind = kind

    @property
    def permanent(self) -> bool:
        """True when retrying cannot help until an operator changes something."""
        return self.kind in self.PERMANENT_KINDS


class Redactor:
    """Replaces every known secret value (and URL user-info) in text; thread-safe."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._ordered: tuple[str, ...] = ()

    def add(self, *values: str | None) -> None:
        """Remember secret values (shorter than 4 characters are ignored: too common to replace)."""
        with self._lock:
            for value in values:
                if value and len(value) >= 4:
                    self._secrets.add(value)
                    self._secrets.add(repr(value.encode())[2:-1])  # as it appears inside a bytes repr
            self._ordered = tuple(sorted(self._secrets, key=len, reverse=True))

    def known(self) -> tuple[str, ...]:
        """The secret values known so far, longest first."""
        return self._ordered

    def __call__(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        return mask_url(text)


redactor = Redactor()
_installed = False


def install_redaction(secrets: Iterable[str | None] = ()) -> Redactor:
    """Redact every log record from now on (idempotent); `secrets` are added to the known values."""
    global _installed
    redactor.add(*secrets)
    if _installed:
        return redactor
    _installed = True
    factory = logging.getLogRecordFactory()

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: leave the record to the handler's own error path
            return record
        # The format string stays available to filters that group records by message (RepeatFilter).
        record.template = record.msg
        record.msg, record.args = redactor(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redactor("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(make_record)
    return redactor
