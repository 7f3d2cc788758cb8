"""What every framework adapter shares: the same 401/403/503, one request policy, one config reader.

- :class:`Responder` / :class:`Rejection`: an exception -> a framework-neutral response;
- :class:`Guard`: exempt paths, bearer extraction, verification (sync or async), required scopes;
- :func:`verifier_from_settings`: a ``Verifier`` from flat ``KEYSWAP``-style settings.

The ASGI middleware (:mod:`keyswap.verifier.asgi`) owns the wording, the RFC 6750 challenge and the
sanitising of ``error_description``. This module exposes that one mapping to the WSGI, Flask, Django,
DRF, Starlette and FastAPI adapters as a plain value (:class:`Rejection`), so no adapter keeps its own
copy and every adapter answers byte for byte like the middleware:

==========================  ======  =====================================================================
cause                       status  headers / ``text/plain`` body
==========================  ======  =====================================================================
no bearer token             401     ``WWW-Authenticate: Bearer realm="..."`` / ``No token provided``
bad token                   401     ``Bearer realm="...", error="invalid_token", error_description="..."``
                                    / ``Invalid token``
missing scope               403     ``Bearer realm="...", error="insufficient_scope", scope="..."``
                                    / ``Insufficient scope``
keys unavailable            503     ``Retry-After: N`` / ``Signing keys temporarily unavailable``
==========================  ======  =====================================================================

Any other exception out of a verifier is logged (token redacted) and answered like a bad token.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from keyswap.errors import ConfigError, InsufficientScope, UnboundToken
from keyswap.verifier.asgi import JWTAuthMiddleware, Receive, Scope, Send, sanitize_description
from keyswap.verifier.envconfig import issuer_config_from_env
from keyswap.verifier.extract import DEFAULT_MAX_TOKEN_SIZE, bearer_token, txn_token
from keyswap.verifier.permissions import (
    DEFAULT_PERMISSION_CLAIMS,
    ClaimPath,
    missing_scopes,
    normalise_paths,
    permissions_from_claims,
)
from keyswap.verifier.verify import IssuerConfig, Verifier

__all__ = [
    "CLAIMS_ENVIRON_KEY",
    "Guard",
    "Rejection",
    "Responder",
    "VerifierLike",
    "headers_from_authorization",
    "verifier_from_settings",
]

#: Where WSGI adapters put the verified claims (``environ["keyswap.claims"]``).
CLAIMS_ENVIRON_KEY = "keyswap.claims"

_BODY_HEADERS = frozenset({"content-type", "content-length"})


@dataclass(frozen=True, slots=True)
class Rejection:
    """One error response: status, headers (lower-case names, ``str`` values) and body bytes.

    ``label`` is the metric / log label of the cause (``"expired"``, ``"missing_token"``, ...);
    ``reason`` the developer-facing reason (never contains the token).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    label: str
    reason: str

    @property
    def text(self) -> str:
        """The body as text (always ASCII)."""
        return self.body.decode("ascii")

    @property
    def content_type(self) -> str:
        """The ``Content-Type`` of the body."""
        return self.header("content-type") or "text/plain; charset=utf-8"

    @property
    def extra_headers(self) -> dict[str, str]:
        """Headers other than ``Content-Type`` / ``Content-Length`` (``WWW-Authenticate``,
        ``Retry-After``), for frameworks that set the body headers themselves."""
        return {k: v for k, v in self.headers if k not in _BODY_HEADERS}

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or ``None``."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    @property
    def status_line(self) -> str:
        """A WSGI status line, e.g. ``"401 Unauthorized"``."""
        return f"{self.status} {_REASONS.get(self.status, 'Error')}"


_REASONS: Mapping[int, str] = {
    401: "Unauthorized",
    403: "Forbidden",
    503: "Service Unavailable",
}


async def _unused_app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    raise RuntimeError("the responder never calls its app")


class _NoVerifier:
    async def verify(self, token: str) -> dict[str, Any]:  # pragma: no cover
        raise RuntimeError("the responder never verifies")


class Responder:
    """Turns an exception from verification (or a scope check) into a :class:`Rejection`.

    Args:
        realm: the ``realm`` of the ``WWW-Authenticate`` challenge.
        error_descriptions: include ``error_description`` in challenges.
        logger_name: where rejections are logged (at INFO, without the token).

    Raises:
        ConfigError: the realm is empty or contains characters a quoted header value cannot hold.
    """

    def __init__(
        self,
        *,
        realm: str = "keyswap",
        error_descriptions: bool = True,
        logger_name: str = "keyswap.verifier",
    ) -> None:
        # One mapping for every adapter: the middleware's (it validates the realm too).
        self._middleware = JWTAuthMiddleware(
            _unused_app,
            verifier=_NoVerifier(),
            realm=realm,
            error_descriptions=error_descriptions,
        )
        self.realm = realm
        self.error_descriptions = error_descriptions
        self._logger = logging.getLogger(logger_name)

    def reject(self, exc: Exception, *, token: str | None = None) -> Rejection:
        """The response for ``exc``; ``token`` is only used to redact it from a logged traceback."""
        raw = self._middleware.rejection(exc, token)
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw.headers)
        return Rejection(raw.status, headers, raw.body, raw.label, raw.reason)

    def insufficient_scope(self, required: Sequence[str]) -> Rejection:
        """The 403 for a token that lacks some of ``required``."""
        return self.reject(
            InsufficientScope("The token lacks a required scope", scope=" ".join(required))
        )

    def log(self, method: str, path: str, rejection: Rejection) -> None:
        """Log a rejection at INFO: method, path, cause, status and sanitised reason."""
        if self._logger.isEnabledFor(logging.INFO):
            self._logger.info(
                "rejected %s %r: %s %d %s",
                method,
                path,
                rejection.label,
                rejection.status,
                sanitize_description(rejection.reason),
            )


