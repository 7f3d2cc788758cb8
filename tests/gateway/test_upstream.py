"""The upstream HTTP/1.1 client against real raw-socket servers on 127.0.0.1, on asyncio and uvloop.

The server (:class:`RawUpstream`) parses requests itself, counts connections and requests, and answers
with exactly the bytes a test scripts, so framing corner cases and misbehaving upstreams are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keyswap.errors import ConfigError, UpstreamError, UpstreamTimeout
from keyswap.gateway.upstream import UpstreamPool, UpstreamResponse, parse_origin
from tests.support.asgi_server import free_port

MIB = 1024 * 1024


# --------------------------------------------------------------------------- the raw upstream


@dataclass
class Seen:
    """One request as the upstream received it."""

    conn: int  # 1-based connection number
    index: int  # 1-based request number on that connection
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]


Handler = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]


def answer(raw: bytes, *, keep: bool = True) -> Handler:
    """A handler writing ``raw`` for every request; ``keep=False`` closes the connection after."""

    async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep

    return handler


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are ever sent
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


@dataclass
class RawUpstream:
    """An HTTP/1.1 server on 127.0.0.1 that records requests and answers through ``handler``."""

    handler: Handler = field(default_factory=lambda: answer(ok()))
    ssl_context: ssl.SSLContext | None = None
    connections: int = 0
    seen: list[Seen] = field(default_factory=list)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for writer in self._writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.append(writer)
        index = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].split(b"\r\n")
                method, target, _ = lines[0].split(b" ")
                headers = [
                    (n.strip().lower(), v.strip())
                    for n, _, v in (line.partition(b":") for line in lines[1:])
                ]
                names = dict(headers)
                try:
                    if names.get(b"transfer-encoding") == b"chunked":
                        body = await _read_chunked(reader)
                    else:
                        body = await reader.readexactly(int(names.get(b"content-length", b"0")))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                index += 1
                seen = Seen(number, index, method, target, headers, body)
                self.seen.append(seen)
                if not await self.handler(seen, writer):
                    return
        finally:
            writer.close()


# --------------------------------------------------------------------------- running scenarios

Run = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Run a scenario on a fresh event loop of each kind the gateway may run on."""

    def runner(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as loop_runner:
            loop_runner.run(asyncio.wait_for(scenario(), 20))

    return runner


@contextlib.asynccontextmanager
async def started(pool: UpstreamPool) -> AsyncIterator[UpstreamPool]:
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) for something another party does; never used to let time pass."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def get(pool: UpstreamPool, target: bytes = b"/", method: str = "GET") -> tuple[int, bytes]:
    response = await pool.request(method, target, [(b"accept", b"*/*")])
    try:
        return response.status, await response.read_all(64 * MIB)
    finally:
        response.close()


class Clock:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- keep-alive


def test_sequential_requests_reuse_one_keep_alive_connection(run: Run) -> None:
    async def scenario() -> None:
        async with RawUpstream() as up, started(UpstreamPool(up.url)) as pool:
            for _ in range(20):
                assert await get(pool) == (200, b"ok")
            assert up.connections == 1
            assert [s.index for s in up.seen] == list(range(1, 21))
            assert pool.connections_opened == 1

    run(scenario)


def test_the_request_carries_host_the_callers_headers_in_order_and_nothing_else(
    run: Run,
) -> None:
    async def scenario() -> None:
        async with RawUpstream() as up, started(UpstreamPool(up.url + "/ignored-prefix")) as pool:
            response = await pool.request(
                "GET", b"/a/../b?q=%zz", [(b"x-one", b"1"), (b"accept", b"*/*"), (b"x-one", b"2")]
            )
            response.close()
            seen = up.seen[0]
            assert (seen.method, seen.target) == (b"GET", b"/a/../b?q=%zz")
            port = up.url.rsplit(":", 1)[1]
            assert seen.headers == [
                (b"host", f"127.0.0.1:{port}".encode()),
                (b"x-one", b"1"),
                (b"accept", b"*/*"),
                (b"x-one", b"2"),
            ]

    run(scenario)


def test_concurrent_requests_never_open_more_than_max_connections(run: Run) -> None:
    async def slowish(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)  # keep connections busy so requests overlap
        writer.write(ok())
        return True

    async def scenario() -> None:
        async with (
            RawUpstream(slowish) as up,
            started(UpstreamPool(up.url, max_connections=3)) as pool,
        ):
            results = await asyncio.gather(*(get(pool) for _ in range(30)))
            assert results == [(200, b"ok")] * 30
            assert up.connections == 3
            assert len(up.seen) == 30

    run(scenario)


