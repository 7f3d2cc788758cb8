"""Starlette example: the protected route of `keyswap origin`, as a Starlette app.

    KEYSWAP_ISSUER=... KEYSWAP_JWKS_URL=... KEYSWAP_AUDIENCE=... uvicorn examples.starlette_app:app

Every path except `/health` needs a valid token (the ASGI middleware); `/claims` answers the verified
claims as JSON; `/orders` also needs the `orders:read` scope.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyswap.verifier.asgi import JWTAuthMiddleware
from keyswap.verifier.starlette import get_claims, requires_scopes, verifier_lifespan
from keyswap.verifier.verify import IssuerConfig, Verifier

verifier = Verifier(
    IssuerConfig(
        issuer=os.environ["KEYSWAP_ISSUER"],
        jwks_url=os.environ["KEYSWAP_JWKS_URL"],
        audience=os.environ.get("KEYSWAP_AUDIENCE") or None,
    )
)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def claims(request: Request) -> JSONResponse:
    return JSONResponse(get_claims(request))


@requires_scopes("orders:read")
async def orders(request: Request) -> JSONResponse:
    return JSONResponse({"orders": [], "consumer": (get_claims(request) or {}).get("sub")})


app = Starlette(
    routes=[Route("/health", health), Route("/claims", claims), Route("/orders", orders)],
    middleware=[Middleware(JWTAuthMiddleware, verifier=verifier, exempt_paths=["/health"])],
    lifespan=verifier_lifespan(verifier),
)
