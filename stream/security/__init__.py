"""What the security settings build: TLS contexts, the /metrics web configuration, redaction of secrets.

Pure of any server: the Kafka and Redis clients that use these live in `stream.kafka.clients`
and `stream.store.connection` (docs/security.md).
"""

from stream.security.redact import Redactor, install_redaction, mask_url, redactor
from stream.security.tls import TlsFiles, TlsSettingError, client_context

__all__ = [
    "Redactor",
    "TlsFiles",
    "TlsSettingError",
    "client_context",
    "install_redaction",
    "mask_url",
    "redactor",
]
