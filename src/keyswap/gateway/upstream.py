"""A lean HTTP/1.1 client for one upstream: a keep-alive pool on asyncio Protocols, streaming both ways.

Why this is written by hand. The gateway's whole job is one upstream request per client request, so
the client's cost per request *is* the gateway's cost. Measured on the project's benchmark machine
(2 vCPU, uvicorn + uvloop + httptools in front, ``bench/gateway_bench.py --quick``, side by side): the
gateway process spent 216-239 µs CPU per proxied request with one shared ``aiohttp.ClientSession``
(the naive Starlette + aiohttp proxy: 242-323 µs), and a profile put most of it in aiohttp's request
path (``ClientRequest`` construction, auto-header and ``Expect`` handling, the payload writer, timer
rescheduling, the stream reader). With this module the same process spends 70-76 µs: aiohttp cost
~150 µs per request that a reverse proxy does not need. ``httpx``/``httpcore`` are worse (~2 ms CPU per
request at 32 concurrent connections: research notes, perf-baseline §4), and the other clients are
synchronous or sans-IO (``h11``: parsing in pure Python). No maintained asyncio client has a lean
keep-alive HTTP/1.1 mode, so only the part no library does is written here: request framing, a
connection pool, flow control and timeouts. Parsing, where correctness is hard, is *not*
hand-written: responses are parsed by ``httptools`` (the llhttp binding uvicorn itself uses, strict:
duplicate ``Content-Length``, ``Transfer-Encoding`` with ``Content-Length``, obs-fold, bare LF, bad
chunk sizes and control characters in header values are parse errors).

Rules:

- requests: ``METHOD target HTTP/1.1``, ``host`` (the upstream's), the caller's headers in order, then
  framing chosen here and never copied from the client: ``content-length`` for a body given as bytes,
  the announced length for a streamed body whose length is known (checked: a body that does not match
  it aborts the request), ``transfer-encoding: chunked`` otherwise, nothing when there is no body.
  Method, target, header names and values are validated: a name that is not an RFC 9110 token or is a
  framing/``host`` name, or a CR, LF or NUL anywhere, is a :class:`ValueError` before a byte is sent;
- responses: interim ``1xx`` answers are skipped (``101`` is refused: nothing asks to switch protocols);
  ``HEAD``, ``204`` and ``304`` answers have no body whatever their headers say; a status outside
  100-599 is malformed; trailer fields after a chunked body are dropped (never merged into the
  headers); a response without ``Content-Length`` or chunked framing is read until the upstream
  closes (that connection is never reused); the head (status line + headers) is capped
  (``max_head_size``, ``max_headers``; trailers count too); a malformed response is an
  :class:`~keyswap.errors.UpstreamError` (and its connection is closed);
- pooling: at most ``max_connections`` connections (waiting for a free one counts against the timeout),
  most recently used first; a connection goes back to the pool only after a complete response that
  allows keep-alive to a completely sent request, with no stray bytes after it; ``Connection: close``
  (or HTTP/1.0 without keep-alive) closes it. Idle connections are closed after ``idle_timeout``
  (default 4 s: below the 5 s keep-alive of uvicorn, Node.js and Apache, so the upstream rarely closes a
  connection just as it is reused) and dropped as soon as the upstream closes them;
- a *stale* connection (a reused one that the upstream closed before sending a single byte back, the
  race every keep-alive client has) is retried once on a fresh connection, but only when the request is
  replayable: an idempotent method (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) with no
  body or a body held in memory. Anything else, or a failure on a new connection, is an ``UpstreamError``;
- timeouts (one pool-wide ticker, no timer per request): getting a connection (pool wait + connect)
  and then the response head each within ``timeout`` (request-body progress restarts the head clock);
  while the body is read, each wait for upstream data within ``timeout``. Exceeded:
  :class:`~keyswap.errors.UpstreamTimeout`; refused/unreachable: ``UpstreamError``;
- flow control: at most ``_HIGH_WATER`` response bytes are buffered per response before reading from
  the upstream pauses until the caller takes them, and a streamed request body waits while the
  upstream socket's write buffer is full. Memory per request is bounded whatever the two peers' speeds;
- TLS: ``https`` upstreams use ``ssl.create_default_context()`` (system trust store; ``SSL_CERT_FILE``
  works) unless an ``ssl_context`` is given; ``server_hostname`` is the upstream host.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from keyswap.errors import ConfigError, UpstreamError, UpstreamTimeout
from keyswap.gateway.headerpolicy import HOP_BY_HOP

__all__ = ["IDEMPOTENT_METHODS", "Origin", "UpstreamPool", "UpstreamResponse", "parse_origin"]

#: Methods retried once on a fresh connection when a reused one turns out stale (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

#: Buffered response bytes per response before reading from the upstream pauses.
_HIGH_WATER = 256 * 1024
#: Above this size a body given as bytes is written beside the head instead of copied into it.
_COPY_LIMIT = 16 * 1024
#: Interim (1xx) answers tolerated before one final answer.
_MAX_INTERIM = 8
#: Validated header names and methods remembered (a small, bounded vocabulary in practice).
_CACHE_LIMIT = 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host, port and a raw path prefix (no trailing ``/``)."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> bytes:
        """The ``Host`` value: ``host[:port]``, the port left out when it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return (host if self.port == default else f"{host}:{self.port}").encode("ascii")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header.decode('ascii')}{self.path}"


