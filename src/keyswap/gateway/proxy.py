"""The streaming reverse proxy: one ASGI request in, one upstream request out, bodies streamed both ways.

This module adapts ASGI to :mod:`keyswap.gateway.upstream` (the HTTP/1.1 client and its keep-alive
pool) and holds the header rules.

Request rules (RFC 9110 §7.6.1, and security corpus G04-G06):

- method, raw path and query string are forwarded byte for byte (no normalisation, no re-encoding) after
  the upstream URL's own path prefix; refused with 400 before anything is sent instead: a target that
  is not plain ASCII (``/`` then ``0x21-0x7e``), a path with a dot-segment (raw or percent-encoded,
  see :meth:`UpstreamProxy.target`), and behind a path prefix an encoded slash or backslash or a raw
  backslash;
- dropped from the inbound request (:mod:`keyswap.gateway.headerpolicy`): hop-by-hop headers and every
  name listed in ``Connection``; every ``Authorization``; ``Host`` (the upstream's own host is sent);
  ``Expect`` (answered by the server already); ``Content-Length`` (the client sets the framing, see
  below); ``Forwarded``, ``X-Forwarded-*`` and the other forwarding and identity headers; any name
  containing ``_``; the identity and client-IP families (unless an allow-list names them); the
  operator's ``--drop-header`` names and patterns; with ``--forward-headers-only``, every name it does
  not list;
- added: ``Authorization: Bearer <minted JWT>`` (by the app) and ``X-Forwarded-For`` / ``-Proto`` /
  ``-Host`` from the connection. With ``trust_forwarded`` (``--trust-forwarded``, for a gateway behind
  a proxy you run) the client's ``X-Forwarded-For`` is kept and the peer address appended, and its
  ``X-Forwarded-Proto`` / ``-Host`` are kept when present;
- framing is never relayed from the client: a body that arrives in one ASGI message goes with
  ``Content-Length`` set to its size; a body that arrives in pieces is streamed with the client's
  ``Content-Length`` when it sent one (the upstream request is aborted if the body does not match it),
  chunked otherwise; a request without a body (no ``Content-Length``, no ``Transfer-Encoding``) gets no
  framing header and its ASGI ``receive`` is not even called.

Response rules: status, headers (minus hop-by-hop and ``Connection``-listed names) and body pass back
unchanged (no decompression, no cookie jar, no redirects followed); ``HEAD``/``204``/``304`` answers
carry no body; a small body (``Content-Length`` up to 64 KiB) is read whole before the response
starts, a larger or unsized one is streamed with ``more_body`` (reading from the upstream pauses while
the client is slower). Failures before the response starts raise :class:`~keyswap.errors.UpstreamError`
(unreachable, broken response: 502) or :class:`~keyswap.errors.UpstreamTimeout` (no connection or no
response head within the timeout: 504); a failure mid-body aborts the client connection, so a truncated
body is never passed off as complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from keyswap.errors import UpstreamError
from keyswap.gateway.headerpolicy import DEFAULT_POLICY, HOP_BY_HOP, HeaderPolicy
from keyswap.gateway.upstream import Origin, UpstreamPool, UpstreamResponse, parse_origin

if TYPE_CHECKING:
    from keyswap.gateway.meter import Exchange

__all__ = [
    "HOP_BY_HOP",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_COUNT",
    "BadTarget",
    "ClientGone",
    "ForwardedHeaders",
    "HeadersTooLarge",
    "UpstreamProxy",
    "forwarded_request_headers",
    "returned_response_headers",
    "validate_upstream",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("keyswap.gateway")

#: Limits on the request head the gateway forwards (nginx's default large buffers are 4 x 8 KiB).
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_COUNT = 256
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_QUERY = re.compile(rb"[\x21-\x7e]*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# A path segment that is "." or "..", raw or percent-encoded (also twice: %252e), any case, segments
# split at "/", "\\" or their encodings, with any ";params" after it ("..;/" is ".." to Tomcat).
_SEP = rb"(?:/|\\|%2f|%5c|%252f|%255c)"
_DOT_SEGMENT = re.compile(_SEP + rb"(?:\.|%2e|%252e){1,2}(?=$|;|%3b|" + _SEP + rb")", re.IGNORECASE)
# Behind a path prefix: a slash or backslash the origin may decode into a segment boundary.
_ENCODED_SLASH = re.compile(rb"\\|%2f|%5c|%252f|%255c", re.IGNORECASE)
# Bodies announced at or below this size are read in one go and sent in one ASGI message.
_SMALL_BODY = 64 * 1024
_NO_LENGTH = (204, 304)


class PrereadBody(Protocol):
    """A request body read ahead of forwarding (:class:`keyswap.gateway.binding.ReadBody`)."""

    @property
    def data(self) -> bytes: ...

    @property
    def complete(self) -> bool: ...


class BadTarget(Exception):
    """The request target cannot be forwarded byte for byte (not plain ASCII)."""


class HeadersTooLarge(Exception):
    """The request head is over :data:`MAX_HEADER_BYTES` or :data:`MAX_HEADER_COUNT` (answered 431)."""


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class ForwardedHeaders:
    """The request headers as they go upstream, plus what the client said about its body.

    Attributes:
        items: ``(name, value)`` pairs, names lower-case, in the client's order.
        content_length: the client's ``Content-Length`` (``None`` when absent or unusable).
        has_body: the client announced a body (``Content-Length`` above 0, or ``Transfer-Encoding``).
    """

    __slots__ = ("content_length", "has_body", "items")

    def __init__(
        self,
        items: list[tuple[bytes, bytes]],
        *,
        content_length: int | None = None,
        has_body: bool = False,
    ) -> None:
        self.items = items
        self.content_length = content_length
        self.has_body = has_body

    def __setitem__(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one ``name: value`` line (at the end)."""
        self.set(name.lower().encode("ascii"), value.encode("latin-1"))

    def set(self, name: bytes, value: bytes) -> None:
        """Like ``headers[name] = value`` with the lower-case name and the value as bytes."""
        items = self.items
        for present, _ in items:
            if present == name:
                self.items = items = [(n, v) for n, v in items if n != name]
                break
        items.append((name, value))

    def getall(self, name: str) -> list[str]:
        """Every value of ``name``, in order (decoded as Latin-1)."""
        key = name.lower().encode("ascii")
        return [v.decode("latin-1") for n, v in self.items if n == key]

    def __repr__(self) -> str:  # names only: values may carry tokens
        names = ", ".join(n.decode("latin-1") for n, _ in self.items)
        return f"ForwardedHeaders([{names}], content_length={self.content_length!r})"


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return tokens


