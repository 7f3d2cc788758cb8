"""Run any ASGI app on a real uvicorn server on 127.0.0.1 in a background thread (tests only)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


class ServerThread:
    """A uvicorn server on a free port of 127.0.0.1, in its own thread and event loop."""

    def __init__(
        self, app: Any, *, sock: socket.socket | None = None, lifespan: str = "on", **config: Any
    ) -> None:
        self._sock = sock or bound_socket()
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options: dict[str, Any] = {
            "lifespan": lifespan,
            "log_config": None,
            "access_log": False,
            "ws": "none",
            "proxy_headers": False,
            "server_header": False,
            "date_header": False,
            "timeout_graceful_shutdown": 2,
        }
        options.update(config)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit on a failed lifespan start-up
            self.error = exc

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()


@contextmanager
def serving(app: Any, **config: Any) -> Iterator[ServerThread]:
    """Serve ``app`` for the duration of the block."""
    server = ServerThread(app, **config).start()
    try:
        yield server
    finally:
        server.stop()


def bound_socket() -> socket.socket:
    """A TCP socket bound to a free port of 127.0.0.1 (pass it to :class:`ServerThread`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raw_http(
    port: int, request: bytes, timeout: float = 10.0
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send ``request`` byte for byte and read until the server closes; returns status, headers, body.

    The request should carry ``Connection: close``. Chunked bodies are returned still framed.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [
        (k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])
    ]
    return status, headers, body
