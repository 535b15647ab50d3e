"""One Apache Kafka broker speaking every security protocol the product supports, with ACLs.

Listeners (besides PLAINTEXT, whose anonymous principal is a super user, for the harness):

| listener | protocol | who |
|---|---|---|
| SSL | SSL, server verified (its key encrypted with a password) | anyone (anonymous) |
| MTLS | SSL, client certificate required | `User:<certificate CN>` |
| SASL_SSL | SASL_SSL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER | the SASL user / the JWT's `sub` |
| SASL_PLAINTEXT | SASL_PLAINTEXT: PLAIN, SCRAM-SHA-512 | the SASL user |

The broker runs StandardAuthorizer: a principal may do only what `grant` allowed it.
OAUTHBEARER tokens are JWTs from the test's own OIDC server (`tests/support/pki.py`),
checked by Kafka's OAuthBearerValidatorCallbackHandler against its JWKS endpoint.
"""

from __future__ import annotations

import gc
import shlex
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.apache_kafka import ApacheKafka, Listener
from tests.support.pki import Authority, Issued, OidcServer

__all__ = ["VARIANTS", "Acl", "SecureKafka", "acls_from_commands"]

# Every secret here is known to the tests, which grep all output for them.
SERVER_KEY_PASSWORD = "srv-keypass-5h9Lq"
CLIENT_KEY_PASSWORD = "cli-keypass-Vd31x"
USERS = {
    "PLAIN": ("plain-user", "plain-pass-Zq81ud"),
    "SCRAM-SHA-256": ("scram256-user", "scram256-pass-7Hw2k"),
    "SCRAM-SHA-512": ("scram512-user", "scram512-pass-Ka4mX"),
}
OAUTH_CLIENT = ("oauth-client", "oauth-secret-Ur5zPq")
MTLS_CN = "mtls-client"

# Variant name -> (listener, security protocol, mechanism or None)
VARIANTS = {
    "ssl": ("SSL", "SSL", None),
    "mtls": ("MTLS", "SSL", None),
    "sasl_ssl-plain": ("SASL_SSL", "SASL_SSL", "PLAIN"),
    "sasl_ssl-scram256": ("SASL_SSL", "SASL_SSL", "SCRAM-SHA-256"),
    "sasl_ssl-scram512": ("SASL_SSL", "SASL_SSL", "SCRAM-SHA-512"),
    "sasl_ssl-oauthbearer": ("SASL_SSL", "SASL_SSL", "OAUTHBEARER"),
    "sasl_plaintext-scram512": ("SASL_PLAINTEXT", "SASL_PLAINTEXT", "SCRAM-SHA-512"),
}

_PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_OAUTH = "org.apache.kafka.common.security.oauthbearer"


_WITH_VALUE = {
    "--bootstrap-server", "--command-config", "--allow-principal", "--operation", "--topic", "--group",
    "--resource-pattern-type", "--allow-host",
}


@dataclass(frozen=True)
class Acl:
    """One ACL: principal, operation, resource type ("topic" / "group" / "cluster"), name, pattern type."""

    principal: str
    operation: str
    resource: str
    name: str
    pattern: str = "literal"


def acls_from_commands(
    text: str, replace: dict[str, str] | None = None, principals: dict[str, str] | None = None
) -> list[Acl]:
    """The ACLs that the `kafka-acls.sh --add ...` commands in `text` create (one command per line).

    `replace` rewrites resource names (e.g. the docs' `crm.` prefix into a test's own),
    `principals` maps the docs' principals to the test's.
    """
    acls: list[Acl] = []
    for line in text.splitlines():
        line = line.strip().rstrip("\\").strip()
        if not line.startswith("kafka-acls") or "--add" not in line:
            continue
        words = shlex.split(line)
        allowed: list[str] = []
        operations: list[str] = []
        resources: list[tuple[str, str]] = []
        pattern = "literal"
        i = 0
        while i < len(words):
            word = words[i]
            value = words[i + 1] if i + 1 < len(words) else ""
            if word == "--allow-principal":
                allowed.append((principals or {}).get(value, value))
            elif word == "--operation":
                operations.append(value)
            elif word in ("--topic", "--group"):
                name = value
                for old, new in (replace or {}).items():
                    name = name.replace(old, new)
                resources.append((word[2:], name))
            elif word == "--cluster":
                resources.append(("cluster", "kafka-cluster"))
            elif word == "--resource-pattern-type":
                pattern = value
            i += 2 if word in _WITH_VALUE else 1
        for principal in allowed:
            for resource, name in resources:
                for op in operations:
                    acls.append(Acl(principal, op, resource, name, pattern))
    return acls


