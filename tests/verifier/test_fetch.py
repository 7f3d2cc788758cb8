"""JWKSFetcher: limits and rules of one JWKS HTTP fetch, against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from keyswap import __version__
from keyswap.errors import ConfigError, JWKSFetchError
from keyswap.verifier.fetch import (
    FetchResult,
    JWKSFetcher,
    check_jwks_url,
    parse_max_age,
    redact_url,
)
from tests.support.forking import answer_from_forked_child
from tests.support.jwks_server import JWKSServer, running_jwks_server
from tests.support.keys import jwks, rsa_key

DOC = jwks(rsa_key("k1"))


class DripServer:
    """A raw TCP server that answers every connection with `prefix`, then one byte per `interval`."""

    def __init__(self, prefix: bytes, interval: float = 0.05) -> None:
        self.prefix = prefix
        self.interval = interval
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/jwks.json"
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> DripServer:
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._accepter.join()
        for t in self._threads:
            t.join()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._drip, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(self.prefix)
                while not self._stop.wait(self.interval):
                    conn.sendall(b" ")
            except OSError:
                pass


@pytest.fixture
def fetcher() -> Iterator[JWKSFetcher]:
    f = JWKSFetcher(timeout=2.0)
    try:
        yield f
    finally:
        f.close()


def test_fetch_returns_the_document_and_the_max_age(
    jwks_server: JWKSServer, fetcher: JWKSFetcher
) -> None:
    jwks_server.serve(DOC, cache_control="public, max-age=120")
    result = fetcher.fetch(jwks_server.url)
    assert result == FetchResult(document=DOC, max_age=120.0)


def test_fetch_without_cache_control_has_no_max_age(
    jwks_server: JWKSServer, fetcher: JWKSFetcher
) -> None:
    jwks_server.serve(DOC)
    assert fetcher.fetch(jwks_server.url).max_age is None


def test_fetch_sends_the_keyswap_user_agent(jwks_server: JWKSServer, fetcher: JWKSFetcher) -> None:
    jwks_server.serve(DOC)
    fetcher.fetch(jwks_server.url)
    assert jwks_server.user_agents == [f"keyswap/{__version__}"]


def test_fetch_asks_for_a_jwk_set_without_compression() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=DOC)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        JWKSFetcher(client=client).fetch("https://idp.test/jwks")
    assert seen[0].headers["accept"] == "application/jwk-set+json, application/json"
    assert seen[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://idp.test/jwks.json",
        "gopher://idp.test/",
        "jwks.json",
        "http:///jwks.json",
        "https://",
    ],
)
def test_a_non_http_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        check_jwks_url(url)
    with JWKSFetcher() as f, pytest.raises(ConfigError):
        f.fetch(url)


@pytest.mark.parametrize(
    "kwargs", [{"timeout": 0}, {"timeout": -1.0}, {"max_bytes": 0}, {"max_redirects": -1}]
)
def test_nonsense_limits_are_a_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        JWKSFetcher(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [500, 502, 503, 404, 401, 304])
def test_a_non_2xx_status_is_a_fetch_error(
    jwks_server: JWKSServer, fetcher: JWKSFetcher, status: int
) -> None:
    jwks_server.serve(DOC, status=status)
    with pytest.raises(JWKSFetchError, match=f"HTTP {status}") as info:
        fetcher.fetch(jwks_server.url)
    assert info.value.kind == "status"


def test_an_html_page_is_a_fetch_error(jwks_server: JWKSServer, fetcher: JWKSFetcher) -> None:
    jwks_server.serve(
        DOC, body=b"<html><body>Please log in</body></html>", content_type="text/html"
    )
    with pytest.raises(JWKSFetchError, match="HTML") as info:
        fetcher.fetch(jwks_server.url)
    assert info.value.kind == "not_json"


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"keys": [',
        b"\xff\xfe{}",
        b'\xef\xbb\xbf{"keys": []}',
        b'{"keys": [], "keys": [{}]}',
        b'{"keys": [NaN]}',
        b"[" * 100_000 + b"]" * 100_000,
        b"",
    ],
    ids=["garbage", "truncated", "not-utf8", "bom", "duplicate-member", "nan", "deep", "empty"],
)
def test_a_body_that_is_not_strict_json_is_a_fetch_error(
    jwks_server: JWKSServer, fetcher: JWKSFetcher, body: bytes
) -> None:
    jwks_server.serve(DOC, body=body)
    with pytest.raises(JWKSFetchError, match="not valid JSON") as info:
        fetcher.fetch(jwks_server.url)
    assert info.value.kind == "not_json"


def test_a_json_body_is_returned_even_if_it_is_not_a_jwks(
    jwks_server: JWKSServer, fetcher: JWKSFetcher
) -> None:
    # Whether it is a JWKS is parse_jwks' job; the fetcher only guarantees JSON.
    jwks_server.serve({})
    assert fetcher.fetch(jwks_server.url).document == {}


def test_a_body_over_the_size_cap_is_refused(jwks_server: JWKSServer) -> None:
    jwks_server.serve(DOC, body=b" " * 2000 + json.dumps(DOC).encode())
    with JWKSFetcher(max_bytes=1000) as f, pytest.raises(JWKSFetchError) as info:
        f.fetch(jwks_server.url)
    assert info.value.kind == "too_large"


def test_a_body_at_the_size_cap_is_accepted(jwks_server: JWKSServer) -> None:
    body = json.dumps(DOC).encode()
    jwks_server.serve(DOC, body=body)
    with JWKSFetcher(max_bytes=len(body)) as f:
        assert f.fetch(jwks_server.url).document == DOC


def test_a_stream_without_content_length_stops_at_the_size_cap() -> None:
    produced: list[int] = []

    def endless() -> Iterator[bytes]:
        for i in range(10_000):
            produced.append(i)
            yield b" " * 1024

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        f = JWKSFetcher(client=client, max_bytes=64 * 1024)
        with pytest.raises(JWKSFetchError) as info:
            f.fetch("https://idp.test/jwks")
    assert info.value.kind == "too_large"
    assert len(produced) <= 66


def test_a_hanging_server_times_out_at_the_deadline(jwks_server: JWKSServer) -> None:
    jwks_server.serve(DOC, delay=10)
    started = time.monotonic()
    with JWKSFetcher(timeout=0.3) as f, pytest.raises(JWKSFetchError) as info:
        f.fetch(jwks_server.url)
    assert 0.25 < time.monotonic() - started < 1.5
    assert info.value.kind == "timeout"


def test_a_server_dripping_the_body_is_cut_at_the_total_deadline() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    with DripServer(head, interval=0.05) as server, JWKSFetcher(timeout=0.5) as f:
        started = time.monotonic()
        with pytest.raises(JWKSFetchError) as info:
            f.fetch(server.url)
        elapsed = time.monotonic() - started
    assert info.value.kind == "timeout"
    assert elapsed < 1.5


def test_a_server_dripping_the_headers_is_cut_at_the_total_deadline() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Slow: "
    with DripServer(head, interval=0.05) as server, JWKSFetcher(timeout=0.5) as f:
        started = time.monotonic()
        with pytest.raises(JWKSFetchError) as info:
            f.fetch(server.url)
        elapsed = time.monotonic() - started
    assert info.value.kind == "timeout"
    assert elapsed < 1.5


def test_a_closed_port_is_a_network_error(fetcher: JWKSFetcher) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(JWKSFetchError) as info:
        fetcher.fetch(f"http://127.0.0.1:{port}/jwks.json")
    assert info.value.kind == "network"


def test_a_redirect_to_the_same_host_is_followed(
    jwks_server: JWKSServer, fetcher: JWKSFetcher
) -> None:
    with running_jwks_server() as target:
        target.serve(DOC, cache_control="max-age=30")
        jwks_server.serve(DOC, redirect_to=target.url)
        assert fetcher.fetch(jwks_server.url) == FetchResult(DOC, 30.0)
        assert target.count() == 1


def test_a_redirect_to_another_host_is_refused(
    jwks_server: JWKSServer, fetcher: JWKSFetcher
) -> None:
    with running_jwks_server() as target:
        target.serve(DOC)
        # Same machine, but "localhost" is another host name than "127.0.0.1".
        jwks_server.serve(DOC, redirect_to=f"http://localhost:{target.port}/.well-known/jwks.json")
        with pytest.raises(JWKSFetchError, match="another scheme or host") as info:
            fetcher.fetch(jwks_server.url)
        assert info.value.kind == "redirect"
        assert target.count() == 0


def test_a_redirect_to_another_scheme_is_refused(
    jwks_server: JWKSServer, fetcher: JWKSFetcher
) -> None:
    jwks_server.serve(DOC, redirect_to=f"https://127.0.0.1:{jwks_server.port}/jwks.json")
    with pytest.raises(JWKSFetchError, match="another scheme or host"):
        fetcher.fetch(jwks_server.url)
    assert jwks_server.count() == 1


def test_redirects_stop_after_three(jwks_server: JWKSServer, fetcher: JWKSFetcher) -> None:
    jwks_server.serve(DOC, redirect_to="/.well-known/jwks.json")
    with pytest.raises(JWKSFetchError, match="more than 3 redirects"):
        fetcher.fetch(jwks_server.url)
    assert jwks_server.count() == 4


def test_a_redirect_without_location_is_a_fetch_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302)

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as client,
        pytest.raises(JWKSFetchError, match="without Location"),
    ):
        JWKSFetcher(client=client).fetch("https://idp.test/jwks")


def test_an_injected_client_is_not_closed_by_the_fetcher() -> None:
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=DOC))) as c:
        JWKSFetcher(client=c).close()
        assert not c.is_closed


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Cache-Control": "max-age=60"}, 60.0),
        ({"Cache-Control": "public, MAX-AGE=60, must-revalidate"}, 60.0),
        ({"Cache-Control": 'max-age="90"'}, 90.0),
        ({"Cache-Control": "max-age=60", "Age": "20"}, 40.0),
        ({"Cache-Control": "max-age=60", "Age": "600"}, 0.0),
        ({"Cache-Control": "max-age=-5"}, None),
        ({"Cache-Control": "max-age=1.5"}, None),
        ({"Cache-Control": "max-age=soon"}, None),
        ({"Cache-Control": "max-age=99999999999999999999"}, 1e9),
        ({"Cache-Control": "no-store"}, 0.0),
        ({"Cache-Control": "no-cache, max-age=60"}, 0.0),
        ({"Cache-Control": "private"}, None),
        ({"Cache-Control": "s-maxage=60"}, None),
    ],
)
def test_max_age_comes_from_cache_control(headers: dict[str, str], expected: float | None) -> None:
    assert parse_max_age(httpx.Headers(headers)) == expected


def test_urls_in_messages_lose_user_info_and_query() -> None:
    assert (
        redact_url("https://user:pw@idp.test:8443/jwks?token=s3cret#x")
        == "https://idp.test:8443/jwks"
    )


def test_fetch_errors_do_not_leak_the_query_string(
    jwks_server: JWKSServer, fetcher: JWKSFetcher
) -> None:
    jwks_server.serve(DOC, status=500)
    with pytest.raises(JWKSFetchError) as info:
        fetcher.fetch(jwks_server.base + "/jwks?access_token=s3cret")
    assert "s3cret" not in str(info.value)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_fetches_with_a_new_client_of_its_own(jwks_server: JWKSServer) -> None:
    # The parent's connection pool (and any lock a fetch in flight held at the fork) is not the
    # child's: a fetcher that made its own client makes a new one in the child; a client the caller
    # passed is left alone.
    jwks_server.serve(jwks(rsa_key("fork")))
    own = JWKSFetcher()
    given = httpx.Client()
    passed = JWKSFetcher(client=given)
    own.fetch(jwks_server.url)  # the parent's client has been used
    parent_client = own._client

    def in_the_child() -> str:
        keys = len(own.fetch(jwks_server.url).document["keys"])
        return f"{own._client is not parent_client} {passed._client is given} {keys}"

    try:
        answer = answer_from_forked_child(in_the_child)
    finally:
        own.close()
        given.close()
    assert answer == "True True 1"
    assert own._client is parent_client  # the parent keeps its own
