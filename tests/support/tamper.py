"""A tampering reverse proxy for request-binding tests: it sits between gateway and origin, forwards each
request (optionally changed) and remembers the last one as it arrived, so a test can replay it."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.asgi_server import ServerThread


@dataclass
class Captured:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class Tamper:
    """What to change in the next requests (``None``: forward untouched)."""

    method: str | None = None
    path: str | None = None
    query: bytes | None = None
    body: bytes | None = None
    fix_digest: bool = (
        True  # recompute Content-Digest for a changed body (the header proves nothing)
    )


@dataclass
class TamperingProxy:
    """An ASGI app; ``target`` is the origin's base URL."""

    target: str
    tamper: Tamper = field(default_factory=Tamper)
    last: Captured | None = None
    client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(n, v) for n, v in scope["headers"] if n not in (b"host", b"content-length")]
        self.last = Captured(
            scope["method"], scope["raw_path"].decode(), scope["query_string"], headers, body
        )
        t = self.tamper
        method = t.method or scope["method"]
        path = t.path or scope["raw_path"].decode()
        query = t.query if t.query is not None else scope["query_string"]
        if t.body is not None:
            body = t.body
            if t.fix_digest:
                digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
                headers = [(n, v) for n, v in headers if n != b"content-digest"]
                headers.append((b"content-digest", f"sha-256=:{digest}:".encode()))
        response = await send_to(self.target, method, path, query, headers, body)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (n.encode(), v.encode())
                    for n, v in response.headers.items()
                    if n not in ("content-length", "transfer-encoding", "connection")
                ]
                + [(b"content-length", str(len(response.content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": response.content})


async def send_to(
    base: str,
    method: str,
    path: str,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> httpx.Response:
    url = base + path + ("?" + query.decode() if query else "")
    async with httpx.AsyncClient(timeout=10) as client:
        request = client.build_request(
            method,
            httpx.URL(url),
            headers=[(n.decode(), v.decode()) for n, v in headers],
            content=body,
        )
        return await client.send(request)


def replay(base: str, captured: Captured) -> httpx.Response:
    """Send ``captured`` again, byte for byte, to ``base`` (blocking)."""
    url = base + captured.path + ("?" + captured.query.decode() if captured.query else "")
    return httpx.request(
        captured.method,
        url,
        headers=[(n.decode(), v.decode()) for n, v in captured.headers],
        content=captured.body,
        timeout=10,
    )


def serve_proxy(target: str) -> tuple[TamperingProxy, ServerThread]:
    proxy = TamperingProxy(target)
    return proxy, ServerThread(proxy).start()
