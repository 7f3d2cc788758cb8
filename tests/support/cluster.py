"""Cluster test support: a PostgreSQL schema and a Redis prefix per test, a TCP relay that can cut a
connection (failure injection), and real ``keyswap gateway`` processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import redis
import sqlalchemy as sa

from tests.support.asgi_server import free_port
from tests.support.gateway_state import SECRET_TEXT
from tests.support.services import require_postgres, require_redis, unique_schema

KEYSWAP = str(Path(sys.executable).with_name("keyswap"))


def schema_url(base: str, schema: str) -> str:
    """``base`` with ``search_path`` set to ``schema`` (libpq ``options``)."""
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema; yields a URL whose search_path is that schema. Dropped after."""
    base = require_postgres()
    schema = unique_schema()
    admin = sa.create_engine(base, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema_url(base, schema)
    finally:
        for _ in range(20):  # the server may be restarting (outage tests)
            try:
                with admin.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                break
            except sa.exc.OperationalError:
                time.sleep(0.5)
        admin.dispose()


@contextlib.contextmanager
def redis_prefix() -> Iterator[tuple[str, str]]:
    """``(redis URL, unique prefix)``; every key under the prefix is deleted after."""
    url = require_redis()
    prefix = "kst" + uuid.uuid4().hex[:10]
    try:
        yield url, prefix
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


class TcpRelay:
    """A TCP forwarder on 127.0.0.1 to ``target``: :meth:`cut` drops every connection and refuses new
    ones (the service looks down); :meth:`restore` accepts again on the same port. :meth:`freeze` keeps
    every connection open and accepts new ones but forwards nothing either way (the service hangs:
    neither refusing nor answering); :meth:`thaw` lets the held bytes through."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._flowing = threading.Event()
        self._flowing.set()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def __enter__(self) -> TcpRelay:
        self.restore()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.cut()
        self.thaw()  # held pumps wake up, find their sockets closed and end

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def relayed_url(url: str, relay: TcpRelay) -> str:
    """``url`` with its 127.0.0.1 port replaced by the relay's."""
    parsed = sa.make_url(url)
    return parsed.set(port=relay.port).render_as_string(hide_password=False)


class GatewayProcess:
    """``keyswap gateway`` in a subprocess on a free port (ES256 keys, warnings-only log)."""

    def __init__(
        self, db_url: str, upstream: str, log_dir: Path, *extra: str, name: str = "gateway"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.argv = [
            KEYSWAP,
            "gateway",
            "--db",
            db_url,
            "--upstream",
            upstream,
            "--port",
            str(self.port),
            "--alg",
            "ES256",
            "--log-level",
            "warning",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSWAP_")}
        env["KEYSWAP_SECRET"] = SECRET_TEXT
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited:\n{self.log()}")
            try:
                if httpx.get(self.url + "/__keyswap/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the gateway did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def gateways(
    db_url: str, upstream: str, log_dir: Path, count: int, extra: Sequence[str] = ()
) -> Iterator[list[GatewayProcess]]:
    """Start ``count`` gateways (one after the other: the first creates the signing keys)."""
    started: list[GatewayProcess] = []
    try:
        for index in range(count):
            started.append(
                GatewayProcess(db_url, upstream, log_dir, *extra, name=f"node{index}").start()
            )
        yield started
    finally:
        for process in started:
            process.stop()
