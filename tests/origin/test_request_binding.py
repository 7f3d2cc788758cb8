"""Request-bound tokens end to end: gateway -> tampering proxy -> origin, all real servers on 127.0.0.1.

The proxy stands for whatever sits between gateway and origin (a sidecar, a log shipper with a replay
button, a compromised hop): it may change the method, the path, the query or the body of a request, or
send an earlier request again. The origin must refuse each, and let the untouched request through.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from keyswap.gateway.binding import BindPolicy, ReadBody, binding_claims, parse_bind_route
from keyswap.gateway.wellknown import JWKS_PATH
from keyswap.origin.app import create_app
from keyswap.verifier.binding import UNBOUND_BODY, content_digest
from keyswap.verifier.replay import RedisReplayCache
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.asgi_server import ServerThread, bound_socket, free_port, serving
from tests.support.cluster import TcpRelay, redis_prefix
from tests.support.keyswap_process import running_keyswap
from tests.support.running_gateway import Gateway, running_gateway
from tests.support.tamper import Tamper, TamperingProxy, replay, serve_proxy

MAX_BODY = 4096


@dataclass
class Chain:
    gateway: Gateway
    proxy: TamperingProxy
    proxy_server: ServerThread
    origin: ServerThread
    origin_url: str

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.gateway.key}"}
        return httpx.request(method, self.gateway.url + path, headers=headers, timeout=10, **kw)


def origin_config(gateway: Gateway, **extra: Any) -> IssuerConfig:
    return IssuerConfig(
        issuer=gateway.app.settings.issuer,
        jwks_url=gateway.url + JWKS_PATH,
        algorithms=("ES256", "EdDSA", "RS256"),
        audience=gateway.app.settings.audience,
        bind_request=True,
        bind_max_body=MAX_BODY,
        **extra,
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    origin_sock = bound_socket()
    origin_url = f"http://127.0.0.1:{origin_sock.getsockname()[1]}"
    proxy, proxy_server = serve_proxy(origin_url)
    bind = BindPolicy(
        (parse_bind_route("POST:/upload:unbound-body"),), bind_all=True, max_body=MAX_BODY
    )
    try:
        with running_gateway(
            tmp_path_factory.mktemp("gw"), proxy_server.url, real_clock=True, bind=bind
        ) as gateway:
            verifier = Verifier(origin_config(gateway))
            # The origin sits behind the proxy: it states the URL the gateway reaches it by.
            app = create_app(verifier, public_url=proxy_server.url)
            origin = ServerThread(app, sock=origin_sock).start()
            try:
                yield Chain(gateway, proxy, proxy_server, origin, origin_url)
            finally:
                origin.stop()
    finally:
        proxy_server.stop()


@pytest.fixture(autouse=True)
def _untampered(chain: Chain) -> Iterator[None]:
    chain.proxy.tamper = Tamper()
    yield
    chain.proxy.tamper = Tamper()


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    # The reason stays in the logs: the client learns nothing about what was checked.
    assert "method" not in challenge
    assert "digest" not in challenge


class TestUntouched:
    def test_a_get_with_a_query_passes_with_its_binding_claims(self, chain: Chain) -> None:
        response = chain.call("GET", "/items/1?a=1&b=two")
        assert response.status_code == 200, response.text
        claims = response.json()
        assert claims["htm"] == "GET"
        assert claims["htu"] == chain.proxy_server.url + "/items/1"
        assert "htq" in claims
        assert "htd" not in claims
        assert claims["exp"] - claims["iat"] == 30

    def test_a_post_passes_with_its_body_digest_also_sent_as_content_digest(
        self, chain: Chain
    ) -> None:
        response = chain.call("POST", "/items", content=b'{"n": 1}')
        assert response.status_code == 200, response.text
        assert response.json()["htd"] == content_digest(b'{"n": 1}')
        assert chain.proxy.last is not None
        headers = dict(chain.proxy.last.headers)
        assert headers[b"content-digest"] == content_digest(b'{"n": 1}').encode()

    def test_every_request_gets_its_own_token(self, chain: Chain) -> None:
        first = chain.call("GET", "/same").json()
        second = chain.call("GET", "/same").json()
        assert first["jti"] != second["jti"]


class TestTampered:
    def test_a_changed_method_is_refused(self, chain: Chain) -> None:
        chain.proxy.tamper = Tamper(method="DELETE")
        assert_refused(chain.call("GET", "/items/1"))

    def test_a_changed_path_is_refused(self, chain: Chain) -> None:
        chain.proxy.tamper = Tamper(path="/items/2")
        assert_refused(chain.call("GET", "/items/1"))

    def test_a_changed_query_is_refused(self, chain: Chain) -> None:
        chain.proxy.tamper = Tamper(query=b"a=1&admin=1")
        assert_refused(chain.call("GET", "/items?a=1"))

    def test_an_added_query_is_refused(self, chain: Chain) -> None:
        chain.proxy.tamper = Tamper(query=b"admin=1")
        assert_refused(chain.call("GET", "/items"))

    def test_a_changed_body_is_refused_even_with_a_fresh_content_digest(self, chain: Chain) -> None:
        chain.proxy.tamper = Tamper(body=b'{"amount": 1000000}')
        assert_refused(chain.call("POST", "/pay", content=b'{"amount": 1}'))

    def test_a_body_added_to_a_bodiless_request_is_refused(self, chain: Chain) -> None:
        chain.proxy.tamper = Tamper(body=b"smuggled", method="POST")
        assert_refused(chain.call("POST", "/items"))

    def test_a_replay_of_an_accepted_request_is_refused(self, chain: Chain) -> None:
        assert chain.call("POST", "/pay", content=b'{"amount": 5}').status_code == 200
        captured = chain.proxy.last
        assert captured is not None
        assert_refused(replay(chain.origin_url, captured))

    def test_a_cached_unbound_token_of_the_same_issuer_is_refused(self, chain: Chain) -> None:
        token = chain.gateway.app.minter.token_for(
            chain.gateway.admin.authenticate(chain.gateway.key, chain.gateway.clock())
        ).token
        response = httpx.get(
            chain.origin_url + "/x", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert_refused(response)


class TestLargeBodies:
    def test_a_body_over_the_limit_is_refused_by_the_gateway(self, chain: Chain) -> None:
        chain.proxy.last = None
        response = chain.call("POST", "/items", content=b"x" * (MAX_BODY + 1))
        assert response.status_code == 413
        assert chain.proxy.last is None  # nothing was forwarded

    def test_a_chunked_body_over_the_limit_is_refused_too(self, chain: Chain) -> None:
        def chunks() -> Iterator[bytes]:
            for _ in range(5):
                yield b"y" * 1000

        response = chain.call("POST", "/items", content=chunks())
        assert response.status_code == 413

    def test_an_opted_out_route_forwards_it_unbound_and_the_token_says_so(
        self, chain: Chain
    ) -> None:
        body = b"z" * (MAX_BODY * 3)
        response = chain.call("POST", "/upload/big", content=body)
        assert response.status_code == 200, response.text
        assert response.json()["htd"] == UNBOUND_BODY
        assert chain.proxy.last is not None
        assert chain.proxy.last.body == body

    def test_a_small_body_on_an_opted_out_route_is_still_bound(self, chain: Chain) -> None:
        response = chain.call("POST", "/upload/small", content=b"tiny")
        assert response.status_code == 200
        assert response.json()["htd"] == content_digest(b"tiny")
        chain.proxy.tamper = Tamper(body=b"TINY")
        assert_refused(chain.call("POST", "/upload/small", content=b"tiny"))


def test_an_origin_that_refuses_unbound_bodies_refuses_the_opt_out(
    chain: Chain, tmp_path: Path
) -> None:
    verifier = Verifier(origin_config(chain.gateway))
    app = create_app(verifier, public_url=chain.proxy_server.url)
    app.binder.allow_unbound_body = False  # type: ignore[attr-defined]
    strict = ServerThread(app).start()
    try:
        target = chain.proxy.target
        chain.proxy.target = strict.url
        try:
            response = chain.call("POST", "/upload/big", content=b"z" * (MAX_BODY * 2))
        finally:
            chain.proxy.target = target
        assert_refused(response)
    finally:
        strict.stop()


def origin_args(chain: Chain, *extra: str) -> list[str]:
    settings = chain.gateway.app.settings
    return [
        "origin",
        "--jwks-url",
        chain.gateway.url + JWKS_PATH,
        "--issuer",
        settings.issuer,
        "--audience",
        settings.audience,
        "--bind-request",
        "--bind-max-body",
        str(MAX_BODY),
        "--public-url",
        chain.proxy_server.url,
        *extra,
    ]


@contextmanager
def proxy_to(chain: Chain, url: str) -> Iterator[None]:
    target, chain.proxy.target = chain.proxy.target, url
    try:
        yield
    finally:
        chain.proxy.target = target


@pytest.mark.slow
@pytest.mark.redis
def test_keyswap_origin_processes_sharing_redis_refuse_a_replay_to_another_process(
    chain: Chain,
) -> None:
    with redis_prefix() as (url, prefix):
        shared = ["--replay-redis-url", url, "--replay-redis-prefix", prefix + ":"]
        one_port, two_port = free_port(), free_port()
        with (
            running_keyswap(
                [*origin_args(chain, *shared), "--port", str(one_port)],
                port=one_port,
                ready_path="/__keyswap/health",
            ) as one,
            running_keyswap(
                [*origin_args(chain, *shared), "--port", str(two_port)],
                port=two_port,
                ready_path="/__keyswap/health",
            ) as two,
        ):
            with proxy_to(chain, one.url):
                accepted = chain.call("PUT", "/items/7?v=1", content=b"seven")
                assert accepted.status_code == 200, accepted.text + one.log()
                captured = chain.proxy.last
                assert captured is not None
                chain.proxy.tamper = Tamper(query=b"v=2")
                assert_refused(chain.call("PUT", "/items/7?v=1", content=b"seven"))
            assert_refused(replay(two.url, captured))
            assert_refused(replay(one.url, captured))
            assert "replayed" in two.log() or "rejected" in two.log()


@pytest.mark.redis
def test_with_redis_hanging_bound_requests_get_503_and_pass_again_once_it_is_back(
    chain: Chain,
) -> None:
    with redis_prefix() as (url, prefix):
        target = urlsplit(url)
        with TcpRelay(target.hostname or "127.0.0.1", target.port or 6379) as relay:
            cache = RedisReplayCache(
                f"redis://127.0.0.1:{relay.port}", prefix=prefix + ":", timeout=0.2
            )
            app = create_app(
                Verifier(origin_config(chain.gateway)),
                public_url=chain.proxy_server.url,
                replay_cache=cache,
            )
            with serving(app) as origin, proxy_to(chain, origin.url):
                assert chain.call("GET", "/a").status_code == 200
                relay.freeze()
                try:
                    down = chain.call("GET", "/a")
                finally:
                    relay.thaw()
                assert down.status_code == 503
                assert down.headers["retry-after"] == "2"
                assert chain.call("GET", "/a").status_code == 200


@pytest.fixture(scope="module")
def flask_origin(chain: Chain) -> Iterator[str]:
    from flask import Flask, request
    from werkzeug.serving import make_server

    from keyswap.verifier.flask import KeyswapFlask, get_claims

    app = Flask("bound")
    verifier = Verifier(origin_config(chain.gateway))
    KeyswapFlask(app, verifier=verifier, public_url=chain.proxy_server.url)

    @app.route("/<path:rest>", methods=["GET", "POST", "PUT", "DELETE"])
    def echo(rest: str) -> dict[str, Any]:
        return {"claims": get_claims(), "body": request.get_data().decode()}

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        verifier.close()


class TestFlask:
    def test_the_untouched_request_reaches_the_view_with_its_body(
        self, chain: Chain, flask_origin: str
    ) -> None:
        with proxy_to(chain, flask_origin):
            response = chain.call("POST", "/orders?x=1", content=b"order")
        assert response.status_code == 200, response.text
        assert response.json()["body"] == "order"
        assert response.json()["claims"]["htm"] == "POST"

    @pytest.mark.parametrize(
        "tamper",
        [Tamper(method="PUT"), Tamper(path="/refunds"), Tamper(query=b"x=2"), Tamper(body=b"o")],
        ids=["method", "path", "query", "body"],
    )
    def test_a_tampered_request_is_refused(
        self, chain: Chain, flask_origin: str, tamper: Tamper
    ) -> None:
        with proxy_to(chain, flask_origin):
            chain.proxy.tamper = tamper
            assert_refused(chain.call("POST", "/orders?x=1", content=b"order"))

    def test_a_replay_is_refused(self, chain: Chain, flask_origin: str) -> None:
        with proxy_to(chain, flask_origin):
            assert chain.call("DELETE", "/orders/1").status_code == 200
        assert chain.proxy.last is not None
        assert_refused(replay(flask_origin, chain.proxy.last))

    def test_a_bound_body_over_the_origin_limit_is_413(
        self, chain: Chain, flask_origin: str
    ) -> None:
        body = b"x" * (MAX_BODY + 1)
        token = bound_token(chain, "POST", "/big", body)
        response = httpx.post(
            flask_origin + "/big", content=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 413


def bound_token(chain: Chain, method: str, path: str, body: bytes) -> str:
    """A token bound to ``method path`` with ``body`` (signed by the gateway, limits not applied)."""
    gateway = chain.gateway
    principal = gateway.admin.authenticate(gateway.key, gateway.clock())
    proxy = urlsplit(chain.proxy_server.url)
    binding = binding_claims(
        method=method,
        scheme="http",
        authority=proxy.netloc,
        path=path,
        query=b"",
        body=ReadBody(body, True),
        max_body=len(body),
    )
    token, _ = gateway.app.minter.mint_per_request(principal, binding, ttl=30)
    return token


def test_a_bound_body_over_the_keyswap_origin_limit_is_413(chain: Chain) -> None:
    body = b"x" * (MAX_BODY + 1)
    token = bound_token(chain, "POST", "/big", body)
    response = httpx.post(
        chain.origin_url + "/big", content=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 413
    token = bound_token(chain, "POST", "/big", b"ok")
    response = httpx.post(
        chain.origin_url + "/big", content=b"ok", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200


@pytest.fixture(scope="module")
def wsgi_origin(chain: Chain) -> Iterator[str]:
    from werkzeug.serving import make_server

    from keyswap.verifier.wsgi import WSGIAuthMiddleware, get_claims

    def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        claims = get_claims(environ) or {}
        data = json.dumps({"body": body.decode(), "htm": claims.get("htm")}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]

    verifier = Verifier(origin_config(chain.gateway))
    app = WSGIAuthMiddleware(echo, verifier=verifier, public_url=chain.proxy_server.url)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        verifier.close()


class TestWSGI:
    def test_the_untouched_request_reaches_the_app_with_its_body(
        self, chain: Chain, wsgi_origin: str
    ) -> None:
        with proxy_to(chain, wsgi_origin):
            response = chain.call("PUT", "/things/1?v=2", content=b"thing")
        assert response.status_code == 200, response.text
        assert response.json() == {"body": "thing", "htm": "PUT"}

    @pytest.mark.parametrize(
        "tamper",
        [Tamper(method="POST"), Tamper(path="/things/2"), Tamper(query=b"v=3"), Tamper(body=b"x")],
        ids=["method", "path", "query", "body"],
    )
    def test_a_tampered_request_is_refused(
        self, chain: Chain, wsgi_origin: str, tamper: Tamper
    ) -> None:
        with proxy_to(chain, wsgi_origin):
            chain.proxy.tamper = tamper
            assert_refused(chain.call("PUT", "/things/1?v=2", content=b"thing"))

    def test_a_replay_is_refused(self, chain: Chain, wsgi_origin: str) -> None:
        with proxy_to(chain, wsgi_origin):
            assert chain.call("GET", "/things").status_code == 200
        assert chain.proxy.last is not None
        assert_refused(replay(wsgi_origin, chain.proxy.last))


def test_a_client_supplied_txn_token_or_content_digest_never_reaches_the_origin(
    chain: Chain,
) -> None:
    response = httpx.post(
        chain.gateway.url + "/items",
        content=b"real",
        headers={
            "Authorization": f"Bearer {chain.gateway.key}",
            "Txn-Token": "forged.token.here",
            "Content-Digest": "sha-256=:AAAA:",
        },
        timeout=10,
    )
    assert response.status_code == 200
    assert chain.proxy.last is not None
    forwarded = dict(chain.proxy.last.headers)
    assert b"txn-token" not in forwarded
    assert forwarded[b"content-digest"] == content_digest(b"real").encode()
