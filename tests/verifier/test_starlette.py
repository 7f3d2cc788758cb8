from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from keyswap.verifier.asgi import JWTAuthMiddleware
from keyswap.verifier.starlette import (
    get_claims,
    get_permissions,
    requires_scopes,
    verifier_lifespan,
)
from keyswap.verifier.verify import Verifier
from tests.support.asgi import call_websocket, running_uvicorn
from tests.support.jwks_server import JWKSServer
from tests.verifier.adapter_cases import (
    CASE_IDS,
    CASES,
    INSUFFICIENT_SCOPE,
    Case,
    bearer,
    check_rejection,
    make_verifier,
    token,
)


async def me(request: Request) -> Response:
    return JSONResponse({"claims": get_claims(request), "perms": sorted(get_permissions(request))})


@requires_scopes("orders:write")
async def write_orders(request: Request) -> Response:
    return JSONResponse({"sub": get_claims(request)["sub"]})  # type: ignore[index]


@requires_scopes("orders:write")
def write_orders_sync(request: Request) -> Response:
    return JSONResponse({"sync": True})


@requires_scopes("admin", permission_claims=["realm_access.roles"])
async def admin(request: Request) -> Response:
    return JSONResponse({"admin": True})


class Orders(HTTPEndpoint):
    @requires_scopes("orders:write")
    async def post(self, request: Request) -> Response:
        return JSONResponse({"created": True})


def health(request: Request) -> Response:
    return JSONResponse({"claims": get_claims(request)})


@requires_scopes("orders:read")
async def unprotected_by_mistake(request: Request) -> Response:
    return JSONResponse({"leak": True})


def build_app(verifier: Verifier) -> Starlette:
    return Starlette(
        routes=[
            Route("/me", me),
            Route("/write", write_orders),
            Route("/write-sync", write_orders_sync),
            Route("/admin", admin),
            Route("/orders", Orders),
            Route("/health", health),
            Route("/public/oops", unprotected_by_mistake),
        ],
        middleware=[
            Middleware(JWTAuthMiddleware, verifier=verifier, exempt_paths=["/health", "/public/*"])
        ],
        lifespan=verifier_lifespan(verifier),
    )


@pytest.fixture
def verifier(jwks_server: JWKSServer) -> Iterator[Verifier]:
    v = make_verifier(jwks_server)
    yield v
    v.close()


@pytest.fixture
def client(verifier: Verifier) -> Iterator[TestClient]:
    with TestClient(build_app(verifier)) as c:
        yield c


def auth(value: str | None) -> dict[str, str]:
    return {} if value is None else {"Authorization": value}


