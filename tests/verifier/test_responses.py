from __future__ import annotations

import logging
from typing import Any

import pytest

from keyswap.errors import (
    ConfigError,
    ExpiredToken,
    InsufficientScope,
    KeysUnavailable,
    MissingToken,
)
from keyswap.verifier.responses import Guard, Responder, verifier_from_settings
from keyswap.verifier.verify import Verifier
from tests.support.jwks_server import JWKSServer
from tests.verifier.adapter_cases import AUDIENCE, ISSUER, bearer, make_verifier, token


class ExplodingVerifier:
    """Failure injection: a verifier with a bug (raises something that is not a keyswap error)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.started = 0

    async def verify(self, token: str) -> dict[str, Any]:
        raise RuntimeError(f"bug while handling {token}")

    def verify_sync(self, token: str) -> dict[str, Any]:
        raise RuntimeError(f"bug while handling {token}")

    def start(self) -> None:
        self.started += 1

    def close(self) -> None:
        pass


def test_each_error_class_maps_to_its_status_body_and_header() -> None:
    responder = Responder(realm="api")
    missing = responder.reject(MissingToken("x"))
    assert (missing.status, missing.text) == (401, "No token provided")
    assert missing.header("WWW-Authenticate") == 'Bearer realm="api"'
    expired = responder.reject(ExpiredToken("token has expired"))
    assert expired.header("www-authenticate") == (
        'Bearer realm="api", error="invalid_token", error_description="token has expired"'
    )
    scope = responder.reject(InsufficientScope("lacks", scope="a b"))
    assert scope.status == 403
    assert 'scope="a b"' in (scope.header("www-authenticate") or "")
    down = responder.reject(KeysUnavailable("down", retry_after=7))
    assert (down.status, down.status_line) == (503, "503 Service Unavailable")
    assert down.extra_headers == {"retry-after": "7"}
    assert down.content_type == "text/plain; charset=utf-8"


def test_error_descriptions_can_be_turned_off() -> None:
    rejection = Responder(error_descriptions=False).reject(ExpiredToken("token has expired"))
    assert rejection.header("www-authenticate") == 'Bearer realm="keyswap", error="invalid_token"'


def test_a_bad_realm_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError):
        Responder(realm='a"b')


def test_a_verifier_bug_is_a_401_and_the_token_never_reaches_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tok = token()
    guard = Guard(ExplodingVerifier(tok))
    with caplog.at_level(logging.DEBUG):
        result = guard.authenticate_sync(bearer(tok))
    assert not isinstance(result, dict)
    assert result.status == 401
    assert result.text == "Invalid token"
    assert tok not in caplog.text
    assert "RuntimeError" in caplog.text


async def test_a_verifier_bug_is_a_401_on_the_async_path_too() -> None:
    guard = Guard(ExplodingVerifier("s"))
    result = await guard.authenticate([(b"authorization", bearer(token()).encode())])
    assert not isinstance(result, dict)
    assert result.status == 401


def test_guard_starts_the_verifier_once_per_process() -> None:
    verifier = ExplodingVerifier("s")
    guard = Guard(verifier)
    guard.ensure_started()
    guard.ensure_started()
    assert verifier.started == 1


def test_verifier_from_settings_reads_a_prefixed_mapping(jwks_server: JWKSServer) -> None:
    make_verifier(jwks_server).close()
    verifier = verifier_from_settings(
        {
            "KEYSWAP_ISSUER": ISSUER,
            "KEYSWAP_JWKS_URL": jwks_server.url,
            "KEYSWAP_AUDIENCE": AUDIENCE,
            "KEYSWAP_ALGORITHMS": "RS256, ES256",
            "KEYSWAP_LEEWAY": "5",
        },
        prefix="KEYSWAP_",
    )
    try:
        assert verifier.issuers[0].algorithms == ("RS256", "ES256")
        assert verifier.issuers[0].leeway == 5
        assert verifier.verify_sync(token(sub="quinn"))["sub"] == "quinn"
    finally:
        verifier.close()


def test_verifier_from_settings_has_the_origin_defaults_and_takes_python_values() -> None:
    defaults = verifier_from_settings({"ISSUER": ISSUER, "JWKS_URL": "http://127.0.0.1:1/j"})
    typed = verifier_from_settings(
        {
            "ISSUER": ISSUER,
            "DISCOVER": True,
            "ALGORITHMS": ["ES256", "EdDSA"],
            "REQUIRED_CLAIMS": ("sub", "scope"),
            "LEEWAY": 2,
            "PROFILE": "rfc9068",
            "AUDIENCE": AUDIENCE,
        }
    )
    try:
        assert defaults.issuers[0].algorithms == ("RS256", "PS256", "ES256", "EdDSA")
        config = typed.issuers[0]
        assert config.discover
        assert config.jwks_url is None
        assert config.algorithms == ("ES256", "EdDSA")
        assert config.required_claims == ("sub", "scope")
        assert (config.leeway, config.profile) == (2.0, "rfc9068")
    finally:
        defaults.close()
        typed.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "JWKS_URL and ISSUER must be set"),
        ({"ISSUER": ISSUER, "JWKS_URL": "http://127.0.0.1:1/j", "LEEWAY": "soon"}, "LEEWAY"),
        ({"ISSUER": ISSUER, "JWKS_URL": "ftp://x/j"}, "http"),
        ({"ISSUERS": "not a list"}, "ISSUERS"),
        ({"ISSUERS": [{"issuer": ISSUER, "typo": 1}]}, "ISSUERS"),
    ],
)
def test_verifier_from_settings_rejects_bad_settings(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        verifier_from_settings(settings)


def test_guard_exempt_paths_follow_the_asgi_rules(verifier_server: Verifier) -> None:
    guard = Guard(verifier_server, exempt_paths=["/health", "/static/*"])
    assert guard.is_exempt("/health")
    assert guard.is_exempt("/static/app.css")
    assert not guard.is_exempt("/static/../admin")
    assert not guard.is_exempt("/healthz")
    assert not Guard(verifier_server).is_exempt("/health")


@pytest.fixture
def verifier_server(jwks_server: JWKSServer) -> Any:
    verifier = make_verifier(jwks_server)
    yield verifier
    verifier.close()
