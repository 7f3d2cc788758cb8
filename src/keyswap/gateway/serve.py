"""Run one or more ASGI apps on uvicorn in one process until SIGINT/SIGTERM (``keyswap gateway``/``demo``).

uvicorn's own signal capture is per server (the last one installed wins) and re-raises the signal after
shutdown; here one handler stops every server, a second Ctrl-C forces the exit, and the function returns
an exit status instead of raising ``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import uvicorn

from keyswap.gateway.clientconn import ClientLimits, protocol_class
from keyswap.serverproto import http_protocol

__all__ = ["DrainGuard", "configure_logging", "run_until_signal", "server_config"]

logger = logging.getLogger("keyswap.gateway")


def _available(module: str) -> str:
    return module if importlib.util.find_spec(module) is not None else "auto"


def server_config(
    app: Any,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    client_limits: ClientLimits | None = None,
    drain_timeout: float = 10.0,
    websockets: bool = False,
) -> uvicorn.Config:
    """A uvicorn config for a keyswap server: uvloop when installed, httptools (request trailers
    dropped: :mod:`keyswap.serverproto`), no uvicorn access log
    (it would print query strings), no proxy-header rewriting (the gateway decides what to trust), no
    ``Server``/``Date`` headers of its own (the upstream's pass through), no websockets.

    ``client_limits`` (the gateway's) serves with :mod:`keyswap.gateway.clientconn`'s protocol: head,
    keep-alive, request-body and response-write timeouts and a connection cap.

    ``drain_timeout``: on SIGTERM, how long requests in flight may take to finish before they are
    cancelled (``--drain-timeout``). ``websockets``: accept ``Upgrade: websocket`` requests (the app
    sees a ``websocket`` scope; uvicorn's sans-I/O ``websockets`` protocol, 1 MiB messages, no
    compression, pings every 20 s).
    """
    http: Any = http_protocol()
    keep_alive = 5.0
    if client_limits is not None:
        http = protocol_class(client_limits)
        keep_alive = client_limits.keep_alive_timeout
    return uvicorn.Config(
        DrainGuard(app, drain_timeout),
        host=host,
        port=port,
        loop=_available("uvloop"),
        http=http,
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
        ws="websockets-sansio" if websockets else "none",
        ws_max_size=1 << 20,
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,
        log_level=log_level.lower(),
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=None,  # the drain timeout is DrainGuard's (_Server.shutdown)
    )


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`run_until_signal`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's graceful shutdown, bounded by the app's :class:`DrainGuard` timeout: past it
        the requests still in flight are cut (``503`` if their response has not started) and every
        connection closed, so the process exits 0 without a traceback."""
        # The listeners take no new connections (_stop_listening): accept what they have queued.
        await asyncio.sleep(0.05)
        guard = self.config.app
        if not isinstance(guard, DrainGuard):
            await super().shutdown(sockets)
            return
        drain = asyncio.ensure_future(super().shutdown(sockets))
        done, _ = await asyncio.wait({drain}, timeout=guard.drain_timeout)
        if not done:
            state = self.server_state
            logger.warning(
                "drain timeout (%g s) exceeded: cutting %d request(s) still in flight",
                guard.drain_timeout,
                len(state.tasks),
            )
            guard.cut = True
            for task in list(state.tasks):
                task.cancel()
            await asyncio.sleep(0.1)  # the cut requests write their 503
            for connection in list(state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.close()
        await drain


class DrainGuard:
    """The served app, wrapped so that a request cut at the drain timeout ends cleanly.

    uvicorn cancels the requests still running when its graceful shutdown times out, which it logs
    as an exception with a traceback and answers ``500``. Here a cancelled request whose response
    has not started is answered ``503 Service unavailable`` (``Retry-After: 1``, the client may retry
    on another node); one already streaming just ends (uvicorn closes its connection).
    """

    def __init__(self, app: Any, drain_timeout: float) -> None:
        self.app = app
        # an app's own handler of http scopes (GatewayApp.http_handler), else the app itself
        self._http: Any = getattr(app, "http_handler", app)
        self.drain_timeout = drain_timeout
        #: Set once the drain timeout has passed; cancellations are then the drain's.
        self.cut = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # uvicorn's `send` is a bound method of its request cycle, which records whether the
        # response has started: no wrapper per request then (another server's `send` is wrapped).
        cycle: Any = getattr(send, "__self__", None)
        if isinstance(getattr(cycle, "response_started", None), bool):
            try:
                await self._http(scope, receive, send)
            except asyncio.CancelledError:
                if not self.cut:
                    raise
                if not cycle.response_started:
                    await self._unavailable(send)
            return
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._http(scope, receive, sending)
        except asyncio.CancelledError:
            if not self.cut:
                raise
            if not started:
                await self._unavailable(send)

    @staticmethod
    async def _unavailable(send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"19"),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"Service unavailable"})


def run_until_signal(
    configs: Sequence[uvicorn.Config],
    *,
    on_ready: Callable[[], None] | None = None,
    sockets: Sequence[list[socket.socket]] | None = None,
) -> int:
    """Serve every config (started in order) until SIGINT/SIGTERM; ``on_ready`` runs once all serve.

    ``sockets`` (one list per config, from :func:`keyswap.ports.bind_listeners`) are already bound:
    the servers listen on them instead of binding their config's host and port.

    Returns 0 after a clean shutdown, 1 if a server failed to start (uvicorn has logged why).
    """
    servers = [_Server(config) for config in configs]
    bound: list[list[socket.socket] | None] = (
        list(sockets) if sockets is not None else [None] * len(configs)
    )
    loop_factory = configs[0].get_loop_factory() if configs else None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_serve_all(list(zip(servers, bound, strict=True)), on_ready))
    finally:
        for listeners in bound:
            for sock in listeners or []:
                sock.close()


