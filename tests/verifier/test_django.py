from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.verifier.django_setup import configure

configure()

from django.test import AsyncClient, Client, override_settings  # noqa: E402

from keyswap.errors import ConfigError  # noqa: E402
from keyswap.verifier.django import KeyswapMiddleware, get_settings  # noqa: E402
from keyswap.verifier.verify import Verifier  # noqa: E402
from tests.support.jwks_server import JWKSServer  # noqa: E402
from tests.verifier.adapter_cases import (  # noqa: E402
    AUDIENCE,
    CASE_IDS,
    CASES,
    INSUFFICIENT_SCOPE,
    ISSUER,
    Case,
    bearer,
    check_rejection,
    make_verifier,
    token,
)

MIDDLEWARE = ["keyswap.verifier.django.KeyswapMiddleware"]


def keyswap_settings(server: JWKSServer, **extra: Any) -> dict[str, Any]:
    make_verifier(server).close()  # the server now serves the test key
    return {
        "ISSUER": ISSUER,
        "JWKS_URL": server.url,
        "AUDIENCE": AUDIENCE,
        "EXEMPT_PATHS": ["/health"],
        **extra,
    }


@pytest.fixture
def protected(jwks_server: JWKSServer) -> Iterator[Client]:
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP=keyswap_settings(jwks_server)):
        yield Client()


@pytest.fixture
def drf_only(jwks_server: JWKSServer) -> Iterator[Client]:
    with override_settings(MIDDLEWARE=[], KEYSWAP=keyswap_settings(jwks_server)):
        yield Client()


def auth(value: str | None) -> dict[str, str]:
    return {} if value is None else {"Authorization": value}


# --- the middleware --------------------------------------------------------------------------------


def test_middleware_puts_the_claims_on_the_request(protected: Client) -> None:
    response = protected.get("/me", headers=auth(bearer(token(sub="kim"))))
    assert response.status_code == 200
    assert response.json()["claims"]["sub"] == "kim"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_middleware_rejections_match_the_asgi_middleware(protected: Client, case: Case) -> None:
    response = protected.get("/me", headers=auth(case.authorization()))
    check_rejection(case, response.status_code, dict(response.headers), response.content)
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_middleware_exempt_paths_get_no_claims(protected: Client) -> None:
    assert protected.get("/health").json() == {"claims": None}


def test_middleware_scopes_setting_gives_403(jwks_server: JWKSServer) -> None:
    config = keyswap_settings(jwks_server, SCOPES=["orders:write"])
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP=config):
        client = Client()
        denied = client.get("/me", headers=auth(bearer(token(scope="orders:read"))))
        allowed = client.get("/me", headers=auth(bearer(token(scope="orders:write"))))
    assert denied.status_code == 403
    assert denied.content == b"Insufficient scope"
    assert denied.headers["WWW-Authenticate"].startswith(INSUFFICIENT_SCOPE)
    assert allowed.status_code == 200


def test_middleware_keys_unavailable_is_503_with_retry_after(jwks_server: JWKSServer) -> None:
    config = keyswap_settings(jwks_server)
    jwks_server.serve({}, status=500)
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP=config):
        response = Client().get("/me", headers=auth(bearer(token())))
    assert response.status_code == 503
    assert response.content == b"Signing keys temporarily unavailable"
    assert int(response.headers["Retry-After"]) >= 1


async def test_middleware_works_in_async_mode(jwks_server: JWKSServer) -> None:
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP=keyswap_settings(jwks_server)):
        client = AsyncClient()
        ok = await client.get("/async-me", headers=auth(bearer(token(sub="lee"))))
        missing = await client.get("/async-me")
        expired = await client.get("/async-me", headers=auth(bearer(token(now=0))))
    assert ok.status_code == 200
    assert ok.json()["claims"]["sub"] == "lee"
    assert missing.status_code == 401
    assert missing.content == b"No token provided"
    assert expired.status_code == 401
    assert expired.headers["WWW-Authenticate"].startswith(
        'Bearer realm="keyswap", error="invalid_token"'
    )


def test_middleware_not_required_lets_anonymous_requests_through(
    jwks_server: JWKSServer,
) -> None:
    config = keyswap_settings(jwks_server, REQUIRED=False)
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP=config):
        client = Client()
        anonymous = client.get("/me")
        bad = client.get("/me", headers=auth(bearer("garbage")))
    assert anonymous.json() == {"claims": None}
    assert bad.status_code == 401


def test_settings_are_validated_at_start_up(jwks_server: JWKSServer) -> None:
    with (
        override_settings(KEYSWAP={"ISSUER": ISSUER}),
        pytest.raises(ConfigError, match="JWKS_URL"),
    ):
        get_settings()
    typo = {"ISSUER": ISSUER, "JWKS_URL": jwks_server.url, "TYPO": 1}
    with override_settings(KEYSWAP=typo), pytest.raises(ConfigError, match="TYPO"):
        get_settings()
    bad_scope = keyswap_settings(jwks_server, SCOPES=["a b"])
    with override_settings(KEYSWAP=bad_scope), pytest.raises(ConfigError, match="invalid scope"):
        KeyswapMiddleware(lambda request: None)


