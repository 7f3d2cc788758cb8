"""Pure ASGI middleware that lets only requests with a valid bearer token through.

It sits on every request, so it keeps to the minimum: no framework request objects, response header
values built once at construction, one header scan, one ``await verifier.verify(token)`` (a token-cache
hit once warm). It never keeps per-request state on ``self``, and every response it sends gets a header
list of its own (middlewares such as Starlette's ``GZipMiddleware`` edit that list in place).

Responses (RFC 6750 §3):

=========================  ======  ===================================================================
cause                      status  ``WWW-Authenticate`` / body
=========================  ======  ===================================================================
no bearer token            401     ``Bearer realm="..."`` (no ``error``) / ``No token provided``
any bad token              401     ``Bearer realm="...", error="invalid_token", error_description="..."``
                                   / ``Invalid token``
:class:`InsufficientScope`  403     ``Bearer realm="...", error="insufficient_scope", scope="..."``
                                   / ``Insufficient scope``
keys unavailable           503     ``Retry-After: N`` / ``Signing keys temporarily unavailable``
replay cache unavailable   503     ``Retry-After: N`` / ``Replay cache temporarily unavailable``
bound body over the limit  413     ``Payload too large``
verifier bug (any other    401     like a bad token; the exception is logged without the token
exception)
=========================  ======  ===================================================================

``error_description`` is the error's ``reason`` reduced to the RFC 6750 character set (printable ASCII
without ``"`` and ``\\``) and at most :data:`MAX_DESCRIPTION_LENGTH` characters; pass
``error_descriptions=False`` to leave it out. Exceptions raised by the wrapped app are not touched.

Scopes: ``http`` and ``websocket`` are authenticated; everything else (``lifespan``) passes through. A
websocket handshake without a valid token is refused before the app sees it: with the server's
``websocket.http.response`` extension as the same HTTP response as above, otherwise with
``websocket.close`` code 1008 (the server then answers the handshake with 403).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from keyswap.errors import (
    AuthError,
    ConfigError,
    InsufficientScope,
    InvalidToken,
    JWKSFetchError,
    KeysUnavailable,
    MissingToken,
    PayloadTooLarge,
    ReplayCacheUnavailable,
)
from keyswap.verifier.bound import RequestBinder
from keyswap.verifier.extract import DEFAULT_MAX_TOKEN_SIZE, bearer_token, txn_token
from keyswap.verifier.replay import ReplayCache
from keyswap.verifier.verify import Verifier

__all__ = [
    "CLAIMS_SCOPE_KEY",
    "MAX_DESCRIPTION_LENGTH",
    "VERIFIED_BY_SCOPE_KEY",
    "ASGIApp",
    "JWTAuthMiddleware",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "TokenVerifier",
    "sanitize_description",
    "store_claims",
    "verified_claims",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Where the verified claims go in the ASGI scope (also ``scope["state"]["claims"]``).
CLAIMS_SCOPE_KEY = "keyswap.claims"
#: ``(verifier, claims)``: which verifier produced the claims on the scope. Adapters reuse claims only
#: when they were produced by their own verifier (a second verifier with another issuer or audience
#: verifies again).
VERIFIED_BY_SCOPE_KEY = "keyswap.verified_by"
#: ``error_description`` values are cut to this many characters.
MAX_DESCRIPTION_LENGTH = 200

logger = logging.getLogger("keyswap.verifier.asgi")

_NOT_RFC6750 = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]+")
_SCOPE_JUNK = re.compile(r"[^\x21\x23-\x5b\x5d-\x7e]+")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")


class TokenVerifier(Protocol):
    """What the middleware needs from a verifier (``keyswap.verifier.Verifier`` is one)."""

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the verified claims or raise a :class:`keyswap.errors.KeyswapError`."""
        ...


