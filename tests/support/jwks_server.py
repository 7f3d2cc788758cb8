"""A real JWKS server on 127.0.0.1 that tests control: what it serves, how it fails, how often it is hit."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    """What the next responses look like. Tests mutate it between requests."""

    document: Any = field(default_factory=lambda: {"keys": []})
    status: int = 200
    body: bytes | None = None  # raw body overrides `document`
    content_type: str = "application/json"
    cache_control: str | None = None
    delay: float = 0.0  # seconds to stall before answering (a "hang")
    redirect_to: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


class _QuietHTTPServer(ThreadingHTTPServer):
    """Clients that give up (timeouts, size caps) reset connections: that is expected, not an error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class JWKSServer:
    """Threaded HTTP server serving a JWKS. `hits` counts requests per path."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        #: Behaviours for particular paths (e.g. a discovery document); other paths get `behaviour`.
        self.paths: dict[str, Behaviour] = {}
        self.hits: dict[str, int] = {}
        self.user_agents: list[str] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.hits[self.path] = server.hits.get(self.path, 0) + 1
                    server.user_agents.append(self.headers.get("User-Agent", ""))
                    b = server.paths.get(self.path, server.behaviour)
                if b.delay:
                    server._release.wait(b.delay)
                if b.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", b.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b.body if b.body is not None else json.dumps(b.document).encode()
                try:
                    self.send_response(b.status)
                    self.send_header("Content-Type", b.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    if b.cache_control:
                        self.send_header("Cache-Control", b.cache_control)
                    for k, v in b.extra_headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/.well-known/jwks.json"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> JWKSServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def count(self, path: str = "/.well-known/jwks.json") -> int:
        with self._lock:
            return self.hits.get(path, 0)

    def serve(self, document: Any, **kw: Any) -> None:
        """Serve `document` normally from now on (resets failures)."""
        self.behaviour = Behaviour(document=document, **kw)

    def release_hangs(self) -> None:
        self._release.set()
        self._release = threading.Event()

    def wait_for_hits(
        self, n: int, timeout: float = 5.0, path: str = "/.well-known/jwks.json"
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(path) >= n:
                return True
            time.sleep(0.005)
        return False


@contextmanager
def running_jwks_server() -> Iterator[JWKSServer]:
    server = JWKSServer().start()
    try:
        yield server
    finally:
        server.stop()