class SecureKafka:
    """The broker, its CA, its OIDC provider and its users (see the module's table)."""

    def __init__(self, authority: Authority | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="secure-kafka-"))
        self.authority = authority or Authority(self.dir / "pki")
        self.server = self.authority.issue("kafka-broker", server=True, password=SERVER_KEY_PASSWORD, java=True)
        self.client = self.authority.issue(MTLS_CN, password=CLIENT_KEY_PASSWORD)
        self.oidc = OidcServer({OAUTH_CLIENT[0]: OAUTH_CLIENT[1]}).start()
        keystore = str(self.server.combined())
        tls = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": keystore,
            "ssl.key.password": SERVER_KEY_PASSWORD,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.authority.ca),
        }
        plain_users = " ".join(f'user_{u}="{p}"' for u, p in [USERS["PLAIN"]])
        sasl = {
            "plain.sasl.jaas.config": f"{_PLAIN_MODULE} required {plain_users};",
            "scram-sha-256.sasl.jaas.config": f"{_SCRAM_MODULE} required;",
            "scram-sha-512.sasl.jaas.config": f"{_SCRAM_MODULE} required;",
        }
        oauth = {
            "oauthbearer.sasl.jaas.config": f"{_OAUTH}.OAuthBearerLoginModule required;",
            "oauthbearer.sasl.server.callback.handler.class": f"{_OAUTH}.OAuthBearerValidatorCallbackHandler",
            "oauthbearer.sasl.oauthbearer.jwks.endpoint.url": self.oidc.jwks_url,
            "oauthbearer.sasl.oauthbearer.expected.audience": self.oidc.audience,
        }
        scram = [
            arg
            for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            for arg in ("--add-scram", f"{mech}=[name={USERS[mech][0]},password={USERS[mech][1]}]")
        ]
        self.broker = ApacheKafka(
            partitions=2,
            listeners=[
                Listener("SSL", "SSL", {**tls, "ssl.client.auth": "none"}),
                Listener("MTLS", "SSL", {**tls, "ssl.client.auth": "required"}),
                Listener("SASL_SSL", "SASL_SSL", {
                    **tls, **sasl, **oauth,
                    "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER",
                }),
                Listener("SASL_PLAINTEXT", "SASL_PLAINTEXT", {
                    **sasl, "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
                }),
            ],
            properties={
                "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "super.users": "User:ANONYMOUS",
                "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
                "sasl.mechanism.inter.broker.protocol": "PLAIN",
            },
            jvm_options=[f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={self.oidc.jwks_url}"],
            format_args=scram,
        )
        self._admin: Any = None

    def start(self) -> SecureKafka:
        self.broker.start()
        return self

    def stop(self) -> None:
        self._admin = None  # librdkafka's client would keep reconnecting to the stopped broker
        gc.collect()
        self.broker.stop()
        self.oidc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT listener (super user): for the harness's own producers and consumers."""
        return self.broker.bootstrap

    def principal(self, variant: str) -> str:
        """The principal a variant's client authenticates as."""
        _, _, mechanism = VARIANTS[variant]
        if variant == "ssl":
            return "User:ANONYMOUS"
        if variant == "mtls":
            return f"User:{MTLS_CN}"
        if mechanism == "OAUTHBEARER":
            return f"User:{OAUTH_CLIENT[0]}"
        assert mechanism is not None
        return f"User:{USERS[mechanism][0]}"

    def env(self, variant: str) -> dict[str, str]:
        """The CRM_KPI_KAFKA_* settings of a client connecting through one variant."""
        listener, protocol, mechanism = VARIANTS[variant]
        env = {
            "CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": self.broker.address(listener),
            "CRM_KPI_KAFKA_SECURITY_PROTOCOL": protocol,
        }
        if protocol in ("SSL", "SASL_SSL"):
            env["CRM_KPI_KAFKA_SSL_CAFILE"] = str(self.authority.ca)
        if variant == "mtls":
            env["CRM_KPI_KAFKA_SSL_CERTFILE"] = str(self.client.cert)
            env["CRM_KPI_KAFKA_SSL_KEYFILE"] = str(self.client.key)
            env["CRM_KPI_KAFKA_SSL_KEY_PASSWORD"] = CLIENT_KEY_PASSWORD
        if mechanism is not None:
            env["CRM_KPI_KAFKA_SASL_MECHANISM"] = mechanism
            if mechanism == "OAUTHBEARER":
                env["CRM_KPI_KAFKA_SASL_OAUTH_TOKEN_URL"] = self.oidc.token_url
                env["CRM_KPI_KAFKA_SASL_OAUTH_CLIENT_ID"] = OAUTH_CLIENT[0]
                env["CRM_KPI_KAFKA_SASL_OAUTH_CLIENT_SECRET"] = OAUTH_CLIENT[1]
            else:
                env["CRM_KPI_KAFKA_SASL_USERNAME"], env["CRM_KPI_KAFKA_SASL_PASSWORD"] = USERS[mechanism]
        return env

    def secrets(self) -> list[str]:
        """Every secret value the variants use (to grep output for)."""
        return [SERVER_KEY_PASSWORD, CLIENT_KEY_PASSWORD, OAUTH_CLIENT[1], *(p for _, p in USERS.values())]

    # --- ACLs --------------------------------------------------------------------------

    def _admin_client(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self._admin

    def _bindings(self, acls: Iterable[Acl]) -> list[Any]:
        from confluent_kafka.admin import (
            AclBinding,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        return [
            AclBinding(
                ResourceType[a.resource.upper()], a.name, ResourcePatternType[a.pattern.upper()], a.principal, "*",
                AclOperation[_op_name(a.operation)], AclPermissionType.ALLOW,
            )
            for a in acls
        ]

    def grant(self, acls: Iterable[Acl]) -> None:
        """Create these ACLs (waits until the broker confirms each)."""
        bindings = self._bindings(acls)
        if bindings:
            for future in self._admin_client().create_acls(bindings, request_timeout=30).values():
                future.result()

    def revoke(self, acls: Iterable[Acl]) -> None:
        """Delete these ACLs."""
        from confluent_kafka.admin import AclBindingFilter

        filters = [
            AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                             b.permission_type)
            for b in self._bindings(acls)
        ]
        if filters:
            for future in self._admin_client().delete_acls(filters, request_timeout=30).values():
                future.result()

    def grant_all(self, principal: str, topic_prefix: str, group_prefix: str) -> list[Acl]:
        """Every right on the topics and groups starting with these prefixes (and topic creation)."""
        acls = [
            Acl(principal, "All", "topic", topic_prefix, "prefixed"),
            Acl(principal, "All", "group", group_prefix, "prefixed"),
        ]
        self.grant(acls)
        return acls


def _op_name(operation: str) -> str:
    upper = operation.upper().replace("-", "_")
    return {"IDEMPOTENTWRITE": "IDEMPOTENT_WRITE", "DESCRIBECONFIGS": "DESCRIBE_CONFIGS"}.get(upper, upper)


def issued_paths(issued: Issued) -> tuple[str, str]:
    """(certificate, key) paths as strings."""
    return str(issued.cert), str(issued.key)