def forwarded_request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client: tuple[str, int] | None,
    scheme: str,
    trust_forwarded: bool = False,
    policy: HeaderPolicy = DEFAULT_POLICY,
) -> ForwardedHeaders:
    """The inbound ASGI headers as they go upstream (see the module docstring for the rules).

    ``policy`` decides which names are dropped (:mod:`keyswap.gateway.headerpolicy`: fixed rules,
    identity families, the operator's ``--drop-header`` / ``--forward-headers-only``).

    ``Authorization`` is not added here; the caller sets the minted token
    (``headers["authorization"] = "Bearer " + token``).

    Raises:
        HeadersTooLarge: more than :data:`MAX_HEADER_COUNT` headers or :data:`MAX_HEADER_BYTES` bytes.
    """
    budget = MAX_HEADER_BYTES
    count = 0
    listed: set[bytes] | None = None
    out: list[tuple[bytes, bytes]] = []
    host: bytes | None = None
    fwd_for: list[bytes] = []
    fwd_proto: bytes | None = None
    fwd_host: bytes | None = None
    lengths: list[bytes] = []
    chunked = False
    verdicts = policy.verdicts
    for raw_name, value in headers:
        count += 1
        budget -= len(raw_name) + len(value) + 4  # "name: value\r\n"
        if budget < 0 or count > MAX_HEADER_COUNT:
            raise HeadersTooLarge
        name = raw_name.lower()
        dropped = verdicts.get(name)
        if dropped is None:
            dropped = policy.verdict(name)
        if dropped:
            if name == b"host":
                host = value if host is None else host
            elif name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                if listed is None:
                    listed = set()
                listed.update(t.strip().lower() for t in value.split(b","))
            elif trust_forwarded:
                if name == b"x-forwarded-for":
                    fwd_for.append(value.strip())
                elif name == b"x-forwarded-proto" and fwd_proto is None:
                    fwd_proto = value.strip()
                elif name == b"x-forwarded-host" and fwd_host is None:
                    fwd_host = value.strip()
            continue
        out.append((name, value))
    if listed:
        out = [(n, v) for n, v in out if n not in listed]
    if client is not None:
        fwd_for.append(client[0].encode("latin-1"))
    if fwd_for:
        out.append((b"x-forwarded-for", b", ".join(v for v in fwd_for if v)))
    out.append((b"x-forwarded-proto", fwd_proto or scheme.encode("latin-1")))
    if fwd_host or host:
        out.append((b"x-forwarded-host", fwd_host or host or b""))
    length: int | None = None
    if len(lengths) == 1 and _DIGITS.fullmatch(lengths[0].strip()):
        length = int(lengths[0])
    return ForwardedHeaders(
        out, content_length=length, has_body=chunked or (bool(lengths) and length != 0)
    )


