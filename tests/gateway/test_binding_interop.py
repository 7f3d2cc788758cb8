"""Bound tokens and Transaction Tokens as other libraries see them: PyJWT and panva/jose (Node) verify
the signatures (RS256, ES256, EdDSA) and read the binding claims."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from keyswap.gateway.binding import ReadBody, binding_claims
from keyswap.gateway.mint import TokenMinter
from keyswap.verifier.binding import content_digest, query_hash
from tests.support import keys
from tests.support.keys import ec_key, ed_key, jwks, rsa_key
from tests.support.services import require_tool

ISSUER = "http://gw.test/__keyswap/issuer"
AUDIENCE = "http://origin.test"
OIDC = Path(__file__).resolve().parent.parent / "oidc"


@dataclass(frozen=True)
class Signing:
    kid: str
    alg: str
    private_key: Any


@dataclass(frozen=True)
class Principal:
    key_id: str = "k_1"
    consumer: str = "acme"
    metadata: Any = None
    scopes: tuple[str, ...] = ("orders:read",)


KEYS = {"RS256": rsa_key("rsa-i"), "ES256": ec_key("ec-i"), "EdDSA": ed_key("ed-i")}


def mint(key: keys.TestKey, *, txn: bool = False) -> tuple[str, dict[str, Any]]:
    minter = TokenMinter(
        lambda: Signing(key.kid, key.alg, key.private), issuer=ISSUER, audience=AUDIENCE
    )
    binding = binding_claims(
        method="POST",
        scheme="http",
        authority="origin.test:80",
        path="/orders",
        query=b"dry=1",
        body=ReadBody(b'{"qty": 2}', True),
        max_body=1024,
    )
    principal = Principal(metadata={"plan": "pro"})
    if txn:
        return minter.mint_per_request(
            principal, binding, ttl=30, txn="t-1", requester={"req_ip": "203.0.113.9"}
        )
    return minter.mint_per_request(principal, binding, ttl=30)


def check_binding(payload: dict[str, Any]) -> None:
    assert payload["htm"] == "POST"
    assert payload["htu"] == "http://origin.test/orders"
    assert payload["htq"] == query_hash(b"dry=1")
    assert payload["htd"] == content_digest(b'{"qty": 2}')
    assert payload["exp"] - payload["iat"] == 30
    assert payload["jti"]


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_pyjwt_verifies_a_bound_token_and_reads_its_claims(alg: str) -> None:
    key = KEYS[alg]
    token, _ = mint(key)
    public = jwt.PyJWK(key.public_jwk())
    payload = jwt.decode(token, public.key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)
    check_binding(payload)
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": key.kid, "typ": "JWT"}


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_pyjwt_refuses_a_bound_token_whose_claims_were_edited(alg: str) -> None:
    token, _ = mint(KEYS[alg])
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["htm"] = "GET"
    forged = ".".join(
        [header, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), signature]
    )
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            forged,
            jwt.PyJWK(KEYS[alg].public_jwk()).key,
            algorithms=[alg],
            audience=AUDIENCE,
            issuer=ISSUER,
        )


def test_pyjwt_reads_a_transaction_token() -> None:
    key = KEYS["ES256"]
    token, _ = mint(key, txn=True)
    assert jwt.get_unverified_header(token)["typ"] == "txntoken+jwt"
    payload = jwt.decode(
        token, jwt.PyJWK(key.public_jwk()).key, algorithms=["ES256"], audience=AUDIENCE
    )
    assert payload["txn"] == "t-1"
    assert payload["sub"] == "acme"
    assert payload["tctx"] == {
        "consumer": "acme",
        "key_id": "k_1",
        "metadata": {"plan": "pro"},
        "scope": "orders:read",
    }
    assert payload["rctx"] == {"req_ip": "203.0.113.9"}
    assert payload["purp"] == "api"
    check_binding(payload)


def run_jose(tokens: list[str], *, typ: str | None = None) -> list[dict[str, Any]]:
    if shutil.which("node") is None:
        require_tool("node is not installed")
    if not (OIDC / "node_modules" / "jose").is_dir():
        require_tool("jose is not installed (npm ci --prefix tests/oidc)")
    request = {
        "jwks": jwks(*KEYS.values()),
        "tokens": tokens,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "typ": typ,
    }
    done = subprocess.run(
        ["node", str(OIDC / "verify_jose.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=OIDC,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_jose_verifies_bound_tokens_of_every_algorithm_and_reads_their_claims() -> None:
    tokens = [mint(KEYS[alg])[0] for alg in sorted(KEYS)]
    tampered = tokens[0][:-6] + ("AAAAAA" if not tokens[0].endswith("AAAAAA") else "BBBBBB")
    results = run_jose([*tokens, tampered])
    for alg, result in zip(sorted(KEYS), results[:3], strict=True):
        assert result["ok"], result
        assert result["header"]["alg"] == alg
        check_binding(result["payload"])
    assert results[3]["ok"] is False


def test_jose_verifies_a_transaction_token_with_its_typ() -> None:
    token, _ = mint(KEYS["EdDSA"], txn=True)
    [result] = run_jose([token], typ="txntoken+jwt")
    assert result["ok"], result
    assert result["payload"]["txn"] == "t-1"
    assert result["payload"]["tctx"]["consumer"] == "acme"