def test_connection_close_from_the_upstream_is_honoured(run: Run) -> None:
    async def scenario() -> None:
        raw = ok(b"bye", b"Connection: close")
        async with (
            RawUpstream(answer(raw, keep=False)) as up,
            started(UpstreamPool(up.url)) as pool,
        ):
            assert await get(pool) == (200, b"bye")
            assert await get(pool) == (200, b"bye")
            assert up.connections == 2
            assert [s.index for s in up.seen] == [1, 1]

    run(scenario)


def test_an_http_1_0_answer_without_keep_alive_is_not_reused(run: Run) -> None:
    async def scenario() -> None:
        raw = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
        async with RawUpstream(answer(raw)) as up, started(UpstreamPool(up.url)) as pool:
            assert await get(pool) == (200, b"ok")
            assert await get(pool) == (200, b"ok")
            assert up.connections == 2

    run(scenario)


def test_an_idle_connection_the_upstream_closed_is_dropped_not_used(run: Run) -> None:
    async def scenario() -> None:
        # The upstream answers, then closes the connection while it sits in the pool.
        async with (
            RawUpstream(answer(ok(), keep=False)) as up,
            started(UpstreamPool(up.url)) as pool,
        ):
            assert await get(pool) == (200, b"ok")
            await until(lambda: pool.connections_opened == 1 and not pool._conns)
            assert await get(pool) == (200, b"ok")
            assert up.connections == 2
            assert len(up.seen) == 2  # no request was lost or sent twice

    run(scenario)


def test_idle_connections_older_than_the_idle_timeout_are_not_reused(run: Run) -> None:
    clock = Clock()

    async def scenario() -> None:
        async with (
            RawUpstream() as up,
            started(UpstreamPool(up.url, idle_timeout=4.0, clock=clock)) as pool,
        ):
            await get(pool)
            clock.now += 3.9
            await get(pool)
            assert up.connections == 1
            clock.now += 4.1
            await get(pool)
            assert up.connections == 2

    run(scenario)


# --------------------------------------------------------------------------- stale connections


def _close_second_request_unanswered() -> Handler:
    """Answer every request, except the 2nd on the 1st connection: close it without a byte."""

    async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.conn == 1 and seen.index == 2:
            return False
        writer.write(ok())
        return True

    return handler


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
def test_a_stale_pooled_connection_is_retried_once_for_idempotent_methods(
    run: Run, method: str
) -> None:
    async def scenario() -> None:
        async with (
            RawUpstream(_close_second_request_unanswered()) as up,
            started(UpstreamPool(up.url)) as pool,
        ):
            assert await get(pool) == (200, b"ok")
            response = await pool.request(
                method, b"/again", [], b"body" if method == "PUT" else None
            )
            response.close()
            assert response.status == 200
            assert [(s.conn, s.index) for s in up.seen] == [(1, 1), (1, 2), (2, 1)]
            assert up.seen[2].body == (b"body" if method == "PUT" else b"")

    run(scenario)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_stale_pooled_connection_is_never_retried_for_other_methods(
    run: Run, method: str
) -> None:
    async def scenario() -> None:
        async with (
            RawUpstream(_close_second_request_unanswered()) as up,
            started(UpstreamPool(up.url)) as pool,
        ):
            await get(pool)
            with pytest.raises(UpstreamError, match="before answering"):
                await pool.request(method, b"/pay", [], b"once")
            assert [s.target for s in up.seen] == [b"/", b"/pay"]  # sent once, never replayed

    run(scenario)


def test_a_streamed_body_is_never_replayed(run: Run) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    async def scenario() -> None:
        async with (
            RawUpstream(_close_second_request_unanswered()) as up,
            started(UpstreamPool(up.url)) as pool,
        ):
            await get(pool)
            with pytest.raises(UpstreamError):
                await pool.request("PUT", b"/s", [], body())
            assert len(up.seen) == 2

    run(scenario)


def test_a_new_connection_closed_without_an_answer_is_a_bad_gateway_not_retried(
    run: Run,
) -> None:
    async def scenario() -> None:
        async with (
            RawUpstream(answer(b"", keep=False)) as up,
            started(UpstreamPool(up.url)) as pool,
        ):
            with pytest.raises(UpstreamError):
                await get(pool)
            assert len(up.seen) == 1

    run(scenario)


