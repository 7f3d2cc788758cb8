"""Client-side connection limits: uvicorn's httptools protocol with timeouts a public gateway needs.

uvicorn (0.55) closes an idle keep-alive connection after ``timeout_keep_alive`` but cancels that timer
on *any* byte, has no timer before the first request, none for a request head or body, and none for a
client that stops reading its response. A few clients holding connections open that way starve
everyone (file descriptors, and through the proxy, upstream connections). :func:`protocol_class`
returns a small subclass of ``HttpToolsProtocol`` that adds, per connection, one timer at a time:

- **head** (``head_timeout``): a request head must be complete within this time of the connection
  opening (first request) or of the first byte of the request (later requests). Exceeded: a
  connection that sent nothing is closed; one with a partial head gets ``408 Request Timeout`` and is
  closed;
- **keep-alive** (``keep_alive_timeout``): after a response, the connection is closed unless a new
  request *starts* within this time. Leftover bytes of the previous request's body do not count, and a
  started request then has ``head_timeout`` to complete its head: one stray byte buys at most
  ``keep_alive_timeout + head_timeout``;
- **request body** (``body_timeout`` and ``body_deadline``): once the head is in, each piece of the
  body must follow the previous one within ``body_timeout`` and the whole body must arrive within
  ``body_deadline`` (time the server itself is not reading - the app is busy with what it has - does
  not count against the client). Exceeded before the response started: ``408`` and close, and the app
  sees ``http.disconnect`` (the proxy then drops its upstream connection); after: the connection is
  cut;
- **response write** (``send_timeout``): while the transport's write buffer is full (the client is not
  reading), it must shrink within ``send_timeout``; if it does not, the connection is aborted (not
  closed: a closed transport waits forever to flush to a client that never reads) and the app's
  ``receive`` reports ``http.disconnect``, which makes the proxy drop the upstream response and its
  connection;
- **connection cap** (``max_connections``): a connection opened while this many are open is answered
  ``503 Service Unavailable`` (``Connection: close``) as soon as its head arrives, and has at most
  :data:`OVER_CAP_HEAD_TIMEOUT` seconds to send it. uvicorn's own ``limit_concurrency`` is not used:
  it answers 503 to *every* connection's requests once the count is reached (the existing clients'
  too) and only when a head arrives.

A ``Connection: Upgrade`` / ``Upgrade: websocket`` request is handed to uvicorn's websocket protocol
when the server runs with websockets (``keyswap gateway`` does; the app checks it like any request),
except on a connection over the cap (503) or behind an unfinished pipelined request (plain HTTP).

On a graceful shutdown (SIGTERM) a request whose head is arriving is still answered and a connection
that has not sent its first request yet gets a few seconds to send it (:meth:`~GuardedHttpToolsProtocol.
shutdown`); both are answered with ``Connection: close``.

Responses: uvicorn writes a response's head and its body in two transport writes (two ``send`` system
calls, two TCP segments). Request cycles here write through a small writer that holds the head until the
next write, so that the usual head-then-body answer leaves in one; a head that nothing follows in the same
event-loop step (a streamed response waiting for its origin) is written on the loop's next pass, and the
protocol sends what is held before it writes or closes anything itself (400, 408, shutdown).

Cost per request: no timer operation. The head, keep-alive and body limits share one loop timer per
connection that is moved lazily: arming a deadline later than the one the timer is set for only records
it, and the timer re-arms itself for the rest when it fires (uvicorn's own keep-alive timer is not used).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from keyswap.errors import ConfigError
from keyswap.serverproto import HeadOnlyHttpToolsProtocol

__all__ = [
    "DRAIN_NEW_CONNECTION_GRACE",
    "OVER_CAP_HEAD_TIMEOUT",
    "ClientLimits",
    "GuardedHttpToolsProtocol",
    "default_max_client_connections",
    "protocol_class",
]

#: Seconds a connection over the cap has to send its head (then it is answered 503 and closed).
OVER_CAP_HEAD_TIMEOUT = 1.0

#: Seconds a connection accepted just before a graceful shutdown has to send its first request.
DRAIN_NEW_CONNECTION_GRACE = 5.0

#: A held response head and a body up to this size are joined into one buffer (else written as two).
_JOIN_LIMIT = 16 * 1024

_TIMEOUT_BODY = b"Request timeout"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Timeouts and caps on client connections (``keyswap gateway`` flags; see the module docstring).

    Attributes:
        head_timeout: seconds to receive a complete request head (``--head-timeout``).
        keep_alive_timeout: seconds an idle keep-alive connection stays open (``--keep-alive-timeout``).
        body_timeout: most seconds between two pieces of a request body (``--client-body-timeout``).
        body_deadline: most seconds for a whole request body (``--client-body-deadline``).
        send_timeout: most seconds a blocked response write may make no progress
            (``--client-send-timeout``).
        max_connections: most client connections open at once in this process
            (``--max-client-connections``).
    """

    head_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    body_timeout: float = 30.0
    body_deadline: float = 300.0
    send_timeout: float = 30.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        for name in ("head_timeout", "keep_alive_timeout", "body_timeout", "send_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 3600):
                raise ConfigError(f"{name.replace('_', ' ')} must be in (0, 3600] seconds")
        if not 0 < self.body_deadline <= 86_400:
            raise ConfigError("body deadline must be in (0, 86400] seconds")
        if not isinstance(self.max_connections, int) or self.max_connections < 1:
            raise ConfigError("the client connection cap must be at least 1")


def default_max_client_connections(upstream_pool: int) -> int:
    """A connection cap under the process's file-descriptor limit: at most 1000, leaving room for the
    upstream pool and 64 descriptors of the process's own (database, logs, listeners)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1000
    return max(1, min(1000, soft - upstream_pool - 64))


class _ResponseWriter:
    """What uvicorn's request cycles write through (``cycle.transport``): the real transport, except
    that a response head is held until the next write, so that a head and a body sent one after the
    other (the proxy's usual answer) leave in one ``send`` system call instead of two. A head that no
    write follows in the same step (a streamed response waiting for its origin) goes out on the loop's
    next pass; anything the protocol writes or closes itself sends what is held first."""

    __slots__ = ("_held", "_loop", "hold_next", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None
        #: The next write is a response head (set when a request's head is complete).
        self.hold_next = False

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_LIMIT:
                self.transport.write(held + data)
            else:
                self.transport.writelines((held, data))
        elif self.hold_next and data:
            self.hold_next = False
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        """Write what is held (nothing once the connection is closing: it is lost with it)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def abort(self) -> None:
        self._held = None
        self.transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


class GuardedHttpToolsProtocol(HeadOnlyHttpToolsProtocol):
    """uvicorn's httptools protocol with the timeouts and cap of :class:`ClientLimits` (``limits``),
    keeping only the request head's fields (:mod:`keyswap.serverproto`)."""

    limits: ClientLimits = ClientLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One deadline at a time (head, keep-alive or body), on one lazily moved loop timer: arming
        # a later deadline than the pending timer's only records it (the timer, when it fires,
        # re-arms itself for the rest), so a keep-alive connection's requests cost no timer
        # operation (uvicorn's keep-alive timer, then a head timer: two `call_later` and two
        # `cancel` a request before).
        self._deadline: float | None = None  # loop time the current limit expires
        self._expire: Callable[[], None] | None = None  # what to do then
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # loop time self._timer fires
        self._idle = False  # a response was answered; no request has started since
        self._head_pending = False  # bytes of a request head arrived, the head is not complete
        self._body_pending = False  # the head is in, the body is not complete
        self._body_start = 0.0
        self._body_last = 0.0
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_buffered = 0
        self._draining = False
        self._writer: _ResponseWriter | None = None

    # -- timers --------------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        """``callback`` in ``delay`` seconds unless re-armed or disarmed before (replaces any other)."""
        at = self.loop.time() + delay
        self._deadline = at
        self._expire = callback
        timer = self._timer
        if timer is not None:
            if self._timer_at <= at:
                return  # it fires first, then re-arms for what is left
            timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def _disarm(self) -> None:
        """No limit runs now (a pending loop timer stays and finds nothing due)."""
        self._deadline = None
        self._expire = None

    def _stop_timer(self) -> None:
        self._disarm()
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:  # moved since it was armed
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)
            return
        expire = self._expire
        self._deadline = self._expire = None
        if expire is not None:
            expire()

    # -- connection ----------------------------------------------------------------------------

    #: Connections opened and closed (or upgraded to a websocket) in this process with this class
    #: (the ``connections_open`` gauge).
    opened = 0
    closed = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writer = _ResponseWriter(transport, self.loop)
        cls = type(self)
        cls.opened += 1
        limits = self.limits
        if len(self.connections) > limits.max_connections:
            self.limit_concurrency = 0  # uvicorn then answers this connection's request 503
            self._arm(min(limits.head_timeout, OVER_CAP_HEAD_TIMEOUT), self._on_head_timeout)
        else:
            self._arm(limits.head_timeout, self._on_head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        cls = type(self)
        cls.closed += 1
        self._stop_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The websocket protocol owns the transport from now on (this one's connection_lost is never
        # called); like uvicorn's connection count, the gauge counts HTTP connections only.
        self._flush()
        cls = type(self)
        cls.closed += 1
        super().handle_websocket_upgrade()

    def _flush(self) -> None:
        """Write the response head the cycle's writer holds (before the protocol writes itself)."""
        writer = self._writer
        if writer is not None:
            writer.flush()

    def send_400_response(self, msg: str) -> None:
        self._flush()
        super().send_400_response(msg)

    def timeout_keep_alive_handler(self) -> None:
        self._flush()
        super().timeout_keep_alive_handler()

    def data_received(self, data: bytes) -> None:
        # uvicorn's, minus cancelling the keep-alive timer on any byte: only a request start does.
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self._disarm()
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._body_pending = self._head_pending = False
                self._stop_timer()
                self.handle_websocket_upgrade()  # the websocket protocol owns the transport now
                return
            self._unsupported_upgrade_warning()
        if self._body_pending and self._deadline is None and not self.transport.is_closing():
            now = self.loop.time()
            self._body_start = self._body_last = now
            self._arm(min(self.limits.body_timeout, self.limits.body_deadline), self._on_body_timer)

    def _should_upgrade(self) -> bool:
        # Not for a connection over the cap (it gets its 503), nor while an earlier pipelined request
        # is still being answered (the upgrade is then treated as a plain request).
        if self.limit_concurrency == 0:
            return False
        if self.cycle is not None and not self.cycle.response_complete:
            return False
        return bool(super()._should_upgrade())

    def shutdown(self) -> None:
        """Graceful shutdown (uvicorn calls it on every connection when the server drains).

        uvicorn closes a connection at once unless a response is under way. Here a request whose head
        is arriving is still answered, and a new connection that has not sent its first request yet
        gets :data:`DRAIN_NEW_CONNECTION_GRACE` seconds to send it (``Connection: close`` either
        way): the kernel accepted it before the server stopped listening, so its client is sending. An
        idle keep-alive connection is closed at once (its client retries on a new connection).
        """
        self._draining = True
        if self._head_pending:
            return  # the head timer still runs; the answer closes the connection
        cycle: Any = self.cycle  # None until the first request head (typed as never None)
        if cycle is None and not self.transport.is_closing():
            self._arm(
                min(DRAIN_NEW_CONNECTION_GRACE, self.limits.head_timeout), self._on_head_timeout
            )
            return
        self._flush()
        super().shutdown()

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_pending = True
        if self._idle:  # a request starts on an idle connection
            self._idle = False
            self._arm(self.limits.head_timeout, self._on_head_timeout)

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._disarm()
        # A head begun while an answer was in flight and finished after it: not idle any more (else
        # the next request begun during this one's answer would arm the head timer, whose 408
        # would land inside that answer).
        self._idle = False
        self._body_pending = True  # until on_message_complete says otherwise (same feed, no body)
        super().on_headers_complete()
        cycle: Any = self.cycle
        if cycle is not None:
            writer = self._writer
            if writer is not None and cycle.transport is not writer:  # a new request's cycle
                cycle.transport = writer
                writer.hold_next = True
            if self._draining:
                cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        self._body_last = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_pending = False
        if not self._idle:  # (idle: answered before its body ended; the keep-alive limit runs)
            self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive limit on this class's timer instead of a timer of its own.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle = True
            self._arm(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    # -- expiry --------------------------------------------------------------------------------

    def _on_head_timeout(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._flush()
        if self._head_pending:
            transport.write(_REQUEST_TIMEOUT)
        transport.close()

    def _on_body_timer(self) -> None:
        if not self._body_pending or self.transport.is_closing():
            return
        limits = self.limits
        now = self.loop.time()
        if (
            self.flow.read_paused
        ):  # the server is not reading (the app has enough): not the client's
            self._body_last = now
        idle_until = self._body_last + limits.body_timeout
        deadline = self._body_start + limits.body_deadline
        if now < idle_until and now < deadline:
            self._arm(min(idle_until, deadline) - now, self._on_body_timer)
            return
        self._body_pending = False
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self._flush()
            self.transport.write(_REQUEST_TIMEOUT)
            cycle.disconnected = (
                True  # the app's sends are dropped; its receive sees the disconnect
            )
            cycle.message_event.set()
            self.transport.close()
        else:
            self.transport.abort()

    # -- flow control --------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_buffered = self.transport.get_write_buffer_size()
            self._send_timer = self.loop.call_later(self.limits.send_timeout, self._on_send_timer)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().resume_writing()

    def _on_send_timer(self) -> None:
        self._send_timer = None
        transport = self.transport
        if not self.flow.write_paused or transport is None:
            return
        buffered = transport.get_write_buffer_size()
        if buffered < self._send_buffered:  # some progress: another period to make more
            self._send_buffered = buffered
            self._send_timer = self.loop.call_later(self.limits.send_timeout, self._on_send_timer)
            return
        transport.abort()


def protocol_class(limits: ClientLimits) -> type[GuardedHttpToolsProtocol]:
    """A :class:`GuardedHttpToolsProtocol` subclass bound to ``limits`` (for uvicorn's ``http=``)."""
    return type(
        "KeyswapHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "opened": 0, "closed": 0},
    )


def open_connections(protocol: Any) -> Callable[[], float | None]:
    """A gauge: the client connections open now through ``protocol`` (a :func:`protocol_class`
    class; ``None`` for another protocol, which does not count them)."""
    if not (isinstance(protocol, type) and issubclass(protocol, GuardedHttpToolsProtocol)):
        return lambda: None
    return lambda: protocol.opened - protocol.closed
