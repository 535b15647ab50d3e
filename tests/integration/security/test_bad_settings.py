"""Every bad or missing security setting stops every command before any connection: one line, exit 2.

The commands run as child processes with nothing listening anywhere (the addresses are
free ports): a command that tried to connect would fail differently (exit 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.devtools.servers import free_port
from tests.support.cli import crm_kpi, one_line
from tests.support.pki import Authority, Issued

SECRET = "never-shown-Xy81q"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-settings")
    ca = Authority(root / "pki")
    client: Issued = ca.issue("client")
    other: Issued = ca.issue("other")
    encrypted: Issued = ca.issue("encrypted", password=SECRET)
    garbage = root / "garbage.pem"
    garbage.write_text("not a certificate\n")
    web = root / "web"
    web.mkdir()
    (web / "unknown-key.yml").write_text("tls_server_config: {}\nbasic_auth: {}\n")
    (web / "bad-hash.yml").write_text(f"basic_auth_users:\n  prometheus: {SECRET}\n")
    (web / "bad-yaml.yml").write_text("basic_auth_users: [\n")
    (web / "no-key.yml").write_text(f"tls_server_config:\n  cert_file: {client.cert}\n")
    (web / "mismatch.yml").write_text(f"tls_server_config:\n  cert_file: {client.cert}\n  key_file: {other.key}\n")
    (web / "client-auth.yml").write_text(
        f"tls_server_config:\n  cert_file: {client.cert}\n  key_file: {client.key}\n"
        "  client_auth_type: RequireAnyClientCert\n"
    )
    return {
        "ca": str(ca.ca), "cert": str(client.cert), "key": str(client.key), "other_key": str(other.key),
        "enc_cert": str(encrypted.cert), "enc_key": str(encrypted.key), "garbage": str(garbage),
        "dir": str(root), "web": str(web),
    }


SASL = {"kafka_security_protocol": "SASL_SSL"}
# (case, settings, expected message after "crm-kpi: ")
CASES: list[tuple[str, dict[str, str], str]] = [
    ("SASL without a user", SASL,
     r"invalid settings: CRM_KPI_KAFKA_SASL_USERNAME is required with CRM_KPI_KAFKA_SECURITY_PROTOCOL=SASL_SSL and "
     r"CRM_KPI_KAFKA_SASL_MECHANISM=PLAIN"),
    ("SCRAM without a password", {**SASL, "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "u"},
     r"invalid settings: CRM_KPI_KAFKA_SASL_PASSWORD is required with .*SCRAM-SHA-512"),
    ("OAUTHBEARER without a token endpoint", {**SASL, "kafka_sasl_mechanism": "OAUTHBEARER"},
     r"invalid settings: CRM_KPI_KAFKA_SASL_OAUTH_TOKEN_URL is required with .*OAUTHBEARER"),
    ("a token endpoint over plain HTTP", {
        **SASL, "kafka_sasl_mechanism": "OAUTHBEARER", "kafka_sasl_oauth_token_url": "http://idp.example.com/token",
        "kafka_sasl_oauth_client_id": "c", "kafka_sasl_oauth_client_secret": SECRET},
     r"invalid settings: CRM_KPI_KAFKA_SASL_OAUTH_TOKEN_URL must be https:// \(the client secret would travel in the "
     r"clear\)"),
    ("a SASL setting without SASL", {"kafka_sasl_password": SECRET},
     r"invalid settings: CRM_KPI_KAFKA_SASL_PASSWORD is set but CRM_KPI_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not "
     r"use SASL \(use SASL_SSL\)"),
    ("a missing CA file", {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{dir}/nope.pem"},
     r"invalid settings: CRM_KPI_KAFKA_SSL_CAFILE=.*/nope\.pem: no such file"),
    ("a CA path that is a directory", {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{dir}"},
     r"invalid settings: CRM_KPI_KAFKA_SSL_CAFILE=.*: not a file"),
    ("a CA file without a certificate", {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{garbage}"},
     r"invalid settings: CRM_KPI_KAFKA_SSL_CAFILE=.*garbage\.pem: no PEM certificate in it .*"),
    ("a certificate without its key", {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "{cert}"},
     r"invalid settings: CRM_KPI_KAFKA_SSL_KEYFILE is required with CRM_KPI_KAFKA_SSL_CERTFILE"),
    ("a key that does not match", {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "{cert}",
                                   "kafka_ssl_keyfile": "{other_key}"},
     r"invalid settings: CRM_KPI_KAFKA_SSL_KEYFILE=.*other\.key does not match the certificate in "
     r"CRM_KPI_KAFKA_SSL_CERTFILE"),
    ("an encrypted key without its password", {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "{enc_cert}",
                                               "kafka_ssl_keyfile": "{enc_key}"},
     r"invalid settings: CRM_KPI_KAFKA_SSL_KEYFILE=.*encrypted\.key is encrypted: set CRM_KPI_KAFKA_SSL_KEY_PASSWORD"),
    ("a wrong key password", {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "{enc_cert}",
                              "kafka_ssl_keyfile": "{enc_key}", "kafka_ssl_key_password": "wrong-password"},
     r"invalid settings: .*cannot be decrypted with CRM_KPI_KAFKA_SSL_KEY_PASSWORD \(wrong password\?\).*"),
    ("a Redis TLS file with redis://", {"redis_tls_cafile": "{ca}"},
     r"invalid settings: CRM_KPI_REDIS_TLS_CAFILE is set but CRM_KPI_REDIS_URL is not a rediss:// \(TLS\) URL"),
    ("a missing Redis CA file", {"redis_url": "rediss://127.0.0.1:{port}/0", "redis_tls_cafile": "{dir}/nope.pem"},
     r"invalid settings: CRM_KPI_REDIS_TLS_CAFILE=.*/nope\.pem: no such file"),
    ("a Redis password twice", {"redis_url": f"redis://:{SECRET}@127.0.0.1:{{port}}/0", "redis_password": "other-pw"},
     r"invalid settings: CRM_KPI_REDIS_PASSWORD and a password in CRM_KPI_REDIS_URL are both set: keep only one"),
    ("a Redis user twice", {"redis_url": "redis://alice@127.0.0.1:{port}/0", "redis_username": "bob"},
     r"invalid settings: CRM_KPI_REDIS_USERNAME and a user name in CRM_KPI_REDIS_URL are both set: keep only one"),
    ("a malformed Redis URL with a password", {"redis_url": f"redis:/:{SECRET}@127.0.0.1:{{port}}/0"},
     r"invalid setting CRM_KPI_REDIS_URL='redis:/:\*\*\*@127\.0\.0\.1:\d+/0': String should match pattern .*"),
    ("a missing web config", {"web_config_file": "{dir}/nope.yml"},
     r"invalid settings: CRM_KPI_WEB_CONFIG_FILE=.*nope\.yml: no such file"),
    ("a web config with an unknown key", {"web_config_file": "{web}/unknown-key.yml"},
     r"invalid settings: CRM_KPI_WEB_CONFIG_FILE=.*: unknown key 'basic_auth' .*"),
    ("a web config that is not YAML", {"web_config_file": "{web}/bad-yaml.yml"},
     r"invalid settings: CRM_KPI_WEB_CONFIG_FILE=.*: not valid YAML \(line \d+\)"),
    ("a password where a bcrypt hash belongs", {"web_config_file": "{web}/bad-hash.yml"},
     r"invalid settings: CRM_KPI_WEB_CONFIG_FILE=.*: basic_auth_users\.prometheus: not a bcrypt hash .*"),
    ("a web certificate without its key", {"web_config_file": "{web}/no-key.yml"},
     r"invalid settings: CRM_KPI_WEB_CONFIG_FILE=.*: tls_server_config\.key_file is required"),
    ("a web key that does not match", {"web_config_file": "{web}/mismatch.yml"},
     r"invalid settings: CRM_KPI_WEB_CONFIG_FILE=.*: tls_server_config\.key_file=.* does not match the certificate "
     r"in tls_server_config\.cert_file"),
    ("a client-auth type Python cannot honour", {"web_config_file": "{web}/client-auth.yml"},
     r"invalid settings: CRM_KPI_WEB_CONFIG_FILE=.*: tls_server_config\.client_auth_type 'RequireAnyClientCert' is "
     r"not supported .*"),
    ("a secrets directory that is not one", {"secrets_dir": "{dir}/nope"},
     r"invalid setting CRM_KPI_SECRETS_DIR=.*/nope: not a directory"),
]
COMMANDS = ["worker", "exporter", "topics create", "kpis", "simulate --events 1"]


@pytest.mark.parametrize(("settings", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_security_setting_stops_at_start(files: dict[str, str], settings: dict[str, str], expected: str) -> None:
    port = str(free_port())  # nothing listens: a connection attempt would fail with exit 1, not 2
    env = {
        "CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "CRM_KPI_REDIS_URL": f"redis://127.0.0.1:{port}/0",
    }
    env.update({f"CRM_KPI_{k.upper()}": v.format(port=port, **files) for k, v in settings.items()})
    for command in COMMANDS if settings is CASES[0][1] else COMMANDS[2:3]:
        run = crm_kpi(env, *command.split())
        line = one_line(run)
        assert run.code == 2, f"{command}: {run.output}"
        assert re.fullmatch("crm-kpi: " + expected, line), f"{command}: {line}"
        assert SECRET not in run.output


def test_secrets_come_from_files(tmp_path: Path) -> None:
    """A secret file names the setting; a wrong value in it is checked like any other."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "CRM_KPI_KAFKA_SASL_USERNAME").write_text("from-a-file\n")
    port = free_port()
    env = {
        "CRM_KPI_SECRETS_DIR": str(secrets), "CRM_KPI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
    }
    # The user name came from the file: what is missing now is the password.
    run = crm_kpi(env, "topics", "create")
    assert run.code == 2
    assert "CRM_KPI_KAFKA_SASL_PASSWORD is required" in one_line(run)
    (secrets / "crm_kpi_kafka_sasl_password").write_text(f"{SECRET}\n")
    run = crm_kpi(env, "topics", "create")
    assert run.code == 1, run.output  # settings complete: it got as far as connecting
    assert re.fullmatch(r"crm-kpi: Kafka broker unreachable at 127\.0\.0\.1:\d+ .*", one_line(run))
    assert SECRET not in run.output