# --------------------------------------------------------------------------- bodiless answers


def test_a_head_answer_has_no_body_whatever_its_content_length_and_keeps_the_connection(
    run: Run,
) -> None:
    async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.method == b"HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-H: 1\r\n\r\n")
        else:
            writer.write(ok(b"after"))
        return True

    async def scenario() -> None:
        async with RawUpstream(handler) as up, started(UpstreamPool(up.url)) as pool:
            response = await pool.request("HEAD", b"/", [])
            assert response.complete
            assert response.content_length == 1000
            assert (b"x-h", b"1") in response.headers
            assert await response.read() == b""
            response.close()
            assert await get(pool) == (200, b"after")
            assert up.connections == 1

    run(scenario)


def test_a_head_answer_followed_by_stray_bytes_does_not_keep_the_connection(run: Run) -> None:
    async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.method == b"HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
        else:
            writer.write(ok())
        return True

    async def scenario() -> None:
        async with RawUpstream(handler) as up, started(UpstreamPool(up.url)) as pool:
            response = await pool.request("HEAD", b"/", [])
            response.close()
            assert await get(pool) == (200, b"ok")
            assert up.connections == 2

    run(scenario)


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_even_with_a_content_length(run: Run, status: int) -> None:
    async def scenario() -> None:
        raw = b'HTTP/1.1 %d X\r\nContent-Length: 1234\r\nETag: "v"\r\n\r\n' % status
        async with RawUpstream(answer(raw)) as up, started(UpstreamPool(up.url)) as pool:
            response = await pool.request("GET", b"/", [])
            assert response.status == status
            assert response.complete
            assert response.content_length is None
            assert await response.read() == b""
            response.close()
            await get(pool)
            assert up.connections == 1

    run(scenario)


def test_interim_1xx_answers_are_skipped(run: Run) -> None:
    async def scenario() -> None:
        raw = (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            + ok(b"final", b"X-Final: yes")
        )
        async with RawUpstream(answer(raw)) as up, started(UpstreamPool(up.url)) as pool:
            response = await pool.request("GET", b"/", [])
            assert response.status == 200
            assert [n for n, _ in response.headers] == [b"content-length", b"x-final"]
            assert await response.read_all(100) == b"final"
            response.close()
            await get(pool)
            assert up.connections == 1

    run(scenario)


def test_an_unsolicited_101_is_refused(run: Run) -> None:
    async def scenario() -> None:
        raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        async with RawUpstream(answer(raw)) as up, started(UpstreamPool(up.url)) as pool:
            with pytest.raises(UpstreamError, match="switched protocols"):
                await pool.request("GET", b"/", [])

    run(scenario)


# --------------------------------------------------------------------------- body framing


def test_a_chunked_answer_is_decoded_and_the_connection_reused(run: Run) -> None:
    async def scenario() -> None:
        raw = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
        )
        async with RawUpstream(answer(raw)) as up, started(UpstreamPool(up.url)) as pool:
            response = await pool.request("GET", b"/", [])
            assert response.content_length is None
            assert await response.read_all(100) == b"hello world"
            response.close()
            await get(pool)
            assert up.connections == 1

    run(scenario)


def test_an_answer_without_length_is_read_to_close_and_never_reused(run: Run) -> None:
    async def scenario() -> None:
        raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
        async with (
            RawUpstream(answer(raw, keep=False)) as up,
            started(UpstreamPool(up.url)) as pool,
        ):
            assert await get(pool) == (200, b"until the end")
            assert await get(pool) == (200, b"until the end")
            assert up.connections == 2

    run(scenario)


def test_a_body_cut_short_is_an_error_not_a_short_body(run: Run) -> None:
    async def scenario() -> None:
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."
        async with (
            RawUpstream(answer(raw, keep=False)) as up,
            started(UpstreamPool(up.url)) as pool,
        ):
            response = await pool.request("GET", b"/", [])
            with pytest.raises(UpstreamError, match="mid-body"):
                await response.read_all(1000)
            response.close()

    run(scenario)


