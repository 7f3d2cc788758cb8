"""`keyswap tokens mint`: a token the gateway's JWKS verifies, with the gateway's claims."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyswap.errors import InvalidAudience, InvalidIssuer
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.gateway.test_cli_manage import as_json, fails, ok, run
from tests.support.running_gateway import Gateway, running_gateway
from tests.support.upstream import RecordingUpstream, recording_upstream

AUDIENCE = "https://api.example.test"


@pytest.fixture(autouse=True)
def no_gateway_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KEYSWAP_PUBLIC_URL", "KEYSWAP_AUDIENCE", "KEYSWAP_UPSTREAM", "KEYSWAP_TOKEN_TTL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[Gateway]:
    with running_gateway(tmp_path, upstream.url) as running:
        yield running


def verifier(gateway: Gateway, audience: str | None = AUDIENCE) -> Verifier:
    issuer = gateway.app.settings.issuer
    return Verifier(
        IssuerConfig(
            issuer=issuer,
            jwks_url=issuer + "/.well-known/jwks.json",
            audience=audience,
            algorithms=("ES256",),
        )
    )


def test_a_minted_token_verifies_against_the_jwks_the_gateway_serves(gateway: Gateway) -> None:
    gateway.admin_store.set_consumer_scopes("acme", ["orders:read", "orders:write"])
    before = int(time.time())
    minted = as_json(
        ok(
            "tokens",
            "mint",
            "acme",
            "--public-url",
            gateway.url,
            "--audience",
            AUDIENCE,
            "--ttl",
            "10m",
            "--json",
            "--db",
            gateway.db_url,
        )
    )
    assert set(minted) == {"token", "kid", "expires_at", "claims"}
    check = verifier(gateway)
    try:
        claims = check.verify_sync(minted["token"])
    finally:
        check.close()
    assert claims == minted["claims"]
    assert claims["iss"] == gateway.app.settings.issuer
    assert (claims["sub"], claims["aud"], claims["metadata"]) == (
        "acme",
        AUDIENCE,
        {"plan": "free"},
    )
    assert claims["scope"] == "orders:read orders:write"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 600
    assert "key_id" not in claims
    header = minted["token"].split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))) == {
        "alg": "ES256",
        "kid": minted["kid"],
        "typ": "JWT",
    }
    assert minted["expires_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["exp"]))


def test_plain_output_is_the_token_alone_and_the_gateways_variables_are_the_defaults(
    gateway: Gateway,
) -> None:
    gateway.admin_store.set_consumer_scopes("acme", ["orders:read", "orders:write"])
    result = run(
        "tokens",
        "mint",
        "acme",
        "--scopes",
        "orders:write",
        "--db",
        gateway.db_url,
        env={"KEYSWAP_PUBLIC_URL": gateway.url, "KEYSWAP_UPSTREAM": gateway.app.settings.upstream},
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "\n" not in token
    assert token.count(".") == 2
    assert "Token for 'acme'" in result.stderr
    # The audience defaults to the upstream URL, as the gateway's does.
    check = verifier(gateway, audience=gateway.app.settings.audience)
    try:
        claims = check.verify_sync(token)
    finally:
        check.close()
    assert claims["scope"] == "orders:write"
    assert claims["exp"] - claims["iat"] == 300


def test_issuer_and_audience_are_what_the_origin_checks(gateway: Gateway) -> None:
    other = as_json(
        ok(
            "tokens",
            "mint",
            "acme",
            "--issuer",
            "https://elsewhere.test",
            "--audience",
            "x",
            "--json",
            "--db",
            gateway.db_url,
        )
    )
    assert other["claims"]["iss"] == "https://elsewhere.test"
    assert "scope" not in other["claims"]  # the consumer has no scopes
    check = verifier(gateway)
    try:
        with pytest.raises(InvalidIssuer):
            check.verify_sync(other["token"])
        wrong_aud = as_json(
            ok(
                "tokens",
                "mint",
                "acme",
                "--public-url",
                gateway.url,
                "--audience",
                "x",
                "--json",
                "--db",
                gateway.db_url,
            )
        )
        with pytest.raises(InvalidAudience):
            check.verify_sync(wrong_aud["token"])
    finally:
        check.close()


def test_refusals_are_one_line(gateway: Gateway) -> None:
    db = gateway.db_url
    url = gateway.url
    assert "unknown consumer 'nobody'" in fails(
        "tokens", "mint", "nobody", "--public-url", url, "--audience", "a", "--db", db
    )
    assert "no issuer" in fails("tokens", "mint", "acme", "--audience", "a", "--db", db)
    assert "no audience" in fails("tokens", "mint", "acme", "--public-url", url, "--db", db)
    assert "public URL must be an absolute" in fails(
        "tokens", "mint", "acme", "--public-url", "ftp://x", "--audience", "a", "--db", db
    )
    assert "does not have the scope(s) admin" in fails(
        "tokens",
        "mint",
        "acme",
        "--public-url",
        url,
        "--audience",
        "a",
        "--scopes",
        "admin",
        "--db",
        db,
    )
    assert "invalid scope" in fails(
        "tokens",
        "mint",
        "acme",
        "--public-url",
        url,
        "--audience",
        "a",
        "--scopes",
        'a"b',
        "--db",
        db,
        exit_code=2,
    )
    assert "not both" in fails(
        "tokens",
        "mint",
        "acme",
        "--public-url",
        url,
        "--issuer",
        "i",
        "--audience",
        "a",
        "--db",
        db,
        exit_code=2,
    )
    assert "--ttl" in fails(
        "tokens",
        "mint",
        "acme",
        "--public-url",
        url,
        "--audience",
        "a",
        "--ttl",
        "2d",
        "--db",
        db,
        exit_code=2,
    )


def test_without_signing_keys_it_says_how_to_get_them(tmp_path: Path) -> None:
    db = str(tmp_path / "keyswap.db")
    ok("consumers", "create", "acme", "--db", db)
    line = fails("tokens", "mint", "acme", "--issuer", "i", "--audience", "a", "--db", db)
    assert "no active signing key yet" in line
    assert "keyswap signing-keys rotate" in line
    ok("signing-keys", "rotate", "--db", db)
    assert ok("tokens", "mint", "acme", "--issuer", "i", "--audience", "a", "--db", db).stdout


def test_tokens_is_listed_in_the_top_level_help() -> None:
    assert "tokens" in ok("--help").stdout
    assert "--public-url" in ok("tokens", "mint", "--help").stdout
