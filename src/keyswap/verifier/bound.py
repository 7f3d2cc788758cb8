"""Enforcing request-bound tokens on an ASGI request (used by :class:`~keyswap.verifier.asgi.JWTAuthMiddleware`).

Order, once the token itself verified (signature, issuer, lifetime, binding claims present):

1. method, URL (:class:`~keyswap.verifier.binding.PublicBase`) and query hash;
2. the body: unless the token says ``htd: "unbound"``, it is read whole before the application runs
   -- refused with 413 as soon as it is known to exceed the issuer's ``bind_max_body`` (from
   ``Content-Length``, or while reading) -- and its SHA-256 compared with ``htd``; the application then
   receives the same bytes from a replayed ``receive``;
3. the replay cache: the token's ``jti`` is recorded until ``exp`` + leeway; a second use is refused.

Failures raise :class:`~keyswap.errors.RequestMismatch` / :class:`~keyswap.errors.ReplayedToken`
(401 ``invalid_token``, a generic description; the differing part is logged at INFO),
:class:`~keyswap.errors.PayloadTooLarge` (413) or
:class:`~keyswap.errors.ReplayCacheUnavailable` (503).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import quote

from keyswap.errors import ConfigError, PayloadTooLarge, ReplayedToken, RequestMismatch
from keyswap.verifier.binding import UNBOUND_BODY, PublicBase, check_body, check_request
from keyswap.verifier.replay import MemoryReplayCache, ReplayCache
from keyswap.verifier.verify import IssuerConfig

__all__ = ["RequestBinder", "SyncReplayCache"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

logger = logging.getLogger("keyswap.verifier.bound")


class SyncReplayCache(Protocol):
    """A replay cache WSGI adapters can use (:class:`MemoryReplayCache`, ``RedisReplayCache``)."""

    def first_use_sync(self, key: str, *, expires: float, now: float) -> bool:
        """See :meth:`keyswap.verifier.replay.ReplayCache.first_use`."""
        ...


class RequestBinder:
    """Checks bound tokens against the request they arrive with (see the module docstring).

    Args:
        issuer_config: ``iss`` -> its :class:`IssuerConfig` or ``None`` (``Verifier.issuer_config``).
        public_url: the base URL the origin is reached by as the gateway sees it (``None``: the
            request's scheme and ``Host``); see :class:`~keyswap.verifier.binding.PublicBase`.
        replay_cache: where ``jti`` values are recorded (default: a bounded in-memory cache); ASGI
            uses its ``first_use``, WSGI its ``first_use_sync``.
        allow_unbound_body: accept tokens with ``htd: "unbound"`` (the gateway forwarded a large body
            unhashed); ``False`` refuses them.
        clock: wall-clock seconds (the verifier's clock).

    Raises:
        ConfigError: a bad ``public_url``.
    """

    def __init__(
        self,
        issuer_config: Callable[[object], IssuerConfig | None],
        *,
        public_url: str | None = None,
        replay_cache: ReplayCache | SyncReplayCache | None = None,
        allow_unbound_body: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuer_config = issuer_config
        self.public = PublicBase(public_url)
        # ASGI needs ``first_use``, WSGI ``first_use_sync`` (keyswap's caches have both).
        self.replay_cache: Any = replay_cache if replay_cache is not None else MemoryReplayCache()
        # The in-memory cache answers at once: ASGI calls its synchronous form (no coroutine).
        self._first_use_now: Callable[..., bool] | None = (
            self.replay_cache.first_use_sync
            if type(self.replay_cache) is MemoryReplayCache
            else None
        )
        self.allow_unbound_body = allow_unbound_body
        self._clock = clock
        # iss -> what enforce needs of a bound issuer (or None: not bound), prepared once per issuer.
        self._prepared: dict[str, _BoundIssuer | None] = {}

    def _bound_issuer(self, iss: object) -> _BoundIssuer | None:
        """The prepared state of ``iss`` when it is a configured issuer that binds requests."""
        if type(iss) is not str:
            return None
        try:
            return self._prepared[iss]
        except KeyError:
            pass
        config = self._issuer_config(iss)
        if config is None:
            return None  # not configured: not remembered (the set of configured ones is finite)
        plain = isinstance(self.replay_cache, MemoryReplayCache)
        prepared = _BoundIssuer(config, plain_keys=plain) if config.bind_request else None
        self._prepared[iss] = prepared
        return prepared

    async def enforce(self, scope: Scope, receive: Receive, claims: dict[str, Any]) -> Receive:
        """Check a verified token's binding; returns the ``receive`` the application must use.

        Tokens of an issuer without ``bind_request`` pass untouched (same ``receive``).

        Raises:
            RequestMismatch, ReplayedToken, UnboundToken: 401.
            PayloadTooLarge: 413.
            ReplayCacheUnavailable: 503.
        """
        iss = claims.get("iss")
        bound = self._prepared.get(iss) if type(iss) is str else None
        if bound is None:
            bound = self._bound_issuer(iss)  # first token of the issuer, or an unbound one
            if bound is None:
                return receive
        try:
            check_request(
                claims,
                method=scope.get("method", "GET"),
                htu=self.public.htu(scope),
                query=scope.get("query_string", b""),
            )
            htd = claims.get("htd")
            if htd == UNBOUND_BODY:
                if not self.allow_unbound_body:
                    raise RequestMismatch(
                        detail="the token forwards an unbound body (refused here)"
                    )
            elif _has_body(scope):
                body = await _read_body(scope, receive, bound.max_body)
                check_body(claims, body)
                receive = _Replay(body, receive)
            elif htd is not None:  # HTTP/1.x without Content-Length or Transfer-Encoding: no body
                raise RequestMismatch(detail="the token binds a body but the request has none")
        except RequestMismatch as exc:
            logger.info(
                "bound token refused for %s %r: %s",
                scope.get("method"),
                scope.get("path"),
                exc.detail,
            )
            raise
        now = self._clock()
        expires = float(claims["exp"]) + bound.leeway
        key = bound.replay_key(claims["jti"])
        first_use_now = self._first_use_now
        if first_use_now is not None:
            first = first_use_now(key, expires=expires, now=now)
        else:
            first = await self.replay_cache.first_use(key, expires=expires, now=now)
        if not first:
            logger.info("bound token replayed for %s %r", scope.get("method"), scope.get("path"))
            raise ReplayedToken("the token was already used")
        return receive

    def refuse_websocket(self, claims: dict[str, Any]) -> None:
        """A websocket handshake with a token of a bound issuer: refused (the gateway never binds
        websockets, so such a token was taken from an HTTP request).

        Raises:
            RequestMismatch: the token's issuer binds requests.
        """
        config = self._issuer_config(claims.get("iss"))
        if config is not None and config.bind_request:
            logger.info("bound token refused for a websocket handshake")
            raise RequestMismatch(detail="a bound token on a websocket handshake")

    def enforce_wsgi(self, environ: dict[str, Any], claims: dict[str, Any]) -> None:
        """:meth:`enforce` for a WSGI request: the body is read (bounded) from ``wsgi.input`` and put
        back as an in-memory stream. The replay cache must have ``first_use_sync``.

        Raises:
            RequestMismatch, ReplayedToken, UnboundToken: 401.
            PayloadTooLarge: 413.
            ReplayCacheUnavailable: 503.
            ConfigError: the replay cache has no synchronous form.
        """
        bound = self._bound_issuer(claims.get("iss"))
        if bound is None:
            return
        method = environ.get("REQUEST_METHOD", "GET")
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if isinstance(raw, str) and raw.startswith("/"):
            path = raw.partition("?")[0]
        else:
            script = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            path = quote(script.encode("latin-1"), safe="/;=,@:!$&'()*+~")
        scope = {
            "raw_path": path.encode("latin-1"),
            "path": path,
            "scheme": environ.get("wsgi.url_scheme", "http"),
            "headers": [(b"host", environ.get("HTTP_HOST", "").encode("latin-1"))],
            "server": (environ.get("SERVER_NAME", ""), environ.get("SERVER_PORT")),
        }
        try:
            check_request(
                claims,
                method=method,
                htu=self.public.htu(scope),
                query=environ.get("QUERY_STRING", "").encode("latin-1"),
            )
            if claims.get("htd") == UNBOUND_BODY:
                if not self.allow_unbound_body:
                    raise RequestMismatch(
                        detail="the token forwards an unbound body (refused here)"
                    )
            else:
                body = _read_wsgi_body(environ, bound.max_body)
                check_body(claims, body)
                environ["wsgi.input"] = io.BytesIO(body)
                environ["CONTENT_LENGTH"] = str(len(body))
        except RequestMismatch as exc:
            logger.info("bound token refused for %s %r: %s", method, path, exc.detail)
            raise
        first_use = getattr(self.replay_cache, "first_use_sync", None)
        if first_use is None:
            raise ConfigError("a WSGI app needs a replay cache with first_use_sync")
        now = self._clock()
        expires = float(claims["exp"]) + bound.leeway
        if not first_use(bound.replay_key(claims["jti"]), expires=expires, now=now):
            logger.info("bound token replayed for %s %r", method, path)
            raise ReplayedToken("the token was already used")


#: Longest ``jti`` an in-memory replay cache records as it is (longer ones are hashed).
_MAX_PLAIN_JTI = 64


class _BoundIssuer:
    """What :class:`RequestBinder` needs of a bound issuer, computed once."""

    __slots__ = ("_issuer_nul", "_key_prefix", "_plain", "leeway", "max_body")

    def __init__(self, config: IssuerConfig, *, plain_keys: bool) -> None:
        self.leeway = float(config.leeway)
        self.max_body = config.bind_max_body
        self._plain = plain_keys
        self._issuer_nul = f"{config.issuer}\x00"
        self._key_prefix = self._issuer_nul.encode()

    def replay_key(self, jti: str) -> str:
        """The replay-cache key of ``jti``: :func:`~keyswap.verifier.replay.replay_key` (SHA-256 of
        issuer and ``jti``, as shared caches store it), or for an in-memory cache and a ``jti`` of
        at most :data:`_MAX_PLAIN_JTI` characters, ``issuer + NUL + jti`` itself: as bounded, and
        it saves a hash per request. The two forms never collide (a hex digest has no NUL)."""
        if self._plain and len(jti) <= _MAX_PLAIN_JTI:
            return self._issuer_nul + jti
        return hashlib.sha256(self._key_prefix + jti.encode()).hexdigest()


def _read_wsgi_body(environ: dict[str, Any], limit: int) -> bytes:
    stream = environ.get("wsgi.input")
    length_text = environ.get("CONTENT_LENGTH") or ""
    if stream is None:
        return b""
    if length_text.strip():
        try:
            length = int(length_text)
        except ValueError:
            raise RequestMismatch(detail="unusable Content-Length") from None
        if length > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        data: bytes = stream.read(length)
        return data
    if not environ.get("wsgi.input_terminated"):
        return b""  # no length and no terminated stream: WSGI says there is no body to read
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    return data


def _has_body(scope: Scope) -> bool:
    """False only when HTTP/1.x framing says there is no body (no Content-Length, no
    Transfer-Encoding, or ``Content-Length: 0``); other protocols are always read."""
    if scope.get("http_version", "1.1") not in ("1.1", "1.0"):
        return True
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _declared_length(scope)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestMismatch(detail="the client left before its body was complete")
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes")
            parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


class _Replay:
    """A ``receive`` that hands out the already-read body once, then defers to the server's."""

    __slots__ = ("_body", "_receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        body = self._body
        if body is not None:
            self._body = None
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive()
