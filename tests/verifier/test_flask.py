from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, g, jsonify, request
from flask.testing import FlaskClient

from keyswap.errors import ConfigError
from keyswap.verifier.flask import KeyswapFlask, get_claims, require_token
from keyswap.verifier.verify import Verifier
from tests.support.jwks_server import JWKSServer
from tests.verifier.adapter_cases import (
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


def build_app(ext: KeyswapFlask | None = None, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    if ext is not None:
        ext.init_app(app)

    @app.get("/me")
    def me() -> Any:
        return jsonify(
            claims=g.get("keyswap_claims"), environ=request.environ.get("keyswap.claims")
        )

    @app.get("/health")
    def health() -> Any:
        return jsonify(claims=get_claims())

    @app.post("/orders")
    @require_token(scopes=["orders:write"])
    def create() -> Any:
        return jsonify(created_by=g.keyswap_claims["sub"])

    @app.get("/async")
    @require_token(scopes=["orders:read"])
    async def async_view() -> Any:
        return jsonify(sub=g.keyswap_claims["sub"])

    return app


@pytest.fixture
def verifier(jwks_server: JWKSServer) -> Iterator[Verifier]:
    v = make_verifier(jwks_server)
    yield v
    v.close()


@pytest.fixture
def client(verifier: Verifier) -> FlaskClient:
    return build_app(KeyswapFlask(verifier=verifier, exempt_paths=["/health"])).test_client()


@pytest.fixture
def per_view(verifier: Verifier) -> FlaskClient:
    return build_app(KeyswapFlask(verifier=verifier, protect_all=False)).test_client()


def auth(value: str | None) -> dict[str, str]:
    return {} if value is None else {"Authorization": value}


def test_app_wide_protection_puts_claims_on_g_and_in_the_environ(client: FlaskClient) -> None:
    response = client.get("/me", headers=auth(bearer(token(sub="gina"))))
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["claims"]["sub"] == "gina"
    assert response.json["environ"] == response.json["claims"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_app_wide_rejections_match_the_asgi_middleware(client: FlaskClient, case: Case) -> None:
    response = client.get("/me", headers=auth(case.authorization()))
    check_rejection(case, response.status_code, dict(response.headers), response.data)
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_per_view_rejections_match_the_asgi_middleware(per_view: FlaskClient, case: Case) -> None:
    response = per_view.post("/orders", headers=auth(case.authorization()))
    check_rejection(case, response.status_code, dict(response.headers), response.data)


def test_exempt_paths_are_served_without_a_token(client: FlaskClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"claims": None}


def test_require_token_checks_scopes_with_403(client: FlaskClient) -> None:
    denied = client.post("/orders", headers=auth(bearer(token(scope="orders:read"))))
    assert denied.status_code == 403
    assert denied.data == b"Insufficient scope"
    assert denied.headers["WWW-Authenticate"].startswith(INSUFFICIENT_SCOPE)
    allowed = client.post("/orders", headers=auth(bearer(token(sub="hal", scope="orders:write"))))
    assert allowed.json == {"created_by": "hal"}


def test_without_protect_all_only_decorated_views_need_a_token(per_view: FlaskClient) -> None:
    assert per_view.get("/me").status_code == 200
    assert per_view.post("/orders").status_code == 401
    granted = per_view.post("/orders", headers=auth(bearer(token(scp=["orders:write"]))))
    assert granted.status_code == 200


def test_async_views_are_supported(per_view: FlaskClient) -> None:
    pytest.importorskip("asgiref")
    assert per_view.get("/async").status_code == 401
    response = per_view.get("/async", headers=auth(bearer(token(sub="ivy", roles="orders:read"))))
    assert response.json == {"sub": "ivy"}


def test_keys_unavailable_is_503_with_retry_after(jwks_server: JWKSServer) -> None:
    verifier = make_verifier(jwks_server)
    jwks_server.serve({}, status=500)
    try:
        client = build_app(KeyswapFlask(verifier=verifier)).test_client()
        response = client.get("/me", headers=auth(bearer(token())))
    finally:
        verifier.close()
    assert response.status_code == 503
    assert response.data == b"Signing keys temporarily unavailable"
    assert int(response.headers["Retry-After"]) >= 1


def test_init_app_builds_the_verifier_from_app_config(jwks_server: JWKSServer) -> None:
    make_verifier(jwks_server).close()  # makes the server serve the key
    ext = KeyswapFlask()
    app = build_app(
        ext, KEYSWAP_ISSUER=ISSUER, KEYSWAP_JWKS_URL=jwks_server.url, KEYSWAP_AUDIENCE=AUDIENCE
    )
    client = app.test_client()
    try:
        body = client.get("/me", headers=auth(bearer(token(sub="jo")))).json
        assert body is not None
        assert body["claims"]["sub"] == "jo"
        assert client.get("/me").status_code == 401
    finally:
        app.extensions["keyswap"].guard.verifier.close()


def test_init_app_without_verifier_or_config_fails_clearly() -> None:
    with pytest.raises(ConfigError, match="KEYSWAP_ISSUER"):
        build_app(KeyswapFlask())


def test_require_token_without_the_extension_is_a_configuration_error() -> None:
    app = build_app()
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(ConfigError, match="KeyswapFlask"):
        app.test_client().post("/orders")


def test_bad_options_fail_at_construction(verifier: Verifier) -> None:
    with pytest.raises(ConfigError):
        KeyswapFlask(verifier=verifier, realm="")
    with pytest.raises(ValueError, match="invalid scope"):
        KeyswapFlask(verifier=verifier, scopes=["a b"])
