"""The streaming reverse proxy: one ASGI request in, one upstream request out, bodies streamed both ways.

Request rules (RFC 9110 §7.6.1, and security corpus G04-G06):

- method, raw path and query string are forwarded byte for byte (no normalisation, no re-encoding) after
  the upstream URL's own path prefix; a target that is not plain ASCII (``/`` then ``0x21-0x7e``) is
  refused with 400 before anything is sent;
- dropped from the inbound request: hop-by-hop headers (``Connection``, ``Keep-Alive``,
  ``Proxy-Authenticate``, ``Proxy-Authorization``, ``Proxy-Connection``, ``TE``, ``Trailer``,
  ``Transfer-Encoding``, ``Upgrade``) and every name listed in ``Connection``; every ``Authorization``;
  ``Host`` (the upstream's own host is sent); ``Expect`` (answered by the server already);
  ``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``, ``X-Original-URL``, ``X-Rewrite-URL``; the identity
  namespaces ``X-Keyswap-*``, ``X-Consumer-*``, ``X-Authenticated-*``; any name containing ``_``;
- added: ``Authorization: Bearer <minted JWT>`` (by the app) and ``X-Forwarded-For`` / ``-Proto`` /
  ``-Host`` from the connection. With ``trust_forwarded`` (``--trust-forwarded``, for a gateway behind
  a proxy you run) the client's ``X-Forwarded-For`` is kept and the peer address appended, and its
  ``X-Forwarded-Proto`` / ``-Host`` are kept when present;
- the body is streamed from ASGI ``receive`` (a small body that arrives in one message is sent as is).

Response rules: status, headers (minus hop-by-hop and ``Connection``-listed names) and body pass back
unchanged (no decompression, no cookie jar, no redirects followed); the body is streamed with
``more_body``. Failures before the response starts raise :class:`~keyswap.errors.UpstreamError`
(unreachable, broken response: 502) or :class:`~keyswap.errors.UpstreamTimeout` (no answer within the
timeout, or no free pooled connection within it: 504); a failure mid-body aborts the client connection,
so a truncated body is never passed off as complete.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from keyswap.errors import ConfigError, UpstreamError, UpstreamTimeout

__all__ = [
    "HOP_BY_HOP",
    "BadTarget",
    "ClientGone",
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

#: Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ``Proxy-Connection``), never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_INBOUND = HOP_BY_HOP | {
    b"authorization",
    b"host",
    b"expect",
    b"forwarded",
    b"x-real-ip",
    b"x-original-url",
    b"x-rewrite-url",
}
_DROP_INBOUND_PREFIXES = (b"x-forwarded-", b"x-keyswap-", b"x-consumer-", b"x-authenticated-")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_QUERY = re.compile(rb"[\x21-\x7e]*")
# Headers aiohttp would otherwise invent; the client's own values pass through when it sent them.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Bodies announced at or below this size are read in one go and sent in one ASGI message.
_SMALL_BODY = 64 * 1024


class BadTarget(Exception):
    """The request target cannot be forwarded byte for byte (not plain ASCII)."""


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


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
) -> CIMultiDict[str]:
    """The inbound ASGI headers as they go upstream (see the module docstring for the rules).

    ``Authorization`` is not added here; the caller adds the minted token.
    """
    headers = list(headers)
    listed = _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    host: bytes | None = None
    fwd_for: list[str] = []
    fwd_proto: str | None = None
    fwd_host: str | None = None
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in _DROP_INBOUND or name.startswith(_DROP_INBOUND_PREFIXES) or b"_" in name:
            if name == b"host":
                host = value if host is None else host
            elif trust_forwarded:
                if name == b"x-forwarded-for":
                    fwd_for.append(value.decode("latin-1").strip())
                elif name == b"x-forwarded-proto" and fwd_proto is None:
                    fwd_proto = value.decode("latin-1").strip()
                elif name == b"x-forwarded-host" and fwd_host is None:
                    fwd_host = value.decode("latin-1").strip()
            continue
        if listed and name in listed:
            continue
        out.add(name.decode("latin-1"), value.decode("latin-1"))
    if client is not None:
        fwd_for.append(client[0])
    if fwd_for:
        out["x-forwarded-for"] = ", ".join(v for v in fwd_for if v)
    out["x-forwarded-proto"] = fwd_proto or scheme
    if fwd_host or host:
        out["x-forwarded-host"] = fwd_host or (host or b"").decode("latin-1")
    return out


def returned_response_headers(
    raw_headers: Iterable[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop and ``Connection``-listed names."""
    raw_headers = list(raw_headers)
    listed = _connection_tokens(raw_headers)
    out: list[tuple[bytes, bytes]] = []
    for raw_name, value in raw_headers:
        name = raw_name.lower()
        if name in HOP_BY_HOP or (listed and name in listed):
            continue
        out.append((name, value))
    return out


