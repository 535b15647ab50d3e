"""Each Kafka connection failure gives one line saying what failed and where, and exit status 1.

`crm-kpi topics create` runs against the secure broker's listeners with one thing wrong
each time: credentials, certificates, the protocol of the listener, its address, rights.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.devtools.servers import free_port
from tests.support.cli import crm_kpi, one_line
from tests.support.pki import Authority
from tests.support.secure_kafka import SecureKafka


def _env(kafka: SecureKafka, variant: str, **settings: str) -> dict[str, str]:
    env = {**kafka.env(variant), "CRM_KPI_TOPIC_PREFIX": "never-created."}
    env.update({f"CRM_KPI_{name.upper()}": value for name, value in settings.items()})
    return env


# (case, variant, settings changed, expected line)
CASES: list[tuple[str, str, dict[str, str], str]] = [
    ("wrong SCRAM password", "sasl_ssl-scram512", {"kafka_sasl_password": "not-the-password"},
     r"Kafka at 127\.0\.0\.1:\d+ refused SCRAM-SHA-512 user 'scram512-user': Authentication failed.*"),
    ("unknown SCRAM user", "sasl_ssl-scram256", {"kafka_sasl_username": "ghost"},
     r"Kafka at 127\.0\.0\.1:\d+ refused SCRAM-SHA-256 user 'ghost': Authentication failed.*"),
    ("wrong PLAIN password", "sasl_ssl-plain", {"kafka_sasl_password": "not-the-password"},
     r"Kafka at 127\.0\.0\.1:\d+ refused PLAIN user 'plain-user': Authentication failed: Invalid username or "
     r"password"),
    ("wrong OAuth client secret", "sasl_ssl-oauthbearer", {"kafka_sasl_oauth_client_secret": "not-the-secret"},
     r"OAUTHBEARER token endpoint http://127\.0\.0\.1:\d+/token refused client id 'oauth-client': HTTP 401 "
     r"invalid_client"),
    ("token endpoint down", "sasl_ssl-oauthbearer", {"kafka_sasl_oauth_token_url": "http://127.0.0.1:{port}/token"},
     r"OAUTHBEARER token endpoint http://127\.0\.0\.1:\d+/token unreachable: .*"),
    ("CA that did not sign the broker", "ssl", {"kafka_ssl_cafile": "{other_ca}"},
     r"TLS handshake with Kafka at 127\.0\.0\.1:\d+ failed: unable to get local issuer certificate \(check "
     r"CRM_KPI_KAFKA_SSL_CAFILE and CRM_KPI_KAFKA_SSL_CHECK_HOSTNAME\)"),
    ("no client certificate for mutual TLS", "mtls",
     {"kafka_ssl_certfile": "", "kafka_ssl_keyfile": "", "kafka_ssl_key_password": ""},
     r"TLS handshake with Kafka at 127\.0\.0\.1:\d+ failed: .*\(does the listener require a client certificate\? "
     r"CRM_KPI_KAFKA_SSL_CERTFILE\)"),
    ("TLS to a plaintext listener", "ssl", {"kafka_bootstrap_servers": "{plaintext}"},
     r"TLS handshake with Kafka at 127\.0\.0\.1:\d+ failed: .*\(is it a TLS listener\? "
     r"CRM_KPI_KAFKA_SECURITY_PROTOCOL=SSL\)"),
    ("plaintext to a TLS listener", "ssl",
     {"kafka_security_protocol": "PLAINTEXT", "kafka_ssl_cafile": ""},
     r"Kafka at 127\.0\.0\.1:\d+ closed the connection during the handshake: does the listener speak "
     r"CRM_KPI_KAFKA_SECURITY_PROTOCOL=PLAINTEXT\?"),
    ("SASL to a listener without SASL", "sasl_ssl-scram512", {"kafka_bootstrap_servers": "{ssl}"},
     r"Kafka at 127\.0\.0\.1:\d+ does not expect SASL on this listener \(is it a SASL listener\? "
     r"CRM_KPI_KAFKA_SECURITY_PROTOCOL=SASL_SSL\)"),
    ("no SASL to a SASL listener", "ssl", {"kafka_bootstrap_servers": "{sasl_ssl}"},
     r"Kafka at 127\.0\.0\.1:\d+ closed the connection during the handshake: does the listener speak "
     r"CRM_KPI_KAFKA_SECURITY_PROTOCOL=SSL\?"),
    ("a mechanism the listener does not enable", "sasl_plaintext-scram512",
     {"kafka_sasl_mechanism": "SCRAM-SHA-256", "kafka_sasl_username": "scram256-user"},
     r"Kafka at 127\.0\.0\.1:\d+ does not enable SASL mechanism SCRAM-SHA-256 on this listener "
     r"\(CRM_KPI_KAFKA_SASL_MECHANISM\)"),
    ("nothing listening", "ssl", {"kafka_bootstrap_servers": "127.0.0.1:{port}"},
     r"Kafka broker unreachable at 127\.0\.0\.1:\d+ \(CRM_KPI_KAFKA_BOOTSTRAP_SERVERS\): .*"),
    ("no right to create topics", "sasl_ssl-scram512", {},
     r"Kafka denies Create on topic never-created\.activities to SCRAM-SHA-512 user 'scram512-user' \(topics "
     r"create needs Create on the cluster or on the topics: docs/security\.md\)"),
]


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Authority(tmp_path_factory.mktemp("other-ca"), "another CA").ca


@pytest.mark.parametrize(("variant", "changes", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_topics_create_fails_in_one_line(
    secure_kafka: SecureKafka, other_ca: Path, variant: str, changes: dict[str, str], expected: str
) -> None:
    places = {
        "port": str(free_port()), "other_ca": str(other_ca), "plaintext": secure_kafka.bootstrap,
        "ssl": secure_kafka.broker.address("SSL"), "sasl_ssl": secure_kafka.broker.address("SASL_SSL"),
    }
    env = _env(secure_kafka, variant, **{k: v.format(**places) for k, v in changes.items()})
    run = crm_kpi(env, "topics", "create")
    line = one_line(run)
    assert run.code == 1, run.output
    assert re.fullmatch("crm-kpi: " + expected, line), line
    assert run.seconds < 30, f"took {run.seconds:.0f}s"
    for secret in secure_kafka.secrets():
        assert secret not in run.output
