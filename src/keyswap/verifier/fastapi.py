"""FastAPI: a bearer security dependency that yields typed claims and enforces scopes.

::

    from fastapi import FastAPI, Security
    from keyswap.verifier.verify import IssuerConfig, Verifier
    from keyswap.verifier.fastapi import KeyswapBearer, TokenClaims

    auth = KeyswapBearer(Verifier(IssuerConfig(issuer=..., jwks_url=..., audience=...)))
    app = FastAPI(lifespan=auth.lifespan)
    auth.install(app)

    @app.get("/orders")
    async def orders(claims: TokenClaims = Security(auth, scopes=["orders:read"])) -> dict:
        return dict(claims.raw)

- ``Depends(auth)`` requires a valid token; ``Security(auth, scopes=[...])`` also requires the scopes
  (read from ``scope``, ``scp`` and ``roles`` unless configured otherwise).
- The OpenAPI schema gets an HTTP bearer security scheme (``/docs`` shows the Authorize button).
- Errors are 401 / 403 / 503 with the RFC 6750 challenge or ``Retry-After``, never 422 or 500. After
  :meth:`KeyswapBearer.install` the bodies are byte for byte the ASGI middleware's (``text/plain``);
  without it FastAPI renders them as ``{"detail": "Invalid token"}`` with the same status and headers.
- When :class:`keyswap.verifier.asgi.JWTAuthMiddleware` (or another dependency) already verified the
  request *with the same verifier*, its claims are reused; nothing is verified twice. Claims another
  verifier produced (a gateway middleware in front of a route that needs an internal issuer) are never
  trusted: the dependency verifies the token again with its own verifier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn

from fastapi import FastAPI, HTTPException
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from keyswap.verifier.asgi import store_claims, verified_claims
from keyswap.verifier.extract import DEFAULT_MAX_TOKEN_SIZE
from keyswap.verifier.permissions import (
    DEFAULT_PERMISSION_CLAIMS,
    ClaimPath,
    TokenClaims,
    validate_scopes,
)
from keyswap.verifier.responses import Guard, Rejection, VerifierLike
from keyswap.verifier.starlette import rejection_response, verifier_lifespan, warm_up

__all__ = ["KeyswapBearer", "KeyswapHTTPException", "TokenClaims", "rejection_handler"]


class KeyswapHTTPException(HTTPException):
    """An authentication / authorisation failure carrying its :class:`Rejection`.

    FastAPI's default handler already sends its status and headers; :func:`rejection_handler`
    (installed by :meth:`KeyswapBearer.install`) sends the exact middleware body as well.
    """

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.status, detail=rejection.text, headers=rejection.extra_headers)
        self.rejection = rejection


async def rejection_handler(request: Request, exc: Exception) -> Response:
    """Exception handler rendering a :class:`KeyswapHTTPException` like the ASGI middleware."""
    if not isinstance(exc, KeyswapHTTPException):  # pragma: no cover - registered for that class
        raise exc
    return rejection_response(exc.rejection)


class KeyswapBearer(SecurityBase):
    """A FastAPI security dependency: verify the bearer token, check scopes, return :class:`TokenClaims`.

    Args:
        verifier: a ``Verifier`` (its async ``verify`` is used).
        scopes: scopes every route using this dependency requires, on top of ``Security(scopes=)``.
        realm: the ``realm`` of the ``WWW-Authenticate`` challenge.
        permission_claims: where scopes are read from (default ``scope``, ``scp``, ``roles``).
        scheme_name: the security scheme's name in OpenAPI.
        description: the security scheme's description in OpenAPI.
        error_descriptions: include ``error_description`` in challenges.
        max_token_size: longer ``Authorization`` values are rejected before any other work.

    Raises:
        ConfigError: a bad realm.
        ValueError: a bad scope or claim path.
    """

    def __init__(
        self,
        verifier: VerifierLike,
        *,
        scopes: Sequence[str] = (),
        realm: str = "keyswap",
        permission_claims: Iterable[ClaimPath] = DEFAULT_PERMISSION_CLAIMS,
        scheme_name: str = "keyswapBearer",
        description: str | None = "A JWT minted by the keyswap gateway.",
        error_descriptions: bool = True,
        max_token_size: int = DEFAULT_MAX_TOKEN_SIZE,
    ) -> None:
        self.model = HTTPBearerModel(bearerFormat="JWT", description=description)
        self.scheme_name = scheme_name
        self.verifier = verifier
        self.scopes = validate_scopes(scopes)
        self.guard = Guard(
            verifier,
            realm=realm,
            permission_claims=permission_claims,
            error_descriptions=error_descriptions,
            max_token_size=max_token_size,
            logger_name="keyswap.verifier.fastapi",
        )

    async def __call__(self, conn: HTTPConnection, security_scopes: SecurityScopes) -> TokenClaims:
        """The dependency: FastAPI injects the connection and the scopes ``Security`` asked for.

        Raises:
            KeyswapHTTPException: 401 (no / bad token), 403 (missing scope), 503 (no keys).
        """
        claims = verified_claims(conn.scope, self.verifier)
        if claims is None:
            result = await self.guard.authenticate(conn.scope["headers"])
            if isinstance(result, Rejection):
                self._fail(conn, result)
            claims = result
            store_claims(conn.scope, self.verifier, claims)
        required = (
            (*self.scopes, *security_scopes.scopes) if self.scopes else security_scopes.scopes
        )
        rejection = self.guard.check_scopes(claims, required)
        if rejection is not None:
            self._fail(conn, rejection)
        return TokenClaims.from_claims(claims, self.guard.permission_claims)

    def _fail(self, conn: HTTPConnection, rejection: Rejection) -> NoReturn:
        method = conn.scope.get("method", "WEBSOCKET")
        self.guard.responder.log(method, conn.url.path, rejection)
        raise KeyswapHTTPException(rejection)

    @property
    def lifespan(self) -> Callable[[Any], AbstractAsyncContextManager[None]]:
        """A lifespan that starts the verifier, waits for the first key fetch (failing open: a JWKS
        that is down is logged, not fatal) and closes the verifier at shutdown:
        ``FastAPI(lifespan=auth.lifespan)``."""
        return verifier_lifespan(self.verifier)

    def install(self, app: FastAPI, *, lifespan: bool = False) -> None:
        """Register the exception handler that sends the exact middleware bodies.

        With ``lifespan=True`` the app's existing lifespan is also wrapped so the verifier is started
        (and warmed) before it and closed after it (for apps that cannot pass ``lifespan=auth.lifespan``).
        """
        app.add_exception_handler(KeyswapHTTPException, rejection_handler)
        if lifespan:
            original = app.router.lifespan_context
            verifier = self.verifier

            @asynccontextmanager
            async def wrapped(asgi_app: Any) -> AsyncIterator[Any]:
                await warm_up(verifier)
                try:
                    async with original(asgi_app) as state:
                        yield state
                finally:
                    verifier.close()

            app.router.lifespan_context = wrapped
