"""Change notifications from PostgreSQL: ``LISTEN keyswap_changes`` on a connection of its own.

Every store mutation on PostgreSQL runs ``NOTIFY keyswap_changes, '<schema>:<revision>'`` in its own
transaction (:class:`keyswap.store.Store`), so every listening gateway hears about a committed change
within milliseconds. Payloads from another schema (another keyswap on the same database) are ignored.

The listener runs on a daemon thread with a psycopg 3 connection in autocommit mode. If the connection
drops (database restart, network), it reconnects by itself with exponential backoff (``backoff_min`` to
``backoff_max`` seconds) and calls ``on_connect`` each time it is listening again, so the owner can poll
once for whatever it missed. A heartbeat query every ``heartbeat`` seconds notices a dead connection
that would otherwise look idle.

A connection that hangs rather than drops (a frozen network path, a stalled server, a firewall that
forgets the flow) cannot block the listener for long:

- connecting (TCP, TLS, authentication, ``LISTEN``) must finish within ``connect_timeout`` seconds;
- the heartbeat must be answered within ``heartbeat_timeout`` seconds, else the listener closes the
  socket itself and reconnects;
- TCP keepalives (first probe after 5 s idle, then every 2 s, 3 misses) and ``tcp_user_timeout`` (10 s
  for unacknowledged data), as on a gateway's pooled connections, let the kernel notice a dead peer
  on a quiet connection too.

Connection parameters given in the database URL (e.g. ``?keepalives_idle=30``) take precedence over
these defaults.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, Protocol

from keyswap.store.sql import PG_CONNECT_TIMEOUT, PG_SOCKET_OPTIONS

__all__ = ["TCP_SETTINGS", "PostgresListener", "parse_payload"]

log = logging.getLogger("keyswap.store")

#: The channel :class:`keyswap.store.Store` notifies on (same value as ``keyswap.store.sql.NOTIFY_CHANNEL``).
CHANNEL = "keyswap_changes"

#: libpq TCP settings of the listener's connection, the same as a gateway's pooled connections
#: (``keyswap.store.sql.PG_SOCKET_OPTIONS``); the URL's own values win.
TCP_SETTINGS: Mapping[str, int] = PG_SOCKET_OPTIONS


class _ListenableStore(Protocol):
    notify_scope: str

    def listen_connect_args(self) -> tuple[list[Any], dict[str, Any]]: ...


def parse_payload(payload: str, scope: str) -> int | None:
    """The revision in a ``<scope>:<revision>`` payload for ``scope``; ``None`` for anything else."""
    prefix, sep, number = payload.rpartition(":")
    if not sep or prefix != scope or not number.isascii() or not number.isdigit():
        return None
    return int(number)


class PostgresListener:
    """``LISTEN`` for store changes; call ``on_revision(revision)`` for each one of this schema.

    Args:
        store: the :class:`~keyswap.store.Store` (PostgreSQL) whose changes to hear.
        on_revision: called on the listener thread with each announced revision.
        on_connect: called on the listener thread each time listening (re)starts.
        backoff_min: first delay before reconnecting, seconds.
        backoff_max: longest delay between reconnection attempts, seconds.
        heartbeat: seconds between liveness queries on an idle connection.
        heartbeat_timeout: seconds a liveness query (or ``LISTEN``) may take before the connection
            is given up as hung.
        connect_timeout: seconds a connection attempt may take (libpq counts whole seconds, at
            least 2).

    Raises:
        ValueError: non-positive timings.
    """

    def __init__(
        self,
        store: _ListenableStore,
        on_revision: Callable[[int], object],
        on_connect: Callable[[], object] = lambda: None,
        *,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        heartbeat: float = 5.0,
        heartbeat_timeout: float = 5.0,
        connect_timeout: int = PG_CONNECT_TIMEOUT,
    ) -> None:
        if not (0 < backoff_min <= backoff_max and heartbeat > 0):
            raise ValueError("backoff and heartbeat must be positive, backoff_min <= backoff_max")
        if not (heartbeat_timeout > 0 and connect_timeout > 0):
            raise ValueError("heartbeat_timeout and connect_timeout must be positive")
        self._store = store
        self._on_revision = on_revision
        self._on_connect = on_connect
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._heartbeat = heartbeat
        self._heartbeat_timeout = heartbeat_timeout
        self._connect_timeout = connect_timeout
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._failing = False
        self._thread: threading.Thread | None = None
        #: How many times a connection was established (for tests and status).
        self.connections = 0
        #: The server process of the current connection (``None`` while not connected).
        self.backend_pid: int | None = None
        #: How many connections failed or dropped (for tests and status).
        self.failures = 0

    @property
    def listening(self) -> bool:
        """True while a connection is listening."""
        return self._listening.is_set()

    def wait_listening(self, timeout: float) -> bool:
        """Block until listening (or ``timeout`` seconds); True if listening."""
        return self._listening.wait(timeout)

    def start(self) -> None:
        """Start listening in the background (idempotent; returns at once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="keyswap-pg-listener", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and wait for the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)

    def connect_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """The arguments of ``psycopg.connect`` for the listener's connection: the store's, plus the
        timeouts, TCP keepalives and application name unless the database URL sets them."""
        cargs, cparams = self._store.listen_connect_args()
        cparams.setdefault("connect_timeout", self._connect_timeout)
        cparams.setdefault("application_name", "keyswap-listener")
        for name, value in TCP_SETTINGS.items():
            cparams.setdefault(name, value)
        return cargs, cparams

    def _run(self) -> None:
        delay = self._backoff_min
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:
                self.failures += 1
                if self._listening.is_set():
                    delay = self._backoff_min  # it worked until now: retry soon
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "change notifications from PostgreSQL stopped (%s); reconnecting",
                        _describe(exc),
                    )
                else:
                    log.debug(
                        "still no PostgreSQL connection for notifications (%s)", _describe(exc)
                    )
            finally:
                self._listening.clear()
                self.backend_pid = None
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._backoff_max)

    def _listen(self) -> None:
        import psycopg

        cargs, cparams = self.connect_arguments()
        with psycopg.connect(*cargs, autocommit=True, **cparams) as conn:
            with _deadline(conn, self._heartbeat_timeout):
                conn.execute("LISTEN keyswap_changes")
            self.backend_pid = conn.info.backend_pid
            self.connections += 1
            self._listening.set()
            if self._failing:
                self._failing = False
                log.warning("listening for change notifications from PostgreSQL again")
            _call(self._on_connect)
            last_beat = time.monotonic()
            scope = self._store.notify_scope
            while not self._stop.is_set():
                for notify in conn.notifies(timeout=0.25):
                    revision = parse_payload(notify.payload, scope)
                    if revision is not None:
                        _call(self._on_revision, revision)
                if time.monotonic() - last_beat >= self._heartbeat:
                    with _deadline(conn, self._heartbeat_timeout):
                        conn.execute("SELECT 1")
                    last_beat = time.monotonic()


@contextmanager
def _deadline(conn: Any, seconds: float) -> Iterator[None]:
    """Shut the connection's socket down if the block takes longer than ``seconds``: the blocked
    query then fails at once (psycopg waits on the socket without a time limit of its own)."""
    timer = threading.Timer(seconds, _sever, args=(conn,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _sever(conn: Any) -> None:
    """Shut down the socket under ``conn`` (from another thread) so that its reader sees the end."""
    try:
        duplicate = os.dup(conn.pgconn.socket)
    except Exception:  # already closed
        return
    log.warning("the PostgreSQL notification connection stopped answering; reconnecting")
    with socket.socket(fileno=duplicate) as sock, suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _call(callback: Callable[..., object], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("change notification callback failed")


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
