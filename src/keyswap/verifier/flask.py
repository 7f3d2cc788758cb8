"""Flask extension: verify bearer tokens app-wide or per view; claims on ``flask.g.keyswap_claims``.

::

    from flask import Flask, g
    from keyswap.verifier.verify import IssuerConfig, Verifier
    from keyswap.verifier.flask import KeyswapFlask, require_token

    app = Flask(__name__)
    KeyswapFlask(app, verifier=Verifier(IssuerConfig(issuer=..., jwks_url=..., audience=...)))

    @app.get("/orders")
    @require_token(scopes=["orders:read"])
    def orders():
        return g.keyswap_claims

``KeyswapFlask(app, ...)`` checks every request (except ``exempt_paths``) before its view runs;
``KeyswapFlask(app, ..., protect_all=False)`` only registers the verifier, and ``@require_token`` then
protects the views it decorates. Both put the verified claims dict on ``g.keyswap_claims`` (and
``request.environ["keyswap.claims"]``). The mark that a request was verified lives on the request
(its WSGI environ), never on ``g``: ``g`` belongs to the app context, which Flask reuses across
requests when one was pushed at import (``app.app_context().push()``), so ``g.keyswap_claims`` is
also cleared before and after every request. App-wide ``scopes`` apply to every request keyswap
verifies: ``protect_all`` requests and every ``@require_token`` view (exempt path or not).
The application-factory pattern works as usual::

    keyswap = KeyswapFlask(verifier=verifier)
    def create_app():
        app = Flask(__name__)
        keyswap.init_app(app)
        return app

Errors are the ASGI middleware's responses: 401 ``No token provided`` / ``Invalid token`` with the
RFC 6750 challenge, 403 ``insufficient_scope`` with ``scope="..."``, 503 with ``Retry-After``.
The verifier is started (background key refresh) on the first request of each worker process.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from flask import Flask, Response, current_app, g, has_request_context, request

from keyswap.errors import ConfigError
from keyswap.verifier.bound import RequestBinder, SyncReplayCache
from keyswap.verifier.extract import DEFAULT_MAX_TOKEN_SIZE
from keyswap.verifier.permissions import (
    DEFAULT_PERMISSION_CLAIMS,
    ClaimPath,
    normalise_paths,
    validate_scopes,
)
from keyswap.verifier.replay import MemoryReplayCache
from keyswap.verifier.responses import (
    CLAIMS_ENVIRON_KEY,
    Guard,
    Rejection,
    VerifierLike,
    verifier_from_settings,
)
from keyswap.verifier.verify import Verifier

__all__ = ["EXTENSION_KEY", "G_CLAIMS", "KeyswapFlask", "get_claims", "require_token"]

#: ``app.extensions`` key of the extension state.
EXTENSION_KEY = "keyswap"
#: Attribute of :data:`flask.g` holding the verified claims dict.
G_CLAIMS = "keyswap_claims"
# Environ key of ``(app state, claims)``: which extension verified this request (the request's mark).
_VERIFIED_BY = "keyswap.flask.verified_by"

P = ParamSpec("P")
R = TypeVar("R")


class _ViewDecorator(Protocol):
    """What :func:`require_token` returns: the view keeps its signature, and may now also return
    the rejection :class:`~flask.Response` (from its coroutine, for an ``async def`` view)."""

    @overload
    def __call__(
        self, view: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R | Response]]: ...

    @overload
    def __call__(self, view: Callable[P, R], /) -> Callable[P, R | Response]: ...


def get_claims() -> dict[str, Any] | None:
    """The verified claims of the current request, or ``None`` when it was not verified (or outside
    a request)."""
    if not has_request_context():
        return None
    marker = request.environ.get(_VERIFIED_BY)
    if isinstance(marker, tuple) and len(marker) == 2:
        claims = marker[1]
        if isinstance(claims, dict) and request.environ.get(CLAIMS_ENVIRON_KEY) is claims:
            return claims
    return None


def _forget_claims(*_: object) -> None:
    """Drop ``g.keyswap_claims``: the app context (and its ``g``) may outlive the request."""
    g.pop(G_CLAIMS, None)


def _response(rejection: Rejection) -> Response:
    return Response(
        rejection.body,
        status=rejection.status,
        headers=rejection.extra_headers,
        content_type=rejection.content_type,
    )


class KeyswapFlask:
    """The Flask extension.

    Args:
        app: the app to set up now; or call :meth:`init_app` later.
        verifier: a ``Verifier`` (its ``verify_sync`` is used, on the request's thread). When omitted,
            :meth:`init_app` builds one from ``app.config``: ``KEYSWAP_ISSUER``, ``KEYSWAP_JWKS_URL``,
            ``KEYSWAP_AUDIENCE`` (and optionally ``KEYSWAP_ALGORITHMS``, ``KEYSWAP_LEEWAY``).
        protect_all: check every request before its view (``exempt_paths`` aside). With ``False``
            only views decorated with :func:`require_token` are protected.
        exempt_paths: paths served without a token (``"/health"`` exactly, ``"/public/*"`` as a prefix).
        scopes: scopes every protected request must have: every request checked with
            ``protect_all``, and every view decorated with :func:`require_token` (on an exempt path
            and with ``protect_all=False`` too).
        realm: the ``realm`` of the ``WWW-Authenticate`` challenge.
        permission_claims: where scopes are read from (default ``scope``, ``scp``, ``roles``).
        error_descriptions: include ``error_description`` in challenges.
        max_token_size: longer ``Authorization`` values are rejected before any other work.
        public_url: for issuers with ``bind_request`` (request-bound tokens): the app's base URL as
            the gateway sees it (``None``: the request's scheme and ``Host``).
        replay_cache: where bound tokens' ``jti`` values are recorded: a ``MemoryReplayCache``
            (default, per process) or a ``RedisReplayCache`` shared by every worker.
        allow_unbound_body: accept bound tokens whose body the gateway forwarded unhashed.
        token_header: ``"authorization"`` or ``"txn-token"`` (Transaction Tokens in the
            ``Txn-Token`` header; use an issuer with ``profile="txn-token"``).

    Raises:
        ConfigError: no verifier and no ``KEYSWAP_*`` config, a bad realm or exempt path.
        ValueError: a bad scope or claim path.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        verifier: VerifierLike | None = None,
        protect_all: bool = True,
        exempt_paths: Iterable[str] = (),
        scopes: Sequence[str] = (),
        realm: str = "keyswap",
        permission_claims: Iterable[ClaimPath] = DEFAULT_PERMISSION_CLAIMS,
        error_descriptions: bool = True,
        max_token_size: int = DEFAULT_MAX_TOKEN_SIZE,
        public_url: str | None = None,
        replay_cache: SyncReplayCache | None = None,
        allow_unbound_body: bool = True,
        token_header: str = "authorization",  # noqa: S107 - a header name
    ) -> None:
        self.verifier = verifier
        self._binding: dict[str, Any] = {
            "public_url": public_url,
            "replay_cache": replay_cache,
            "allow_unbound_body": allow_unbound_body,
        }
        self.protect_all = protect_all
        self.scopes = validate_scopes(scopes)
        self._options: dict[str, Any] = {
            "realm": realm,
            "exempt_paths": tuple(exempt_paths),
            "permission_claims": normalise_paths(permission_claims),
            "error_descriptions": error_descriptions,
            "max_token_size": max_token_size,
            "logger_name": "keyswap.verifier.flask",
            "enforces_binding": True,
            "token_header": token_header,
        }
        if verifier is not None:
            Guard(verifier, **self._options)  # validate eagerly, before any app exists
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app`` (and, with ``protect_all``, the request check).

        Raises:
            ConfigError: no verifier was given and ``app.config`` has no ``KEYSWAP_*`` settings.
        """
        verifier = self.verifier
        if verifier is None:
            verifier = verifier_from_settings(app.config, prefix="KEYSWAP_")
        binder = None
        if isinstance(verifier, Verifier) and verifier.binds_requests:
            options = dict(self._binding)
            if options["replay_cache"] is None:
                options["replay_cache"] = MemoryReplayCache()
            binder = RequestBinder(verifier.issuer_config, clock=verifier.clock, **options)
        app.extensions[EXTENSION_KEY] = _AppState(
            Guard(verifier, **self._options), self.scopes, binder
        )
        # Registered first, so no later before_request function sees another request's claims.
        app.before_request_funcs.setdefault(None, []).insert(0, _forget_claims)
        app.teardown_request(_forget_claims)
        if self.protect_all:
            app.before_request(_before_request)


class _AppState:
    """What one app needs per request: the guard and the app-wide scopes."""

    def __init__(
        self, guard: Guard, scopes: tuple[str, ...], binder: RequestBinder | None = None
    ) -> None:
        self.guard = guard
        self.scopes = scopes
        self.binder = binder

    def authenticate(self, scopes: Sequence[str] = ()) -> Rejection | None:
        """Verify the current request (once per request) and check ``scopes``; store the claims on
        the request (and on ``g`` for the views).

        Returns ``None`` on success, else the rejection to send.
        """
        self.guard.ensure_started()
        claims = self._verified()
        if claims is None:
            result = self.guard.authenticate_sync(request.environ.get(self.guard.environ_key))
            if isinstance(result, Rejection):
                self.guard.responder.log(request.method, request.path, result)
                return result
            claims = result
            if self.binder is not None:
                try:
                    self.binder.enforce_wsgi(request.environ, claims)
                except Exception as exc:
                    refused = self.guard.responder.reject(exc)
                    self.guard.responder.log(request.method, request.path, refused)
                    return refused
            request.environ[CLAIMS_ENVIRON_KEY] = claims
            request.environ[_VERIFIED_BY] = (self, claims)
            setattr(g, G_CLAIMS, claims)
        rejection = self.guard.check_scopes(claims, scopes)
        if rejection is not None:
            self.guard.responder.log(request.method, request.path, rejection)
        return rejection

    def authenticate_view(self, scopes: tuple[str, ...]) -> Rejection | None:
        """:meth:`authenticate` for a :func:`require_token` view: the app-wide scopes and ``scopes``."""
        if self.scopes:
            scopes = (*self.scopes, *(s for s in scopes if s not in self.scopes))
        return self.authenticate(scopes)

    def _verified(self) -> dict[str, Any] | None:
        """The claims this extension already verified for the current request, else ``None``."""
        marker = request.environ.get(_VERIFIED_BY)
        if isinstance(marker, tuple) and len(marker) == 2 and marker[0] is self:
            claims = marker[1]
            if isinstance(claims, dict) and request.environ.get(CLAIMS_ENVIRON_KEY) is claims:
                return claims
        return None


def _state() -> _AppState:
    state = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, _AppState):
        raise ConfigError("@require_token needs KeyswapFlask(app, verifier=...) on this app")
    return state


def _before_request() -> Response | None:
    state = _state()
    if state.guard.is_exempt(request.path):
        return None
    rejection = state.authenticate(state.scopes)
    return _response(rejection) if rejection is not None else None


def require_token(scopes: Sequence[str] = ()) -> _ViewDecorator:
    """Protect one view: a valid token, every app-wide scope of :class:`KeyswapFlask` and every scope
    in ``scopes`` are required.

    Works with ``protect_all=True`` (the token is then verified once, before the view, and only the
    scopes are checked here), on an exempt path, and with ``protect_all=False``. ``async def`` views
    are supported.

    Raises:
        ValueError: a scope is not an RFC 6749 scope token.
    """
    required = validate_scopes(scopes)

    def decorate(view: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                rejection = _state().authenticate_view(required)
                if rejection is not None:
                    return _response(rejection)
                return await view(*args, **kwargs)

            return async_wrapper

        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            rejection = _state().authenticate_view(required)
            if rejection is not None:
                return _response(rejection)
            return view(*args, **kwargs)

        return wrapper

    return decorate
