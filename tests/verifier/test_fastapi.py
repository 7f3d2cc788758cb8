from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Security
from fastapi.testclient import TestClient

from keyswap.verifier.asgi import JWTAuthMiddleware
from keyswap.verifier.fastapi import KeyswapBearer, TokenClaims
from keyswap.verifier.verify import Verifier
from tests.support.jwks_server import JWKSServer
from tests.support.keys import jwks
from tests.verifier.adapter_cases import (
    AUDIENCE,
    CASE_IDS,
    CASES,
    INSUFFICIENT_SCOPE,
    ISSUER,
    KEY,
    Case,
    bearer,
    check_rejection,
    make_verifier,
    token,
)


def build_app(auth: KeyswapBearer, *, install: bool = True) -> FastAPI:
    app = FastAPI(lifespan=auth.lifespan)
    if install:
        auth.install(app)

    @app.get("/me")
    async def me(claims: Annotated[TokenClaims, Depends(auth)]) -> dict[str, Any]:
        return {
            "sub": claims.sub,
            "iss": claims.iss,
            "aud": list(claims.aud),
            "exp": claims.exp,
            "scopes": sorted(claims.scopes),
            "raw": dict(claims.raw),
        }

    @app.post("/orders")
    async def create(
        claims: Annotated[TokenClaims, Security(auth, scopes=["orders:write"])],
    ) -> dict[str, str]:
        return {"created_by": claims.sub}

    @app.get("/sync")
    def sync_view(claims: TokenClaims = Security(auth, scopes=["orders:read"])) -> dict[str, str]:  # noqa: B008
        return {"sub": claims.sub}

    return app


@pytest.fixture
def verifier(jwks_server: JWKSServer) -> Iterator[Verifier]:
    v = make_verifier(jwks_server)
    yield v
    v.close()


@pytest.fixture
def client(verifier: Verifier) -> Iterator[TestClient]:
    with TestClient(build_app(KeyswapBearer(verifier))) as c:
        yield c


def auth_header(value: str | None) -> dict[str, str]:
    return {} if value is None else {"Authorization": value}


def test_depends_yields_typed_claims(client: TestClient) -> None:
    response = client.get("/me", headers=auth_header(bearer(token(sub="dave", scp="a b"))))
    assert response.status_code == 200
    body = response.json()
    assert body["sub"] == "dave"
    assert body["iss"] == ISSUER
    assert body["aud"] == [AUDIENCE]
    assert isinstance(body["exp"], int)
    assert body["scopes"] == ["a", "b"]
    assert body["raw"]["scp"] == "a b"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rejections_are_exact_after_install(client: TestClient, case: Case) -> None:
    response = client.get("/me", headers=auth_header(case.authorization()))
    check_rejection(case, response.status_code, dict(response.headers), response.content)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rejections_keep_status_and_headers_without_install(verifier: Verifier, case: Case) -> None:
    with TestClient(build_app(KeyswapBearer(verifier), install=False)) as c:
        response = c.get("/me", headers=auth_header(case.authorization()))
    check_rejection(case, response.status_code, dict(response.headers), b"", exact_body=False)
    assert response.json() == {"detail": case.body.decode()}


def test_a_missing_header_is_401_never_422(client: TestClient) -> None:
    for path, method in [("/me", "GET"), ("/orders", "POST"), ("/sync", "GET")]:
        response = client.request(method, path)
        assert response.status_code == 401
        assert response.content == b"No token provided"


def test_security_scopes_missing_gives_403_with_the_scope_challenge(client: TestClient) -> None:
    response = client.post("/orders", headers=auth_header(bearer(token(scope="orders:read"))))
    assert response.status_code == 403
    assert response.content == b"Insufficient scope"
    assert response.headers["www-authenticate"].startswith(INSUFFICIENT_SCOPE)


def test_security_scopes_granted_runs_async_and_sync_routes(client: TestClient) -> None:
    headers = auth_header(bearer(token(sub="erin", roles=["orders:write", "orders:read"])))
    assert client.post("/orders", headers=headers).json() == {"created_by": "erin"}
    assert client.get("/sync", headers=headers).json() == {"sub": "erin"}