def test_a_ready_verifier_can_be_passed_in_settings(jwks_server: JWKSServer) -> None:
    verifier = make_verifier(jwks_server)
    try:
        with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP={"VERIFIER": verifier}):
            response = Client().get("/me", headers=auth(bearer(token(sub="max"))))
            assert get_settings().guard.verifier is verifier
    finally:
        verifier.close()
    assert response.json()["claims"]["sub"] == "max"


def test_several_issuers_can_be_configured(jwks_server: JWKSServer) -> None:
    make_verifier(jwks_server).close()
    issuers = [
        {"issuer": "https://other.test", "jwks_url": jwks_server.url},
        {"issuer": ISSUER, "jwks_url": jwks_server.url, "audience": AUDIENCE},
    ]
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP={"ISSUERS": issuers}):
        response = Client().get("/me", headers=auth(bearer(token(sub="ned"))))
        assert isinstance(get_settings().guard.verifier, Verifier)
    assert response.json()["claims"]["sub"] == "ned"


# --- Django REST framework -------------------------------------------------------------------------


def test_drf_authentication_gives_a_token_user_and_the_claims(drf_only: Client) -> None:
    headers = auth(bearer(token(sub="olga", scope="orders:read")))
    response = drf_only.get("/api/orders", headers=headers)
    assert response.status_code == 200
    assert response.json()["user"] == "olga"
    assert response.json()["claims"]["scope"] == "orders:read"


def test_drf_missing_token_is_401_with_the_bare_challenge(drf_only: Client) -> None:
    response = drf_only.get("/api/orders")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keyswap"'
    assert response.json() == {"detail": "No token provided"}


@pytest.mark.parametrize("case", [c for c in CASES if c.status == 401], ids=lambda c: c.name)
def test_drf_rejections_have_keyswap_statuses_and_headers(drf_only: Client, case: Case) -> None:
    response = drf_only.get("/api/orders", headers=auth(case.authorization()))
    check_rejection(case, response.status_code, dict(response.headers), b"", exact_body=False)
    assert response.json() == {"detail": case.body.decode()}


def test_drf_missing_scope_is_403_with_the_scope_challenge(drf_only: Client) -> None:
    response = drf_only.get("/api/orders", headers=auth(bearer(token(scope="orders:write"))))
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="keyswap", error="insufficient_scope", scope="orders:read", '
        'error_description="The token lacks a required scope"'
    )
    assert response.json() == {"detail": "Insufficient scope"}


def test_drf_has_scopes_require_makes_a_permission_class(drf_only: Client) -> None:
    denied = drf_only.get("/api/admin", headers=auth(bearer(token(roles=["user"]))))
    allowed = drf_only.get("/api/admin", headers=auth(bearer(token(roles=["admin"]))))
    assert denied.status_code == 403
    assert 'scope="admin"' in denied.headers["WWW-Authenticate"]
    assert allowed.json() == {"admin": True}


def test_drf_keys_unavailable_is_503_with_retry_after(jwks_server: JWKSServer) -> None:
    config = keyswap_settings(jwks_server)
    jwks_server.serve({}, status=500)
    with override_settings(MIDDLEWARE=[], KEYSWAP=config):
        response = Client().get("/api/orders", headers=auth(bearer(token())))
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1


def test_drf_reuses_the_claims_verified_by_the_middleware(jwks_server: JWKSServer) -> None:
    config = keyswap_settings(jwks_server, REQUIRED=False)
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP=config):
        client = Client()
        verifier = get_settings().guard.verifier
        assert isinstance(verifier, Verifier)
        ok = client.get("/api/orders", headers=auth(bearer(token(scope="orders:read"))))
        lookups = verifier.metrics.get("token_cache_misses") + verifier.metrics.get(
            "token_cache_hits"
        )
        anonymous = client.get("/api/orders")
    assert ok.status_code == 200
    assert lookups == 1
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="keyswap"'


