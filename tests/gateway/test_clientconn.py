"""Client connection limits (security G11): head, keep-alive, body and write timeouts and the cap,
checked with raw sockets against a real uvicorn running the guarded protocol."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from keyswap.errors import ConfigError
from keyswap.gateway.clientconn import (
    ClientLimits,
    _ResponseWriter,
    default_max_client_connections,
    protocol_class,
)
from keyswap.gateway.serve import server_config
from tests.support.asgi_server import ServerThread

REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
FAST: dict[str, Any] = {
    "head_timeout": 0.3,
    "keep_alive_timeout": 0.3,
    "body_timeout": 0.3,
    "body_deadline": 0.8,
    "send_timeout": 0.3,
}


class App:
    """Answers ``ok`` after reading the body; ``/big`` writes 64 MiB and records when it is done."""

    def __init__(self) -> None:
        self.big_done: float | None = None
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        if scope["path"] == "/big":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            chunk = b"x" * 65536
            for _ in range(1024):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            self.big_done = time.monotonic()
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def guarded(app: Any, **limits: Any) -> Iterator[ServerThread]:
    options: dict[str, Any] = dict(FAST)
    options.update(limits)
    client_limits = ClientLimits(**options)
    config = server_config(app, "127.0.0.1", 0, client_limits=client_limits)
    server = ServerThread(
        app,
        lifespan="off",
        http=config.http,
        timeout_keep_alive=config.timeout_keep_alive,
    ).start()
    try:
        yield server
    finally:
        server.stop()


def connect(server: ServerThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=3)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (fails if it is still open after the timeout)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the connection is still open; got {data!r}")
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\nok" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_a_silent_connection_is_closed_after_the_head_timeout() -> None:
    with guarded(App()) as server, connect(server) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started < 2


def test_a_partial_head_gets_408_and_is_closed() -> None:
    with guarded(App()) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_head_sent_byte_by_byte_slower_than_the_head_timeout_is_cut() -> None:
    with guarded(App()) as server, connect(server) as sock:
        started = time.monotonic()
        for byte in REQUEST[:-4]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - started > 2:
                pytest.fail("the trickled head was never cut")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_an_idle_keep_alive_connection_is_closed_and_a_stray_byte_does_not_keep_it() -> None:
    with guarded(App()) as server:
        with connect(server) as sock:
            sock.sendall(REQUEST)
            read_response(sock)
            assert read_until_closed(sock) == b""  # idle: closed by the keep-alive timeout
        with connect(server) as sock:
            sock.sendall(REQUEST)
            read_response(sock)
            sock.sendall(b"G")  # a stray byte after a complete request
            started = time.monotonic()
            assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - started < 2


def test_keep_alive_still_works_within_the_timeout() -> None:
    app = App()
    with guarded(app, keep_alive_timeout=2.0) as server, connect(server) as sock:
        for _ in range(3):
            sock.sendall(REQUEST)
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.1)
    assert len(app.bodies) == 3


def test_the_keep_alive_timeout_counts_from_the_last_response_not_the_first() -> None:
    # Requests keep the connection busy for longer than the keep-alive timeout: it must not be
    # closed by the limit armed after the first response (the timer is moved, not replaced).
    app = App()
    with guarded(app, keep_alive_timeout=0.4, head_timeout=0.4) as server, connect(server) as sock:
        first = time.monotonic()
        while time.monotonic() - first < 1.0:
            sock.sendall(REQUEST)
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.05)
        last = time.monotonic()
        assert read_until_closed(sock) == b""
        idle = time.monotonic() - last
    assert len(app.bodies) >= 5
    assert 0.3 < idle < 2.0


def test_a_head_timeout_shorter_than_the_keep_alive_timeout_still_applies() -> None:
    # The head limit (0.2 s) expires before the pending keep-alive one (2 s) would have fired.
    with (
        guarded(App(), keep_alive_timeout=2.0, head_timeout=0.2) as server,
        connect(server) as sock,
    ):
        sock.sendall(REQUEST)
        read_response(sock)
        sock.sendall(b"G")  # a request starts and stalls
        started = time.monotonic()
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 1.2


def test_connections_beyond_the_cap_get_503_and_the_cap_frees_up() -> None:
    with guarded(App(), max_connections=2, head_timeout=1.5) as server:
        holders = [connect(server), connect(server)]
        try:
            time.sleep(0.1)
            with connect(server) as sock:
                sock.sendall(REQUEST)
                assert read_until_closed(sock).startswith(b"HTTP/1.1 503 ")
            for holder in holders:  # the silent holders are dropped by the head timeout
                assert read_until_closed(holder) == b""
            with connect(server) as sock:
                sock.sendall(REQUEST)
                assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        finally:
            for holder in holders:
                holder.close()


def test_a_body_that_stalls_gets_408() -> None:
    app = App()
    with guarded(app) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab")
        started = time.monotonic()
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 2
    assert app.bodies == []


def test_a_body_trickled_slower_than_the_deadline_gets_408() -> None:
    app = App()
    with guarded(app) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
        started = time.monotonic()
        for _ in range(100):  # one byte every 0.1 s: within the idle timeout, past the deadline
            try:
                sock.sendall(b"a")
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - started > 1.5:
                break
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 1.5
    assert app.bodies == []


def test_a_client_that_does_not_read_its_response_is_disconnected() -> None:
    app = App()
    with guarded(app) as server, connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        started = time.monotonic()
        while app.big_done is None:  # the app's sends return once the server dropped the client
            if time.monotonic() - started > 5:
                pytest.fail("the server is still writing to a client that does not read")
            time.sleep(0.05)


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError):
        ClientLimits(head_timeout=0)
    with pytest.raises(ConfigError):
        ClientLimits(max_connections=0)
    assert 1 <= default_max_client_connections(100) <= 1000
    assert protocol_class(ClientLimits()).limits == ClientLimits()


def test_the_guarded_protocol_also_keeps_only_the_request_heads_fields() -> None:
    """The production protocol (with client limits) drops trailer fields too (security G19)."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass
        seen.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with guarded(app) as server, connect(server) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
            b"trailer: authorization\r\n\r\n5\r\nhello\r\n0\r\n"
            b"authorization: Bearer smuggled\r\nx-trailer: 1\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 204")
    (headers,) = seen
    names = [name.lower() for name, _ in headers]
    assert b"authorization" not in names
    assert b"x-trailer" not in names
    assert b"trailer" in names  # the head's own fields are all there