def test_scopes_set_on_the_dependency_apply_to_every_route(verifier: Verifier) -> None:
    auth = KeyswapBearer(verifier, scopes=["api"])
    with TestClient(build_app(auth)) as c:
        denied = c.get("/me", headers=auth_header(bearer(token())))
        allowed = c.get("/me", headers=auth_header(bearer(token(scope="api"))))
    assert denied.status_code == 403
    assert 'scope="api"' in denied.headers["www-authenticate"]
    assert allowed.status_code == 200


def test_keys_unavailable_is_503_with_retry_after(jwks_server: JWKSServer) -> None:
    verifier = make_verifier(jwks_server)
    jwks_server.serve({}, status=500)
    with TestClient(build_app(KeyswapBearer(verifier))) as c:
        response = c.get("/me", headers=auth_header(bearer(token())))
    assert response.status_code == 503
    assert response.content == b"Signing keys temporarily unavailable"
    assert int(response.headers["retry-after"]) >= 1


def test_openapi_has_a_bearer_security_scheme_for_the_authorize_button(
    client: TestClient,
) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["keyswapBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT minted by the keyswap gateway.",
    }
    assert schema["paths"]["/me"]["get"]["security"] == [{"keyswapBearer": []}]
    assert schema["paths"]["/orders"]["post"]["security"] == [{"keyswapBearer": ["orders:write"]}]
    # no Authorization header parameter: a missing header cannot become a validation error
    assert "parameters" not in schema["paths"]["/me"]["get"]


def test_the_lifespan_warms_the_key_set_before_requests(jwks_server: JWKSServer) -> None:
    verifier = make_verifier(jwks_server)
    with TestClient(build_app(KeyswapBearer(verifier))):
        assert verifier.keyset(ISSUER).status().keys == 1  # loaded before the first request
    assert jwks_server.count() == 1


