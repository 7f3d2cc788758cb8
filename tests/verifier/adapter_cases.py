"""Shared request cases for the framework adapter tests: one table, every adapter must answer alike.

Each adapter test turns a :class:`Case` into a real request through its framework and compares the
status, body and headers with what the ASGI middleware sends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.jwks_server import JWKSServer
from tests.support.keys import b64u, claims, jwks, rsa_key

ISSUER = "https://issuer.test"
AUDIENCE = "https://api.test"
KEY = rsa_key("adapter-k1")
OTHER_KEY = rsa_key("adapter-k1", slot=1)  # same kid, different key: a forged signature

CHALLENGE = 'Bearer realm="keyswap"'
INVALID_PREFIX = 'Bearer realm="keyswap", error="invalid_token", error_description="'


def make_verifier(server: JWKSServer, **issuer: Any) -> Verifier:
    """A real verifier for ``server`` (which is made to serve :data:`KEY`)."""
    server.serve(jwks(KEY))
    options: dict[str, Any] = {"issuer": ISSUER, "jwks_url": server.url, "audience": AUDIENCE}
    options.update(issuer)
    return Verifier(IssuerConfig(**options))


def token(**claim_overrides: Any) -> str:
    """A valid token signed with :data:`KEY` (pass claims to override)."""
    return KEY.sign(claims(iss=ISSUER, aud=AUDIENCE, **claim_overrides))


def bearer(value: str) -> str:
    return f"Bearer {value}"


def _unsigned(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes) -> str:
    return ".".join(
        [b64u(json.dumps(header).encode()), b64u(json.dumps(payload).encode()), b64u(signature)]
    )


def alg_none_token() -> str:
    return _unsigned(
        {"alg": "none", "typ": "JWT", "kid": KEY.kid}, claims(iss=ISSUER, aud=AUDIENCE), b""
    )


def hs256_confusion_token() -> str:
    """HS256 "signed" with the RSA public JWK as the HMAC secret (the classic key confusion)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": KEY.kid}
    payload = claims(iss=ISSUER, aud=AUDIENCE)
    signing_input = (
        b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(payload).encode())
    ).encode()
    secret = json.dumps(KEY.public_jwk()).encode()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return signing_input.decode() + "." + b64u(signature)


@dataclass(frozen=True)
class Case:
    """A request (its ``Authorization`` header, or ``None``) and the response every adapter sends."""

    name: str
    authorization: Callable[[], str | None]
    status: int
    body: bytes
    challenge: str | None = None  # exact WWW-Authenticate
    challenge_prefix: str | None = None  # WWW-Authenticate starts with this
    scopes: tuple[str, ...] = field(default=())


OK_BODY = b""  # a success is checked separately (the claims echoed as JSON)

CASES: list[Case] = [
    Case("missing", lambda: None, 401, b"No token provided", challenge=CHALLENGE),
    Case("other scheme", lambda: "Basic dXNlcjpwYXNz", 401, b"No token provided", CHALLENGE),
    Case(
        "garbage",
        lambda: bearer("not-a-jwt"),
        401,
        b"Invalid token",
        challenge_prefix=INVALID_PREFIX,
    ),
    Case(
        "bad signature",
        lambda: bearer(OTHER_KEY.sign(claims(iss=ISSUER, aud=AUDIENCE))),
        401,
        b"Invalid token",
        challenge_prefix=INVALID_PREFIX,
    ),
    Case(
        "expired",
        lambda: bearer(token(now=time.time() - 3600)),
        401,
        b"Invalid token",
        challenge_prefix=INVALID_PREFIX,
    ),
    Case(
        "wrong audience",
        lambda: bearer(KEY.sign(claims(iss=ISSUER, aud="https://other.test"))),
        401,
        b"Invalid token",
        challenge_prefix=INVALID_PREFIX,
    ),
    Case(
        "alg none",
        lambda: bearer(alg_none_token()),
        401,
        b"Invalid token",
        challenge_prefix=INVALID_PREFIX,
    ),
    Case(
        "hs256 confusion",
        lambda: bearer(hs256_confusion_token()),
        401,
        b"Invalid token",
        challenge_prefix=INVALID_PREFIX,
    ),
    Case(
        "malformed header",
        lambda: "Bearer  two-spaces",
        401,
        b"Invalid token",
        challenge_prefix=INVALID_PREFIX,
    ),
]

CASE_IDS = [case.name for case in CASES]

INSUFFICIENT_SCOPE = 'Bearer realm="keyswap", error="insufficient_scope", scope="orders:write"'


def check_rejection(
    case: Case, status: int, headers: Mapping[str, str], body: bytes, *, exact_body: bool = True
) -> None:
    """Assert a response matches ``case`` (``headers`` looked up case-insensitively)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    assert status == case.status, (case.name, status, body)
    if exact_body:
        assert body == case.body, (case.name, body)
    www = lowered.get("www-authenticate")
    if case.challenge is not None:
        assert www == case.challenge, (case.name, www)
    if case.challenge_prefix is not None:
        assert www is not None
        assert www.startswith(case.challenge_prefix), (case.name, www)
        assert www.endswith('"')
