"""A real upstream websocket server (the ``websockets`` library) in a thread, recording handshakes.

Paths: ``/echo`` echoes every message back (text as text, bytes as bytes), ``/close/<code>`` closes
at once with that code, ``/talk`` sends ``hello`` then echoes, ``/refuse`` answers the handshake
``403`` ``upstream says no``. Any path picks the first subprotocol the client offers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


@dataclass
class Handshake:
    path: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class WsUpstream:
    port: int
    handshakes: list[Handshake] = field(default_factory=list)
    #: (path, close code the upstream received from the gateway) per finished connection.
    closed: list[tuple[str, int | None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def ws_upstream() -> Iterator[WsUpstream]:
    """Run the upstream for the duration of the block."""
    ready = threading.Event()
    state: dict[str, object] = {}
    loop = asyncio.new_event_loop()

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        try:
            if path.startswith("/close/"):
                await ws.close(int(path.rsplit("/", 1)[1]), "upstream closes")
                return
            if path.startswith("/talk"):
                await ws.send("hello")
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            upstream.closed.append((path, ws.close_code))

    def process_request(ws: ServerConnection, request: Request) -> Response | None:
        upstream.handshakes.append(Handshake(request.path, list(request.headers.raw_items())))
        if request.path.startswith("/refuse"):
            return Response(
                HTTPStatus.FORBIDDEN,
                "Forbidden",
                Headers([("Content-Type", "text/plain"), ("Content-Length", "16")]),
                b"upstream says no",
            )
        return None

    async def main() -> None:
        server: Server = await serve(
            handler,
            "127.0.0.1",
            0,
            process_request=process_request,
            select_subprotocol=lambda ws, offered: offered[0] if offered else None,
        )
        state["server"] = server
        upstream.port = next(iter(server.sockets)).getsockname()[1]
        ready.set()
        await server.serve_forever()

    upstream = WsUpstream(0)
    thread = threading.Thread(target=lambda: _run(loop, main()), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield upstream
    finally:
        server = state["server"]
        assert isinstance(server, Server)
        loop.call_soon_threadsafe(server.close)
        thread.join(10)


def _run(loop: asyncio.AbstractEventLoop, main: object) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)  # type: ignore[arg-type]
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()