def sanitize_description(text: str, *, limit: int = MAX_DESCRIPTION_LENGTH) -> str:
    """Reduce ``text`` to RFC 6750 ``error_description`` characters (%x20-21 / %x23-5B / %x5D-7E).

    Double quotes become single quotes, backslashes slashes, every other run of characters outside the
    set (control characters, newlines, non-ASCII) one space; the result is trimmed and cut to ``limit``.
    """
    cleaned = _NOT_RFC6750.sub(" ", text.replace('"', "'").replace("\\", "/"))
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > limit:
        cleaned = cleaned[: max(0, limit - 3)].rstrip() + "..."
    return cleaned


def store_claims(scope: Scope, verifier: object, claims: dict[str, Any]) -> None:
    """Put ``claims`` on ``scope`` (``scope["keyswap.claims"]``, ``scope["state"]["claims"]``),
    recording that ``verifier`` produced them."""
    scope[CLAIMS_SCOPE_KEY] = claims
    scope[VERIFIED_BY_SCOPE_KEY] = (verifier, claims)
    state = scope.get("state")
    if state is None:
        scope["state"] = {"claims": claims}
    else:
        state["claims"] = claims


def verified_claims(scope: Scope, verifier: object) -> dict[str, Any] | None:
    """The claims on ``scope`` if ``verifier`` itself produced them (see :func:`store_claims`),
    else ``None``: claims another verifier checked, or that something else put there, never count."""
    claims = scope.get(CLAIMS_SCOPE_KEY)
    marker = scope.get(VERIFIED_BY_SCOPE_KEY)
    if (
        isinstance(claims, dict)
        and isinstance(marker, tuple)
        and len(marker) == 2
        and marker[0] is verifier
        and marker[1] is claims
    ):
        return claims
    return None


@dataclass(frozen=True, slots=True)
class _Rejection:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    label: str
    reason: str


def _text_headers(body: bytes, *extra: tuple[bytes, bytes]) -> tuple[tuple[bytes, bytes], ...]:
    # A tuple: rejections are shared (the "No token provided" one by every request); each response
    # is sent with a fresh list made from it.
    return (_TEXT, (b"content-length", str(len(body)).encode("ascii")), *extra)


