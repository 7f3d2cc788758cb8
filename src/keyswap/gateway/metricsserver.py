"""The ``/metrics`` listener (``keyswap gateway --metrics-port``): its own socket, never the public port.

A small ``http.server`` server answering ``GET /metrics`` (and ``HEAD``) from a ``prometheus_client``
registry, in the text format or OpenMetrics as the scraper asks; every other path is ``404``, every
other method ``405``. It runs either in a daemon thread (:meth:`MetricsServer.start`, one gateway
process; a thread per connection, so a slow client does not hold up a scrape) or one request at a
time from the workers' supervisor loop (:meth:`MetricsServer.poll`, ``--workers N``: the supervisor
forks, so it starts no thread). A client gets 5 seconds to send its request head.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any

__all__ = ["MetricsServer"]

_TIMEOUT = 5.0


class _Handler(BaseHTTPRequestHandler):
    registry: Any = None
    timeout = _TIMEOUT
    server_version = "keyswap"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # a garbled request line still gets a status line
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        from prometheus_client.exposition import choose_encoder

        if self.path.split("?", 1)[0] != "/metrics":
            self._plain(404, b"Not found\n", body)
            return
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            data = encoder(self.registry)
        except Exception:
            self._plain(500, b"collecting metrics failed\n", body)
            raise
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _plain(self, status: int, text: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)

    def _refuse(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _Server(HTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A broken scrape (client gone, timeout) is not worth a traceback."""


class _ThreadingServer(ThreadingMixIn, _Server):
    daemon_threads = True


class MetricsServer:
    """Serves ``registry`` at ``/metrics`` on an already bound and listening ``sock``.

    ``threads``: a thread per connection (for :meth:`start`); ``False`` for :meth:`poll` in a
    process that forks.
    """

    def __init__(self, sock: socket.socket, registry: Any, *, threads: bool = True) -> None:
        handler = type("MetricsHandler", (_Handler,), {"registry": registry})
        server_class = _ThreadingServer if threads else _Server
        self._server = server_class(sock.getsockname()[:2], handler, bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = sock
        self._thread: threading.Thread | None = None
        self.socket = sock

    @property
    def port(self) -> int:
        port: int = self.socket.getsockname()[1]
        return port

    def start(self) -> MetricsServer:
        """Serve in a daemon thread until :meth:`close`."""
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="keyswap-metrics",
            daemon=True,
        )
        self._thread.start()
        return self

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for one scrape and answer it (the supervisor's idle step)."""
        self._server.timeout = timeout
        self._server.handle_request()

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._server.shutdown()
            thread.join(5.0)
        with contextlib.suppress(OSError):
            self._server.server_close()