def test_drf_leaves_other_schemes_to_other_authenticators(drf_only: Client) -> None:
    response = drf_only.get("/api/orders", headers=auth("Basic dXNlcjpwYXNz"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keyswap"'


def test_token_user_has_no_django_model_permissions() -> None:
    from keyswap.verifier.drf import TokenUser

    user = TokenUser({"sub": "pat", "scope": "admin"})
    assert str(user) == user.get_username() == "pat"
    assert user.is_authenticated
    assert not user.has_perm("auth.add_user")
    assert not user.has_perms(["auth.add_user"])
    assert not user.has_module_perms("auth")


# --- I02: only claims keyswap verified with this configuration are reused --------------------------


def test_drf_never_trusts_claims_it_did_not_verify(jwks_server: JWKSServer) -> None:
    planter = ["tests.verifier.django_urls.PlantClaims"]
    with override_settings(MIDDLEWARE=planter, KEYSWAP=keyswap_settings(jwks_server)):
        client = Client()
        anonymous = client.get("/api/orders")
        lacking = client.get("/api/admin", headers=auth(bearer(token(sub="real"))))
    assert anonymous.status_code == 401
    assert lacking.status_code == 403


# --- I03: KEYSWAP["SCOPES"] without the middleware ------------------------------------------------


def test_drf_applies_the_scopes_setting_without_the_middleware(jwks_server: JWKSServer) -> None:
    config = keyswap_settings(jwks_server, SCOPES=["api"])
    with override_settings(MIDDLEWARE=[], KEYSWAP=config):
        client = Client()
        lacking = client.get("/api/orders", headers=auth(bearer(token(scope="orders:read"))))
        granted = client.get("/api/orders", headers=auth(bearer(token(scope="api orders:read"))))
    assert lacking.status_code == 403
    assert lacking.headers["WWW-Authenticate"].startswith(
        'Bearer realm="keyswap", error="insufficient_scope", scope="api"'
    )
    assert lacking.json() == {"detail": "Insufficient scope"}
    assert granted.status_code == 200


def test_drf_with_the_middleware_checks_the_scopes_setting_once(jwks_server: JWKSServer) -> None:
    config = keyswap_settings(jwks_server, SCOPES=["api"], REQUIRED=False)
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP=config):
        client = Client()
        lacking = client.get("/api/orders", headers=auth(bearer(token(scope="orders:read"))))
        granted = client.get("/api/orders", headers=auth(bearer(token(scope="api orders:read"))))
    assert lacking.status_code == 403
    assert lacking.content == b"Insufficient scope"  # the middleware's answer
    assert granted.status_code == 200


# --- I05: scopes are separated by SP only -------------------------------------------------------


@pytest.mark.parametrize("separator", ["\u00a0", "\x1e", "\u2028", "\t"])
def test_only_a_space_separates_scopes(jwks_server: JWKSServer, separator: str) -> None:
    scope = f"reports:read{separator}admin"
    config = keyswap_settings(jwks_server, SCOPES=["admin"])
    with override_settings(MIDDLEWARE=[], KEYSWAP=keyswap_settings(jwks_server)):
        drf = Client().get("/api/admin", headers=auth(bearer(token(scope=scope))))
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP=config):
        middleware = Client().get("/me", headers=auth(bearer(token(scope=scope))))
    assert drf.status_code == 403
    assert middleware.status_code == 403


# --- I07: required_scopes is validated once, a string is one scope -------------------------------


def test_a_string_required_scopes_is_one_scope(drf_only: Client) -> None:
    letters = drf_only.get("/api/admin-by-string", headers=auth(bearer(token(scope="a d m i n"))))
    admin = drf_only.get("/api/admin-by-string", headers=auth(bearer(token(scope="admin"))))
    assert letters.status_code == 403
    assert 'scope="admin"' in letters.headers["WWW-Authenticate"]
    assert admin.json() == {"admin": True}


def test_an_invalid_required_scope_is_a_configuration_error_naming_the_view(
    drf_only: Client,
) -> None:
    with pytest.raises(ConfigError, match=r"BadScopes\.required_scopes: invalid scope"):
        drf_only.get("/api/bad-scopes", headers=auth(bearer(token(scope="orders"))))


def test_has_scopes_require_reads_a_string_class_attribute_as_one_scope() -> None:
    from keyswap.verifier.drf import HasScopes

    class AdminOnly(HasScopes):
        required_scopes = "admin"  # type: ignore[assignment]

    assert AdminOnly.require("orders:read").required_scopes == ("admin", "orders:read")


# --- I08: REQUIRED=False leaves other schemes alone -------------------------------------------------


def test_not_required_lets_another_scheme_through_to_the_views(jwks_server: JWKSServer) -> None:
    config = keyswap_settings(jwks_server, REQUIRED=False)
    with override_settings(MIDDLEWARE=MIDDLEWARE, KEYSWAP=config):
        client = Client()
        basic = client.get("/me", headers=auth("Basic dXNlcjpwYXNz"))
        drf = client.get("/api/orders", headers=auth("Basic dXNlcjpwYXNz"))
        malformed = client.get("/me", headers=auth("Bearer"))
    assert basic.json() == {"claims": None}
    assert drf.status_code == 401  # no authentication class accepted it
    assert drf.headers["WWW-Authenticate"] == 'Bearer realm="keyswap"'
    assert malformed.status_code == 401
    assert malformed.content == b"Invalid token"


def test_required_still_refuses_another_scheme(protected: Client) -> None:
    response = protected.get("/me", headers=auth("Basic dXNlcjpwYXNz"))
    assert response.status_code == 401
    assert response.content == b"No token provided"
