"""The RFC 9068 profile (``IssuerConfig(profile="rfc9068")``): attack catalogue for ``typ`` and claims.

RFC 9068 §4 asks resource servers to check ``typ: at+jwt``, so that an ID token or any other JWT of the
same issuer and key cannot be replayed as an access token. Real JWKS server, frozen clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from keyswap.errors import (
    ConfigError,
    InvalidClaim,
    InvalidIssuer,
    InvalidTokenType,
)
from keyswap.verifier.metrics import Metrics
from keyswap.verifier.verify import RFC9068_CLAIMS, IssuerConfig, Verifier
from tests.support.jwks_server import JWKSServer
from tests.support.keys import claims, jwks, rsa_key

NOW = 1_700_000_000.0
ISS = "https://issuer.test"
AUD = "https://api.test"
KEY = rsa_key("profile-k1")


def at_claims(**overrides: Any) -> dict[str, Any]:
    """A complete RFC 9068 claim set (pass a claim as None to drop it)."""
    base: dict[str, Any] = {"client_id": "svc-1", "jti": "j-1", "iss": ISS, "aud": AUD, "now": NOW}
    return claims(**(base | overrides))


def at_token(typ: Any = "at+jwt", **overrides: Any) -> str:
    return KEY.sign(at_claims(**overrides), header={"typ": typ})


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def profiled(jwks_server: JWKSServer, metrics: Metrics) -> Iterator[Verifier]:
    jwks_server.serve(jwks(KEY))
    config = IssuerConfig(ISS, jwks_server.url, audience=AUD, profile="rfc9068")
    with Verifier(config, clock=lambda: NOW, metrics=metrics) as verifier:
        yield verifier


@pytest.fixture
def plain(jwks_server: JWKSServer) -> Iterator[Verifier]:
    jwks_server.serve(jwks(KEY))
    with Verifier(IssuerConfig(ISS, jwks_server.url, audience=AUD), clock=lambda: NOW) as verifier:
        yield verifier


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
def test_an_access_token_type_is_accepted_in_any_case(profiled: Verifier, typ: str) -> None:
    assert profiled.verify_sync(at_token(typ))["client_id"] == "svc-1"


@pytest.mark.parametrize(
    ("typ", "reason"),
    [
        ("JWT", "typ header is not at+jwt"),  # an ID token, or any other JWT of the issuer
        ("jwt", "typ header is not at+jwt"),
        ("application/jwt", "typ header is not at+jwt"),
        ("at+jwt ", "typ header is not at+jwt"),  # no trimming
        ("secevent+jwt", "typ header is not at+jwt"),
        ("", "typ header is not at+jwt"),
        (["at+jwt"], "typ header is not at+jwt"),
        (1, "typ header is not at+jwt"),
        (None, "typ header missing, expected at+jwt"),  # (None drops the header parameter)
    ],
)
def test_any_other_type_is_refused_under_the_profile(
    profiled: Verifier, metrics: Metrics, typ: Any, reason: str
) -> None:
    with pytest.raises(InvalidTokenType) as caught:
        profiled.verify_sync(at_token(typ))
    assert caught.value.reason == reason
    assert caught.value.status == 401
    assert metrics.get("rejections", reason="token_type") == 1


def test_a_refused_type_is_not_cached_as_valid(profiled: Verifier, jwks_server: JWKSServer) -> None:
    token = at_token("JWT")
    for _ in range(2):
        with pytest.raises(InvalidTokenType):
            profiled.verify_sync(token)
    assert profiled.cached(token) is None
    assert jwks_server.count() <= 1  # the refusal needs no key: only the start-up fetch


@pytest.mark.parametrize("typ", ["JWT", None, "whatever"])
def test_without_the_profile_the_type_is_not_checked(plain: Verifier, typ: Any) -> None:
    assert plain.verify_sync(at_token(typ))["sub"] == "consumer-1"


@pytest.mark.parametrize("claim", RFC9068_CLAIMS)
def test_every_rfc9068_claim_is_required_under_the_profile(profiled: Verifier, claim: str) -> None:
    token = at_token(**{claim: None})
    # (without iss no issuer is selected; the others name the missing claim)
    expected = InvalidIssuer if claim == "iss" else InvalidClaim
    with pytest.raises(expected) as caught:
        profiled.verify_sync(token)
    if expected is InvalidClaim:
        assert caught.value.reason == f"claim {claim!r} is required"


@pytest.mark.parametrize("client_id", ["", 7, ["svc-1"]])
def test_client_id_must_be_a_non_empty_string(profiled: Verifier, client_id: Any) -> None:
    with pytest.raises(InvalidClaim, match="client_id"):
        profiled.verify_sync(at_token(client_id=client_id))


def test_the_same_claims_without_client_id_pass_without_the_profile(plain: Verifier) -> None:
    assert "client_id" not in plain.verify_sync(at_token(client_id=None, jti=None))


def test_the_profile_keeps_the_configured_required_claims(jwks_server: JWKSServer) -> None:
    jwks_server.serve(jwks(KEY))
    config = IssuerConfig(
        ISS, jwks_server.url, audience=AUD, profile="rfc9068", required_claims=("tenant",)
    )
    with Verifier(config, clock=lambda: NOW) as verifier:
        with pytest.raises(InvalidClaim, match="tenant"):
            verifier.verify_sync(at_token())
        assert verifier.verify_sync(at_token(tenant="t1"))["tenant"] == "t1"
    assert config.required_claims == ("tenant",)  # the profile's claims are not written into it


def test_the_profile_needs_an_audience() -> None:
    with pytest.raises(ConfigError, match="needs an audience"):
        IssuerConfig(ISS, "https://issuer.test/jwks", profile="rfc9068")


@pytest.mark.parametrize("profile", ["RFC9068", "jwt", ""])
def test_an_unknown_profile_is_a_config_error(profile: str) -> None:
    with pytest.raises(ConfigError, match="profile must be one of rfc9068"):
        IssuerConfig(ISS, "https://issuer.test/jwks", audience=AUD, profile=profile)
