"""A bound issuer (IssuerConfig.bind_request) and the ASGI middleware's enforcement, in process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from keyswap.errors import ConfigError, InvalidClaim, UnboundToken
from keyswap.verifier.asgi import JWTAuthMiddleware
from keyswap.verifier.binding import content_digest
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.jwks_server import JWKSServer, running_jwks_server
from tests.support.keys import claims, ec_key, jwks

KEY = ec_key("bound-ec")
ISS = "https://issuer.test"


@pytest.fixture(scope="module")
def server() -> Iterator[JWKSServer]:
    with running_jwks_server() as server:
        server.serve(jwks(KEY))
        yield server


def config(server: JWKSServer, **kw: Any) -> IssuerConfig:
    return IssuerConfig(
        issuer=ISS, jwks_url=server.url, algorithms=("ES256",), bind_request=True, **kw
    )


def bound(**extra: Any) -> str:
    values: dict[str, Any] = {
        "htm": "POST",
        "htu": "http://origin.test/p",
        "jti": "j-" + str(id(extra)),
        "ttl": 30,
    }
    values.update(extra)
    return KEY.sign(claims(**values))


class TestIssuerConfig:
    @pytest.mark.parametrize(
        "kw",
        [
            {"bind_request": 1},
            {"bind_max_body": -1},
            {"bind_max_body": 1.5},
            {"bind_max_lifetime": 0},
            {"bind_max_lifetime": 7200},
        ],
    )
    def test_bad_binding_settings_are_config_errors(self, kw: dict[str, Any]) -> None:
        with pytest.raises(ConfigError):
            IssuerConfig(issuer=ISS, jwks_url="https://issuer.test/jwks", **kw)


class TestVerify:
    def test_a_bound_token_verifies_and_is_never_cached(self, server: JWKSServer) -> None:
        with Verifier(config(server)) as verifier:
            token = bound()
            assert verifier.verify_sync(token)["htm"] == "POST"
            assert verifier.cached(token) is None

    @pytest.mark.parametrize("missing", ["htm", "htu", "jti"])
    def test_a_token_without_a_binding_claim_is_unbound(
        self, server: JWKSServer, missing: str
    ) -> None:
        with Verifier(config(server)) as verifier, pytest.raises(UnboundToken):
            verifier.verify_sync(bound(**{missing: None}))

    def test_a_long_lived_bound_token_is_refused(self, server: JWKSServer) -> None:
        with Verifier(config(server, bind_max_lifetime=60)) as verifier:
            with pytest.raises(InvalidClaim):
                verifier.verify_sync(bound(ttl=3600))
            with pytest.raises(InvalidClaim):
                verifier.verify_sync(bound(iat=None))

    def test_a_lifetime_with_an_out_of_range_iat_is_refused_not_an_overflow(
        self, server: JWKSServer
    ) -> None:
        # exp - iat with a float exp and an integer iat beyond float range would overflow: the
        # claim checks (which refuse such dates) run before the lifetime check.
        with Verifier(config(server)) as verifier, pytest.raises(InvalidClaim):
            verifier.verify_sync(bound(iat=10**400, exp=float(int(time.time()) + 30)))

    def test_a_verifier_of_bound_issuers_only_skips_the_token_cache(
        self, server: JWKSServer
    ) -> None:
        with Verifier(config(server)) as verifier:
            assert not verifier.caches_tokens
            first, second = bound(), bound(jti="other")
            claims_one = verifier.verify_sync(first)
            assert claims_one is not verifier.verify_sync(second)
            claims_one["htm"] = "changed"  # the caller's own dict: nothing else sees it
            assert verifier.verify_sync(first)["htm"] == "POST"  # (replays: the binder's job)
        mixed = [config(server), IssuerConfig(issuer="https://other.test", jwks_url=server.url)]
        with Verifier(mixed) as verifier:
            assert verifier.caches_tokens
        unbound = IssuerConfig(issuer=ISS, jwks_url=server.url, algorithms=("ES256",))
        with Verifier(unbound, token_cache_size=0) as verifier:
            assert not verifier.caches_tokens

    def test_an_unbound_issuer_still_caches_tokens(self, server: JWKSServer) -> None:
        cfg = IssuerConfig(issuer=ISS, jwks_url=server.url, algorithms=("ES256",))
        with Verifier(cfg) as verifier:
            token = KEY.sign(claims())
            verifier.verify_sync(token)
            assert verifier.cached(token) is not None
            assert not verifier.binds_requests


async def call(
    app: Any, method: str, path: str, token: str, body: bytes = b"", chunks: int = 1
) -> tuple[int, bytes, list[bytes]]:
    """Run one request through ``app``; returns (status, response body, bodies the app read)."""
    seen: list[bytes] = []
    size = len(body)
    pieces = [body[i * size // chunks : (i + 1) * size // chunks] for i in range(chunks)]
    inbound = [
        {"type": "http.request", "body": p, "more_body": i < chunks - 1}
        for i, p in enumerate(pieces)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbound.pop(0) if inbound else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "scheme": "http",
        "headers": [
            (b"host", b"origin.test"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"], seen


def inner_app(seen: list[bytes]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        data = b""
        while True:
            message = await receive()
            data += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(data)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


class TestMiddleware:
    def test_the_body_reaches_the_app_once_checked_and_whole(self, server: JWKSServer) -> None:
        seen: list[bytes] = []
        with Verifier(config(server)) as verifier:
            app = JWTAuthMiddleware(inner_app(seen), verifier=verifier)
            token = bound(htd=content_digest(b"abcdef"))
            status, _, _ = asyncio.run(call(app, "POST", "/p", token, b"abcdef", chunks=3))
        assert status == 200
        assert seen == [b"abcdef"]

    def test_a_tampered_body_never_reaches_the_app(self, server: JWKSServer) -> None:
        seen: list[bytes] = []
        with Verifier(config(server)) as verifier:
            app = JWTAuthMiddleware(inner_app(seen), verifier=verifier)
            token = bound(htd=content_digest(b"abcdef"))
            status, body, _ = asyncio.run(call(app, "POST", "/p", token, b"abcdeF"))
        assert status == 401
        assert body == b"Invalid token"
        assert seen == []

    def test_a_body_over_the_limit_is_413_before_the_app(self, server: JWKSServer) -> None:
        seen: list[bytes] = []
        with Verifier(config(server, bind_max_body=4)) as verifier:
            app = JWTAuthMiddleware(inner_app(seen), verifier=verifier)
            token = bound(htd=content_digest(b"abcdef"))
            status, _, _ = asyncio.run(call(app, "POST", "/p", token, b"abcdef", chunks=2))
        assert status == 413
        assert seen == []

    def test_the_full_replay_cache_answers_503(self, server: JWKSServer) -> None:
        from keyswap.verifier.replay import MemoryReplayCache

        with Verifier(config(server)) as verifier:
            app = JWTAuthMiddleware(
                inner_app([]), verifier=verifier, replay_cache=MemoryReplayCache(1)
            )
            assert asyncio.run(call(app, "POST", "/p", bound(jti="a")))[0] == 200
            assert asyncio.run(call(app, "POST", "/p", bound(jti="b")))[0] == 503

    def test_no_token_cache_lookup_when_every_issuer_binds(self, server: JWKSServer) -> None:
        with Verifier(config(server)) as verifier:
            assert JWTAuthMiddleware(inner_app([]), verifier=verifier)._lookup is None
        cfg = IssuerConfig(issuer=ISS, jwks_url=server.url, algorithms=("ES256",))
        with Verifier(cfg) as verifier:
            assert JWTAuthMiddleware(inner_app([]), verifier=verifier)._lookup is not None

    def test_a_replay_is_refused_with_short_and_long_jtis(self, server: JWKSServer) -> None:
        # Short jtis are recorded as issuer + NUL + jti, long ones hashed: both are one-use.
        from keyswap.verifier.replay import MemoryReplayCache

        cache = MemoryReplayCache(10)
        with Verifier(config(server)) as verifier:
            app = JWTAuthMiddleware(inner_app([]), verifier=verifier, replay_cache=cache)
            for jti in ("short", "x" * 65):
                token = bound(jti=jti)
                assert asyncio.run(call(app, "POST", "/p", token))[0] == 200
                assert asyncio.run(call(app, "POST", "/p", token))[0] == 401
        assert len(cache) == 2

    def test_asgi_and_wsgi_sharing_a_memory_cache_share_its_keys(self, server: JWKSServer) -> None:
        from keyswap.errors import ReplayedToken
        from keyswap.verifier.replay import MemoryReplayCache

        cache = MemoryReplayCache(10)
        with Verifier(config(server)) as verifier:
            app = JWTAuthMiddleware(inner_app([]), verifier=verifier, replay_cache=cache)
            token = bound(htu="http://origin.test/p")
            assert asyncio.run(call(app, "POST", "/p", token))[0] == 200
            assert app.binder is not None
            environ = {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": "/p",
                "wsgi.url_scheme": "http",
                "HTTP_HOST": "origin.test",
            }
            with pytest.raises(ReplayedToken):
                app.binder.enforce_wsgi(environ, verifier.verify_sync(token))

    def test_a_bad_token_header_name_is_a_config_error(self, server: JWKSServer) -> None:
        with Verifier(config(server)) as verifier, pytest.raises(ConfigError):
            JWTAuthMiddleware(inner_app([]), verifier=verifier, token_header="x-token")


class TestAdaptersThatDoNotEnforce:
    def test_a_guard_without_binding_checks_refuses_bound_tokens(self, server: JWKSServer) -> None:
        from keyswap.verifier.responses import Guard, Rejection

        with Verifier(config(server)) as verifier:
            result = Guard(verifier).authenticate_sync("Bearer " + bound())
            assert isinstance(result, Rejection)
            assert result.status == 401
            assert result.label == "unbound"
            enforcing = Guard(verifier, enforces_binding=True).authenticate_sync(
                "Bearer " + bound()
            )
            assert isinstance(enforcing, dict)

    def test_a_guard_over_an_unbound_issuer_is_unchanged(self, server: JWKSServer) -> None:
        from keyswap.verifier.responses import Guard

        cfg = IssuerConfig(issuer=ISS, jwks_url=server.url, algorithms=("ES256",))
        with Verifier(cfg) as verifier:
            assert isinstance(Guard(verifier).authenticate_sync("Bearer " + bound()), dict)


def test_a_bound_token_never_opens_a_websocket(server: JWKSServer) -> None:
    opened: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        opened.append(True)

    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        inbound = [{"type": "websocket.connect"}]

        async def receive() -> dict[str, Any]:
            return inbound.pop(0)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        with Verifier(config(server)) as verifier:
            middleware = JWTAuthMiddleware(app, verifier=verifier)
            scope = {
                "type": "websocket",
                "path": "/p",
                "raw_path": b"/p",
                "query_string": b"",
                "scheme": "ws",
                "headers": [
                    (b"host", b"origin.test"),
                    (b"authorization", f"Bearer {bound(htm='GET')}".encode()),
                ],
            }
            await middleware(scope, receive, send)

    asyncio.run(scenario())
    assert opened == []
    assert sent == [{"type": "websocket.close", "code": 1008}]
