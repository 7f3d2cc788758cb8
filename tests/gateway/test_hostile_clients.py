"""One consumer cannot starve the others (security G10): a real gateway in front of a real upstream,
consumer A holding requests open with raw sockets while consumer B's requests must still succeed."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.app import GatewaySettings
from keyswap.gateway.clientconn import ClientLimits, protocol_class
from tests.support.running_gateway import Gateway, eventually, running_gateway
from tests.support.upstream import RecordingUpstream

BIG = 20 * 1024 * 1024


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream().start()
    try:
        yield server
    finally:
        server.stop()


def _server(**limits: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "head_timeout": 2.0,
        "keep_alive_timeout": 2.0,
        "body_timeout": 0.3,
        "body_deadline": 0.8,
        "send_timeout": 0.4,
    }
    options.update(limits)
    client_limits = ClientLimits(**options)
    return {"http": protocol_class(client_limits), "timeout_keep_alive": 2.0}


def _second_key(gw: Gateway) -> str:
    gw.admin_store.create_consumer("beta", {})
    _, key = gw.admin.create("beta")
    return key


def _open(gw: Gateway, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(request)
    return sock


def _status(sock: socket.socket) -> int:
    head = sock.recv(4096)
    return int(head.split(b" ", 2)[1]) if head else 0


def _pool_busy(gw: Gateway) -> int:
    pool = gw.app.proxy.pool
    return len(pool._conns) - len(pool._idle)


def test_a_consumer_holding_big_responses_unread_does_not_starve_another(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(
        tmp_path, upstream.url, max_connections=4, upstream_timeout=1.0, server_options=_server()
    ) as gw:
        beta = _second_key(gw)
        request = (
            f"GET /big/{BIG} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {gw.key}\r\n\r\n"
        ).encode()
        held = [_open(gw, request) for _ in range(4)]  # as many as the pool has, never read
        try:
            eventually(lambda: len(upstream.received) >= 1)
            time.sleep(0.1)
            answer = httpx.get(
                gw.url + "/", headers={"authorization": f"Bearer {beta}"}, timeout=10
            )
            assert answer.status_code == 200  # B is served while A holds its requests
            # A is held to its share (a quarter of the pool): its other requests are refused, not hung.
            statuses = sorted(_status(sock) for sock in held)
            assert statuses.count(429) == 3
            # The reader that never reads is dropped, and its upstream connection closed with it.
            eventually(lambda: gw.app.in_flight == {} and _pool_busy(gw) == 0, timeout=5)
        finally:
            for sock in held:
                sock.close()
        ok = httpx.get(gw.url + "/", headers={"authorization": f"Bearer {gw.key}"}, timeout=10)
        assert ok.status_code == 200


def test_too_many_concurrent_requests_is_429_with_retry_after(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(
        tmp_path, upstream.url, max_connections_per_consumer=1, upstream_timeout=5.0
    ) as gw:
        request = f"GET /stall HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {gw.key}\r\n\r\n"
        sock = _open(gw, request.encode())
        try:
            eventually(lambda: gw.app.in_flight != {})
            second = gw.get("/")
            assert second.status_code == 429
            assert second.headers["retry-after"] == "1"
            assert second.text == "Too many concurrent requests"
        finally:
            upstream.release()
            sock.close()
        eventually(lambda: gw.app.in_flight == {})
        assert gw.get("/").status_code == 200


def test_a_consumer_trickling_request_bodies_gets_408_and_frees_the_upstream(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(
        tmp_path, upstream.url, max_connections=4, upstream_timeout=5.0, server_options=_server()
    ) as gw:
        beta = _second_key(gw)
        head = (
            f"POST /upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {gw.key}\r\n"
            "content-length: 1000\r\n\r\n"
        ).encode()
        socks = [_open(gw, head + b"a") for _ in range(4)]
        try:
            answer = httpx.get(gw.url + "/", headers={"authorization": f"Bearer {beta}"})
            assert answer.status_code == 200
            started = time.monotonic()
            for _ in range(20):  # one byte every 0.1 s: never idle long, but too slow overall
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"a")
                time.sleep(0.1)
                if time.monotonic() - started > 1.5:
                    break
            statuses = sorted(_status(sock) for sock in socks)
            assert statuses == [408, 429, 429, 429]
            eventually(lambda: gw.app.in_flight == {} and _pool_busy(gw) == 0, timeout=5)
        finally:
            for sock in socks:
                sock.close()


def test_connection_cap_per_consumer_defaults_to_a_quarter_of_the_pool() -> None:
    assert GatewaySettings("http://u", "http://g").max_connections_per_consumer == 25
    assert (
        GatewaySettings("http://u", "http://g", max_connections=2).max_connections_per_consumer == 1
    )
    settings = GatewaySettings("http://u", "http://g", max_connections_per_consumer=7)
    assert settings.max_connections_per_consumer == 7


def test_a_consumer_own_connection_cap_overrides_the_default(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(tmp_path, upstream.url, max_connections_per_consumer=10) as gw:
        gw.admin_store.set_consumer_connections("acme", 1)
        # The warm start cached the key: the change reaches the node by the change watcher.
        keys = gw.app.api_keys
        assert isinstance(keys, ApiKeys)
        eventually(lambda: getattr(keys.lookup_cached(gw.key), "max_connections", 0) == 1)
        request = f"GET /stall HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {gw.key}\r\n\r\n"
        sock = _open(gw, request.encode())
        try:
            eventually(lambda: gw.app.in_flight != {})
            assert gw.get("/").status_code == 429
        finally:
            upstream.release()
            sock.close()