def test_a_response_head_is_sent_before_a_body_that_comes_later() -> None:
    # The head is held for the body that usually follows at once; a streamed body that waits for
    # its origin must not hold the head back.
    head_seen = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, head_seen.wait, 5.0)
        await send({"type": "http.response.body", "body": b"ok"})

    with guarded(app) as server, connect(server) as sock:
        sock.sendall(REQUEST)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)  # times out (3 s) if the head waits for the body
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ")
        assert not data.endswith(b"ok")
        head_seen.set()
        while not data.endswith(b"\r\n\r\nok"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk


def test_pipelined_requests_and_head_requests_are_answered_in_order() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    with guarded(app) as server, connect(server) as sock:
        sock.sendall(
            b"GET /one HTTP/1.1\r\nhost: x\r\n\r\nHEAD /two HTTP/1.1\r\nhost: x\r\n\r\n"
            b"GET /three HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        answers = read_until_closed(sock)
    assert answers == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n/one"
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"  # HEAD: no body
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\n/three"
    )


class _Recording(asyncio.Transport):
    """A transport that records each write call (one system call each on a real one)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.writes.append(b"".join(list_of_data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_the_response_writer_joins_a_held_head_with_the_next_write() -> None:
    async def run() -> list[bytes]:
        transport = _Recording()
        writer = _ResponseWriter(transport, asyncio.get_running_loop())
        writer.hold_next = True
        writer.write(b"HEAD1")
        writer.write(b"body1")  # joined: one write
        writer.write(b"more")  # not a head: at once
        writer.hold_next = True
        writer.write(b"HEAD2")  # nothing follows in this step: written on the loop's next pass
        assert transport.writes == [b"HEAD1body1", b"more"]
        await asyncio.sleep(0)
        writer.hold_next = True
        writer.write(b"HEAD3")
        writer.write(b"x" * 100_000)  # a large body beside the head, still one call
        writer.hold_next = True
        writer.write(b"HEAD4")
        writer.close()  # writes what is held, then closes
        return transport.writes

    assert asyncio.run(run()) == [
        b"HEAD1body1",
        b"more",
        b"HEAD2",
        b"HEAD3" + b"x" * 100_000,
        b"HEAD4",
    ]


def test_a_head_started_during_a_streamed_response_does_not_get_408_inside_it() -> None:
    # A request head begun while an answer is in flight, finished after it, leaves no "idle" state
    # behind: a later request begun during the next (streamed) answer must not arm the head timer,
    # whose 408 would land in the middle of that answer's body.
    finish = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/stream":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"2")],
                }
            )
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.get_running_loop().run_in_executor(None, finish.wait, 5.0)
        await send({"type": "http.response.body", "body": b"last"})

    with guarded(app) as server, connect(server) as sock:
        # The first request, and the start of the second while the first is being answered.
        sock.sendall(REQUEST + b"GET /stream HTTP/1.1\r\nho")
        read_response(sock)
        sock.sendall(b"st: x\r\n\r\n")
        data = b""
        while b"first" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        sock.sendall(b"G")  # a third request begins during the streamed answer
        sock.settimeout(1.0)  # > head_timeout (0.3 s)
        try:
            early = sock.recv(65536)
        except TimeoutError:
            early = b""
        assert b"408" not in early, early
        finish.set()
        sock.settimeout(3)
        data = early
        while b"0\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert b"last" in data


def test_a_body_finished_after_an_early_answer_does_not_lift_the_keep_alive_timeout() -> None:
    # The app answers before reading the body (as a refused key's 401 does); the client sends the
    # body after the answer, then nothing: the keep-alive limit must still close the connection.
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    with guarded(app) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n")
        read_response(sock)
        sock.sendall(b"hello")  # the body, after the answer
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started < 2
