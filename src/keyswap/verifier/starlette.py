"""Starlette (and any ASGI framework): read the claims, require scopes per route, warm keys at start-up.

Authentication itself is the pure ASGI :class:`keyswap.verifier.asgi.JWTAuthMiddleware`; this module
adds what a Starlette app needs around it::

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from keyswap.verifier.asgi import JWTAuthMiddleware
    from keyswap.verifier.starlette import get_claims, requires_scopes, verifier_lifespan

    verifier = Verifier(IssuerConfig(...))
    app = Starlette(routes=[...], lifespan=verifier_lifespan(verifier),
                    middleware=[Middleware(JWTAuthMiddleware, verifier=verifier)])

    @requires_scopes("orders:read")
    async def orders(request):
        return JSONResponse(get_claims(request))

A route whose token lacks a scope gets 403 with ``WWW-Authenticate: Bearer error="insufficient_scope",
scope="..."``, the same response the middleware sends for every other error. A websocket endpoint is
refused the websocket way: the same HTTP response before the handshake completes when the server
supports the websocket denial extension, else ``websocket.close`` with code 1008 (policy violation).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketState

from keyswap.errors import MissingToken
from keyswap.verifier.asgi import CLAIMS_SCOPE_KEY
from keyswap.verifier.permissions import (
    DEFAULT_PERMISSION_CLAIMS,
    ClaimPath,
    missing_scopes,
    normalise_paths,
    permissions_from_claims,
    validate_scopes,
)
from keyswap.verifier.responses import Rejection, Responder, VerifierLike
from keyswap.verifier.verify import Verifier

__all__ = [
    "get_claims",
    "get_permissions",
    "rejection_response",
    "requires_scopes",
    "verifier_lifespan",
    "warm_up",
]

logger = logging.getLogger("keyswap.verifier.starlette")

P = ParamSpec("P")
App = TypeVar("App")


def get_claims(conn: HTTPConnection) -> dict[str, Any] | None:
    """The claims the middleware verified for this request or websocket, or ``None``.

    ``None`` means the middleware did not run for this path (an exempt path, or no middleware).
    """
    claims = conn.scope.get(CLAIMS_SCOPE_KEY)
    return claims if isinstance(claims, dict) else None


def get_permissions(
    conn: HTTPConnection, paths: Iterable[ClaimPath] = DEFAULT_PERMISSION_CLAIMS
) -> frozenset[str]:
    """The permissions (scopes, roles, ...) of this request's token; empty without claims."""
    return permissions_from_claims(get_claims(conn), paths)


def rejection_response(rejection: Rejection) -> Response:
    """A Starlette :class:`Response` for ``rejection``, byte for byte the middleware's."""
    return Response(
        rejection.body,
        status_code=rejection.status,
        headers=rejection.extra_headers,
        media_type=rejection.content_type,
    )


def _find_connection(args: tuple[Any, ...], kwargs: dict[str, Any]) -> HTTPConnection | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, HTTPConnection):  # a Request or a WebSocket
            return value
    return None


async def _refuse_websocket(websocket: WebSocket, rejection: Rejection) -> None:
    """Refuse a websocket before it is accepted: the HTTP rejection itself when the server supports
    the websocket denial extension, else ``websocket.close`` 1008 (the server answers 403)."""
    if websocket.client_state == WebSocketState.CONNECTING:
        await websocket.receive()  # the websocket.connect message
    if websocket.application_state != WebSocketState.CONNECTING:
        return  # the client went away, or the endpoint's wrapper was called after the handshake
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(rejection_response(rejection))
    else:
        await websocket.close(code=1008)


def requires_scopes(
    *scopes: str,
    realm: str = "keyswap",
    permission_claims: Iterable[ClaimPath] = DEFAULT_PERMISSION_CLAIMS,
) -> Callable[[Callable[P, Any]], Callable[P, Awaitable[Any]]]:
    """Decorate an endpoint (``async def`` or ``def``, function or ``HTTPEndpoint`` method, or a
    websocket endpoint) so it runs only when the connection's token grants every scope in ``scopes``.

    Without claims on the request (no middleware, or an exempt path) the answer is 401
    ``No token provided``: the decorator fails closed. A sync endpoint is run in the thread pool, as
    Starlette does for undecorated sync endpoints. A refused websocket gets that response as its
    handshake answer (websocket denial extension) or is closed with 1008 before being accepted.

    Raises:
        ValueError: a scope is not an RFC 6749 scope token, or a claim path is invalid.
        ConfigError: a bad realm.
    """
    required = validate_scopes(scopes)
    paths = normalise_paths(permission_claims)
    responder = Responder(realm=realm, logger_name="keyswap.verifier.starlette")

    def decorate(endpoint: Callable[P, Any]) -> Callable[P, Awaitable[Any]]:
        is_async = inspect.iscoroutinefunction(endpoint)

        @functools.wraps(endpoint)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            conn = _find_connection(args, kwargs)
            claims = get_claims(conn) if conn is not None else None
            rejection: Rejection | None = None
            if claims is None:
                rejection = responder.reject(MissingToken("no verified claims on the request"))
            elif missing_scopes(permissions_from_claims(claims, paths), required):
                rejection = responder.insufficient_scope(required)
            if rejection is not None:
                if conn is not None:
                    method = conn.scope.get("method", "WEBSOCKET")
                    responder.log(method, conn.url.path, rejection)
                if isinstance(conn, WebSocket):
                    await _refuse_websocket(conn, rejection)
                    return None
                return rejection_response(rejection)
            if is_async:
                return await endpoint(*args, **kwargs)
            return await run_in_threadpool(endpoint, *args, **kwargs)

        return wrapper

    return decorate


async def warm_up(verifier: VerifierLike) -> bool:
    """Start ``verifier`` and wait for the first JWKS fetch of every issuer (each bounded by the
    fetcher's timeout), so the first request finds its keys in memory.

    Fails open: a fetch that fails is logged and ``False`` is returned; the key set keeps retrying in
    the background, and requests meanwhile get 503 + ``Retry-After`` rather than a failed start-up.
    """
    verifier.start()
    if not isinstance(verifier, Verifier):
        return True
    results = await asyncio.gather(
        *(verifier.keyset(config.issuer).refresh() for config in verifier.issuers),
        return_exceptions=True,
    )
    ok = True
    for config, result in zip(verifier.issuers, results, strict=True):
        if isinstance(result, Exception):
            ok = False
            logger.warning(
                "JWKS warm-up for issuer %r failed (%s); serving 503 until keys arrive",
                config.issuer,
                type(result).__name__,
            )
        elif isinstance(result, BaseException):
            raise result
    return ok


def verifier_lifespan(
    verifier: VerifierLike, *, warm: bool = True
) -> Callable[[App], AbstractAsyncContextManager[None]]:
    """A lifespan that starts ``verifier`` at start-up and closes it at shutdown:
    ``Starlette(lifespan=verifier_lifespan(verifier))``.

    With ``warm`` (the default) start-up waits for the first key fetch (see :func:`warm_up`);
    without it the keys are fetched in the background.
    """

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        if warm:
            await warm_up(verifier)
        else:
            verifier.start()
        try:
            yield
        finally:
            verifier.close()

    return lifespan