async def _stream_body(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


def validate_upstream(upstream: str) -> URL:
    """Parse the upstream base URL.

    Raises:
        ConfigError: not an absolute ``http(s)`` URL with a host, or it carries a query, fragment or
            credentials.
    """
    try:
        url = URL(upstream)
    except (ValueError, TypeError):
        raise ConfigError(f"upstream must be an absolute http(s) URL, got {upstream!r}") from None
    if (
        url.scheme not in ("http", "https")
        or not url.host
        or not upstream.isprintable()
        or " " in upstream
    ):
        raise ConfigError(f"upstream must be an absolute http(s) URL, got {upstream!r}")
    if url.query_string or url.fragment or url.user or url.password:
        raise ConfigError(
            "upstream URL must not carry a query, fragment or credentials, got " + repr(upstream)
        )
    return url


class UpstreamProxy:
    """Forwards requests to one upstream over a pooled keep-alive ``aiohttp`` session.

    Args:
        upstream: base URL (``http://host:port`` with an optional path prefix).
        timeout: seconds to wait for a connection (pool slot included) and for each read from the
            upstream; exceeded before the response starts: :class:`UpstreamTimeout` (504).
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
        url = validate_upstream(upstream)
        if not timeout > 0:
            raise ConfigError(f"upstream timeout must be positive, got {timeout!r}")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {max_connections!r}")
        self._base = str(url.with_path(url.raw_path.rstrip("/"), encoded=True))
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        """The upstream base URL requests are appended to (no trailing slash)."""
        return self._base

    async def start(self) -> None:
        """Open the connection pool (call from the app's lifespan, on its event loop)."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_connections,
            keepalive_timeout=30,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
            raise_for_status=False,
        )

    async def close(self) -> None:
        """Close the pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def target(self, raw_path: bytes, query: bytes) -> URL:
        """The upstream URL for a request, without re-encoding anything.

        Raises:
            BadTarget: the path does not start with ``/`` or either part is not printable ASCII.
        """
        if _TARGET.fullmatch(raw_path) is None or _QUERY.fullmatch(query) is None:
            raise BadTarget
        text = self._base + raw_path.decode("ascii")
        if query:
            text += "?" + query.decode("ascii")
        return URL(text, encoded=True)

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, url: URL, headers: CIMultiDict[str]
    ) -> int:
        """Send the request upstream and stream the answer back; returns the status sent.

        Raises:
            UpstreamError: the upstream is unreachable or answered garbage (nothing was sent yet).
            UpstreamTimeout: no connection or no response head within the timeout.
            ClientGone: the client went away while its body was being read.
        """
        session = self._session
        if session is None:
            raise UpstreamError("the proxy is not started")
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        first = message.get("body", b"")
        data: Any
        if message.get("more_body", False):
            data = _stream_body(first, receive)
        else:
            data = first if first or "content-length" in headers else None
        method: str = scope["method"]
        try:
            response = await session.request(
                method, url, headers=headers, data=data, allow_redirects=False
            )
        except ClientGone:
            raise
        except TimeoutError as exc:
            raise UpstreamTimeout("the upstream did not answer in time") from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            if isinstance(exc.__cause__, ClientGone) or isinstance(exc.__context__, ClientGone):
                raise ClientGone from exc
            raise UpstreamError("the upstream could not be reached") from exc
        try:
            return await self._relay(method, response, send)
        finally:
            response.release()

    async def _relay(self, method: str, response: aiohttp.ClientResponse, send: Send) -> int:
        status = response.status
        if (
            not 200 <= status <= 599
        ):  # 1xx never reaches here unless unsolicited (101 without Upgrade)
            raise UpstreamError("the upstream answered with an unusable status")
        headers = returned_response_headers(response.raw_headers)
        length = response.content_length
        if status in (204, 304):
            # Never a body; a Content-Length here would make the server expect one.
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        no_body = method == "HEAD" or status in (204, 304) or length == 0
        if not no_body and length is not None and length <= _SMALL_BODY:
            try:
                body = await response.read()
            except TimeoutError as exc:
                raise UpstreamTimeout("the upstream stalled while sending its body") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError("the upstream sent a broken body") from exc
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if not no_body:
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (TimeoutError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
                # Headers are out: the only honest signal left is to cut the connection.
                logger.warning("upstream response body failed mid-stream (%s)", type(exc).__name__)
                return status
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return status