def parse_origin(url: str) -> Origin:
    """Parse an upstream base URL: absolute ``http(s)``, a host, optional port and path prefix.

    Raises:
        ConfigError: not such a URL, not printable ASCII, or it carries credentials, a query or a
            fragment.
    """
    bad = ConfigError(f"upstream must be an absolute http(s) URL, got {url!r}")
    if not isinstance(url, str) or not url.isascii() or not url.isprintable() or " " in url:
        raise bad
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.netloc.endswith(":"):
        raise bad
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        raise ConfigError(
            "upstream URL must not carry a query, fragment or credentials, got " + repr(url)
        )
    path = parts.path.rstrip("/")
    if path and not path.startswith("/"):
        raise bad
    default = 443 if scheme == "https" else 80
    return Origin(scheme, parts.hostname, port or default, path)


def _unstarted() -> float:
    raise UpstreamError("the upstream pool is not started")


class _Stale(UpstreamError):
    """A connection closed before a single byte of the response arrived."""


class _Reject(Exception):
    """Raised inside a parser callback: the response breaks one of our limits."""


_Waiting = tuple[float, "asyncio.Future[_Conn | None]"]


class UpstreamResponse:
    """One upstream response: status and headers at once, the body read with :meth:`read`.

    Attributes:
        status: final status code (never 1xx).
        headers: ``(name, value)`` pairs in arrival order, names lower-cased; hop-by-hop names are
            still there (the proxy drops them).
        content_length: the announced ``Content-Length`` (``None`` when absent or chunked).
        complete: the whole body has arrived (it may still be buffered here).
        hop_by_hop: ``headers`` has a hop-by-hop name (:data:`~keyswap.gateway.headerpolicy.HOP_BY_HOP`;
            when false, nothing needs dropping before relaying them).

    Call :meth:`close` when done (it is a no-op after a complete response): an unfinished response
    closes its connection rather than returning it to the pool.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_head_only",
        "_pump",
        "_timeout",
        "_waiter",
        "buffered",
        "complete",
        "content_length",
        "error",
        "head_ready",
        "headers",
        "hop_by_hop",
        "keep_alive",
        "received",
        "request_sent",
        "status",
        "until_close",
    )

    def __init__(self, conn: _Conn, head_only: bool, timeout: float) -> None:
        self._conn: _Conn | None = conn
        self._head_only = head_only
        self._timeout = timeout
        self._chunks: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.hop_by_hop = False
        self.head_ready = False
        self.complete = False
        self.keep_alive = False
        self.until_close = False
        self.request_sent = False
        self.received = 0
        self.buffered = 0
        self.error: BaseException | None = None

    def take(self) -> bytes:
        """Everything buffered now, without waiting (``b""`` when nothing is)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        conn = self._conn
        if conn is not None and conn.reading_paused:
            conn.resume_reading()
        return data

    async def read(self) -> bytes:
        """The next piece of the body; ``b""`` once it is complete.

        Raises:
            UpstreamTimeout: no data for ``timeout`` seconds.
            UpstreamError: the connection broke or the body was malformed.
        """
        while True:
            if self._chunks:
                return self.take()
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            conn = self._conn
            if conn is None:  # pragma: no cover - detached without completing or failing
                raise UpstreamError("the upstream connection is gone")
            conn.deadline = conn.now() + self._timeout
            try:
                await self._wait(conn.loop)
            finally:
                if conn.resp is self:
                    conn.deadline = None

    async def read_all(self, limit: int) -> bytes:
        """The whole remaining body (at most ``limit`` bytes, else :class:`UpstreamError`).

        Raises:
            UpstreamTimeout: no data for ``timeout`` seconds.
            UpstreamError: broken connection or body, or more than ``limit`` bytes.
        """
        parts: list[bytes] = []
        size = 0
        while True:
            data = await self.read()
            if not data:
                return b"".join(parts)
            size += len(data)
            if size > limit:
                self.close()
                raise UpstreamError("the upstream body is larger than announced")
            parts.append(data)

    def close(self) -> None:
        """Finish with this response; an incomplete one closes its connection."""
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
        conn = self._conn
        if conn is not None and conn.resp is self and not self.complete:
            conn.resp = None
            self._conn = None
            conn.abort()

    # -- used by the connection ----------------------------------------------------------------

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter = loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = exc
        self._wake()


