"""A tiny TCP load balancer for rolling-restart tests: round robin, next backend on a refused connect.

Each client connection it accepts is relayed byte for byte to one backend. A backend that refuses
the connection (or does not complete it within ``connect_timeout``) is skipped for that connection,
as a production balancer does; once connected, nothing is retried: a backend that then drops the
connection without answering fails that client's request.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Balancer:
    """Listens on 127.0.0.1 (``port``) and spreads connections over ``backends`` (ports)."""

    def __init__(self, backends: list[int], *, connect_timeout: float = 5.0) -> None:
        self.backends = backends
        self.connect_timeout = connect_timeout
        self._turn = itertools.count()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Balancer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        first = next(self._turn)
        for i in range(len(self.backends)):
            port = self.backends[(first + i) % len(self.backends)]
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=self.connect_timeout)
            except OSError:
                continue
        return None

    def _serve(self, client: socket.socket) -> None:
        backend = self._connect()
        if backend is None:
            client.close()
            return
        backend.settimeout(None)
        done = threading.Event()

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            finally:
                if done.is_set():
                    src.close()
                    dst.close()
                done.set()

        threading.Thread(target=pipe, args=(backend, client), daemon=True).start()
        pipe(client, backend)


@contextmanager
def balancing(backends: list[int]) -> Iterator[Balancer]:
    """Run a :class:`Balancer` over ``backends`` for the duration of the block."""
    balancer = Balancer(backends).start()
    try:
        yield balancer
    finally:
        balancer.close()
