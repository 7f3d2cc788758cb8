"""Starlette example: the protected route of `keyswap origin`, as a Starlette app.

    KEYSWAP_ISSUER=... KEYSWAP_JWKS_URL=... KEYSWAP_AUDIENCE=... uvicorn examples.starlette_app:app

Every path except `/health` needs a valid token (the ASGI middleware); `/claims` answers the verified
claims as JSON; `GET /orders` also needs the `orders:read` scope, `POST /orders` the `orders:write`
scope.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyswap.verifier.asgi import JWTAuthMiddleware
from keyswap.verifier.envconfig import issuer_config_from_env
from keyswap.verifier.starlette import get_claims, requires_scopes, verifier_lifespan
from keyswap.verifier.verify import Verifier

# The settings of `keyswap origin`: KEYSWAP_ISSUER, KEYSWAP_JWKS_URL (or KEYSWAP_DISCOVER=true),
# KEYSWAP_AUDIENCE, KEYSWAP_ALGORITHMS (default: all four), KEYSWAP_REQUIRED_CLAIMS, KEYSWAP_PROFILE...
verifier = Verifier(issuer_config_from_env(os.environ))


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def claims(request: Request) -> JSONResponse:
    return JSONResponse(get_claims(request))


@requires_scopes("orders:read")
async def orders(request: Request) -> JSONResponse:
    return JSONResponse({"orders": [], "consumer": (get_claims(request) or {}).get("sub")})


@requires_scopes("orders:write")
async def create_order(request: Request) -> JSONResponse:
    consumer = (get_claims(request) or {}).get("sub")
    return JSONResponse({"created": True, "consumer": consumer}, status_code=201)


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/claims", claims),
        Route("/orders", orders, methods=["GET"]),
        Route("/orders", create_order, methods=["POST"]),
    ],
    middleware=[Middleware(JWTAuthMiddleware, verifier=verifier, exempt_paths=["/health"])],
    lifespan=verifier_lifespan(verifier),
)
