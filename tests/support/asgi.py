"""A tiny in-process ASGI driver (http, websocket, lifespan) and a real uvicorn server for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from keyswap.verifier.asgi import ASGIApp, Message, Scope


@dataclass
class Sent:
    """Everything an app sent for one connection, with helpers for the HTTP response."""

    messages: list[Message] = field(default_factory=list)

    @property
    def status(self) -> int:
        start = self.messages[0]
        assert start["type"] in ("http.response.start", "websocket.http.response.start"), start
        return int(start["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.messages[0]["headers"])

    def header(self, name: str) -> str | None:
        values = [v.decode("latin-1") for k, v in self.headers if k == name.encode()]
        assert len(values) <= 1, values
        return values[0] if values else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def http_scope(
    path: str = "/", *, method: str = "GET", headers: Sequence[tuple[bytes, bytes]] = ()
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def call_http(
    app: ASGIApp,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    scope: Scope | None = None,
) -> Sent:
    """Run one HTTP request through ``app``; the body is sent in two chunks when non-empty."""
    scope = scope if scope is not None else http_scope(path, method=method, headers=headers)
    chunks: list[Message] = [
        {"type": "http.request", "body": body[: len(body) // 2], "more_body": True},
        {"type": "http.request", "body": body[len(body) // 2 :], "more_body": False},
    ]
    sent = Sent()

    async def receive() -> Message:
        if chunks:
            return chunks.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.messages.append(message)

    await app(scope, receive, send)
    return sent


async def call_websocket(
    app: ASGIApp,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    extensions: dict[str, Any] | None = None,
    first: Message | None = None,
) -> Sent:
    """Open a websocket through ``app``: the client sends ``first`` (connect) then disconnects."""
    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "scheme": "ws",
        "subprotocols": [],
        "state": {},
    }
    if extensions is not None:
        scope["extensions"] = extensions
    inbox: list[Message] = [
        first or {"type": "websocket.connect"},
        {"type": "websocket.disconnect"},
    ]
    sent = Sent()

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.messages.append(message)

    await app(scope, receive, send)
    return sent


async def run_lifespan(app: ASGIApp, *, state: dict[str, Any] | None = None) -> list[Message]:
    """Drive a lifespan startup + shutdown; returns what the app sent."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []
    await inbox.put({"type": "lifespan.startup"})

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "lifespan.startup.complete":
            await inbox.put({"type": "lifespan.shutdown"})

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state or {}}
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_uvicorn(app: ASGIApp, **config: Any) -> Iterator[str]:
    """Serve ``app`` with real uvicorn (uvloop + httptools) on 127.0.0.1; yields the base URL."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
    }
    settings.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
