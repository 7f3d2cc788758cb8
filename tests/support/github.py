"""A stand-in for GitHub's secret scanning: its own ECDSA P-256 keys, published on a real HTTP server
in GitHub's documented shape, and reports signed as GitHub signs them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.jwks_server import JWKSServer

KEYS_PATH = "/meta/public_keys/secret_scanning"


@dataclass
class _Key:
    identifier: str
    private: ec.EllipticCurvePrivateKey

    def pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


def _new_key() -> _Key:
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _Key(hashlib.sha256(der).hexdigest(), private)


class GitHubStandIn:
    """GitHub's side: ``keys_url`` publishes the public keys; :meth:`sign` signs a report body."""

    def __init__(self, server: JWKSServer) -> None:
        self.server = server
        self.keys_url = server.base + KEYS_PATH
        self.current = _new_key()
        self.retired: list[_Key] = []
        self.publish()

    def publish(self) -> None:
        entries = [
            {"key_identifier": key.identifier, "key": key.pem(), "is_current": key is self.current}
            for key in [self.current, *self.retired]
        ]
        self.server.serve({"public_keys": entries})

    def rotate(self, *, keep_old: bool = True) -> None:
        """A new current key (the old one stays published if ``keep_old``)."""
        self.retired = [self.current] if keep_old else []
        self.current = _new_key()
        self.publish()

    @property
    def fetches(self) -> int:
        return self.server.count(KEYS_PATH)

    def sign(self, body: bytes, key: _Key | None = None) -> dict[str, str]:
        """The headers GitHub sends with ``body``."""
        key = key or self.current
        signature = key.private.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "Github-Public-Key-Identifier": key.identifier,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
        }


def report(
    tokens: Sequence[str], url: str = "https://github.com/octo/repo/blob/abc/config.py"
) -> bytes:
    """A report body in GitHub's documented shape."""
    matches: list[dict[str, Any]] = [
        {"token": token, "type": "keyswap_api_key", "url": url, "source": "content"}
        for token in tokens
    ]
    return json.dumps(matches).encode()


def hub_signature(secret: bytes, body: bytes) -> str:
    """``X-Hub-Signature-256`` of a GitHub webhook delivery."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@contextmanager
def github_stand_in() -> Iterator[GitHubStandIn]:
    server = JWKSServer().start()
    try:
        yield GitHubStandIn(server)
    finally:
        server.stop()
