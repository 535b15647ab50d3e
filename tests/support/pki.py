"""Certificates and tokens for the security tests, generated in the test (the `cryptography` package).

- `Authority`: a throwaway CA that issues server certificates (for 127.0.0.1 and localhost)
  and client certificates, written as PEM files, keys optionally encrypted.
- `OidcServer`: an OIDC provider on a free loopback port: `POST /token` (client credentials,
  HTTP basic auth) returns RS256 JWTs signed with its key, `GET /jwks` serves the public key,
  as a broker's JWT validator fetches it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Authority", "Issued", "OidcServer"]


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM files (`key` encrypted with `password` when given)."""

    cert: Path
    key: Path
    password: str | None = None

    def combined(self) -> Path:
        """One PEM file holding the key then the certificate (a Kafka PEM keystore)."""
        path = self.cert.with_suffix(".keystore.pem")
        path.write_bytes(self.key.read_bytes() + self.cert.read_bytes())
        return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Authority:
    """A certificate authority in `directory` (its certificate: `ca`)."""

    def __init__(self, directory: Path, name: str = "crm-kpi test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca = directory / f"{name.replace(' ', '-')}.crt"
        self.ca.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, common_name: str, *, server: bool = False, password: str | None = None,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), java: bool = False,
    ) -> Issued:
        """A certificate signed by this CA: a server one (SANs `hosts`) or a client one; key PKCS#8 PEM.

        `java`: an encrypted key in the PBES1 (SHA1, 3DES) scheme, which Java 17 (the broker)
        can read, where it cannot read PBES2 (AES), the default.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            sans: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        stem = self.directory / common_name.replace(" ", "-")
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        )
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        key_path.write_bytes(pem)
        key_path.chmod(0o600)
        if password and java:
            java_key = key_path.with_suffix(".java.key")
            subprocess.run(
                ["openssl", "pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-in", str(key_path), "-passin", "env:KEY_PW",
                 "-out", str(java_key), "-passout", "env:KEY_PW"],
                env={**os.environ, "KEY_PW": password}, check=True, capture_output=True,
            )
            java_key.replace(key_path)
        return Issued(cert_path, key_path, password)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OidcServer:
    """A minimal OIDC provider for the client-credentials grant, on 127.0.0.1 (plain HTTP, loopback only).

    `clients` maps client ids to secrets; a token's `sub` is the client id, so the broker's
    principal is `User:<client id>`. Every token issued is kept in `issued`.
    """

    def __init__(self, clients: dict[str, str], lifetime_s: int = 3600, audience: str = "kafka") -> None:
        self.clients = dict(clients)
        self.lifetime_s = lifetime_s
        self.audience = audience
        self.issued: list[str] = []
        self.requests = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key-1"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/jwks":
                    self._send(200, owner.jwks())
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                owner.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                auth = self.headers.get("Authorization") or ""
                client_id = secret = None
                if auth.startswith("Basic "):
                    client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                if self.path != "/token" or form.get("grant_type") != ["client_credentials"]:
                    self._send(400, {"error": "unsupported_grant_type"})
                elif client_id is None or owner.clients.get(client_id) != secret:
                    self._send(401, {"error": "invalid_client"})
                else:
                    token = owner.token_for(client_id, (form.get("scope") or [""])[0])
                    self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": owner.lifetime_s})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def start(self) -> OidcServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        return {"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        }]}

    def token_for(self, subject: str, scope: str = "", lifetime_s: int | None = None) -> str:
        """A signed RS256 JWT for `subject`."""
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        claims = {
            "sub": subject, "iat": now, "exp": now + (lifetime_s or self.lifetime_s),
            "iss": f"http://127.0.0.1:{self.port}", "aud": self.audience, "scope": scope or "kafka",
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}".encode()
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        token = f"{signing_input.decode()}.{_b64(signature)}"
        self.issued.append(token)
        return token
