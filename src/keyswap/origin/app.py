"""The origin ASGI app: every path and method answers the verified claims as JSON.

It is a tiny pure-ASGI app behind :class:`~keyswap.verifier.asgi.JWTAuthMiddleware`. It reads and
discards the request body, then answers ``200`` with ``application/json``. A websocket (authenticated
by the middleware at the handshake) is accepted, sent the claims as one text message, and closed.

With ``manage_verifier=True`` (the default) the app owns the verifier's lifetime through the ASGI
lifespan: ``verifier.start()`` at start-up (non-blocking: the JWKS is fetched in the background, so
start-up never fails because the JWKS is down) and ``verifier.close()`` at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from keyswap.verifier.asgi import (
    CLAIMS_SCOPE_KEY,
    ASGIApp,
    JWTAuthMiddleware,
    Receive,
    Scope,
    Send,
    TokenVerifier,
)

__all__ = ["ManagedVerifier", "create_app"]

_JSON = (b"content-type", b"application/json")

logger = logging.getLogger("keyswap.origin")


class ManagedVerifier(TokenVerifier, Protocol):
    """A verifier with a lifetime (``keyswap.verifier.Verifier`` is one)."""

    def start(self) -> None:
        """Start fetching keys in the background; must not block."""
        ...

    def close(self) -> None:
        """Stop background work and release resources."""
        ...


def create_app(
    verifier: ManagedVerifier,
    *,
    realm: str = "keyswap",
    exempt_paths: Iterable[str] = (),
    error_descriptions: bool = True,
    manage_verifier: bool = True,
) -> ASGIApp:
    """The origin app: ``JWTAuthMiddleware`` around an app that echoes the verified claims.

    Args:
        verifier: verifies the bearer tokens (normally a ``keyswap.verifier.Verifier``).
        realm: the ``realm`` of the ``WWW-Authenticate`` challenge.
        exempt_paths: paths served without a token (they answer ``{}``); see ``JWTAuthMiddleware``.
        error_descriptions: send ``error_description`` in challenges.
        manage_verifier: start the verifier at lifespan start-up and close it at shutdown.

    Raises:
        ConfigError: a bad realm or exempt path.
    """
    inner = _EchoClaims(verifier if manage_verifier else None)
    return JWTAuthMiddleware(
        inner,
        verifier=verifier,
        realm=realm,
        exempt_paths=exempt_paths,
        error_descriptions=error_descriptions,
    )


class _EchoClaims:
    def __init__(self, verifier: ManagedVerifier | None) -> None:
        self.verifier = verifier

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
        body = self._encode(scope)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, (b"content-length", str(len(body)).encode("ascii"))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
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
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return