def test_get_claims_returns_the_verified_claims_and_permissions(client: TestClient) -> None:
    response = client.get("/me", headers=auth(bearer(token(sub="bob", scope="a b", roles=["c"]))))
    assert response.status_code == 200
    assert response.json()["claims"]["sub"] == "bob"
    assert response.json()["perms"] == ["a", "b", "c"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rejections_come_from_the_middleware(client: TestClient, case: Case) -> None:
    response = client.get("/me", headers=auth(case.authorization()))
    check_rejection(case, response.status_code, dict(response.headers), response.content)


@pytest.mark.parametrize("path", ["/write", "/write-sync"])
def test_requires_scopes_gives_403_with_the_scope_challenge(client: TestClient, path: str) -> None:
    response = client.get(path, headers=auth(bearer(token(scope="orders:read"))))
    assert response.status_code == 403
    assert response.content == b"Insufficient scope"
    assert response.headers["www-authenticate"].startswith(INSUFFICIENT_SCOPE)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_requires_scopes_runs_async_and_sync_endpoints_when_granted(client: TestClient) -> None:
    headers = auth(bearer(token(sub="carol", scp=["orders:write"])))
    assert client.get("/write", headers=headers).json() == {"sub": "carol"}
    assert client.get("/write-sync", headers=headers).json() == {"sync": True}


def test_requires_scopes_works_on_endpoint_methods(client: TestClient) -> None:
    assert client.post("/orders", headers=auth(bearer(token()))).status_code == 403
    granted = client.post("/orders", headers=auth(bearer(token(scope="orders:write"))))
    assert granted.json() == {"created": True}


def test_requires_scopes_reads_a_configured_nested_claim(client: TestClient) -> None:
    denied = client.get("/admin", headers=auth(bearer(token(roles=["admin"]))))
    assert denied.status_code == 403
    allowed = client.get("/admin", headers=auth(bearer(token(realm_access={"roles": ["admin"]}))))
    assert allowed.json() == {"admin": True}


def test_requires_scopes_fails_closed_without_claims(client: TestClient) -> None:
    response = client.get("/public/oops")
    assert response.status_code == 401
    assert response.content == b"No token provided"
    assert response.headers["www-authenticate"] == 'Bearer realm="keyswap"'


def test_exempt_routes_see_no_claims(client: TestClient) -> None:
    assert client.get("/health").json() == {"claims": None}


def test_keys_unavailable_is_503_with_retry_after(jwks_server: JWKSServer) -> None:
    verifier = make_verifier(jwks_server)
    jwks_server.serve({}, status=500)
    with TestClient(build_app(verifier)) as c:
        response = c.get("/me", headers=auth(bearer(token())))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1


def test_the_lifespan_warms_the_verifier_before_requests(jwks_server: JWKSServer) -> None:
    verifier = make_verifier(jwks_server)
    with TestClient(build_app(verifier)):
        assert verifier.keyset(verifier.issuers[0].issuer).status().keys == 1
    assert jwks_server.count() == 1


def test_invalid_scope_names_are_rejected_when_decorating() -> None:
    with pytest.raises(ValueError, match="invalid scope"):
        requires_scopes('a"b')

    def endpoint(request: Any) -> None: ...

    assert requires_scopes("ok")(endpoint).__name__ == "endpoint"


# --- I06: websocket endpoints ------------------------------------------------------------------


@requires_scopes("chat")
async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(f"hello {get_claims(websocket)['sub']}")  # type: ignore[index]
    await websocket.close()


def websocket_app(verifier: Verifier) -> Starlette:
    return Starlette(
        routes=[WebSocketRoute("/ws", chat), WebSocketRoute("/public/ws", chat)],
        middleware=[Middleware(JWTAuthMiddleware, verifier=verifier, exempt_paths=["/public/*"])],
        lifespan=verifier_lifespan(verifier),
    )


def test_requires_scopes_refuses_a_websocket_with_an_http_403_on_a_real_server(
    verifier: Verifier,
) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with running_uvicorn(websocket_app(verifier)) as base:
        url = base.replace("http://", "ws://")
        with pytest.raises(InvalidStatus) as info:
            connect(
                url + "/ws",
                additional_headers={"Authorization": bearer(token(scope="reports:read"))},
                open_timeout=5,
            )
        denied = info.value.response
        with pytest.raises(InvalidStatus) as unverified:
            connect(url + "/public/ws", open_timeout=5)
        headers = {"Authorization": bearer(token(sub="dora", scope="chat"))}
        with connect(url + "/ws", additional_headers=headers, open_timeout=5) as ws:
            greeting = ws.recv(timeout=5)
    assert denied.status_code == 403
    assert denied.body == b"Insufficient scope"
    assert denied.headers["WWW-Authenticate"].startswith(
        'Bearer realm="keyswap", error="insufficient_scope", scope="chat"'
    )
    assert unverified.value.response.status_code == 401
    assert unverified.value.response.body == b"No token provided"
    assert greeting == "hello dora"


async def test_requires_scopes_closes_a_websocket_with_1008_without_the_denial_extension(
    verifier: Verifier,
) -> None:
    app = JWTAuthMiddleware(Starlette(routes=[WebSocketRoute("/ws", chat)]), verifier=verifier)
    sent = await call_websocket(app, headers=[(b"authorization", bearer(token()).encode())])
    assert [m["type"] for m in sent.messages] == ["websocket.close"]
    assert sent.messages[0]["code"] == 1008
