from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import httpx
import pytest

from keyswap.errors import ConfigError
from keyswap.verifier.verify import Verifier
from keyswap.verifier.wsgi import WSGIAuthMiddleware, get_claims
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

if TYPE_CHECKING:
    from _typeshed import OptExcInfo


def echo_claims(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    body = json.dumps({"claims": get_claims(environ), "path": environ["PATH_INFO"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


class RecordingStartResponse:
    """A WSGI ``start_response`` (a ``wsgiref.types.StartResponse``) that records status lines."""

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        self.statuses.append(status)
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write`` callable: these tests never use it."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class RunningWSGI:
    """A real wsgiref server (threaded) on 127.0.0.1 serving ``app``."""

    def __init__(self, app: WSGIApplication) -> None:
        self.httpd = make_server(
            "127.0.0.1", 0, app, server_class=_Server, handler_class=_QuietHandler
        )
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def get(self, path: str = "/", authorization: str | None = None) -> httpx.Response:
        headers = {} if authorization is None else {"Authorization": authorization}
        return httpx.get(self.base + path, headers=headers, timeout=10)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def verifier(jwks_server: JWKSServer) -> Iterator[Verifier]:
    v = make_verifier(jwks_server)
    yield v
    v.close()


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[RunningWSGI] = []

    def start(app: WSGIApplication) -> RunningWSGI:
        servers.append(RunningWSGI(app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_a_valid_token_reaches_the_app_with_claims_in_the_environ(
    verifier: Verifier, serve: Any
) -> None:
    server = serve(WSGIAuthMiddleware(echo_claims, verifier=verifier))
    response = server.get("/orders", bearer(token(sub="alice")))
    assert response.status_code == 200
    assert response.json()["claims"]["sub"] == "alice"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rejections_match_the_asgi_middleware(verifier: Verifier, serve: Any, case: Case) -> None:
    server = serve(WSGIAuthMiddleware(echo_claims, verifier=verifier))
    response = server.get("/orders", case.authorization())
    check_rejection(case, response.status_code, dict(response.headers), response.content)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_missing_scope_is_403_with_the_insufficient_scope_challenge(
    verifier: Verifier, serve: Any
) -> None:
    app = WSGIAuthMiddleware(echo_claims, verifier=verifier, scopes=["orders:write"])
    server = serve(app)
    denied = server.get("/", bearer(token(scope="orders:read")))
    assert denied.status_code == 403
    assert denied.content == b"Insufficient scope"
    assert denied.headers["www-authenticate"].startswith(INSUFFICIENT_SCOPE)
    allowed = server.get("/", bearer(token(scp=["orders:read", "orders:write"])))
    assert allowed.status_code == 200


def test_keys_unavailable_from_the_start_is_503_with_retry_after(
    jwks_server: JWKSServer, serve: Any
) -> None:
    verifier = make_verifier(jwks_server)
    jwks_server.serve({"error": "boom"}, status=500)
    try:
        server = serve(WSGIAuthMiddleware(echo_claims, verifier=verifier, start=False))
        response = server.get("/", bearer(token()))
    finally:
        verifier.close()
    assert response.status_code == 503
    assert response.content == b"Signing keys temporarily unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert "www-authenticate" not in response.headers


def test_exempt_paths_pass_without_a_token_and_without_claims(
    verifier: Verifier, serve: Any
) -> None:
    app = WSGIAuthMiddleware(echo_claims, verifier=verifier, exempt_paths=["/health", "/pub/*"])
    server = serve(app)
    assert server.get("/health").json() == {"claims": None, "path": "/health"}
    assert server.get("/pub/a").status_code == 200
    assert server.get("/pub/../orders").status_code == 401
    assert server.get("/healthz").status_code == 401


def test_a_cold_burst_of_32_threads_makes_one_jwks_fetch(
    jwks_server: JWKSServer, serve: Any
) -> None:
    verifier = make_verifier(jwks_server)
    jwks_server.behaviour.delay = 0.3  # the JWKS answers slowly: every thread arrives while cold
    server = serve(WSGIAuthMiddleware(echo_claims, verifier=verifier, start=False))
    tokens = [token(sub=f"user-{i}") for i in range(32)]
    barrier = threading.Barrier(32)
    statuses: list[int] = []
    lock = threading.Lock()

    def call(tok: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        barrier.wait()
        conn.request("GET", "/", headers={"Authorization": bearer(tok)})
        status = conn.getresponse().status
        conn.close()
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=call, args=(t,)) for t in tokens]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        verifier.close()
    assert statuses == [200] * 32
    assert jwks_server.count() == 1


def test_the_verifier_is_started_by_the_first_request(jwks_server: JWKSServer) -> None:
    verifier = make_verifier(jwks_server)
    app = WSGIAuthMiddleware(echo_claims, verifier=verifier)
    try:
        assert jwks_server.count() == 0
        start_response = RecordingStartResponse()
        app({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, start_response)
        assert start_response.statuses == ["401 Unauthorized"]
        assert jwks_server.wait_for_hits(1)
    finally:
        verifier.close()


def test_a_header_that_is_not_latin_1_is_an_invalid_token(verifier: Verifier) -> None:
    app = WSGIAuthMiddleware(echo_claims, verifier=verifier, start=False)
    start_response = RecordingStartResponse()
    body = app(
        {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "HTTP_AUTHORIZATION": "Bearer \u20ac"},
        start_response,
    )
    assert start_response.statuses == ["401 Unauthorized"]
    assert list(body) == [b"Invalid token"]


def test_bad_configuration_fails_at_construction(verifier: Verifier) -> None:
    with pytest.raises(ConfigError):
        WSGIAuthMiddleware(echo_claims, verifier=verifier, realm='bad"realm')
    with pytest.raises(ConfigError):
        WSGIAuthMiddleware(echo_claims, verifier=verifier, exempt_paths=["no-slash"])
    with pytest.raises(ValueError, match="invalid scope"):
        WSGIAuthMiddleware(echo_claims, verifier=verifier, scopes=["two words"])