def test_stray_bytes_after_a_complete_answer_drop_the_connection(run: Run) -> None:
    async def scenario() -> None:
        async with RawUpstream(answer(ok() + b"JUNK")) as up, started(UpstreamPool(up.url)) as pool:
            assert await get(pool) == (200, b"ok")
            assert await get(pool) == (200, b"ok")
            assert up.connections == 2

    run(scenario)


def test_stray_bytes_that_start_like_an_answer_also_drop_the_connection(run: Run) -> None:
    # A valid prefix of a status line fires no header callback: the start of a message must count.
    async def scenario() -> None:
        stray = answer(ok() + b"HTTP/1.1 2")
        async with RawUpstream(stray) as up, started(UpstreamPool(up.url)) as pool:
            assert await get(pool) == (200, b"ok")
            assert await get(pool) == (200, b"ok")
            assert up.connections == 2

    run(scenario)


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
    ids=["garbage", "two-lengths", "te-and-cl", "bad-chunk", "bad-header"],
)
def test_a_malformed_answer_is_a_bad_gateway(run: Run, raw: bytes) -> None:
    async def scenario() -> None:
        async with RawUpstream(answer(raw)) as up, started(UpstreamPool(up.url)) as pool:
            with pytest.raises(UpstreamError):
                await get(pool)

    run(scenario)


def test_response_heads_beyond_the_size_and_count_limits_are_refused(run: Run) -> None:
    async def scenario() -> None:
        huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
        many = b"HTTP/1.1 200 OK\r\n" + b"X-N: 1\r\n" * 300 + b"Content-Length: 0\r\n\r\n"
        async with RawUpstream(answer(huge)) as up, started(UpstreamPool(up.url)) as pool:
            with pytest.raises(UpstreamError, match="too large"):
                await pool.request("GET", b"/", [])
        async with RawUpstream(answer(many)) as up, started(UpstreamPool(up.url)) as pool:
            with pytest.raises(UpstreamError, match="too many headers"):
                await pool.request("GET", b"/", [])

    run(scenario)


# --------------------------------------------------------------------------- request bodies


def test_a_bytes_body_goes_with_its_content_length(run: Run) -> None:
    async def scenario() -> None:
        async with RawUpstream() as up, started(UpstreamPool(up.url)) as pool:
            (await pool.request("POST", b"/", [], b"abc")).close()
            (await pool.request("POST", b"/", [], b"")).close()
            (await pool.request("GET", b"/", [])).close()
            assert up.seen[0].header(b"content-length") == [b"3"]
            assert up.seen[0].body == b"abc"
            assert up.seen[1].header(b"content-length") == [b"0"]
            assert up.seen[2].header(b"content-length") == []
            assert up.seen[2].header(b"transfer-encoding") == []

    run(scenario)


def _hash_echo() -> Handler:
    async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(hashlib.sha256(seen.body).hexdigest().encode()))
        return True

    return handler


def _blocks(total: int, size: int = 100_000) -> tuple[bytes, Callable[[], AsyncIterator[bytes]]]:
    data = hashlib.sha256(b"keyswap").digest() * (total // 32 + 1)
    data = data[:total]

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, total, size):
            yield data[start : start + size]
            await asyncio.sleep(0)

    return data, chunks


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_a_large_streamed_request_body_arrives_intact(run: Run, sized: bool) -> None:
    data, chunks = _blocks(8 * MIB)

    async def scenario() -> None:
        async with RawUpstream(_hash_echo()) as up, started(UpstreamPool(up.url)) as pool:
            response = await pool.request(
                "PUT", b"/up", [], chunks(), content_length=len(data) if sized else None
            )
            assert await response.read_all(100) == hashlib.sha256(data).hexdigest().encode()
            response.close()
            framing = up.seen[0].header(b"content-length" if sized else b"transfer-encoding")
            assert framing == [str(len(data)).encode() if sized else b"chunked"]
            await get(pool)
            assert up.connections == 1  # a fully sent request keeps its connection

    run(scenario)


def test_a_streamed_body_that_does_not_match_its_length_is_refused(run: Run) -> None:
    _, chunks = _blocks(1000)

    async def scenario() -> None:
        async with RawUpstream(_hash_echo()) as up, started(UpstreamPool(up.url)) as pool:
            with pytest.raises(UpstreamError, match="shorter than announced"):
                await pool.request("PUT", b"/", [], chunks(), content_length=2000)
            with pytest.raises(UpstreamError, match="longer than announced"):
                await pool.request("PUT", b"/", [], chunks(), content_length=500)
            assert up.seen == []

    run(scenario)


