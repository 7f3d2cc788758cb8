from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
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


# --- I01: no claims survive the request that verified them -----------------------------------------


@pytest.fixture
def single_threaded(verifier: Verifier) -> Iterator[str]:
    """A real single-threaded werkzeug server whose app context was pushed "at import" (in the
    serving thread, as a Flask-SQLAlchemy tutorial does in the main module)."""
    from werkzeug.serving import make_server

    app = build_app(KeyswapFlask(verifier=verifier, exempt_paths=["/health"]))

    @app.get("/admin")
    @require_token(scopes=["admin"])
    def admin() -> Any:
        return jsonify(sub=g.keyswap_claims["sub"])

    server = make_server("127.0.0.1", 0, app, threaded=False)

    def serve() -> None:
        app.app_context().push()  # one app context, and one g, for every request
        server.serve_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_claims_never_outlive_their_request_when_the_app_context_is_shared(
    single_threaded: str,
) -> None:
    alice = bearer(token(sub="alice", scope="admin"))
    with httpx.Client(base_url=single_threaded, timeout=5) as client:
        assert client.get("/admin", headers=auth(alice)).json() == {"sub": "alice"}
        missing = client.get("/admin")
        garbage = client.get("/admin", headers=auth("Bearer garbage.x.y"))
        bob = client.get("/admin", headers=auth(bearer(token(sub="bob", scope="orders:read"))))
        health = client.get("/health")
        me = client.get("/me", headers=auth(bearer(token(sub="carol"))))
    assert (missing.status_code, missing.content) == (401, b"No token provided")
    assert (garbage.status_code, garbage.content) == (401, b"Invalid token")
    assert (bob.status_code, bob.content) == (403, b"Insufficient scope")
    assert health.json() == {"claims": None}  # neither g nor get_claims() keep alice's claims
    assert me.json()["claims"]["sub"] == "carol"


def test_g_keyswap_claims_is_cleared_before_other_before_request_functions(
    verifier: Verifier,
) -> None:
    app = Flask(__name__)
    KeyswapFlask(app, verifier=verifier, protect_all=False)
    seen: list[Any] = []
    app.before_request(lambda: seen.append((g.get("keyswap_claims"), get_claims())))

    @app.get("/who")
    @require_token()
    def who() -> Any:
        return jsonify(sub=g.keyswap_claims["sub"])

    with app.app_context():
        client = app.test_client()
        assert client.get("/who", headers=auth(bearer(token(sub="dan")))).json == {"sub": "dan"}
        assert client.get("/who").status_code == 401
    assert seen == [(None, None), (None, None)]


# --- I05 / I08: scopes --------------------------------------------------------------------------


@pytest.mark.parametrize("separator", ["\u00a0", "\x1f", "\u2028", "\t"])
def test_only_a_space_separates_scopes(client: FlaskClient, separator: str) -> None:
    headers = auth(bearer(token(scope=f"orders:read{separator}orders:write")))
    assert client.post("/orders", headers=headers).status_code == 403


@pytest.mark.parametrize("protect_all", [True, False])
def test_app_wide_scopes_apply_to_require_token_views_everywhere(
    verifier: Verifier, protect_all: bool
) -> None:
    ext = KeyswapFlask(
        verifier=verifier, protect_all=protect_all, exempt_paths=["/public"], scopes=["api"]
    )
    app = build_app(ext)

    @app.get("/public")
    @require_token(scopes=["orders:read"])
    def public() -> Any:
        return jsonify(ok=True)

    client = app.test_client()
    lacking = client.get("/public", headers=auth(bearer(token(scope="orders:read"))))
    granted = client.get("/public", headers=auth(bearer(token(scope="api orders:read"))))
    assert lacking.status_code == 403
    assert 'scope="api orders:read"' in lacking.headers["WWW-Authenticate"]
    assert granted.json == {"ok": True}
