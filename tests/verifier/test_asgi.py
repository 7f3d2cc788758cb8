from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyswap.errors import (
    BadSignature,
    ConfigError,
    ExpiredToken,
    InsufficientScope,
    InvalidAudience,
    InvalidClaim,
    InvalidIssuer,
    JWKSFetchError,
    KeysUnavailable,
    MalformedToken,
    TokenNotYetValid,
    UnknownKey,
    UnsupportedAlgorithm,
)
from keyswap.verifier.asgi import (
    MAX_DESCRIPTION_LENGTH,
    JWTAuthMiddleware,
    Receive,
    Scope,
    Send,
    sanitize_description,
)
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.asgi import (
    call_http,
    call_websocket,
    http_scope,
    run_lifespan,
    running_uvicorn,
)
from tests.support.jwks_server import JWKSServer
from tests.support.keys import b64u, claims, jwks, rsa_key

GOOD = "header.payload.signature"
CLAIMS = {"sub": "consumer-1", "iss": "https://issuer.test", "scope": "read"}


class TableVerifier:
    """A verifier-shaped fake for failure injection: each token maps to claims or an exception."""

    def __init__(self, outcomes: dict[str, dict[str, Any] | BaseException] | None = None) -> None:
        self.outcomes: dict[str, dict[str, Any] | BaseException] = {GOOD: CLAIMS}
        self.outcomes.update(outcomes or {})
        self.seen: list[str] = []

    async def verify(self, token: str) -> dict[str, Any]:
        self.seen.append(token)
        outcome = self.outcomes.get(token, BadSignature("signature does not verify"))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class RecordingApp:
    """The protected app: records the scopes it sees and answers 200 ``ok``."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def make(
    **outcomes: dict[str, Any] | BaseException,
) -> tuple[JWTAuthMiddleware, RecordingApp, TableVerifier]:
    app = RecordingApp()
    verifier = TableVerifier(dict(outcomes))
    return JWTAuthMiddleware(app, verifier=verifier), app, verifier


class TestValidToken:
    async def test_a_valid_token_reaches_the_app_with_the_claims_on_the_scope(self) -> None:
        mw, app, verifier = make()
        sent = await call_http(mw, headers=bearer(GOOD))
        assert (sent.status, sent.body) == (200, b"ok")
        assert verifier.seen == [GOOD]
        (scope,) = app.scopes
        assert scope["keyswap.claims"] == CLAIMS
        assert scope["state"]["claims"] == CLAIMS

    async def test_the_claims_are_added_to_existing_state_and_created_when_absent(self) -> None:
        mw, app, _ = make()
        sent = await call_http(
            mw,
            scope={"type": "http", "path": "/", "method": "GET", "headers": bearer(GOOD)},
        )
        assert sent.status == 200
        assert app.scopes[0]["state"] == {"claims": CLAIMS}
        scope = http_scope(headers=bearer(GOOD))
        scope["state"] = {"db": "pool"}
        await call_http(mw, scope=scope)
        assert app.scopes[1]["state"] == {"db": "pool", "claims": CLAIMS}

    async def test_starlette_sees_the_claims_as_request_state_claims(self) -> None:
        async def whoami(request: Request) -> JSONResponse:
            return JSONResponse({"sub": request.state.claims["sub"]})

        app = JWTAuthMiddleware(
            Starlette(routes=[Route("/whoami", whoami)]), verifier=TableVerifier()
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ok = await client.get("/whoami", headers={"Authorization": f"Bearer {GOOD}"})
            missing = await client.get("/whoami")
        assert ok.json() == {"sub": "consumer-1"}
        assert missing.status_code == 401

    async def test_fastapi_add_middleware_as_in_the_docs_gives_request_state_claims(self) -> None:
        from fastapi import FastAPI

        app = FastAPI()
        app.add_middleware(JWTAuthMiddleware, verifier=TableVerifier(), exempt_paths=["/health"])

        @app.get("/whoami")
        async def whoami(request: Request) -> dict[str, Any]:
            return {"consumer": request.state.claims["sub"]}

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ok = await client.get("/whoami", headers={"Authorization": f"Bearer {GOOD}"})
            healthy = await client.get("/health")
            bad = await client.get("/whoami", headers={"Authorization": "Bearer nope"})
        assert ok.json() == {"consumer": "consumer-1"}
        assert healthy.json() == {"status": "ok"}
        assert (bad.status_code, bad.text) == (401, "Invalid token")

    async def test_exceptions_from_the_wrapped_app_are_not_swallowed(self) -> None:
        async def broken(scope: Scope, receive: Receive, send: Send) -> None:
            raise ValueError("app bug")

        mw = JWTAuthMiddleware(broken, verifier=TableVerifier())
        with pytest.raises(ValueError, match="app bug"):
            await call_http(mw, headers=bearer(GOOD))


class TestMissingToken:
    @pytest.mark.parametrize(
        "headers", [[], [(b"authorization", b"Basic dXNlcjpwYXNz")]], ids=["none", "basic"]
    )
    async def test_no_bearer_token_is_a_401_challenge_without_an_error(
        self, headers: list[tuple[bytes, bytes]]
    ) -> None:
        mw, app, verifier = make()
        sent = await call_http(mw, headers=headers)
        assert sent.status == 401
        assert sent.body == b"No token provided"
        assert sent.header("www-authenticate") == 'Bearer realm="keyswap"'
        assert sent.header("content-type") == "text/plain; charset=utf-8"
        assert sent.header("content-length") == str(len(b"No token provided"))
        assert app.scopes == []
        assert verifier.seen == []

    async def test_the_realm_is_configurable(self) -> None:
        mw = JWTAuthMiddleware(RecordingApp(), verifier=TableVerifier(), realm="orders api")
        sent = await call_http(mw)
        assert sent.header("www-authenticate") == 'Bearer realm="orders api"'


class TestInvalidToken:
    @pytest.mark.parametrize(
        "error",
        [
            MalformedToken("token is not three base64url segments"),
            UnsupportedAlgorithm("algorithm HS256 is not allowed"),
            UnknownKey("no key with this kid"),
            BadSignature("signature does not verify"),
            ExpiredToken("token expired 12 s ago"),
            TokenNotYetValid("token not valid for another 40 s"),
            InvalidIssuer("issuer is not accepted"),
            InvalidAudience("audience is not accepted"),
            InvalidClaim("claim sub is missing"),
        ],
        ids=lambda e: type(e).__name__,
    )
    async def test_every_bad_token_is_a_401_invalid_token_with_its_description(
        self, error: Exception
    ) -> None:
        mw, app, _ = make(bad=error)
        sent = await call_http(mw, headers=bearer("bad"))
        assert sent.status == 401
        assert sent.body == b"Invalid token"
        assert sent.header("www-authenticate") == (
            f'Bearer realm="keyswap", error="invalid_token", error_description="{error}"'
        )
        assert app.scopes == []

    async def test_a_malformed_authorization_header_is_rejected_before_the_verifier(self) -> None:
        mw, _, verifier = make()
        sent = await call_http(mw, headers=[(b"authorization", b"Bearer  two-spaces")])
        assert sent.status == 401
        assert sent.body == b"Invalid token"
        assert sent.header("www-authenticate") == (
            'Bearer realm="keyswap", error="invalid_token", '
            'error_description="more than one space after Bearer"'
        )
        assert verifier.seen == []

    async def test_two_authorization_headers_are_an_invalid_token(self) -> None:
        mw, _, _ = make()
        sent = await call_http(mw, headers=bearer(GOOD) + bearer(GOOD))
        assert (sent.status, sent.body) == (401, b"Invalid token")

    async def test_an_oversized_header_is_rejected_without_calling_the_verifier(self) -> None:
        verifier = TableVerifier()
        mw = JWTAuthMiddleware(RecordingApp(), verifier=verifier, max_token_size=64)
        sent = await call_http(mw, headers=bearer("a" * 65))
        assert sent.status == 401
        assert "longer than 64 bytes" in (sent.header("www-authenticate") or "")
        assert verifier.seen == []

    async def test_the_description_is_sanitised_to_the_rfc_6750_character_set(self) -> None:
        reason = 'kid "k\\1"\r\nSet-Cookie: x=1\x00 — naïve\ttab'
        mw, _, _ = make(bad=BadSignature(reason))
        sent = await call_http(mw, headers=bearer("bad"))
        header = sent.header("www-authenticate")
        assert header == (
            'Bearer realm="keyswap", error="invalid_token", '
            "error_description=\"kid 'k/1' Set-Cookie: x=1 na ve tab\""
        )

    async def test_a_long_description_is_cut_to_the_limit(self) -> None:
        mw, _, _ = make(bad=BadSignature("x" * 5000))
        sent = await call_http(mw, headers=bearer("bad"))
        header = sent.header("www-authenticate") or ""
        description = header.split('error_description="', 1)[1].rstrip('"')
        assert len(description) == MAX_DESCRIPTION_LENGTH
        assert description.endswith("...")

    async def test_descriptions_can_be_turned_off(self) -> None:
        mw = JWTAuthMiddleware(
            RecordingApp(),
            verifier=TableVerifier({"bad": ExpiredToken("expired")}),
            error_descriptions=False,
        )
        sent = await call_http(mw, headers=bearer("bad"))
        assert sent.header("www-authenticate") == 'Bearer realm="keyswap", error="invalid_token"'

    async def test_an_unexpected_verifier_exception_is_logged_without_the_token_and_is_a_401(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        token = "secret-header.secret-payload.secret-signature"
        mw, _, _ = make(**{token: RuntimeError(f"bug while handling {token}")})
        with caplog.at_level(logging.INFO, logger="keyswap.verifier.asgi"):
            sent = await call_http(mw, headers=bearer(token))
        assert sent.status == 401
        assert sent.body == b"Invalid token"
        assert sent.header("www-authenticate") == (
            'Bearer realm="keyswap", error="invalid_token", '
            'error_description="the token could not be verified"'
        )
        assert "RuntimeError" in caplog.text
        assert "secret" not in caplog.text

    async def test_a_rejection_is_logged_with_its_reason_label_and_never_the_token(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        token = "aaaa.bbbbbbbbbbbb.cccccccccccc"
        mw, _, _ = make(**{token: ExpiredToken("token expired 3 s ago")})
        with caplog.at_level(logging.INFO, logger="keyswap.verifier.asgi"):
            await call_http(mw, "/orders", headers=bearer(token))
        (record,) = caplog.records
        assert record.getMessage() == "rejected GET '/orders': expired 401 token expired 3 s ago"
        assert "bbbbbbbbbbbb" not in caplog.text


class TestScopeAndAvailability:
    async def test_insufficient_scope_is_a_403_naming_the_scope(self) -> None:
        mw, _, _ = make(weak=InsufficientScope("needs orders:write", scope="orders:write admin"))
        sent = await call_http(mw, headers=bearer("weak"))
        assert sent.status == 403
        assert sent.body == b"Insufficient scope"
        assert sent.header("www-authenticate") == (
            'Bearer realm="keyswap", error="insufficient_scope", scope="orders:write admin", '
            'error_description="needs orders:write"'
        )

    async def test_keys_unavailable_is_a_503_with_retry_after_and_no_challenge(self) -> None:
        mw, _, _ = make(down=KeysUnavailable("JWKS unreachable", retry_after=7))
        sent = await call_http(mw, headers=bearer("down"))
        assert sent.status == 503
        assert sent.header("retry-after") == "7"
        assert sent.header("www-authenticate") is None
        assert sent.body == b"Signing keys temporarily unavailable"

    async def test_a_jwks_fetch_error_leaking_from_the_verifier_is_also_a_503(self) -> None:
        mw, _, _ = make(down=JWKSFetchError("connection refused"))
        sent = await call_http(mw, headers=bearer("down"))
        assert (sent.status, sent.header("retry-after")) == (503, "5")


class TestScopesAndConfiguration:
    async def test_lifespan_passes_through_untouched(self) -> None:
        mw, app, verifier = make()
        sent = await run_lifespan(mw)
        assert [m["type"] for m in sent] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        assert app.scopes[0]["type"] == "lifespan"
        assert verifier.seen == []

    @pytest.mark.parametrize(
        ("path", "exempt"),
        [
            ("/health", True),
            ("/health/", False),
            ("/healthz", False),
            ("/public/", True),
            ("/public/a/b.css", True),
            ("/public/.well-known/x", True),
            ("/public", False),
            ("/public/../admin", False),
            ("/public/./admin", False),
            ("/private", False),
        ],
    )
    async def test_exempt_paths_match_exactly_or_by_trailing_star_prefix(
        self, path: str, exempt: bool
    ) -> None:
        app = RecordingApp()
        mw = JWTAuthMiddleware(app, verifier=TableVerifier(), exempt_paths=["/health", "/public/*"])
        sent = await call_http(mw, path)
        assert sent.status == (200 if exempt else 401)
        if exempt:
            assert "keyswap.claims" not in app.scopes[0]

    @pytest.mark.parametrize("path", ["health", "/a*/b", "", "*"])
    def test_a_bad_exempt_path_is_refused_at_construction(self, path: str) -> None:
        with pytest.raises(ConfigError, match="exempt path"):
            JWTAuthMiddleware(RecordingApp(), verifier=TableVerifier(), exempt_paths=[path])

    @pytest.mark.parametrize("realm", ["", 'a"b', "a\\b", "caf\u00e9", "a\nb"])
    def test_a_realm_that_cannot_be_quoted_is_refused_at_construction(self, realm: str) -> None:
        with pytest.raises(ConfigError, match="realm"):
            JWTAuthMiddleware(RecordingApp(), verifier=TableVerifier(), realm=realm)


class TestWebsocket:
    async def test_a_websocket_with_a_valid_token_is_accepted_by_the_app(self) -> None:
        mw, app, _ = make()
        sent = await call_websocket(mw, headers=bearer(GOOD))
        assert sent.messages[0] == {"type": "websocket.accept"}
        assert app.scopes[0]["keyswap.claims"] == CLAIMS

    async def test_a_refused_websocket_gets_an_http_401_when_the_server_supports_it(self) -> None:
        mw, app, _ = make()
        sent = await call_websocket(mw, extensions={"websocket.http.response": {}})
        assert [m["type"] for m in sent.messages] == [
            "websocket.http.response.start",
            "websocket.http.response.body",
        ]
        assert sent.status == 401
        assert sent.header("www-authenticate") == 'Bearer realm="keyswap"'
        assert sent.body == b"No token provided"
        assert app.scopes == []

    async def test_a_refused_websocket_is_closed_with_1008_otherwise(self) -> None:
        mw, _, _ = make()
        sent = await call_websocket(mw, headers=bearer("bad"))
        assert sent.messages == [{"type": "websocket.close", "code": 1008}]

    async def test_a_websocket_client_gone_before_connect_gets_nothing(self) -> None:
        mw, _, _ = make()
        sent = await call_websocket(mw, first={"type": "websocket.disconnect", "code": 1001})
        assert sent.messages == []


def test_sanitize_description_keeps_allowed_characters_and_drops_the_rest() -> None:
    allowed = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')
    assert sanitize_description(allowed, limit=1000) == allowed.strip()
    assert sanitize_description("\u2028\x7f\x1b[31m  a  \n b") == "[31m a b"
    assert sanitize_description("") == ""


ERRORS = st.sampled_from(
    [
        BadSignature("x"),
        MalformedToken('"\\'),
        InsufficientScope("s", scope='a"\\b'),
        KeysUnavailable("down", retry_after=0),
        JWKSFetchError("down"),
        RuntimeError("boom"),
        KeyError("k"),
        RecursionError(),
        ValueError("\x00"),
    ]
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.binary(max_size=200), max_size=3),
    error=ERRORS,
    descriptions=st.booleans(),
)
async def test_any_header_bytes_and_any_verifier_failure_give_401_403_or_503(
    values: list[bytes], error: Exception, descriptions: bool
) -> None:
    class Failing:
        async def verify(self, token: str) -> dict[str, Any]:
            raise error

    mw = JWTAuthMiddleware(RecordingApp(), verifier=Failing(), error_descriptions=descriptions)
    sent = await call_http(mw, headers=[(b"authorization", v) for v in values])
    assert sent.status in (401, 403, 503)
    for _, value in sent.headers:
        assert all(0x20 <= b < 0x7F for b in value)


@pytest.fixture(scope="module")
def real_server() -> Iterator[str]:
    verifier = TableVerifier(
        {
            "expired": ExpiredToken("token expired"),
            "down": KeysUnavailable("JWKS unreachable", retry_after=3),
            "weak": InsufficientScope("needs write", scope="write"),
        }
    )
    mw = JWTAuthMiddleware(RecordingApp(), verifier=verifier, exempt_paths=["/health"])
    with running_uvicorn(mw) as base:
        yield base


class TestThroughRealUvicorn:
    """The same rules through uvicorn (uvloop + httptools) on 127.0.0.1."""

    @pytest.fixture(autouse=True)
    def _base(self, real_server: str) -> None:
        self.base = real_server

    def get(self, path: str = "/", headers: Any = None) -> httpx.Response:
        return httpx.get(self.base + path, headers=headers, timeout=5)

    def test_a_valid_token_is_served(self) -> None:
        response = self.get(headers={"Authorization": f"Bearer {GOOD}"})
        assert (response.status_code, response.text) == (200, "ok")

    def test_no_token_is_a_401_challenge(self) -> None:
        response = self.get()
        assert response.status_code == 401
        assert response.text == "No token provided"
        assert response.headers["www-authenticate"] == 'Bearer realm="keyswap"'

    def test_an_expired_token_is_a_401_invalid_token(self) -> None:
        response = self.get(headers={"Authorization": "bearer expired"})
        assert response.status_code == 401
        assert response.text == "Invalid token"
        assert response.headers["www-authenticate"] == (
            'Bearer realm="keyswap", error="invalid_token", error_description="token expired"'
        )

    def test_duplicate_and_non_ascii_authorization_headers_are_401s(self) -> None:
        dup = self.get(headers=[("Authorization", f"Bearer {GOOD}")] * 2)
        latin = self.get(headers=[(b"Authorization", b"Bearer \xff\xfe")])
        assert (dup.status_code, dup.text) == (401, "Invalid token")
        assert (latin.status_code, latin.text) == (401, "Invalid token")

    def test_unavailable_keys_are_a_503_with_retry_after(self) -> None:
        response = self.get(headers={"Authorization": "Bearer down"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "3"

    def test_insufficient_scope_is_a_403(self) -> None:
        response = self.get(headers={"Authorization": "Bearer weak"})
        assert response.status_code == 403
        assert 'scope="write"' in response.headers["www-authenticate"]

    def test_an_exempt_path_is_served_without_a_token(self) -> None:
        assert self.get("/health").status_code == 200

    def test_a_websocket_without_a_token_gets_a_real_401(self) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        url = self.base.replace("http://", "ws://") + "/ws"
        with pytest.raises(InvalidStatus) as info:
            connect(url, open_timeout=5)
        assert info.value.response.status_code == 401
        assert info.value.response.headers["WWW-Authenticate"] == 'Bearer realm="keyswap"'
        with connect(url, additional_headers={"Authorization": f"Bearer {GOOD}"}) as ws:
            assert ws.response is not None
            assert ws.response.status_code == 101


# -- the middleware in front of the real Verifier and a real JWKS server --------------------------

ISSUER = "https://gateway.test/__keyswap/issuer"
AUDIENCE = "https://api.test"
REAL_KEY = rsa_key("asgi-rsa")


@pytest.fixture
async def real_verifier(jwks_server: JWKSServer) -> AsyncIterator[Verifier]:
    jwks_server.serve(jwks(REAL_KEY))
    verifier = Verifier(
        IssuerConfig(
            issuer=ISSUER,
            jwks_url=jwks_server.url,
            audience=AUDIENCE,
            algorithms=("RS256", "ES256"),
            jwks_cooldown=1,
        )
    )
    verifier.start()
    try:
        yield verifier
    finally:
        verifier.close()


def real_token(**overrides: Any) -> str:
    return REAL_KEY.sign(claims(iss=ISSUER, aud=AUDIENCE, **overrides))


_SAMPLE_TOKEN = real_token(ttl=10 * 365 * 86400)


def _mutate(token: str, index: int, char: str) -> str:
    index %= len(token)
    return token[:index] + char + token[index + 1 :]


_B64URL = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60
)
AUTH_VALUES = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: b"Bearer " + b),
    st.lists(_B64URL, min_size=1, max_size=6).map(
        lambda parts: ("Bearer " + ".".join(parts)).encode()
    ),
    st.tuples(st.integers(0, 2000), st.characters(codec="latin-1")).map(
        lambda edit: ("Bearer " + _mutate(_SAMPLE_TOKEN, *edit)).encode("latin-1")
    ),
)


class TestWithTheRealVerifier:
    async def test_a_valid_token_reaches_the_app_and_is_then_served_from_the_token_cache(
        self, real_verifier: Verifier
    ) -> None:
        app = RecordingApp()
        mw = JWTAuthMiddleware(app, verifier=real_verifier)
        token = real_token(plan="gold")
        for _ in range(3):
            sent = await call_http(mw, headers=bearer(token))
            assert sent.status == 200
        assert app.scopes[0]["keyswap.claims"]["plan"] == "gold"
        assert real_verifier.metrics.get("token_cache_hits") == 2

    async def test_a_warm_request_is_answered_from_the_cache_without_awaiting_verify(
        self, jwks_server: JWKSServer
    ) -> None:
        jwks_server.serve(jwks(REAL_KEY))
        now = [time.time()]

        class CountingVerifier(Verifier):
            awaited = 0

            async def verify(self, token: str) -> dict[str, Any]:
                CountingVerifier.awaited += 1
                return await super().verify(token)

        verifier = CountingVerifier(
            IssuerConfig(issuer=ISSUER, jwks_url=jwks_server.url, audience=AUDIENCE),
            clock=lambda: now[0],
        )
        verifier.start()
        try:
            app = RecordingApp()
            mw = JWTAuthMiddleware(app, verifier=verifier)
            token = real_token(ttl=60, now=int(now[0]))
            for _ in range(3):
                assert (await call_http(mw, headers=bearer(token))).status == 200
            assert CountingVerifier.awaited == 1
            assert [s["keyswap.claims"]["sub"] for s in app.scopes] == ["consumer-1"] * 3
            app.scopes[0]["keyswap.claims"]["sub"] = "admin"  # each request gets its own copy
            assert (await call_http(mw, headers=bearer(token))).status == 200
            assert app.scopes[-1]["keyswap.claims"]["sub"] == "consumer-1"
            # Past exp + leeway the cache misses and the full verification gives the reason.
            now[0] += 60 + 30
            sent = await call_http(mw, headers=bearer(token))
            assert sent.status == 401
            assert "expired" in (sent.header("www-authenticate") or "")
            assert CountingVerifier.awaited == 2
        finally:
            verifier.close()

    @pytest.mark.parametrize(
        ("kind", "label"),
        [
            ("expired", "expired"),
            ("wrong-audience", "audience"),
            ("unknown-kid", "unknown_kid"),
            ("other-key", "signature"),
            ("alg-none", "algorithm"),
        ],
    )
    async def test_bad_tokens_are_401_invalid_token(
        self, real_verifier: Verifier, kind: str, label: str
    ) -> None:
        token = {
            "expired": lambda: real_token(now=1_000_000),
            "wrong-audience": lambda: REAL_KEY.sign(claims(iss=ISSUER, aud="https://other.test")),
            "unknown-kid": lambda: rsa_key("nobody", slot=1).sign(claims(iss=ISSUER, aud=AUDIENCE)),
            "other-key": lambda: rsa_key("asgi-rsa", slot=1).sign(claims(iss=ISSUER, aud=AUDIENCE)),
            "alg-none": lambda: b64u(b'{"alg":"none"}') + "." + real_token().split(".")[1] + ".",
        }[kind]()
        sent = await call_http(
            JWTAuthMiddleware(RecordingApp(), verifier=real_verifier), headers=bearer(token)
        )
        assert (sent.status, sent.body) == (401, b"Invalid token")
        challenge = sent.header("www-authenticate") or ""
        assert challenge.startswith(
            'Bearer realm="keyswap", error="invalid_token", error_description="'
        )
        assert real_verifier.metrics.get("rejections", reason=label) == 1

    @pytest.mark.parametrize(
        ("value", "description"),
        [
            (b"Bearer a b.c.d", "token contains characters outside the b64token set"),
            (b"Bearer a.b.c\x00", "token contains characters outside the b64token set"),
            (b"Bearer a.b.c\xe9", "token contains characters outside the b64token set"),
            (b"Bearer a.b.c ", "trailing whitespace after the token"),
            (b"Bearer  a.b.c", "more than one space after Bearer"),
            (b"Bearer \ta.b.c", "more than one space after Bearer"),
            (b"Bearer a.b.c=", "invalid base64url"),  # b64token allows "=": the verifier refuses
            (b"Bearer a~bc.d.e", "invalid base64url"),
        ],
    )
    async def test_the_deferred_character_check_keeps_the_extractors_reasons(
        self, real_verifier: Verifier, value: bytes, description: str
    ) -> None:
        # With keyswap's own Verifier the middleware skips the b64token scan on the way in and runs
        # it only when verification fails: the reasons must be the ones the full extractor gives.
        sent = await call_http(
            JWTAuthMiddleware(RecordingApp(), verifier=real_verifier),
            headers=[(b"authorization", value)],
        )
        assert (sent.status, sent.body) == (401, b"Invalid token")
        assert sent.header("www-authenticate") == (
            f'Bearer realm="keyswap", error="invalid_token", error_description="{description}"'
        )

    async def test_a_jwks_that_cannot_be_fetched_gives_503_with_retry_after(
        self, jwks_server: JWKSServer
    ) -> None:
        jwks_server.serve({"keys": []}, status=500)
        verifier = Verifier(
            IssuerConfig(issuer=ISSUER, jwks_url=jwks_server.url, audience=AUDIENCE)
        )
        verifier.start()
        try:
            mw = JWTAuthMiddleware(RecordingApp(), verifier=verifier)
            sent = await call_http(mw, headers=bearer(real_token()))
        finally:
            verifier.close()
        assert sent.status == 503
        assert int(sent.header("retry-after") or "0") >= 1
        assert sent.body == b"Signing keys temporarily unavailable"

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(value=AUTH_VALUES)
    async def test_any_altered_authorization_bytes_give_401_and_never_an_exception(
        self, real_verifier: Verifier, value: bytes
    ) -> None:
        mw = JWTAuthMiddleware(RecordingApp(), verifier=real_verifier)
        sent = await call_http(mw, headers=[(b"authorization", value)])
        if value == f"Bearer {_SAMPLE_TOKEN}".encode():  # a "mutation" that changed nothing
            assert sent.status == 200
        else:
            assert sent.status in (401, 503)


# -- I04: every response gets its own header list ---------------------------------------------------


class AppendRequestId:
    """A middleware that appends ``x-request-id: N`` to the response's header list in place."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.count += 1
        number = str(self.count).encode()

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"].append((b"x-request-id", number))
            await send(message)

        await self.app(scope, receive, send_with_id)