def returned_response_headers(
    raw_headers: Iterable[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop and ``Connection``-listed names."""
    out: list[tuple[bytes, bytes]] = []
    listed: set[bytes] | None = None
    for raw_name, value in raw_headers:
        name = raw_name.lower()
        if name in HOP_BY_HOP:
            if name == b"connection":
                if listed is None:
                    listed = set()
                listed.update(t.strip().lower() for t in value.split(b","))
            continue
        out.append((name, value))
    if listed:
        out = [(n, v) for n, v in out if n not in listed]
    return out


class _StreamedBody:
    """The rest of a request body, read from ``receive`` as the upstream write asks for it; ``done`` is
    set once the last piece was read (``receive`` is then free to watch for the client leaving)."""

    def __init__(self, first: bytes, receive: Receive, exchange: Exchange | None = None) -> None:
        self._first = first
        self._receive = receive
        self._exchange = exchange
        self.done = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        exchange = self._exchange
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            body = message.get("body", b"")
            if body:
                if exchange is not None:
                    exchange.bytes_in += len(body)
                yield body
            if not message.get("more_body", False):
                self.done.set()
                return


def validate_upstream(upstream: str) -> Origin:
    """Parse the upstream base URL.

    Raises:
        ConfigError: not an absolute ``http(s)`` URL with a host, or it carries a query, fragment or
            credentials.
    """
    return parse_origin(upstream)


class UpstreamProxy:
    """Forwards requests to one upstream over a pooled keep-alive :class:`UpstreamPool`.

    Args:
        upstream: base URL (``http(s)://host:port`` with an optional path prefix).
        timeout: seconds to wait for a connection (pool slot included), for the response head, and
            for each read of the body from the upstream; exceeded before the response starts:
            :class:`~keyswap.errors.UpstreamTimeout` (504).
        max_connections: size of the keep-alive connection pool.

    Raises:
        ConfigError: the upstream URL or a limit is invalid.
    """

    def __init__(
        self,
        upstream: str,
        *,
        timeout: float = 30.0,
        max_connections: int = 100,
    ) -> None:
        self._pool = UpstreamPool(upstream, timeout=timeout, max_connections=max_connections)
        self._prefix = self._pool.origin.path.encode("ascii")

    @property
    def base_url(self) -> str:
        """The upstream base URL requests are appended to (no trailing slash)."""
        return str(self._pool.origin)

    @property
    def origin(self) -> Origin:
        """The parsed upstream (scheme, host, port, path prefix)."""
        return self._pool.origin

    @property
    def pool(self) -> UpstreamPool:
        """The connection pool (for diagnostics and tests)."""
        return self._pool

    async def start(self) -> None:
        """Open the connection pool (call from the app's lifespan, on its event loop)."""
        await self._pool.start()

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    def target(self, raw_path: bytes, query: bytes) -> bytes:
        """The upstream request target for a request, without re-encoding anything.

        A path the origin could resolve outside what was authorised is refused rather than
        normalised: the forwarded path is always the authorised one, byte for byte.

        Raises:
            BadTarget: the path does not start with ``/``, either part is not printable ASCII, the
                path has a dot-segment (``.`` or ``..``, raw or percent-encoded, see
                ``_DOT_SEGMENT``), or the upstream has a path prefix and the path has an encoded
                slash or backslash (``%2F``, ``%5C``) or a raw backslash.
        """
        if _TARGET.fullmatch(raw_path) is None or _QUERY.fullmatch(query) is None:
            raise BadTarget
        # 46 = ".", 37 = "%", 92 = "\\" (an int in bytes is a memchr: most paths skip the regexes)
        if (46 in raw_path or 37 in raw_path) and _DOT_SEGMENT.search(raw_path) is not None:
            raise BadTarget
        prefix = self._prefix
        if prefix and (37 in raw_path or 92 in raw_path) and _ENCODED_SLASH.search(raw_path):
            raise BadTarget
        if query:
            return prefix + raw_path + b"?" + query
        return prefix + raw_path

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: bytes,
        headers: ForwardedHeaders,
        exchange: Exchange | None = None,
        *,
        preread: PrereadBody | None = None,
    ) -> int:
        """Send the request upstream and stream the answer back; returns the status sent.

        ``exchange``: filled with the body bytes relayed each way and the upstream latency (to the
        response head), for the usage meter. ``preread``: the body (or its first part,
        ``complete=False``) was already read from ``receive`` (request binding hashes it first); it
        is sent, then the rest is streamed.

        Raises:
            UpstreamError: the upstream is unreachable or answered garbage (nothing was sent yet).
            UpstreamTimeout: no connection or no response head within the timeout.
            ClientGone: the client went away while its body was being read.
        """
        body: bytes | AsyncIterator[bytes] | None = None
        streamed: _StreamedBody | None = None
        length: int | None = None
        if preread is not None:
            if preread.complete:
                body = preread.data
            else:
                streamed = _StreamedBody(preread.data, receive)
                body = streamed.__aiter__()
                length = headers.content_length
        elif headers.has_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            first: bytes = message.get("body", b"")
            if exchange is not None:
                exchange.bytes_in = len(first)
            if message.get("more_body", False):
                streamed = _StreamedBody(first, receive, exchange)
                body = streamed.__aiter__()
                length = headers.content_length
            else:
                body = first
        elif headers.content_length == 0:
            body = b""
        method: str = scope["method"]
        asked = time.perf_counter() if exchange is not None else 0.0
        try:
            response = await self._pool.request(
                method, target, headers.items, body, content_length=length
            )
        except ValueError as exc:  # cannot be written as HTTP/1.1 (the ASGI server let it through)
            raise UpstreamError("the request cannot be forwarded") from exc
        if exchange is not None:
            exchange.latency = time.perf_counter() - asked
        try:  # (the relay of the answer, inline: no coroutine of its own)
            status = response.status
            answer = (
                returned_response_headers(response.headers)
                if response.hop_by_hop
                else response.headers  # names already lower-case, nothing to drop
            )
            if status in _NO_LENGTH:
                # Never a body; a Content-Length here would make the server expect one.
                answer = [(name, value) for name, value in answer if name != b"content-length"]
            if response.complete:
                data = response.take()
            else:
                size = response.content_length
                if size is None or size > _SMALL_BODY:
                    # Once the request body is read whole, `receive` is free to watch for the
                    # client leaving: at once, or for a streamed body (the origin may answer before
                    # it has all of it) once it is.
                    watch = _Watch(receive, None if streamed is None else streamed.done)
                    return await self._stream(status, answer, response, send, watch, exchange)
                data = await response.read_all(size)
            if exchange is not None:
                exchange.bytes_out = len(data)
            await send({"type": "http.response.start", "status": status, "headers": answer})
            await send({"type": "http.response.body", "body": data})
            return status
        finally:
            response.close()

    @staticmethod
    async def _stream(
        status: int,
        headers: list[tuple[bytes, bytes]],
        response: UpstreamResponse,
        send: Send,
        watch: _Watch | None = None,
        exchange: Exchange | None = None,
    ) -> int:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        # ASGI servers drop what is sent to a client that has gone: without watching `receive`, an
        # endless upstream stream (events) would be read for nobody, holding its connection forever.
        # The client leaving fails the read below (and `forward` then drops the connection).
        gone: asyncio.Future[bool] | None = None
        if watch is not None:
            gone = asyncio.ensure_future(watch.client_gone())
            gone.add_done_callback(
                lambda f: response._fail(ClientGone()) if not f.cancelled() and f.result() else None
            )
        try:
            while True:
                chunk = await response.read()
                if not chunk:
                    break
                if exchange is not None:
                    exchange.bytes_out += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (UpstreamError, ClientGone) as exc:
            # Headers are out: the only honest signal left is to cut the connection.
            if not isinstance(exc, ClientGone):
                logger.warning("upstream response body failed mid-stream (%s)", type(exc).__name__)
            return status
        finally:
            if gone is not None:
                gone.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return status


class _Watch:
    """What tells :meth:`UpstreamProxy._stream` that the client has gone: ``receive``, once the request
    body is read whole (``body_read`` set; ``None``: it already is)."""

    def __init__(self, receive: Receive, body_read: asyncio.Event | None) -> None:
        self.receive = receive
        self.body_read = body_read

    async def client_gone(self) -> bool:
        if self.body_read is not None:
            await self.body_read.wait()
        return await _client_gone(self.receive)


async def _client_gone(receive: Receive) -> bool:
    """True once the client has disconnected (the request body must already be read whole).

    Before the disconnect a server may still hand out the (empty) end of the request body; anything
    else, or an error, ends the watch with False.
    """
    with contextlib.suppress(Exception):
        for _ in range(3):
            if (await receive())["type"] == "http.disconnect":
                return True
    return False
