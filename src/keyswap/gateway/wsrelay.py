"""WebSockets through the gateway: the client's websocket ends here, a new one goes to the upstream.

The gateway terminates the client's websocket (uvicorn's websocket protocol, a ``websocket`` ASGI
scope) and opens its own to the upstream with the :mod:`websockets` client, then relays messages
both ways until either side closes. Terminating, rather than tunnelling raw bytes after the ``101``,
keeps the gateway in charge of what crosses it: the upstream handshake carries only the headers the
gateway chose (the minted JWT instead of the API key, no ``Sec-WebSocket-*`` of the client's), every
message is a parsed frame bounded in size (:data:`MAX_MESSAGE`) rather than an opaque byte stream,
and the idle and lifetime limits close both sides with a proper close frame. The cost is one parse
and one re-frame per message, and extensions (compression) are negotiated per side, not end to end.

:func:`relay` is called by :class:`keyswap.gateway.app.GatewayApp` once the request passed the same
checks as any other (API key, rate limit, per-consumer cap, target, header policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from keyswap.errors import ConfigError

__all__ = ["MAX_MESSAGE", "WebSocketLimits", "relay", "upstream_ws_url"]

logger = logging.getLogger("keyswap.gateway")

#: Largest message relayed either way (bytes); a bigger one closes the websocket (1009).
MAX_MESSAGE = 1 << 20

Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]

#: Handshake headers the gateway never copies to the upstream handshake (the client library sets its
#: own ``Host``, ``Upgrade``, ``Connection`` and ``Sec-WebSocket-*``).
_NOT_COPIED = frozenset({b"host", b"upgrade", b"connection"})
_CLOSE_GOING_AWAY = 1001
_CLOSE_NORMAL = 1000
_CLOSE_WRITE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    """Bounds on a relayed websocket (``keyswap gateway`` flags).

    Attributes:
        idle_timeout: seconds without a message either way before both sides are closed (1001)
            (``--websocket-idle-timeout``).
        max_lifetime: seconds a websocket may stay open at all; then both sides are closed (1001)
            (``--websocket-max-lifetime``). The API key is checked once, at the handshake: this is
            also the longest a revoked key's open websocket lives on.
    """

    idle_timeout: float = 300.0
    max_lifetime: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.idle_timeout <= 86_400:
            raise ConfigError("websocket idle timeout must be in (0, 86400] seconds")
        if not 0 < self.max_lifetime <= 7 * 86_400:
            raise ConfigError("websocket max lifetime must be in (0, 604800] seconds")


def upstream_ws_url(upstream: str, target: bytes) -> str:
    """The upstream websocket URL for ``target`` (the path and query the proxy would forward):
    ``ws://`` for an ``http://`` upstream, ``wss://`` for ``https://``."""
    scheme, _, rest = upstream.partition("://")
    netloc = rest.split("/", 1)[0]
    ws = "wss" if scheme.lower() == "https" else "ws"
    return f"{ws}://{netloc}{target.decode('ascii')}"


def handshake_headers(items: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The forwarded headers (already filtered by the header policy) minus the handshake's own."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in items
        if name not in _NOT_COPIED and not name.startswith(b"sec-websocket-")
    ]


async def _refuse(
    send: Send, scope: Mapping[str, Any], status: int, body: bytes, ctype: str
) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [
            (b"content-type", ctype.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008})


def _close_code(code: int | None) -> int:
    """A close code that may be sent in a close frame (1005/1006/1015 and the unknown may not)."""
    if code is None or code in (1005, 1006, 1015) or not (1000 <= code <= 4999):
        return _CLOSE_NORMAL
    return code


async def relay(
    scope: Mapping[str, Any],
    receive: Receive,
    send: Send,
    url: str,
    headers: list[tuple[str, str]],
    limits: WebSocketLimits,
    *,
    open_timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Open the upstream websocket, accept the client's, relay until either closes; the status for the
    access log (101 once accepted; the upstream's refusal status, 502 or 504 if it was not)."""
    subprotocols: list[str] = list(scope.get("subprotocols") or [])
    try:
        upstream = await connect(
            url,
            additional_headers=headers,
            subprotocols=subprotocols or None,  # type: ignore[arg-type]
            open_timeout=open_timeout,
            max_size=MAX_MESSAGE,
            compression=None,
            user_agent_header=None,
            proxy=None,
        )
    except InvalidStatus as exc:  # the upstream answered its own refusal (401, 404, ...)
        response = exc.response
        body = bytes(response.body or b"")[:65_536]
        ctype = response.headers.get("Content-Type", "text/plain; charset=utf-8")
        status = response.status_code if 400 <= response.status_code <= 599 else 502
        await _refuse(send, scope, status, body, ctype)
        return status
    except TimeoutError:
        await _refuse(send, scope, 504, b"Gateway timeout", "text/plain; charset=utf-8")
        return 504
    except (OSError, InvalidHandshake) as exc:
        logger.warning("upstream websocket handshake failed (%s)", type(exc).__name__)
        await _refuse(send, scope, 502, b"Bad gateway", "text/plain; charset=utf-8")
        return 502
    try:
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        await _pump(receive, send, upstream, limits, clock)
    finally:
        await upstream.close(_CLOSE_GOING_AWAY)
    return 101


async def _pump(
    receive: Receive,
    send: Send,
    upstream: ClientConnection,
    limits: WebSocketLimits,
    clock: Callable[[], float],
) -> None:
    started = last = clock()

    async def from_client() -> None:
        nonlocal last
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                last = clock()
                text = message.get("text")
                await upstream.send(text if text is not None else (message.get("bytes") or b""))
            elif kind == "websocket.disconnect":
                await upstream.close(_close_code(message.get("code")), message.get("reason") or "")
                return

    async def from_upstream() -> None:
        nonlocal last
        try:
            async for data in upstream:
                last = clock()
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        except ConnectionClosed:
            pass
        code = _close_code(upstream.close_code)
        reason = upstream.close_reason or ""
        with contextlib.suppress(Exception):  # the client may be gone already
            await send({"type": "websocket.close", "code": code, "reason": reason})

    async def limits_watch() -> None:
        while True:
            now = clock()
            left = min(last + limits.idle_timeout, started + limits.max_lifetime) - now
            if left <= 0:
                reason = "idle timeout" if now >= last + limits.idle_timeout else "max lifetime"
                # Bounded: a client that reads nothing would block the close frame forever (uvicorn's
                # ping timeout then drops its connection).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        send({"type": "websocket.close", "code": 1001, "reason": reason}),
                        _CLOSE_WRITE_TIMEOUT,
                    )
                return
            await asyncio.sleep(min(left, 1.0))

    tasks = [
        asyncio.ensure_future(from_client()),
        asyncio.ensure_future(from_upstream()),
        asyncio.ensure_future(limits_watch()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, ConnectionClosed | OSError):
                logger.warning("websocket relay failed (%s)", type(error).__name__)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