def test_an_error_of_the_body_source_propagates_and_drops_the_connection(run: Run) -> None:
    class Gone(Exception):
        pass

    async def body() -> AsyncIterator[bytes]:
        yield b"part"
        raise Gone

    async def scenario() -> None:
        async with RawUpstream(_hash_echo()) as up, started(UpstreamPool(up.url)) as pool:
            with pytest.raises(Gone):
                await pool.request("POST", b"/", [], body())
            await until(lambda: not pool._conns)
            assert up.seen == []

    run(scenario)


def test_an_early_answer_during_an_upload_is_returned_and_the_connection_dropped(
    run: Run,
) -> None:
    never_done = asyncio.Event  # created inside the loop below

    async def scenario() -> None:
        stop = never_done()

        async def endless() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            await stop.wait()
            yield b"never sent"

        async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
            await writer.drain()
            await reader.read()  # until the client gives up
            writer.close()

        server = await asyncio.start_server(early, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with started(UpstreamPool(f"http://127.0.0.1:{port}")) as pool:
                response = await pool.request("POST", b"/", [], endless(), content_length=10**9)
                assert response.status == 413
                assert await response.read_all(100) == b"big"
                response.close()
                await until(lambda: not pool._conns)
        finally:
            stop.set()
            server.close()
            await server.wait_closed()

    run(scenario)


# --------------------------------------------------------------------------- response bodies


def test_a_large_response_is_streamed_with_bounded_buffering(run: Run) -> None:
    total = 48 * MIB
    data, _ = _blocks(total)
    sent = [0]

    async def big(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for start in range(0, total, 64 * 1024):
            writer.write(data[start : start + 64 * 1024])
            await writer.drain()
            sent[0] = start + 64 * 1024
        return True

    async def scenario() -> None:
        async with RawUpstream(big) as up, started(UpstreamPool(up.url)) as pool:
            response = await pool.request("GET", b"/big", [])
            # Do not read: the upstream must stall once the buffers are full.
            last = -1
            while sent[0] != last:
                last = sent[0]
                await asyncio.sleep(0.05)
            assert sent[0] < total
            assert response.buffered <= 512 * 1024
            digest = hashlib.sha256()
            while chunk := await response.read():
                digest.update(chunk)
                assert response.buffered == 0
            assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
            response.close()
            await get(pool)
            assert up.connections == 1

    run(scenario)


# --------------------------------------------------------------------------- failures


def test_a_refused_connection_is_a_bad_gateway_and_frees_its_slot(run: Run) -> None:
    async def scenario() -> None:
        async with started(
            UpstreamPool(f"http://127.0.0.1:{free_port()}", max_connections=1)
        ) as pool:
            for _ in range(3):  # the slot comes back each time: no hang on the second try
                with pytest.raises(UpstreamError) as info:
                    await get(pool)
                assert not isinstance(info.value, UpstreamTimeout)

    run(scenario)


def test_an_upstream_that_never_answers_times_out(run: Run) -> None:
    async def silent(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(30)
        return False

    async def scenario() -> None:
        async with RawUpstream(silent) as up, started(UpstreamPool(up.url, timeout=0.2)) as pool:
            started_at = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamTimeout, match="did not answer"):
                await get(pool)
            assert asyncio.get_running_loop().time() - started_at < 2.0

    run(scenario)


def test_a_body_that_stalls_times_out_mid_stream(run: Run) -> None:
    async def stall(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await writer.drain()
        await asyncio.sleep(30)
        return False

    async def scenario() -> None:
        async with RawUpstream(stall) as up, started(UpstreamPool(up.url, timeout=0.2)) as pool:
            response = await pool.request("GET", b"/", [])
            assert await response.read() == b"first"
            with pytest.raises(UpstreamTimeout, match="stalled"):
                await response.read()
            response.close()

    run(scenario)


def test_waiting_for_a_free_connection_is_bounded_by_the_timeout(run: Run) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"

    async def scenario() -> None:
        async with (
            RawUpstream(answer(raw)) as up,
            started(UpstreamPool(up.url, timeout=0.2, max_connections=1)) as pool,
        ):
            held = await pool.request("GET", b"/", [])  # not read, not closed: holds the slot
            with pytest.raises(UpstreamTimeout, match="became free"):
                await get(pool)
            held.close()  # an unfinished response gives its slot back (its connection is dropped)
            again = await pool.request("GET", b"/", [])
            again.close()
            assert again.status == 200
            assert (len(up.seen), up.connections) == (2, 2)

    run(scenario)


def test_a_freed_connection_is_handed_to_a_waiting_request(run: Run) -> None:
    async def slowish(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        writer.write(ok())
        return True

    async def scenario() -> None:
        async with (
            RawUpstream(slowish) as up,
            started(UpstreamPool(up.url, max_connections=1)) as pool,
        ):
            assert list(await asyncio.gather(get(pool), get(pool), get(pool))) == [(200, b"ok")] * 3
            assert up.connections == 1

    run(scenario)


# --------------------------------------------------------------------------- request validation


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", b"/", [(b"x-a", b"1\r\nx-injected: 1")]),
        ("GET", b"/", [(b"x-a", b"1\nx-injected: 1")]),
        ("GET", b"/", [(b"x-a", b"1\rx")]),
        ("GET", b"/", [(b"x-a", b"nul\x00byte")]),
        ("GET", b"/", [(b"x-a", b"ok"), (b"x-b", b"x" * 900 + b"\r")]),
        ("GET", b"/", [(b"x-a", b"ok"), (b"x-b", b"\n" + b"x" * 900)]),
        ("GET", b"/", [(b"x-a\r\nx-b", b"1")]),
        ("GET", b"/", [(b"x a", b"1")]),
        ("GET", b"/", [(b"x-a:", b"1")]),
        ("GET", b"/", [(b"", b"1")]),
        ("GET", b"/", [(b"content-length", b"5")]),
        ("GET", b"/", [(b"Transfer-Encoding", b"chunked")]),
        ("GET", b"/", [(b"host", b"evil.example")]),
        ("GET", b"/", [(b"connection", b"close")]),
        ("GET", b"/ HTTP/1.1\r\nx-injected: 1\r\n\r\nGET /", []),
        ("GET", b"/a b", []),
        ("GET", b"", []),
        ("GET /x HTTP/1.1\r\n", b"/", []),
        ("G T", b"/", []),
    ],
)
def test_header_and_request_line_injection_is_refused_before_anything_is_sent(
    run: Run, method: str, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    async def scenario() -> None:
        async with RawUpstream() as up, started(UpstreamPool(up.url)) as pool:
            with pytest.raises(ValueError):
                await pool.request(method, target, headers)
            assert up.connections == 0

    run(scenario)


@pytest.mark.parametrize(
    "url", ["127.0.0.1:80", "ftp://h", "http://h/?q=1", "http://u:p@h", "http:///x", "http://h:x"]
)
def test_a_bad_upstream_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_origin(url)


def test_the_origin_keeps_its_path_prefix_and_omits_default_ports() -> None:
    assert parse_origin("https://api.example/v1/").path == "/v1"
    assert parse_origin("https://api.example/v1/").host_header == b"api.example"
    assert parse_origin("http://[::1]:8080").host_header == b"[::1]:8080"
    assert str(parse_origin("http://h:81/p")) == "http://h:81/p"


def test_a_pool_that_is_not_started_refuses_requests(run: Run) -> None:
    async def scenario() -> None:
        with pytest.raises(UpstreamError, match="not started"):
            await UpstreamPool("http://127.0.0.1:1").request("GET", b"/", [])

    run(scenario)


# --------------------------------------------------------------------------- TLS


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyswap test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_an_https_upstream_is_verified_against_the_trust_store(run: Run, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        async with RawUpstream(ssl_context=server_ctx) as up:
            async with started(UpstreamPool(up.url, ssl_context=trusting)) as pool:
                assert await get(pool) == (200, b"ok")
                assert await get(pool) == (200, b"ok")
            async with started(UpstreamPool(up.url)) as pool:  # system trust store: refused
                with pytest.raises(UpstreamError, match="could not be reached"):
                    await get(pool)
            assert up.connections >= 1

    run(scenario)


def test_an_unfinished_response_closed_by_the_caller_drops_its_connection(run: Run) -> None:
    async def scenario() -> None:
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
        async with RawUpstream(answer(raw)) as up, started(UpstreamPool(up.url)) as pool:
            response: UpstreamResponse = await pool.request("GET", b"/", [])
            assert not response.complete
            response.close()
            await until(lambda: not pool._conns)

    run(scenario)