class VerifierLike(Protocol):
    """What the adapters need from a verifier (``keyswap.verifier.Verifier`` is one)."""

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the verified claims or raise a :class:`keyswap.errors.KeyswapError`."""
        ...

    def verify_sync(self, token: str) -> dict[str, Any]:
        """Blocking twin of :meth:`verify`, safe to call from many threads."""
        ...

    def start(self) -> None:
        """Start fetching keys in the background (non-blocking)."""
        ...

    def close(self) -> None:
        """Stop background work."""
        ...


class Guard:
    """The request policy every adapter shares: exempt paths, bearer extraction, verification,
    required scopes; the result is the claims dict or a :class:`Rejection`.

    Args:
        verifier: a ``Verifier`` (or anything with ``verify`` / ``verify_sync``).
        realm: the ``realm`` of the ``WWW-Authenticate`` challenge.
        exempt_paths: paths served without a token (``"/health"`` exactly, ``"/public/*"`` as a
            prefix), as in the ASGI middleware.
        permission_claims: where scopes are read from (see :mod:`keyswap.verifier.permissions`).
        error_descriptions: include ``error_description`` in challenges.
        max_token_size: longer ``Authorization`` values are rejected before any other work.
        logger_name: where rejections are logged.
        token_header: ``"authorization"`` (``Bearer``) or ``"txn-token"`` (a Transaction Token: the
            value passed to :meth:`authenticate_sync` is then the ``Txn-Token`` header's).
        enforces_binding: the adapter checks request-bound tokens itself (Flask). Otherwise a
            token from an issuer with ``bind_request=True`` that this guard verifies is refused
            (401): accepting it without checking method, URL, body and replay would defeat the
            binding. Use :class:`~keyswap.verifier.asgi.JWTAuthMiddleware` in front instead (claims
            it verified are reused by the FastAPI dependencies).

    Raises:
        ConfigError: a bad realm or exempt path.
        ValueError: a bad claim path.
    """

    def __init__(
        self,
        verifier: VerifierLike,
        *,
        realm: str = "keyswap",
        exempt_paths: Iterable[str] = (),
        permission_claims: Iterable[ClaimPath] = DEFAULT_PERMISSION_CLAIMS,
        error_descriptions: bool = True,
        max_token_size: int = DEFAULT_MAX_TOKEN_SIZE,
        logger_name: str = "keyswap.verifier",
        enforces_binding: bool = False,
        token_header: str = "authorization",  # noqa: S107 - a header name
    ) -> None:
        if token_header not in ("authorization", "txn-token"):
            raise ConfigError("token_header must be 'authorization' or 'txn-token'")
        self.verifier = verifier
        self.txn = token_header == "txn-token"  # noqa: S105
        #: The WSGI environ key of the header the token is read from.
        self.environ_key = "HTTP_TXN_TOKEN" if self.txn else "HTTP_AUTHORIZATION"
        self._unenforced: Any = None
        if not enforces_binding and isinstance(verifier, Verifier) and verifier.binds_requests:
            self._unenforced = verifier.issuer_config
        self.responder = Responder(
            realm=realm, error_descriptions=error_descriptions, logger_name=logger_name
        )
        # The middleware's exempt-path rules, validated and matched by the middleware itself.
        self._paths = JWTAuthMiddleware(
            _unused_app, verifier=verifier, realm=realm, exempt_paths=exempt_paths
        )
        self.permission_claims = normalise_paths(permission_claims)
        self.max_token_size = max_token_size
        self._started_pid: int | None = None
        self._start_lock = threading.Lock()

    def ensure_started(self) -> None:
        """Call ``verifier.start()`` once per process: on the first request, so a pre-fork server
        (gunicorn, uWSGI) starts the background refresh in each worker, not in the dead parent."""
        if self._started_pid == os.getpid():
            return
        with self._start_lock:
            pid = os.getpid()
            if self._started_pid != pid:
                self.verifier.start()
                self._started_pid = pid

    def is_exempt(self, path: str) -> bool:
        """``True`` when ``path`` is served without a token."""
        return self._paths.has_exempt and self._paths.is_exempt(path)

    def permissions(self, claims: Mapping[str, Any] | None) -> frozenset[str]:
        """The permissions ``claims`` grant, read from the configured claims."""
        return permissions_from_claims(claims, self.permission_claims)

    def check_scopes(
        self, claims: Mapping[str, Any] | None, scopes: Sequence[str]
    ) -> Rejection | None:
        """``None`` when ``claims`` grant every scope in ``scopes`` (a bare string is one scope),
        else the 403."""
        if isinstance(scopes, str):
            scopes = (scopes,)
        if scopes and missing_scopes(self.permissions(claims), scopes):
            return self.responder.insufficient_scope(scopes)
        return None

    def authenticate_sync(
        self, authorization: str | bytes | None, scopes: Sequence[str] = ()
    ) -> dict[str, Any] | Rejection:
        """Verify the ``Authorization`` header value (``None`` when absent) with ``verify_sync``
        (with ``token_header="txn-token"``: the ``Txn-Token`` header value)."""
        token: str | None = None
        try:
            if self.txn:
                raw = (
                    authorization.encode("latin-1")
                    if isinstance(authorization, str)
                    else authorization
                )
                token = txn_token(
                    [(b"txn-token", raw)] if raw is not None else [], max_size=self.max_token_size
                )
            else:
                token = bearer_token(
                    headers_from_authorization(authorization), max_size=self.max_token_size
                )
            claims = self.verifier.verify_sync(token)
            self._refuse_unenforced(claims)
        except Exception as exc:
            return self.responder.reject(exc, token=token)
        return self.check_scopes(claims, scopes) or claims

    async def authenticate(
        self, headers: Iterable[tuple[bytes, bytes]], scopes: Sequence[str] = ()
    ) -> dict[str, Any] | Rejection:
        """Verify the bearer token in ASGI ``headers`` with ``await verify``."""
        token: str | None = None
        try:
            token = bearer_token(headers, max_size=self.max_token_size)
            claims = await self.verifier.verify(token)
            self._refuse_unenforced(claims)
        except Exception as exc:
            return self.responder.reject(exc, token=token)
        return self.check_scopes(claims, scopes) or claims

    def _refuse_unenforced(self, claims: Mapping[str, Any]) -> None:
        if self._unenforced is None:
            return
        config = self._unenforced(claims.get("iss"))
        if config is not None and config.bind_request:
            logging.getLogger("keyswap.verifier").error(
                "a request-bound token reached an adapter that does not check request binding: "
                "refused; put JWTAuthMiddleware (or KeyswapFlask) in front"
            )
            raise UnboundToken("request binding is not checked here")


def headers_from_authorization(authorization: str | bytes | None) -> list[tuple[bytes, bytes]]:
    """ASGI-style headers holding one ``Authorization`` value (``None``: no header)."""
    if authorization is None:
        return []
    if isinstance(authorization, str):
        # WSGI (PEP 3333) hands headers over as latin-1 decoded str; anything else is junk.
        authorization = authorization.encode("latin-1", "replace")
    return [(b"authorization", authorization)]


def verifier_from_settings(settings: Mapping[str, Any], *, prefix: str = "") -> Verifier:
    """Build a :class:`~keyswap.verifier.Verifier` from flat settings (Django ``KEYSWAP``, Flask
    ``app.config`` with ``prefix="KEYSWAP_"``, ``os.environ`` with ``prefix="KEYSWAP_"``).

    Keys (after ``prefix``) are those of ``keyswap origin`` and
    :func:`~keyswap.verifier.envconfig.issuer_config_from_env`, with the same defaults: ``ISSUER``,
    ``JWKS_URL`` or ``DISCOVER`` (true: the JWKS URL from the issuer's metadata), ``AUDIENCE``,
    ``ALGORITHMS`` (a list or a comma-separated string; default all four), ``REQUIRED_CLAIMS``,
    ``PROFILE``, ``LEEWAY``, ``JWKS_CACHE_TTL``, ``JWKS_COOLDOWN``. Values may be strings or Python
    values (lists, numbers, booleans). Or ``ISSUERS``: a list of mappings with ``IssuerConfig`` field
    names, for several issuers.

    Raises:
        ConfigError: a required key is missing or a value is invalid.
    """
    issuers = settings.get(prefix + "ISSUERS")
    if issuers not in (None, ""):
        if isinstance(issuers, str | bytes) or not isinstance(issuers, Iterable):
            raise ConfigError(f"{prefix}ISSUERS must be a list of issuer mappings")
        try:
            configs = [IssuerConfig(**dict(item)) for item in issuers]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{prefix}ISSUERS: {exc}") from None
        return Verifier(configs)
    text = {
        name: _setting_text(value)
        for name, value in settings.items()
        if isinstance(name, str) and name.startswith(prefix) and value is not None
    }
    return Verifier(issuer_config_from_env(text, prefix=prefix))


def _setting_text(value: Any) -> str:
    """A setting as the text an environment variable would hold (lists comma-separated)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return ",".join(str(item) for item in value)
    return str(value)