async def _serve_one(
    server: uvicorn.Server, sockets: list[socket.socket] | None, failed: list[uvicorn.Server]
) -> None:
    try:
        await server.serve(sockets=sockets)
    except SystemExit:  # uvicorn exits on a failed start-up (port taken, lifespan failed)
        failed.append(server)
    if not server.started:
        failed.append(server)


async def _serve_all(
    pairs: list[tuple[_Server, list[socket.socket] | None]], on_ready: Callable[[], None] | None
) -> int:
    loop = asyncio.get_running_loop()
    servers = [server for server, _ in pairs]
    failed: list[uvicorn.Server] = []

    def stop() -> None:
        for server in servers:
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True
        for _, listeners in pairs:
            for sock in listeners or []:
                _stop_listening(sock)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks: list[asyncio.Task[None]] = []
    try:
        for server, sockets in pairs:  # in order: the origin starts once the gateway serves
            task = asyncio.create_task(_serve_one(server, sockets, failed))
            tasks.append(task)
            # uvicorn offers a `started` flag, no event to wait on.
            while not server.started and not task.done() and not server.should_exit:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if failed or not server.started:
                stop()
                break
        else:
            if on_ready is not None:
                on_ready()
        await asyncio.gather(*tasks)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 1 if failed else 0


def _stop_listening(sock: socket.socket) -> None:
    """Make the kernel complete no new connection on ``sock`` while keeping those it has queued.

    Closing a listener resets the connections still in its accept queue (handshake done, not yet
    accepted): clients that were already connected. So on a signal, before uvicorn closes its
    listeners, a drop-everything socket filter is attached (Linux): new SYNs are dropped and the
    client retries them a second later, by when the port is closed (connection refused) or, with
    several nodes on one ``SO_REUSEPORT`` port, served by another; the event loop meanwhile accepts
    what is queued (:meth:`_Server.shutdown` waits a moment for it). Elsewhere the backlog is shrunk
    to the minimum instead, which narrows that window without closing it.
    """
    try:
        _attach_drop_filter(sock)
    except (OSError, AttributeError, ValueError):
        with contextlib.suppress(OSError):
            sock.listen(0)


def _attach_drop_filter(sock: socket.socket) -> None:
    import ctypes
    import struct
    import sys

    if not sys.platform.startswith("linux"):
        raise ValueError("socket filters are Linux-only")
    # One classic BPF instruction: BPF_RET | BPF_K with 0 (accept 0 bytes = drop).
    program = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
    fprog = struct.pack("HP", 1, ctypes.addressof(program))
    so_attach_filter = 26
    sock.setsockopt(socket.SOL_SOCKET, so_attach_filter, fprog)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send ``keyswap.*`` logs (access log included) and uvicorn's errors to stderr, as text lines or
    (``log_format="json"``) one JSON object per line (:mod:`keyswap.logformat`)."""
    formatter: logging.Formatter
    if log_format == "json":
        from keyswap.logformat import JsonFormatter

        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, lvl in (("keyswap", level.upper()), ("uvicorn.error", "WARNING")):
        log = logging.getLogger(name)
        log.setLevel(lvl)
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(formatter)
            log.addHandler(handler)
            log.propagate = False
