"""The origin ASGI app: every path and method answers the verified claims as JSON.

It is a tiny pure-ASGI app behind :class:`~keyswap.verifier.asgi.JWTAuthMiddleware`. It reads and
discards the request body, then answers ``200`` with ``application/json``. A websocket (authenticated
by the middleware at the handshake) is accepted, sent the claims as one text message, and closed.

``GET`` or ``HEAD`` on the health path (:data:`HEALTH_PATH` by default) is answered without a token,
for load balancers: ``200 {"status": "ok", ...}`` while the verifier holds usable signing keys for
every issuer, ``503 {"status": "unavailable", ...}`` otherwise (see :func:`health`).

With ``manage_verifier=True`` (the default) the app owns the verifier's lifetime through the ASGI
lifespan: ``verifier.start()`` at start-up (non-blocking: the JWKS is fetched in the background, so
start-up never fails because the JWKS is down) and ``verifier.close()`` at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from keyswap.errors import ConfigError
from keyswap.verifier.asgi import (
    CLAIMS_SCOPE_KEY,
    ASGIApp,
    JWTAuthMiddleware,
    Receive,
    Scope,
    Send,
    TokenVerifier,
)
from keyswap.verifier.keyset import KeySet
from keyswap.verifier.replay import ReplayCache
from keyswap.verifier.verify import IssuerConfig

__all__ = ["HEALTH_PATH", "KeyStatusSource", "ManagedVerifier", "create_app", "health"]

#: The default health path of the origin app: answered without a token.
HEALTH_PATH = "/__keyswap/health"

_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")

logger = logging.getLogger("keyswap.origin")


class ManagedVerifier(TokenVerifier, Protocol):
    """A verifier with a lifetime (``keyswap.verifier.Verifier`` is one)."""

    def start(self) -> None:
        """Start fetching keys in the background; must not block."""
        ...

    def close(self) -> None:
        """Stop background work and release resources."""
        ...


@runtime_checkable
class KeyStatusSource(Protocol):
    """A verifier that can report its key sets (``keyswap.verifier.Verifier`` is one)."""

    @property
    def issuers(self) -> tuple[IssuerConfig, ...]:
        """The configured issuers."""
        ...

    def keyset(self, issuer: str) -> KeySet:
        """The key set of ``issuer``."""
        ...


def health(verifier: object) -> tuple[bool, dict[str, Any]]:
    """Whether ``verifier`` holds usable signing keys for every issuer, and the health body.

    The body is ``{"status": "ok" | "unavailable", "issuers": [{"issuer", "usable", "keys"}]}``:
    public facts only (no JWKS URL, no key material). An issuer is usable while its key set is
    fresh or stale within ``max_stale`` (it answers lookups from the cache). A verifier that does not
    report key sets (not a :class:`KeyStatusSource`) is healthy with an empty ``issuers`` list.
    """
    issuers: list[dict[str, Any]] = []
    if isinstance(verifier, KeyStatusSource):
        for config in verifier.issuers:
            status = verifier.keyset(config.issuer).status()
            issuers.append({"issuer": config.issuer, "usable": status.usable, "keys": status.keys})
    ok = all(item["usable"] for item in issuers)
    return ok, {"status": "ok" if ok else "unavailable", "issuers": issuers}


def create_app(
    verifier: ManagedVerifier,
    *,
    realm: str = "keyswap",
    exempt_paths: Iterable[str] = (),
    error_descriptions: bool = True,
    manage_verifier: bool = True,
    health_path: str | None = HEALTH_PATH,
    token_header: str = "authorization",  # noqa: S107 - a header name
    public_url: str | None = None,
    replay_cache: ReplayCache | None = None,
) -> ASGIApp:
    """The origin app: ``JWTAuthMiddleware`` around an app that echoes the verified claims.

    Args:
        verifier: verifies the bearer tokens (normally a ``keyswap.verifier.Verifier``).
        realm: the ``realm`` of the ``WWW-Authenticate`` challenge.
        exempt_paths: paths served without a token (they answer ``{}``); see ``JWTAuthMiddleware``.
        error_descriptions: send ``error_description`` in challenges.
        manage_verifier: start the verifier at lifespan start-up and close it at shutdown.
        health_path: answered without a token with the verifier's :func:`health` (``200``/``503``,
            JSON) to ``GET`` and ``HEAD``, ``405`` to other methods; ``None`` turns it off.
        token_header: ``"authorization"`` or ``"txn-token"`` (see ``JWTAuthMiddleware``).
        public_url: request binding: the origin's base URL as the gateway sees it.
        replay_cache: request binding: where ``jti`` values are recorded (default: in memory);
            closed at shutdown with ``manage_verifier``.

    Raises:
        ConfigError: a bad realm, exempt path or health path.
    """
    exempt = list(exempt_paths)
    if health_path is not None:
        if (
            not isinstance(health_path, str)
            or not health_path.startswith("/")
            or "*" in health_path
        ):
            raise ConfigError(f"health path must start with '/' and have no '*': {health_path!r}")
        exempt.append(health_path)
    inner = _EchoClaims(verifier if manage_verifier else None, verifier, health_path)
    inner.replay_cache = replay_cache if manage_verifier else None
    return JWTAuthMiddleware(
        inner,
        verifier=verifier,
        realm=realm,
        exempt_paths=exempt,
        error_descriptions=error_descriptions,
        token_header=token_header,
        public_url=public_url,
        replay_cache=replay_cache,
    )


class _EchoClaims:
    def __init__(
        self, verifier: ManagedVerifier | None, reporter: object, health_path: str | None
    ) -> None:
        self.verifier = verifier
        self.reporter = reporter
        self.health_path = health_path
        #: Closed at shutdown when it can be (a Redis replay cache's connections).
        self.replay_cache: object = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    @staticmethod
    def _encode(scope: Scope) -> bytes:
        claims: Any = scope.get(CLAIMS_SCOPE_KEY) or {}
        return json.dumps(claims, separators=(",", ":"), ensure_ascii=False, default=str).encode()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        while True:  # read the body and drop it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if not message.get("more_body", False):
                break
        if self.health_path is not None and scope["path"] == self.health_path:
            await self._health(scope, send)
            return
        await _send_json(send, 200, self._encode(scope))

    async def _health(self, scope: Scope, send: Send) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            body = b'{"error":"method not allowed"}'
            await _send_json(send, 405, body, (b"allow", b"GET, HEAD"), _NO_STORE)
            return
        ok, report = health(self.reporter)
        body = json.dumps(report, separators=(",", ":"), ensure_ascii=False).encode()
        await _send_json(send, 200 if ok else 503, body, _NO_STORE)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if self.health_path is not None and scope["path"] == self.health_path:
            await send({"type": "websocket.close", "code": 1008})  # an HTTP path only
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": self._encode(scope).decode()})
        await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.verifier is not None:
                        self.verifier.start()
                        logger.debug("verifier started")
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self.verifier is not None:
                        await asyncio.to_thread(self.verifier.close)
                        logger.debug("verifier closed")
                    aclose = getattr(self.replay_cache, "aclose", None)
                    if aclose is not None:
                        await aclose()
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _send_json(send: Send, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    length = (b"content-length", str(len(body)).encode("ascii"))
    await send(
        {"type": "http.response.start", "status": status, "headers": [_JSON, length, *headers]}
    )
    await send({"type": "http.response.body", "body": body})
