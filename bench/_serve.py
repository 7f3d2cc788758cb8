"""Serve one benchmark app with uvicorn (one worker, uvloop + httptools, no access log).

    python bench/_serve.py APP --port N [--jwks-url URL] [--upstream URL] [--server uvicorn|granian]

Apps:
  bare         Starlette, one small JSON route (the 1.00 of every table)
  keyswap      the same app behind keyswap's pure-ASGI JWTAuthMiddleware
  bound        the same app behind the middleware with a request-bound issuer (bind_request=True,
               public URL = this server, in-memory replay cache of 2,000,000 entries)
  handwritten  the same app behind the JWT middleware people write today: Starlette
               BaseHTTPMiddleware + PyJWKClient(url).get_signing_key_from_jwt + jwt.decode
  naiveproxy   a Starlette proxy: API-key check (HMAC of the presented key, dict lookup), then
               forward over one keep-alive aiohttp.ClientSession (env BENCH_API_KEY, BENCH_KEY_HEADER)
  otlpsink     an OTLP/HTTP trace collector that keeps nothing: `POST /v1/traces` read whole and
               answered 200 with an empty ExportTraceServiceResponse (the gateway's exporter then
               pays what it pays in front of a real collector)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import AUDIENCE, HOST, ISSUER


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


def bare_app() -> Starlette:
    return Starlette(routes=[Route("/", hello), Route("/{path:path}", hello)])


def otlp_sink_app() -> Starlette:
    async def traces(request: Request) -> Response:
        await request.body()
        return Response(b"", media_type="application/x-protobuf")

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


def keyswap_app(jwks_url: str) -> Any:
    from keyswap.verifier.asgi import JWTAuthMiddleware
    from keyswap.verifier.verify import IssuerConfig, Verifier

    verifier = Verifier(IssuerConfig(issuer=ISSUER, jwks_url=jwks_url, audience=AUDIENCE))
    verifier.start()
    return JWTAuthMiddleware(bare_app(), verifier=verifier)


def bound_app(jwks_url: str, public_url: str) -> Any:
    """The bare app behind the middleware with a bound issuer (request binding, replay cache)."""
    from keyswap.verifier.asgi import JWTAuthMiddleware
    from keyswap.verifier.replay import MemoryReplayCache
    from keyswap.verifier.verify import IssuerConfig, Verifier

    config = IssuerConfig(
        issuer=ISSUER,
        jwks_url=jwks_url,
        audience=AUDIENCE,
        algorithms=("RS256", "ES256", "EdDSA"),
        bind_request=True,
    )
    verifier = Verifier(config)
    verifier.start()
    # Room for every token of a whole benchmark run (a few 100k requests within the lifetimes).
    return JWTAuthMiddleware(
        bare_app(),
        verifier=verifier,
        public_url=public_url,
        replay_cache=MemoryReplayCache(2_000_000),
    )


def handwritten_app(jwks_url: str) -> Starlette:
    import jwt
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

    class JWTMiddleware(BaseHTTPMiddleware):
        def __init__(self, app: Any, jwks_url: str) -> None:
            super().__init__(app)
            self.jwks_client = jwt.PyJWKClient(jwks_url)

        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer "):
                return JSONResponse({"detail": "Not authenticated"}, status_code=401)
            token = auth[len("Bearer ") :]
            try:
                signing_key = self.jwks_client.get_signing_key_from_jwt(token)
                claims = jwt.decode(
                    token, signing_key.key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER
                )
            except jwt.PyJWTError:
                return JSONResponse({"detail": "Invalid token"}, status_code=401)
            request.state.claims = claims
            return await call_next(request)

    return Starlette(
        routes=[Route("/", hello), Route("/{path:path}", hello)],
        middleware=[Middleware(JWTMiddleware, jwks_url=jwks_url)],
    )


_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def naive_proxy_app(upstream: str) -> Starlette:
    import contextlib

    import aiohttp

    key_header = os.environ.get("BENCH_KEY_HEADER", "x-api-key").lower()
    secret = secrets.token_bytes(32)
    consumers = {
        hmac.digest(secret, os.environ["BENCH_API_KEY"].encode(), hashlib.sha256): "bench",
    }
    state: dict[str, aiohttp.ClientSession] = {}
    upstream = upstream.rstrip("/")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            state["session"] = session
            yield

    async def proxy(request: Request) -> Response:
        presented = request.headers.get(key_header, "")
        if key_header == "authorization" and presented.startswith("Bearer "):
            presented = presented[len("Bearer ") :]
        if (
            not presented
            or consumers.get(hmac.digest(secret, presented.encode(), hashlib.sha256)) is None
        ):
            return JSONResponse({"error": "invalid_api_key"}, status_code=401)
        headers = {
            k: v for k, v in request.headers.items() if k not in _HOP_BY_HOP and k != key_header
        }
        url = upstream + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        body = await request.body()
        async with state["session"].request(
            request.method, url, headers=headers, data=body or None
        ) as resp:
            content = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
            return Response(content=content, status_code=resp.status, headers=out)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(
        routes=[Route("/", proxy, methods=methods), Route("/{path:path}", proxy, methods=methods)],
        lifespan=lifespan,
    )


def make_app() -> Any:
    """Build the app named by $BENCH_APP (the factory granian imports; see ``--server granian``)."""
    name = os.environ["BENCH_APP"]
    if name == "bare":
        return bare_app()
    if name == "keyswap":
        return keyswap_app(os.environ["BENCH_JWKS_URL"])
    if name == "handwritten":
        return handwritten_app(os.environ["BENCH_JWKS_URL"])
    if name == "bound":
        return bound_app(os.environ["BENCH_JWKS_URL"], os.environ["BENCH_PUBLIC_URL"])
    if name == "otlpsink":
        return otlp_sink_app()
    return naive_proxy_app(os.environ["BENCH_UPSTREAM"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "app", choices=["bare", "keyswap", "bound", "handwritten", "naiveproxy", "otlpsink"]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks-url")
    parser.add_argument("--upstream")
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    args = parser.parse_args()
    os.environ["BENCH_APP"] = args.app
    os.environ["BENCH_JWKS_URL"] = args.jwks_url or ""
    os.environ["BENCH_UPSTREAM"] = args.upstream or ""
    os.environ["BENCH_PUBLIC_URL"] = f"http://{HOST}:{args.port}"

    if args.server == "granian":
        # One worker, uvloop, HTTP/1, no access log: the same shape as the uvicorn runs.
        argv = [
            sys.executable, "-m", "granian", "--interface", "asgi", "--host", HOST,
            "--port", str(args.port), "--workers", "1", "--loop", "uvloop", "--http", "1",
            "--no-ws", "--log-level", "warning", "--no-access-log",
            "--working-dir", str(Path(__file__).resolve().parent), "--factory", "_serve:make_app",
        ]  # fmt: skip
        os.execv(sys.executable, argv)  # noqa: S606 - replaces this process with the server

    import uvicorn

    uvicorn.run(
        make_app(),
        host=HOST,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="auto",
    )


if __name__ == "__main__":
    main()
