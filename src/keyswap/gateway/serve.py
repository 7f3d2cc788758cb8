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

__all__ = ["configure_logging", "run_until_signal", "server_config"]

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
) -> uvicorn.Config:
    """A uvicorn config for a keyswap server: uvloop when installed, httptools (request trailers
    dropped: :mod:`keyswap.serverproto`), no uvicorn access log
    (it would print query strings), no proxy-header rewriting (the gateway decides what to trust), no
    ``Server``/``Date`` headers of its own (the upstream's pass through), no websockets.

    ``client_limits`` (the gateway's) serves with :mod:`keyswap.gateway.clientconn`'s protocol: head,
    keep-alive, request-body and response-write timeouts and a connection cap.
    """
    http: Any = http_protocol()
    keep_alive = 5.0
    if client_limits is not None:
        http = protocol_class(client_limits)
        keep_alive = client_limits.keep_alive_timeout
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=_available("uvloop"),
        http=http,
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
        ws="none",
        lifespan="on",
        log_config=None,
        log_level=log_level.lower(),
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=10,
    )


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`run_until_signal`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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


def configure_logging(level: str) -> None:
    """Send ``keyswap.*`` logs (access log included) and uvicorn's errors to stderr."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, lvl in (("keyswap", level.upper()), ("uvicorn.error", "WARNING")):
        log = logging.getLogger(name)
        log.setLevel(lvl)
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(formatter)
            log.addHandler(handler)
            log.propagate = False