def test_a_jwks_outage_at_start_up_does_not_stop_the_app(
    jwks_server: JWKSServer, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = make_verifier(jwks_server)
    jwks_server.serve({}, status=503)
    with TestClient(build_app(KeyswapBearer(verifier))) as c:
        assert "warm-up" in caplog.text
        assert c.get("/me", headers=auth_header(bearer(token()))).status_code == 503
        jwks_server.serve(jwks(KEY))
        verifier.keyset(ISSUER).refresh_sync()
        assert c.get("/me", headers=auth_header(bearer(token()))).status_code == 200


def test_install_can_wrap_an_existing_lifespan(jwks_server: JWKSServer) -> None:
    verifier = make_verifier(jwks_server)
    events: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        events.append("start")
        yield
        events.append("stop")

    app = FastAPI(lifespan=own)
    auth = KeyswapBearer(verifier)
    auth.install(app, lifespan=True)

    @app.get("/me")
    async def me(claims: TokenClaims = Depends(auth)) -> dict[str, str]:  # noqa: B008
        return {"sub": claims.sub}

    with TestClient(app) as c:
        assert verifier.keyset(ISSUER).status().keys == 1
        assert c.get("/me", headers=auth_header(bearer(token()))).json() == {"sub": "consumer-1"}
        assert c.get("/me").status_code == 401
    assert events == ["start", "stop"]


def test_claims_from_the_asgi_middleware_are_reused(verifier: Verifier) -> None:
    auth = KeyswapBearer(verifier)
    app = build_app(auth)
    app.add_middleware(JWTAuthMiddleware, verifier=verifier)
    with TestClient(app) as c:
        before = verifier.metrics.get("token_cache_misses") + verifier.metrics.get(
            "token_cache_hits"
        )
        response = c.get("/me", headers=auth_header(bearer(token(sub="frank"))))
        after = verifier.metrics.get("token_cache_misses") + verifier.metrics.get(
            "token_cache_hits"
        )
    assert response.json()["sub"] == "frank"
    assert after - before == 1  # the dependency did not verify a second time


def test_the_asgi_middleware_answers_before_the_dependency(verifier: Verifier) -> None:
    app = build_app(KeyswapBearer(verifier))
    app.add_middleware(JWTAuthMiddleware, verifier=verifier)
    with TestClient(app) as c:
        response = c.get("/me")
    assert response.status_code == 401
    assert response.content == b"No token provided"


# --- I02: claims another verifier checked are never trusted ---------------------------------------

INTERNAL_ISSUER = "https://internal.test"
INTERNAL_AUDIENCE = "https://internal-api.test"


def two_verifier_app(gateway: KeyswapBearer, internal: KeyswapBearer) -> FastAPI:
    app = FastAPI()
    gateway.install(app)
    router = APIRouter(dependencies=[Depends(gateway)])

    @router.get("/internal/admin")
    async def admin(
        claims: Annotated[TokenClaims, Security(internal, scopes=["admin"])],
    ) -> dict[str, str]:
        return {"iss": claims.iss}

    app.include_router(router)
    return app


def test_a_dependency_never_reuses_claims_another_verifier_checked(jwks_server: JWKSServer) -> None:
    gateway_verifier = make_verifier(jwks_server)
    internal_verifier = make_verifier(
        jwks_server, issuer=INTERNAL_ISSUER, audience=INTERNAL_AUDIENCE
    )
    try:
        app = two_verifier_app(KeyswapBearer(gateway_verifier), KeyswapBearer(internal_verifier))
        with TestClient(app) as c:
            response = c.get("/internal/admin", headers=auth_header(bearer(token(scope="admin"))))
    finally:
        gateway_verifier.close()
        internal_verifier.close()
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(
        'Bearer realm="keyswap", error="invalid_token"'
    )


def test_claims_from_a_middleware_with_another_verifier_are_verified_again(
    jwks_server: JWKSServer,
) -> None:
    gateway_verifier = make_verifier(jwks_server)
    internal_verifier = make_verifier(
        jwks_server, issuer=INTERNAL_ISSUER, audience=INTERNAL_AUDIENCE
    )
    internal = KeyswapBearer(internal_verifier)
    app = FastAPI()
    internal.install(app)

    @app.get("/internal/admin")
    async def admin(
        claims: Annotated[TokenClaims, Security(internal, scopes=["admin"])],
    ) -> dict[str, str]:
        return {"iss": claims.iss}

    app.add_middleware(JWTAuthMiddleware, verifier=gateway_verifier)
    try:
        with TestClient(app) as c:
            response = c.get("/internal/admin", headers=auth_header(bearer(token(scope="admin"))))
    finally:
        gateway_verifier.close()
        internal_verifier.close()
    assert response.status_code == 401  # the middleware let it in; the route did not
    assert response.content == b"Invalid token"


def test_a_second_dependency_with_the_same_verifier_reuses_the_claims(verifier: Verifier) -> None:
    auth = KeyswapBearer(verifier)
    app = FastAPI()
    router = APIRouter(dependencies=[Depends(auth)])

    @router.get("/x")
    async def x(claims: Annotated[TokenClaims, Security(auth, scopes=["a"])]) -> dict[str, str]:
        return {"sub": claims.sub}

    app.include_router(router)

    def lookups() -> float:
        return verifier.metrics.get("token_cache_hits") + verifier.metrics.get("token_cache_misses")

    with TestClient(app) as c:
        before = lookups()
        response = c.get("/x", headers=auth_header(bearer(token(sub="gus", scope="a"))))
        after = lookups()
    assert response.json() == {"sub": "gus"}
    assert after - before == 1  # the route's dependency reused the router's verification


# --- I05: scopes are separated by SP only -------------------------------------------------------


@pytest.mark.parametrize("separator", ["\u00a0", "\x1c", "\u2028", "\t"])
def test_only_a_space_separates_scopes(client: TestClient, separator: str) -> None:
    headers = auth_header(bearer(token(scope=f"reports:read{separator}orders:write")))
    response = client.post("/orders", headers=headers)
    assert response.status_code == 403
