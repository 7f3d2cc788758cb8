"""The proxy module on real servers: a recording upstream behind a minimal ASGI app using UpstreamProxy."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from keyswap.errors import ConfigError, UpstreamError, UpstreamTimeout
from keyswap.gateway.proxy import (
    BadTarget,
    UpstreamProxy,
    forwarded_request_headers,
    returned_response_headers,
)
from tests.support.asgi_server import ServerThread, free_port, raw_http, serving
from tests.support.upstream import GZIP_BODY, RecordingUpstream, pattern, recording_upstream

TWO_MIB = 2 * 1024 * 1024


class ProxyApp:
    """The proxy and nothing else: every request goes upstream with a fixed Authorization."""

    def __init__(
        self, upstream: str, *, timeout: float = 5.0, trust_forwarded: bool = False
    ) -> None:
        self.proxy = UpstreamProxy(upstream, timeout=timeout)
        self.trust_forwarded = trust_forwarded

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.proxy.start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self.proxy.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        url = self.proxy.target(scope["raw_path"], scope["query_string"])
        headers = forwarded_request_headers(
            scope["headers"],
            client=scope["client"],
            scheme=scope["scheme"],
            trust_forwarded=self.trust_forwarded,
        )
        headers["authorization"] = "Bearer minted"
        try:
            await self.proxy.forward(scope, receive, send, url, headers)
        except UpstreamTimeout:
            await _plain(send, 504)
        except UpstreamError:
            await _plain(send, 502)


async def _plain(send: Any, status: int) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: RecordingUpstream) -> Iterator[ServerThread]:
    with serving(ProxyApp(upstream.url)) as server:
        yield server


def test_method_raw_path_and_query_arrive_byte_for_byte(
    upstream: RecordingUpstream, proxy: ServerThread
) -> None:
    target = b"/a/...b/%2F/c%20d//e;x/%2e%2e./?q=%zz&a=1&a=2&empty=../.."
    status, _, _ = raw_http(
        proxy.port, b"PATCH " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert upstream.last.method == "PATCH"
    assert upstream.last.raw_path == b"/a/...b/%2F/c%20d//e;x/%2e%2e./"
    assert upstream.last.query == b"q=%zz&a=1&a=2&empty=../.."


def test_hop_by_hop_identity_and_spoofed_forwarding_headers_are_dropped(
    upstream: RecordingUpstream, proxy: ServerThread
) -> None:
    request = (
        b"GET /headers HTTP/1.1\r\n"
        b"Host: gateway.example\r\n"
        b"Connection: close, X-Listed\r\n"
        b"X-Listed: should-go\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic c2VjcmV0\r\n"
        b"Authorization: Bearer consumer-own-token\r\n"
        b"authorization: Basic second\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\n"
        b"X-Forwarded-Host: evil.example\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Prefix: /admin\r\n"
        b"Forwarded: for=6.6.6.6\r\n"
        b"X-Real-IP: 6.6.6.6\r\n"
        b"X-Original-URL: /admin\r\n"
        b"X_Forwarded_For: 7.7.7.7\r\n"
        b"X-Consumer_Id: 42\r\n"
        b"X-Consumer-Id: 42\r\n"
        b"X-Keyswap-Consumer: root\r\n"
        b"X-Custom: kept\r\n"
        b"X-Custom: twice\r\n"
        b"\r\n"
    )
    status, _, _ = raw_http(proxy.port, request)
    assert status == 200
    got = upstream.last
    names = {name for name, _ in got.headers}
    for dropped in (
        b"connection", b"x-listed", b"keep-alive", b"te", b"upgrade", b"proxy-authorization",
        b"forwarded", b"x-real-ip", b"x-original-url", b"x_forwarded_for", b"x-consumer_id",
        b"x-consumer-id", b"x-keyswap-consumer", b"x-forwarded-prefix",
    ):  # fmt: skip
        assert dropped not in names, dropped
    assert got.header("authorization") == ["Bearer minted"]
    assert got.header("x-forwarded-for") == ["127.0.0.1"]
    assert got.header("x-forwarded-host") == ["gateway.example"]
    assert got.header("x-forwarded-proto") == ["http"]
    assert got.header("host") == [f"127.0.0.1:{upstream.port}"]
    assert got.header("x-custom") == ["kept", "twice"]
    assert b"6.6.6.6" not in got.raw()
    assert b"consumer-own-token" not in got.raw()


def test_nothing_is_invented_no_user_agent_accept_or_content_type(
    upstream: RecordingUpstream, proxy: ServerThread
) -> None:
    status, _, _ = raw_http(
        proxy.port,
        b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    assert status == 200
    names = {name for name, _ in upstream.last.headers}
    assert names == {
        b"host", b"content-length", b"authorization",
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    }  # fmt: skip
    assert upstream.last.body_len == 3


def test_trusted_forwarding_headers_are_kept_and_the_peer_appended(
    upstream: RecordingUpstream,
) -> None:
    with serving(ProxyApp(upstream.url, trust_forwarded=True)) as proxy:
        raw_http(
            proxy.port,
            b"GET /t HTTP/1.1\r\nHost: inner\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: api.example\r\nX-Real-IP: 1.1.1.1\r\n"
            b"Connection: close\r\n\r\n",
        )
    got = upstream.last
    assert got.header("x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    assert got.header("x-forwarded-proto") == ["https"]
    assert got.header("x-forwarded-host") == ["api.example"]
    assert got.header("x-real-ip") == []


def test_two_mib_request_bodies_arrive_intact_streamed_or_sized(
    upstream: RecordingUpstream, proxy: ServerThread
) -> None:
    body = pattern(TWO_MIB)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    sized = httpx.post(proxy.url + "/upload", content=body, timeout=30)
    assert sized.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert upstream.last.header("content-length") == [str(TWO_MIB)]

    async def chunked_upload() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(proxy.url + "/upload", content=chunks())

    streamed = asyncio.run(chunked_upload())
    assert streamed.json()["body_len"] == TWO_MIB
    assert streamed.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("query", ["", "?chunked"])
def test_two_mib_response_bodies_come_back_intact(proxy: ServerThread, query: str) -> None:
    with httpx.stream("GET", f"{proxy.url}/big/{TWO_MIB}{query}", timeout=30) as response:
        digest = hashlib.sha256()
        for chunk in response.iter_raw():
            digest.update(chunk)
    assert response.status_code == 200
    assert digest.hexdigest() == hashlib.sha256(pattern(TWO_MIB)).hexdigest()
    assert ("content-length" in response.headers) == (query == "")


def test_response_hop_by_hop_headers_are_dropped_and_the_rest_passed(proxy: ServerThread) -> None:
    response = httpx.get(proxy.url + "/hop")
    assert response.text == "hop"
    assert response.headers["x-kept"] == "yes"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    for dropped in ("keep-alive", "x-upstream-private", "proxy-authenticate"):
        assert dropped not in response.headers


def test_cookies_set_by_the_upstream_are_not_replayed_to_other_clients(
    upstream: RecordingUpstream, proxy: ServerThread
) -> None:
    httpx.get(proxy.url + "/hop")
    httpx.get(proxy.url + "/after-cookie")
    assert upstream.last.header("cookie") == []


def test_compressed_bodies_pass_through_byte_exact(proxy: ServerThread) -> None:
    with httpx.stream("GET", proxy.url + "/gzip") as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert raw == GZIP_BODY


@pytest.mark.parametrize("status", [204, 302, 404, 418, 503])
def test_upstream_status_passes_back_and_redirects_are_not_followed(
    proxy: ServerThread, status: int
) -> None:
    response = httpx.get(f"{proxy.url}/status/{status}")
    assert response.status_code == status
    if status == 302:
        assert response.headers["location"] == "/elsewhere"


def test_head_gets_the_upstream_headers_without_a_body(proxy: ServerThread) -> None:
    response = httpx.head(f"{proxy.url}/big/1000")
    assert response.status_code == 200
    assert response.headers["content-length"] == "1000"
    assert response.content == b""


def test_an_unreachable_upstream_is_502() -> None:
    with serving(ProxyApp(f"http://127.0.0.1:{free_port()}")) as proxy:
        assert httpx.get(proxy.url + "/x").status_code == 502


def test_an_upstream_slower_than_the_timeout_is_504(upstream: RecordingUpstream) -> None:
    with serving(ProxyApp(upstream.url, timeout=0.3)) as proxy:
        response = httpx.get(proxy.url + "/stall", timeout=10)
    upstream.release()
    assert response.status_code == 504


def test_the_upstream_path_prefix_is_kept(upstream: RecordingUpstream) -> None:
    with serving(ProxyApp(upstream.url + "/base/")) as proxy:
        httpx.get(proxy.url + "/x/y?z=1")
    assert upstream.last.raw_path == b"/base/x/y"


@pytest.mark.parametrize(
    ("path", "query"),
    [(b"*", b""), (b"x", b""), (b"/\xc3\xa9", b""), (b"/ok", b"a=\xff"), (b"/a b", b"")],
)
def test_a_target_that_is_not_plain_ascii_is_refused(path: bytes, query: bytes) -> None:
    with pytest.raises(BadTarget):
        UpstreamProxy("http://127.0.0.1:1").target(path, query)


@pytest.mark.parametrize(
    "url", ["127.0.0.1:80", "ftp://h", "http://h/?q=1", "http://u:p@h", "http:///x"]
)
def test_a_bad_upstream_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        UpstreamProxy(url)


def test_response_headers_listed_in_connection_are_dropped() -> None:
    out = returned_response_headers(
        [(b"Connection", b"X-A, x-b"), (b"X-A", b"1"), (b"X-B", b"2"), (b"X-C", b"3")]
    )
    assert out == [(b"x-c", b"3")]


class RawUpstream:
    """An upstream that answers every connection with fixed raw bytes, then closes it."""

    def __init__(self, answer: bytes) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                self.request.sendall(answer)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_304_with_a_content_length_passes_back_without_a_body() -> None:
    answer = b'HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: "v1"\r\n\r\n'
    with RawUpstream(answer) as upstream, serving(ProxyApp(upstream.url)) as proxy:
        response = httpx.get(proxy.url + "/cached")
    assert response.status_code == 304
    assert response.headers["etag"] == '"v1"'


def test_an_unsolicited_101_is_a_bad_gateway() -> None:
    answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    with RawUpstream(answer) as upstream, serving(ProxyApp(upstream.url)) as proxy:
        assert httpx.get(proxy.url + "/x").status_code == 502


def test_a_small_truncated_body_is_a_bad_gateway() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."
    with RawUpstream(answer) as upstream, serving(ProxyApp(upstream.url)) as proxy:
        assert httpx.get(proxy.url + "/x").status_code == 502


def test_a_large_body_cut_mid_stream_is_never_passed_off_as_complete() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 200_000
    with (
        RawUpstream(answer) as upstream,
        serving(ProxyApp(upstream.url)) as proxy,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        httpx.get(proxy.url + "/x")


class EndlessUpstream:
    """Answers one request with a chunked body that never ends (an event stream); `cut` is set once
    the gateway side of the connection is gone (a write fails)."""

    def __init__(self) -> None:
        self.cut = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                try:
                    self.request.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for _ in range(3000):  # at most a minute
                        self.request.sendall(b"6\r\ntick\n\n\r\n")
                        time.sleep(0.02)
                except OSError:
                    outer.cut.set()

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> EndlessUpstream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_client_leaving_an_endless_stream_releases_the_upstream_connection() -> None:
    with EndlessUpstream() as upstream, serving(ProxyApp(upstream.url)) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            client.sendall(b"GET /events HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert b"tick" in client.recv(65536) + client.recv(65536)
        assert upstream.cut.wait(5), "the gateway kept reading the stream for a gone client"


def test_a_client_leaving_an_endless_stream_after_a_streamed_body_releases_the_upstream() -> None:
    """With a request body that came in several pieces, `receive` watches for the client leaving too."""
    with EndlessUpstream() as upstream, serving(ProxyApp(upstream.url)) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            client.sendall(
                b"POST /events HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n"
            )
            time.sleep(0.2)  # a separate ASGI message: the body is streamed upstream
            client.sendall(b"2\r\nde\r\n0\r\n\r\n")
            assert b"tick" in client.recv(65536) + client.recv(65536)
        assert upstream.cut.wait(5), "the gateway kept reading the stream for a gone client"


def test_a_request_without_a_body_goes_without_framing_headers(
    upstream: RecordingUpstream, proxy: ServerThread
) -> None:
    raw_http(proxy.port, b"DELETE /thing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    names = {name for name, _ in upstream.last.headers}
    assert b"content-length" not in names
    assert b"transfer-encoding" not in names
    assert upstream.last.method == "DELETE"


def test_a_chunked_client_body_is_reframed_never_relayed(
    upstream: RecordingUpstream, proxy: ServerThread
) -> None:
    # Small enough to reach the app in one ASGI message: it goes upstream with a Content-Length.
    raw_http(
        proxy.port,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    got = upstream.last
    assert got.body_len == 5
    assert got.body_sha256 == hashlib.sha256(b"abcde").hexdigest()
    assert got.header("transfer-encoding") == []
    assert got.header("content-length") == ["5"]


def test_a_streamed_body_without_a_length_goes_chunked(
    upstream: RecordingUpstream, proxy: ServerThread
) -> None:
    body = pattern(TWO_MIB)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]
            await asyncio.sleep(0.001)  # separate ASGI messages, not one buffered body

    async def upload() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(proxy.url + "/stream", content=chunks())

    assert asyncio.run(upload()).json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert upstream.last.header("transfer-encoding") == ["chunked"]
    assert upstream.last.header("content-length") == []


def test_upstream_connections_are_kept_alive_between_client_requests(
    upstream: RecordingUpstream,
) -> None:
    app = ProxyApp(upstream.url)
    with serving(app) as proxy, httpx.Client(timeout=10) as client:
        for _ in range(10):
            assert client.get(proxy.url + "/ka").status_code == 200
        with httpx.Client(timeout=10) as other:  # another client, same upstream connection
            assert other.get(proxy.url + "/ka").status_code == 200
    assert app.proxy.pool.connections_opened == 1


def test_forwarded_headers_hide_their_values_when_printed() -> None:
    headers = forwarded_request_headers(
        [(b"x-a", b"1")], client=None, scheme="http", trust_forwarded=False
    )
    headers["authorization"] = "Bearer secret-token"
    headers["authorization"] = "Bearer replaced"
    assert headers.getall("authorization") == ["Bearer replaced"]
    assert "secret" not in repr(headers)
    assert "replaced" not in repr(headers)
    headers.set(b"authorization", b"Bearer raw")  # the app's form: bytes, name lower-case
    assert headers.getall("authorization") == ["Bearer raw"]
    assert [n for n, _ in headers.items].count(b"authorization") == 1


def test_a_request_head_over_the_header_count_or_size_limit_is_refused() -> None:
    from keyswap.gateway.proxy import MAX_HEADER_BYTES, MAX_HEADER_COUNT, HeadersTooLarge

    at_count = [(b"x-h%d" % i, b"v") for i in range(MAX_HEADER_COUNT)]
    forwarded_request_headers(at_count, client=None, scheme="http")  # at the limit: fine
    with pytest.raises(HeadersTooLarge):
        forwarded_request_headers([*at_count, (b"x-one-more", b"v")], client=None, scheme="http")
    with pytest.raises(HeadersTooLarge):
        forwarded_request_headers([(b"x-big", b"a" * MAX_HEADER_BYTES)], client=None, scheme="http")