class JWTAuthMiddleware:
    """Pure ASGI middleware: verify the bearer token, put the claims on the scope, or answer 401/403/503.

    On success the claims dict is stored as ``scope["keyswap.claims"]`` and
    ``scope["state"]["claims"]`` (Starlette/FastAPI: ``request.state.claims``), with
    ``scope["keyswap.verified_by"]`` recording this middleware's verifier (see :func:`verified_claims`).

    Args:
        app: the ASGI app to protect.
        verifier: anything with ``async verify(token) -> dict`` (normally a ``Verifier``).
        realm: the ``realm`` of the ``WWW-Authenticate`` challenge.
        exempt_paths: paths served without a token. ``"/health"`` matches that path exactly;
            ``"/public/*"`` matches every path starting with ``/public/`` (never one containing a
            ``.`` or ``..`` segment).
        error_descriptions: send ``error_description`` with ``invalid_token`` / ``insufficient_scope``.
        max_token_size: longer ``Authorization`` values are rejected before any other work.
        token_header: ``"authorization"`` (``Bearer`` tokens) or ``"txn-token"`` (the JWT in the
            ``Txn-Token`` header, draft-ietf-oauth-transaction-tokens).
        public_url: for issuers with ``bind_request``: the base URL the origin is reached by as the
            gateway sees it (``None``: the request's scheme and ``Host``); see
            :mod:`keyswap.verifier.bound`.
        replay_cache: where bound tokens' ``jti`` values are recorded (default: in memory, bounded).
        allow_unbound_body: accept bound tokens whose body was forwarded unhashed (``htd: "unbound"``).

    Raises:
        ConfigError: a bad ``realm``, exempt path, token header or public URL.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        realm: str = "keyswap",
        exempt_paths: Iterable[str] = (),
        error_descriptions: bool = True,
        max_token_size: int = DEFAULT_MAX_TOKEN_SIZE,
        token_header: str = "authorization",  # noqa: S107 - a header name
        public_url: str | None = None,
        replay_cache: ReplayCache | None = None,
        allow_unbound_body: bool = True,
    ) -> None:
        if token_header not in ("authorization", "txn-token"):
            raise ConfigError("token_header must be 'authorization' or 'txn-token'")
        if not realm or sanitize_description(realm, limit=len(realm)) != realm:
            raise ConfigError(
                f"realm must be non-empty printable ASCII without quotes or backslashes: {realm!r}"
            )
        if max_token_size < 1:
            raise ConfigError("max_token_size must be at least 1")
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in exempt_paths:
            if not isinstance(path, str) or not path.startswith("/") or "*" in path[:-1]:
                raise ConfigError(
                    f"exempt path must start with '/' and may only end with '*': {path!r}"
                )
            if path.endswith("*"):
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        self.app = app
        self.verifier = verifier
        self.realm = realm
        self.error_descriptions = error_descriptions
        self.max_token_size = max_token_size
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self.has_exempt = bool(exact or prefixes)
        # With keyswap's Verifier: its token cache is asked first, synchronously (a warm request
        # costs no coroutine); and as it accepts only base64url and dots, a strict subset of
        # b64token, the extractor's character scan is left to failures (_precise_extraction_error).
        # (Not when the lookup can never hit: every issuer binds requests, or no token cache.)
        self._lookup: Callable[[str], dict[str, Any] | None] | None = None
        if isinstance(verifier, Verifier) and verifier.caches_tokens:
            self._lookup = verifier.cached
        self._check_characters = not isinstance(verifier, Verifier)
        self._txn = token_header == "txn-token"  # noqa: S105
        #: Enforces request binding (``None`` when no issuer of the verifier binds requests).
        self.binder: RequestBinder | None = None
        if isinstance(verifier, Verifier) and verifier.binds_requests:
            self.binder = RequestBinder(
                verifier.issuer_config,
                public_url=public_url,
                replay_cache=replay_cache,
                allow_unbound_body=allow_unbound_body,
                clock=verifier.clock,
            )
        self._challenge = f'Bearer realm="{realm}"'
        missing_body = b"No token provided"
        self._missing = _Rejection(
            401,
            _text_headers(missing_body, (b"www-authenticate", self._challenge.encode("ascii"))),
            missing_body,
            MissingToken.label,
            "",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or (
            self.has_exempt and self.is_exempt(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        token: str | None = None
        try:
            if self._txn:
                token = txn_token(scope["headers"], max_size=self.max_token_size)
            else:
                token = bearer_token(
                    scope["headers"],
                    max_size=self.max_token_size,
                    check_characters=self._check_characters,
                )
            claims = self._lookup(token) if self._lookup is not None else None
            if claims is None:
                claims = await self.verifier.verify(token)
            if self.binder is not None:
                if kind == "http":
                    receive = await self.binder.enforce(scope, receive, claims)
                else:
                    self.binder.refuse_websocket(claims)
        except Exception as exc:
            if (
                token is not None
                and not self._check_characters
                and not self._txn
                and isinstance(exc, InvalidToken)
            ):
                exc = _precise_extraction_error(scope["headers"], self.max_token_size, exc)
            rejection = self.rejection(exc, token)
        else:
            store_claims(scope, self.verifier, claims)
            await self.app(scope, receive, send)
            return
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "rejected %s %r: %s %d %s",
                scope.get("method", "WEBSOCKET"),
                scope.get("path", ""),
                rejection.label,
                rejection.status,
                sanitize_description(rejection.reason),
            )
        if kind == "http":
            await _send_http(send, rejection)
        else:
            await _refuse_websocket(scope, receive, send, rejection)

    def is_exempt(self, path: str) -> bool:
        """True when ``path`` is an exempt path (exact, or under a ``prefix*`` entry without dot segments)."""
        if path in self._exact:
            return True
        if self._prefixes and path.startswith(self._prefixes):
            return not any(segment in (".", "..") for segment in path.split("/"))
        return False

    def rejection(self, exc: Exception, token: str | None) -> _Rejection:
        """The response for ``exc``: status, headers and body, shared by every framework adapter."""
        if isinstance(exc, MissingToken):
            return self._missing
        if isinstance(exc, InsufficientScope):
            params = ['error="insufficient_scope"']
            scope = " ".join(_SCOPE_JUNK.sub(" ", exc.scope).split())
            if scope:
                params.append(f'scope="{scope}"')
            return self._challenge_rejection(403, b"Insufficient scope", exc, params)
        if isinstance(exc, AuthError):
            return self._challenge_rejection(401, b"Invalid token", exc, ['error="invalid_token"'])
        if isinstance(exc, PayloadTooLarge):
            body = b"Payload too large"
            return _Rejection(413, _text_headers(body), body, exc.label, exc.reason)
        if isinstance(exc, ReplayCacheUnavailable):
            body = b"Replay cache temporarily unavailable"
            headers = _text_headers(body, (b"retry-after", str(exc.retry_after).encode("ascii")))
            return _Rejection(503, headers, body, exc.label, exc.reason)
        if isinstance(exc, KeysUnavailable | JWKSFetchError):
            retry_after = exc.retry_after if isinstance(exc, KeysUnavailable) else 5
            body = b"Signing keys temporarily unavailable"
            headers = _text_headers(body, (b"retry-after", str(retry_after).encode("ascii")))
            return _Rejection(503, headers, body, exc.label, exc.reason)
        _log_verifier_bug(exc, token)
        return self._challenge_rejection(
            401,
            b"Invalid token",
            None,
            ['error="invalid_token"'],
            reason="the token could not be verified",
        )

    def _challenge_rejection(
        self,
        status: int,
        body: bytes,
        exc: AuthError | None,
        params: list[str],
        *,
        reason: str | None = None,
    ) -> _Rejection:
        reason = reason if reason is not None else (exc.reason if exc is not None else "")
        description = sanitize_description(reason) if self.error_descriptions else ""
        if description:
            params.append(f'error_description="{description}"')
        challenge = ", ".join([self._challenge, *params]).encode("ascii")
        label = exc.label if exc is not None else "internal"
        return _Rejection(
            status, _text_headers(body, (b"www-authenticate", challenge)), body, label, reason
        )


def _precise_extraction_error(
    headers: Iterable[tuple[bytes, bytes]], max_size: int, error: Exception
) -> Exception:
    """The full extractor's reason for a token the verifier refused, when it has one, else ``error``."""
    try:
        bearer_token(headers, max_size=max_size)
    except AuthError as precise:
        return precise
    return error


def _log_verifier_bug(exc: Exception, token: str | None) -> None:
    """Log an unexpected verifier exception with its traceback, the token (and its parts) redacted."""
    text = "".join(traceback.format_exception(exc))
    if token:
        for secret in sorted({token, *token.split(".")}, key=len, reverse=True):
            if len(secret) >= 8:
                text = text.replace(secret, "<redacted>")
    logger.error("verifier raised an unexpected %s; answered 401\n%s", type(exc).__name__, text)


async def _send_http(send: Send, rejection: _Rejection) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": rejection.status,
            "headers": list(rejection.headers),  # a list of its own: others may edit it in place
        }
    )
    await send({"type": "http.response.body", "body": rejection.body})


async def _refuse_websocket(
    scope: Scope, receive: Receive, send: Send, rejection: _Rejection
) -> None:
    message = await receive()
    if message.get("type") != "websocket.connect":
        return  # the client went away first
    extensions = scope.get("extensions") or {}
    if "websocket.http.response" in extensions:
        await send(
            {
                "type": "websocket.http.response.start",
                "status": rejection.status,
                "headers": list(rejection.headers),
            }
        )
        await send({"type": "websocket.http.response.body", "body": rejection.body})
    else:
        await send({"type": "websocket.close", "code": 1008})
