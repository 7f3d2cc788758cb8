"""WSGI middleware: the ASGI middleware's contract for any WSGI app (gunicorn, uWSGI, mod_wsgi, waitress).

Each request is verified with ``Verifier.verify_sync`` on the server's own thread. The verifier's key set
is one thread-safe cache: a known kid is served from memory while refreshes run in the background, and a
cold start or an unknown kid makes one fetch however many threads wait for it.

On success the claims dict is stored in ``environ["keyswap.claims"]``; otherwise the response is the
same as the ASGI middleware's (see :mod:`keyswap.verifier.responses`): 401 ``No token provided`` /
``Invalid token`` with the RFC 6750 challenge, 403 ``insufficient_scope`` with ``scope="..."``,
503 with ``Retry-After`` when no signing keys are available.

::

    from keyswap.verifier.verify import IssuerConfig, Verifier
    from keyswap.verifier.wsgi import WSGIAuthMiddleware

    application = WSGIAuthMiddleware(application, verifier=Verifier(IssuerConfig(...)))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from keyswap.verifier.bound import RequestBinder, SyncReplayCache
from keyswap.verifier.extract import DEFAULT_MAX_TOKEN_SIZE
from keyswap.verifier.permissions import DEFAULT_PERMISSION_CLAIMS, ClaimPath, validate_scopes
from keyswap.verifier.replay import MemoryReplayCache
from keyswap.verifier.responses import CLAIMS_ENVIRON_KEY, Guard, Rejection, VerifierLike
from keyswap.verifier.verify import Verifier

__all__ = ["CLAIMS_ENVIRON_KEY", "WSGIAuthMiddleware", "get_claims", "respond"]


def get_claims(environ: Mapping[str, Any]) -> dict[str, Any] | None:
    """The verified claims of this request, or ``None`` (exempt path, or no middleware)."""
    claims = environ.get(CLAIMS_ENVIRON_KEY)
    return claims if isinstance(claims, dict) else None


def respond(rejection: Rejection, start_response: StartResponse) -> list[bytes]:
    """Send ``rejection`` as a WSGI response."""
    start_response(rejection.status_line, list(rejection.headers))
    return [rejection.body]


class WSGIAuthMiddleware:
    """WSGI middleware: verify the bearer token, put the claims in the environ, or answer 401/403/503.

    Args:
        app: the WSGI application to protect.
        verifier: a ``Verifier`` (its ``verify_sync`` is used).
        realm: the ``realm`` of the ``WWW-Authenticate`` challenge.
        exempt_paths: ``PATH_INFO`` values served without a token (``"/health"`` exactly,
            ``"/public/*"`` as a prefix).
        scopes: scopes every request must have (403 otherwise); empty by default.
        permission_claims: where scopes are read from (default ``scope``, ``scp``, ``roles``).
        start: call ``verifier.start()`` on the first request of each process (after a pre-fork
            server has forked), so keys are refreshed in the background. Pass ``False`` when you start
            the verifier yourself.
        error_descriptions: include ``error_description`` in challenges.
        max_token_size: longer ``Authorization`` values are rejected before any other work.
        public_url: for issuers with ``bind_request`` (request-bound tokens,
            ``docs/request-binding.md``): the app's base URL as the gateway addresses it (``None``:
            the request's scheme and ``Host``). The body of a bound request is read (bounded),
            checked and handed to the app as an in-memory ``wsgi.input``.
        replay_cache: where bound tokens' ``jti`` values are recorded: ``MemoryReplayCache``
            (default, per process) or ``RedisReplayCache`` (shared by every worker process).
        allow_unbound_body: accept bound tokens whose body the gateway forwarded unhashed.
        token_header: ``"authorization"`` or ``"txn-token"`` (Transaction Tokens in the
            ``Txn-Token`` header; use an issuer with ``profile="txn-token"``).

    Raises:
        ConfigError: a bad realm or exempt path.
        ValueError: a bad scope or claim path.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        verifier: VerifierLike,
        realm: str = "keyswap",
        exempt_paths: Iterable[str] = (),
        scopes: Sequence[str] = (),
        permission_claims: Iterable[ClaimPath] = DEFAULT_PERMISSION_CLAIMS,
        start: bool = True,
        error_descriptions: bool = True,
        max_token_size: int = DEFAULT_MAX_TOKEN_SIZE,
        public_url: str | None = None,
        replay_cache: SyncReplayCache | None = None,
        allow_unbound_body: bool = True,
        token_header: str = "authorization",  # noqa: S107 - a header name
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.scopes = validate_scopes(scopes)
        self.guard = Guard(
            verifier,
            realm=realm,
            exempt_paths=exempt_paths,
            permission_claims=permission_claims,
            error_descriptions=error_descriptions,
            max_token_size=max_token_size,
            logger_name="keyswap.verifier.wsgi",
            enforces_binding=True,
            token_header=token_header,
        )
        self._start = start
        #: Checks request-bound tokens (``None`` when no issuer of the verifier binds requests).
        self.binder: RequestBinder | None = None
        if isinstance(verifier, Verifier) and verifier.binds_requests:
            self.binder = RequestBinder(
                verifier.issuer_config,
                public_url=public_url,
                replay_cache=replay_cache if replay_cache is not None else MemoryReplayCache(),
                allow_unbound_body=allow_unbound_body,
                clock=verifier.clock,
            )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._start:
            self.guard.ensure_started()
        path = environ.get("PATH_INFO") or "/"
        if self.guard.is_exempt(path):
            return self.app(environ, start_response)
        result = self.guard.authenticate_sync(environ.get(self.guard.environ_key), self.scopes)
        if isinstance(result, Rejection):
            self.guard.responder.log(environ.get("REQUEST_METHOD", ""), path, result)
            return respond(result, start_response)
        if self.binder is not None:
            try:
                self.binder.enforce_wsgi(environ, result)
            except Exception as exc:
                refused = self.guard.responder.reject(exc)
                self.guard.responder.log(environ.get("REQUEST_METHOD", ""), path, refused)
                return respond(refused, start_response)
        environ[CLAIMS_ENVIRON_KEY] = result
        return self.app(environ, start_response)