class _Conn(asyncio.Protocol):
    """One upstream connection; at most one exchange at a time (no pipelining)."""

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.now = pool.now
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.resp: UpstreamResponse | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.deadline: float | None = None
        self.reading_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.head_bytes = 0
        self.header_bytes = 0
        self.interim = 0
        self.in_interim = False
        self.head_done = False  # a HEAD answer's head was parsed: any further byte is a violation
        self.violation = False
        self.conn_tokens: list[bytes] = []
        self.chunked = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def eof_received(self) -> bool:
        self._gone()
        return False

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None or resp.complete:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        resp.received += len(data)
        head_pending = not resp.head_ready
        if head_pending:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self._broken(resp, "the upstream switched protocols unasked")
            return
        except HttpParserError as exc:
            reason = exc.__context__
            if isinstance(reason, _Reject):
                self._broken(resp, str(reason))
            else:
                self._broken(resp, "the upstream sent a malformed response")
            return
        self._parsed(resp, head_pending)

    def _parsed(self, resp: UpstreamResponse, head_pending: bool) -> None:
        """After feeding the parser: complete, wait for more head, or flow-control the body."""
        if resp.complete:
            self._finish(resp)
        elif not resp.head_ready:
            if self.head_bytes > self.pool.max_head_size:
                self._broken(resp, "the upstream response head is too large")
            return  # nothing for the caller yet
        else:
            if head_pending:
                self.deadline = None
            if resp.buffered > _HIGH_WATER and not self.reading_paused:
                self.reading_paused = True
                assert self.transport is not None
                self.transport.pause_reading()
        resp._wake()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        resp = self.resp
        if resp is None or resp.complete:  # a message after the answer: even a partial one
            self.violation = True

    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.resp
        if resp is None or resp.complete:
            self.violation = True
            return
        name = name.lower()
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.pool.max_head_size:
            raise _Reject("the upstream response head is too large")
        if resp.head_ready:
            # A trailer field (after a chunked body): counted against the head limit, never merged
            # into the headers that were already handed to the caller.
            return
        headers = resp.headers
        headers.append((name, value))
        if len(headers) > self.pool.max_headers:
            raise _Reject("the upstream sent too many headers")
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                resp.content_length = int(value)
        elif name in HOP_BY_HOP:
            resp.hop_by_hop = True
            if name == b"connection":
                self.conn_tokens.extend(t.strip().lower() for t in value.split(b","))
            elif name == b"transfer-encoding":
                self.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"

    def on_headers_complete(self) -> None:
        resp = self.resp
        if resp is None or resp.complete:
            self.violation = True
            return
        status = self.parser.get_status_code()
        if not 100 <= status <= 599:  # RFC 9110 §15: three digits, 1xx-5xx
            raise _Reject("the upstream sent an invalid status code")
        if status < 200:
            if status == 101:
                raise _Reject("the upstream switched protocols unasked")
            self.interim += 1
            if self.interim > _MAX_INTERIM:
                raise _Reject("the upstream sent too many interim responses")
            self.in_interim = True
            resp.headers = []
            resp.content_length = None
            resp.hop_by_hop = False
            self.conn_tokens = []
            self.chunked = False
            return
        resp.status = status
        resp.head_ready = True
        if resp._head_only:
            # llhttp cannot be told the request was HEAD: finish here, replace the parser afterwards.
            resp.complete = True
            resp.keep_alive = self._keep_alive_from_headers()
            self.head_done = True
        elif status != 204 and status != 304:
            resp.until_close = resp.content_length is None and not self.chunked
        if self.chunked or status == 204 or status == 304:
            resp.content_length = None

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is None or resp.complete or self.head_done:
            self.violation = True
            return
        resp._chunks.append(body)
        resp.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.in_interim:
            self.in_interim = False
            return
        if self.head_done:
            return  # a HEAD answer with Content-Length: 0: already complete
        resp = self.resp
        if resp is None or resp.complete:
            self.violation = True
            return
        resp.complete = True
        resp.keep_alive = self.parser.should_keep_alive()

    # -- state ---------------------------------------------------------------------------------

    def _keep_alive_from_headers(self) -> bool:
        tokens = self.conn_tokens
        if self.parser.get_http_version() == "1.1":
            return b"close" not in tokens
        return b"keep-alive" in tokens and b"close" not in tokens

    def _finish(self, resp: UpstreamResponse) -> None:
        """The response is complete: detach it, then pool or close the connection."""
        self.resp = None
        resp._conn = None
        self.deadline = None
        reusable = resp.keep_alive and resp.request_sent and not self.violation and not self.closed
        if self.head_done:
            self.parser = HttpResponseParser(self)
        self._reset()
        if self.reading_paused:
            self.resume_reading()
        if reusable:
            self.pool._release(self)
        else:
            self.abort()

    def _reset(self) -> None:
        self.head_bytes = 0
        self.header_bytes = 0
        self.interim = 0
        self.in_interim = False
        self.head_done = False
        if self.conn_tokens:
            self.conn_tokens = []
        self.chunked = False

    def _broken(self, resp: UpstreamResponse, reason: str) -> None:
        resp._fail(UpstreamError(reason))
        self.abort()

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadline = None
        self.pool._forget(self)
        self._wake_drain()
        resp = self.resp
        if resp is None:
            return
        if resp.complete or resp.error is not None:
            resp._wake()
            return
        if resp.head_ready and resp.until_close and not self.head_done:
            resp.complete = True  # a body delimited by the end of the connection
            self.resp = None
            resp._conn = None
            resp._wake()
        elif resp.received == 0:
            resp._fail(_Stale("the upstream closed the connection before answering"))
        elif resp.head_ready:
            resp._fail(UpstreamError("the upstream closed the connection mid-body"))
        else:
            resp._fail(UpstreamError("the upstream closed the connection mid-head"))

    def expire(self) -> None:
        """The deadline passed: fail the exchange with a timeout and drop the connection."""
        resp = self.resp
        if resp is not None:
            if resp.head_ready:
                resp._fail(UpstreamTimeout("the upstream stalled while sending its body"))
            else:
                resp._fail(UpstreamTimeout("the upstream did not answer in time"))
        self.abort()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close the connection now, without waiting for buffered writes."""
        transport = self.transport
        if transport is not None:
            transport.abort()
        self._gone()

    def close(self) -> None:
        """Close the connection after buffered writes are flushed."""
        transport = self.transport
        if transport is not None:
            transport.close()
        self._gone()

    async def drain(self) -> None:
        if not self.write_paused or self.closed:
            return
        waiter = self.loop.create_future()
        self.drain_waiter = waiter
        try:
            await waiter
        finally:
            self.drain_waiter = None

    def _wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one upstream (see the module docstring for the rules).

    Args:
        origin: the upstream base URL (or a parsed :class:`Origin`); only scheme, host and port are
            used here, the caller puts any path prefix into the request target.
        timeout: seconds for getting a connection (pool wait included), for the response head after
            the request was sent, and for each wait for body data.
        max_connections: most connections open at once.
        idle_timeout: seconds an unused connection stays in the pool.
        max_head_size: most bytes of a response head (status line + headers).
        max_headers: most response header lines.
        ssl_context: for ``https``; default ``ssl.create_default_context()``.
        clock: monotonic seconds for deadlines and idle ages (default: the event loop's clock);
            injectable for tests.

    Raises:
        ConfigError: a bad URL or limit.
    """

    def __init__(
        self,
        origin: str | Origin,
        *,
        timeout: float = 30.0,
        max_connections: int = 100,
        idle_timeout: float = 4.0,
        max_head_size: int = 64 * 1024,
        max_headers: int = 256,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.origin = origin if isinstance(origin, Origin) else parse_origin(origin)
        if not timeout > 0:
            raise ConfigError(f"upstream timeout must be positive, got {timeout!r}")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {max_connections!r}")
        if not idle_timeout > 0 or max_head_size < 1024 or max_headers < 1:
            raise ConfigError("idle_timeout, max_head_size and max_headers must be positive")
        self.timeout = float(timeout)
        self.max_connections = max_connections
        self.idle_timeout = float(idle_timeout)
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self._ssl: ssl.SSLContext | None = None
        if self.origin.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._host_line = b" HTTP/1.1\r\nhost: " + self.origin.host_header + b"\r\n"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        #: Monotonic seconds (set by :meth:`start`).
        self.now: Callable[[], float] = clock or _unstarted
        self._idle: list[_Conn] = []  # most recently used last
        self._conns: set[_Conn] = set()
        self._size = 0  # connections open or being opened
        self._waiters: deque[_Waiting] = deque()
        self._ticker: asyncio.TimerHandle | None = None
        self._tick = min(1.0, max(0.02, self.timeout / 10))
        self._names: set[bytes] = set()
        self._methods: dict[str, bytes] = {}
        #: Connections opened so far (for tests and diagnostics).
        self.connections_opened = 0

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """:meth:`start` was called and :meth:`close` was not."""
        return self._loop is not None

    async def start(self) -> None:
        """Bind the pool to the running event loop (call from the app's lifespan)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.now = self._clock or self._loop.time
        self._ticker = self._loop.call_later(self._tick, self._on_tick)

    async def close(self) -> None:
        """Close every connection; waiting requests fail with :class:`UpstreamError`."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        waiters, self._waiters = self._waiters, deque()
        for _, fut in waiters:
            if not fut.done():
                fut.set_exception(UpstreamError("the upstream pool is closed"))
        for conn in list(self._conns):
            conn.abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports deliver connection_lost

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request and return the response once its head has arrived.

        Args:
            method: the request method (an RFC 9110 token, e.g. ``"GET"``).
            target: origin-form request target (``/path?query``), printable ASCII.
            headers: header lines to send after ``host``; no framing, ``host`` or ``connection``.
            body: ``None`` (no body, no framing), bytes (sent with ``content-length``), or an async
                iterable of chunks (streamed; ``content-length: content_length`` when given, chunked
                otherwise). Exceptions the iterable raises propagate from here or from
                :meth:`UpstreamResponse.read`.
            content_length: the length of a streamed body, when known.

        Raises:
            ValueError: a bad method, target, header name or value (nothing was sent).
            UpstreamTimeout: no connection or no response head within the timeout.
            UpstreamError: the upstream is unreachable, closed the connection or answered garbage.
        """
        loop = self._loop
        if loop is None:
            raise UpstreamError("the upstream pool is not started")
        streamed = body is not None and not isinstance(body, bytes)
        if body is None:
            framing = b""
        elif isinstance(body, bytes):
            framing = b"content-length: %d\r\n" % len(body)
        elif content_length is not None:
            if content_length < 0:
                raise ValueError("content_length must not be negative")
            framing = b"content-length: %d\r\n" % content_length
        else:
            framing = b"transfer-encoding: chunked\r\n"
        head = self._head(method, target, headers, framing)
        deadline = self.now() + self.timeout
        retry = not streamed and method in IDEMPOTENT_METHODS
        fresh = False
        while True:
            # an idle connection without a coroutine of its own; else wait for one or connect
            conn = None if fresh else self._idle_conn()
            if conn is None:
                conn = await self._acquire(loop, deadline, fresh)
            resp = UpstreamResponse(conn, method == "HEAD", self.timeout)
            conn.resp = resp
            try:
                if body is None or isinstance(body, bytes):
                    self._send(conn, resp, head, body)
                else:
                    self._start_stream(conn, resp, head, body, content_length)
                while not resp.head_ready and resp.error is None:
                    waiter = resp._waiter = loop.create_future()  # resp._wait, without a coroutine
                    try:
                        await waiter
                    finally:
                        resp._waiter = None
                if resp.error is not None:
                    raise resp.error
            except _Stale:
                resp.close()
                if fresh or not retry or not conn.reused:
                    raise UpstreamError(
                        "the upstream closed the connection before answering"
                    ) from None
                fresh = True
                continue
            except BaseException:
                resp.close()
                raise
            return resp

    def _head(
        self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]], framing: bytes
    ) -> bytes:
        method_bytes = self._methods.get(method)
        if method_bytes is None:
            method_bytes = method.encode("ascii", "replace")
            if _TOKEN.fullmatch(method_bytes) is None:
                raise ValueError("the method is not a token")
            if len(self._methods) < _CACHE_LIMIT:
                self._methods[method] = method_bytes
        if _TARGET.fullmatch(target) is None:
            raise ValueError("the request target is not printable ASCII")
        parts = [method_bytes, b" ", target, self._host_line]
        names = self._names
        for name, value in headers:
            if name not in names:
                self._check_name(name)
            # CR, LF, NUL as ints: three memchr (a bytes operand would first fail as an int). The
            # method, target and names are tokens or printable ASCII (checked above): only values
            # can carry them.
            if 13 in value or 10 in value or 0 in value:
                raise ValueError("CR, LF or NUL in a header value")
            parts += (name, b": ", value, b"\r\n")
        parts.append(framing)
        parts.append(b"\r\n")
        return b"".join(parts)

    def _check_name(self, name: bytes) -> None:
        if not isinstance(name, bytes) or _TOKEN.fullmatch(name) is None:
            raise ValueError("a header name is not a token")
        if name.lower() in _FRAMING:
            raise ValueError(f"header {name.decode('ascii')!r} is set by the client itself")
        if len(self._names) < _CACHE_LIMIT:
            self._names.add(name)

    def _send(self, conn: _Conn, resp: UpstreamResponse, head: bytes, body: bytes | None) -> None:
        transport = conn.transport
        assert transport is not None
        conn.deadline = conn.now() + self.timeout
        if not body:
            transport.write(head)
        elif len(body) <= _COPY_LIMIT:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        resp.request_sent = True

    def _start_stream(
        self,
        conn: _Conn,
        resp: UpstreamResponse,
        head: bytes,
        body: AsyncIterable[bytes],
        content_length: int | None,
    ) -> None:
        transport = conn.transport
        assert transport is not None
        conn.deadline = conn.now() + self.timeout
        transport.write(head)
        resp._pump = conn.loop.create_task(self._pump(conn, resp, body, content_length))

    async def _pump(
        self,
        conn: _Conn,
        resp: UpstreamResponse,
        body: AsyncIterable[bytes],
        content_length: int | None,
    ) -> None:
        transport = conn.transport
        assert transport is not None
        now = conn.now
        sent = 0
        try:
            async for chunk in body:
                if conn.closed or resp.error is not None:
                    return
                if not chunk:
                    continue
                sent += len(chunk)
                if content_length is not None:
                    if sent > content_length:
                        raise UpstreamError("the request body is longer than announced")
                    transport.write(chunk)
                else:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                if not resp.head_ready and conn.resp is resp:
                    conn.deadline = now() + self.timeout
                if conn.write_paused:
                    await conn.drain()
            if conn.closed or resp.error is not None:
                return
            if content_length is None:
                transport.write(b"0\r\n\r\n")
            elif sent != content_length:
                raise UpstreamError("the request body is shorter than announced")
            resp.request_sent = True
        except asyncio.CancelledError:
            if conn.resp is resp:
                conn.abort()
            raise
        except BaseException as exc:  # the body's own error (e.g. the client went away)
            resp._fail(exc)
            if conn.resp is resp:
                conn.abort()

    # -- the pool ------------------------------------------------------------------------------

    def _idle_conn(self) -> _Conn | None:
        """The most recently used idle connection still open and young enough, else ``None``."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if self.now() - conn.idle_since > self.idle_timeout:
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float, fresh: bool
    ) -> _Conn:
        idle = self._idle
        while True:
            if not fresh:
                conn = self._idle_conn()
                if conn is not None:
                    return conn
            if self._size < self.max_connections:
                self._size += 1
                return await self._connect(loop, deadline)
            if fresh and idle:  # make room for the retry's fresh connection
                idle.pop(0).close()
                continue
            got = await self._wait_for_slot(loop, deadline)
            if got is None:  # a slot was handed over: open a connection in it
                return await self._connect(loop, deadline)
            if not got.closed:
                got.reused = True
                return got

    async def _wait_for_slot(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> _Conn | None:
        fut: asyncio.Future[_Conn | None] = loop.create_future()
        self._waiters.append((deadline, fut))
        try:
            got = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                handed = fut.result()
                if handed is None:
                    self._free_slot()
                elif not handed.closed:
                    self._release(handed)
            raise
        return got

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        origin = self.origin
        try:
            async with asyncio.timeout(max(0.0, deadline - self.now())):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl is not None else None,
                )
        except TimeoutError:
            self._free_slot()
            raise UpstreamTimeout("no connection to the upstream within the timeout") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS
            self._free_slot()
            raise UpstreamError("the upstream could not be reached") from exc
        except BaseException:
            self._free_slot()
            raise
        self.connections_opened += 1
        if conn.closed or self._loop is None:
            self._free_slot()
            conn.abort()
            raise UpstreamError("the upstream closed the connection at once")
        self._conns.add(conn)
        return conn

    def _release(self, conn: _Conn) -> None:
        """A connection finished an exchange cleanly: hand it to a waiter or keep it idle."""
        if self._loop is None:
            conn.abort()
            return
        waiters = self._waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        conn.idle_since = self.now()
        self._idle.append(conn)

    def _forget(self, conn: _Conn) -> None:
        """A connection closed: drop it from the pool and free its slot."""
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        self._free_slot()

    def _free_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes to this waiter
                return
        self._size -= 1

    def _on_tick(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = self.now()
        for conn in [c for c in self._conns if c.deadline is not None and now >= c.deadline]:
            conn.expire()
        idle = self._idle
        while idle and now - idle[0].idle_since > self.idle_timeout:
            idle.pop(0).close()  # oldest first
        if self._waiters and any(d <= now for d, _ in self._waiters):
            keep: deque[_Waiting] = deque()
            for deadline, fut in self._waiters:
                if fut.done():
                    continue
                if deadline <= now:
                    fut.set_exception(UpstreamTimeout("no upstream connection became free in time"))
                else:
                    keep.append((deadline, fut))
            self._waiters = keep
        self._ticker = loop.call_later(self._tick, self._on_tick)