def test_gzip_middleware_never_leaks_its_headers_into_later_401s() -> None:
    from starlette.middleware.gzip import GZipMiddleware

    app = GZipMiddleware(
        JWTAuthMiddleware(RecordingApp(), verifier=TableVerifier()), minimum_size=1
    )
    with running_uvicorn(app) as base, httpx.Client(base_url=base, timeout=5) as client:
        zipped = client.get("/", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.text == "No token provided"  # httpx decodes it
        for _ in range(3):
            plain = client.get("/", headers={"Accept-Encoding": "identity"})
            assert plain.status_code == 401
            assert "content-encoding" not in plain.headers
            assert plain.headers["content-length"] == str(len(b"No token provided"))
            assert plain.content == b"No token provided"
            assert plain.headers["www-authenticate"] == 'Bearer realm="keyswap"'


def test_a_middleware_editing_headers_in_place_affects_only_its_own_response() -> None:
    verifier = TableVerifier({"weak": InsufficientScope("needs write", scope="write")})
    app = AppendRequestId(JWTAuthMiddleware(RecordingApp(), verifier=verifier))
    with running_uvicorn(app) as base, httpx.Client(base_url=base, timeout=5) as client:
        ids = [client.get("/").headers.get_list("x-request-id") for _ in range(4)]
        weak = [
            client.get("/", headers={"Authorization": "Bearer weak"}).headers.get_list(
                "x-request-id"
            )
            for _ in range(2)
        ]
    assert ids == [["1"], ["2"], ["3"], ["4"]]
    assert weak == [["5"], ["6"]]
