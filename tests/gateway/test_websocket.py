"""WebSockets and Server-Sent Events through a real gateway (security rows G20-G24).

A real gateway (uvicorn with the gateway's guarded httptools protocol and uvicorn's websocket
protocol), a real upstream websocket server (:mod:`tests.support.ws_upstream`) and the real
``websockets`` client.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.clientconn import ClientLimits, protocol_class
from keyswap.gateway.cluster import ClusterSettings
from keyswap.gateway.ratelimit import Rate
from keyswap.gateway.secret import load_secret
from keyswap.gateway.wsrelay import WebSocketLimits
from keyswap.store import Store
from tests.support.asgi_server import free_port, serving
from tests.support.keyswap_process import running_keyswap
from tests.support.running_gateway import Gateway, eventually, running_gateway
from tests.support.upstream import recording_upstream
from tests.support.ws_upstream import WsUpstream, ws_upstream

#: What ``keyswap gateway`` serves with (:func:`keyswap.gateway.serve.server_config`).
SERVER = {
    "http": protocol_class(ClientLimits()),
    "ws": "websockets-sansio",
    "ws_max_size": 1 << 20,
    "ws_per_message_deflate": False,
}


@pytest.fixture
def upstream() -> Iterator[WsUpstream]:
    with ws_upstream() as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path, upstream: WsUpstream) -> Iterator[Gateway]:
    with running_gateway(tmp_path, upstream.url, server_options=SERVER) as running:
        yield running


def ws_url(gateway: Gateway, path: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}{path}"


def open_ws(gateway: Gateway, path: str, key: str | None = None, **kw: Any) -> ClientConnection:
    headers = {"Authorization": f"Bearer {gateway.key if key is None else key}"}
    ws: ClientConnection = connect(
        ws_url(gateway, path), additional_headers=headers, open_timeout=5, **kw
    )
    return ws


def refused(gateway: Gateway, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as caught:
        connect(ws_url(gateway, path), additional_headers=headers, open_timeout=5)
    return caught.value.response.status_code, bytes(caught.value.response.body or b"")


def test_messages_are_relayed_both_ways_text_and_bytes(gateway: Gateway) -> None:
    with open_ws(gateway, "/echo?x=1", subprotocols=["chat.v2", "chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v2"
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"
        big = "x" * 500_000
        ws.send(big)
        assert ws.recv(timeout=5) == big


def test_the_upstream_can_speak_first_and_gets_the_minted_jwt_never_the_key(
    gateway: Gateway, upstream: WsUpstream
) -> None:
    with open_ws(gateway, "/talk/room?q=2", subprotocols=["chat.v1"]) as ws:
        assert ws.recv(timeout=5) == "hello"
    (handshake,) = upstream.handshakes
    assert handshake.path == "/talk/room?q=2"
    (authorization,) = handshake.header("authorization")
    token = authorization.removeprefix("Bearer ")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"]
    assert claims["iss"] == gateway.app.settings.issuer
    assert gateway.key not in json.dumps(handshake.headers)
    # The upstream handshake is the gateway's own: one key, one version, one subprotocol offer.
    assert len(handshake.header("sec-websocket-key")) == 1
    assert handshake.header("sec-websocket-protocol") == ["chat.v1"]
    assert handshake.header("x-forwarded-for") == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("headers", "status", "body"),
    [
        ({}, 401, b"No API key provided"),
        ({"Authorization": "Bearer ks_not_a_key"}, 401, b"Invalid API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, b"No API key provided"),
    ],
    ids=["no-key", "invalid-key", "other-scheme"],
)
def test_a_handshake_without_a_valid_key_is_refused_before_the_upstream_hears_of_it(
    gateway: Gateway, upstream: WsUpstream, headers: dict[str, str], status: int, body: bytes
) -> None:
    assert refused(gateway, "/echo", headers) == (status, body)
    assert upstream.handshakes == []


def test_a_revoked_key_is_refused_and_a_reserved_path_is_never_a_websocket(
    gateway: Gateway, upstream: WsUpstream
) -> None:
    gateway.admin.revoke(gateway.key_id)
    gateway.app.on_change()
    assert refused(gateway, "/echo", {"Authorization": f"Bearer {gateway.key}"})[0] == 401
    assert refused(gateway, "/__keyswap/health", {})[0] == 400
    assert upstream.handshakes == []


def test_the_rate_limit_counts_handshakes(tmp_path: Path, upstream: WsUpstream) -> None:
    cluster = ClusterSettings(rate_limit=Rate(1, 86400))
    with running_gateway(tmp_path, upstream.url, cluster=cluster, server_options=SERVER) as gw:
        with open_ws(gw, "/echo"):
            pass
        status, _ = refused(gw, "/echo", {"Authorization": f"Bearer {gw.key}"})
    assert status == 429
    assert len(upstream.handshakes) == 1


def test_an_open_websocket_holds_one_of_the_consumers_connections(
    tmp_path: Path, upstream: WsUpstream
) -> None:
    with running_gateway(
        tmp_path, upstream.url, max_connections_per_consumer=1, server_options=SERVER
    ) as gw:
        with open_ws(gw, "/echo") as ws:
            assert refused(gw, "/echo", {"Authorization": f"Bearer {gw.key}"})[0] == 429
            ws.send("still here")
            assert ws.recv(timeout=5) == "still here"
        eventually(lambda: gw.app.in_flight == {})
        with open_ws(gw, "/echo") as again:
            again.send("x")
            assert again.recv(timeout=5) == "x"


def test_an_upstream_refusal_is_passed_on_and_an_unreachable_upstream_is_502(
    gateway: Gateway, tmp_path: Path
) -> None:
    status, body = refused(gateway, "/refuse", {"Authorization": f"Bearer {gateway.key}"})
    assert (status, body) == (403, b"upstream says no")
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed_port.getsockname()[1]}"
    with running_gateway(tmp_path / "dead", dead, server_options=SERVER) as gw:
        assert refused(gw, "/echo", {"Authorization": f"Bearer {gw.key}"}) == (502, b"Bad gateway")


def test_close_codes_pass_through_both_ways(gateway: Gateway, upstream: WsUpstream) -> None:
    with open_ws(gateway, "/close/4000") as ws, pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    assert ws.close_code == 4000
    assert ws.close_reason == "upstream closes"
    with open_ws(gateway, "/echo") as ws:
        ws.send("x")
        ws.recv(timeout=5)
        ws.close(4001, "client leaves")
    eventually(lambda: ("/echo", 4001) in upstream.closed)


def test_an_idle_websocket_is_closed_on_both_sides(gateway: Gateway, upstream: WsUpstream) -> None:
    gateway.app.websocket_limits = WebSocketLimits(idle_timeout=0.3, max_lifetime=60)
    with open_ws(gateway, "/echo") as ws:
        ws.send("keep")
        ws.recv(timeout=5)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        waited = time.monotonic() - started
    assert ws.close_code == 1001
    assert ws.close_reason == "idle timeout"
    assert 0.2 < waited < 3
    eventually(lambda: [path for path, _ in upstream.closed] == ["/echo"])


def test_a_busy_websocket_is_still_closed_at_its_max_lifetime(gateway: Gateway) -> None:
    gateway.app.websocket_limits = WebSocketLimits(idle_timeout=60, max_lifetime=0.6)
    started = time.monotonic()
    with open_ws(gateway, "/echo") as ws, pytest.raises(ConnectionClosed):  # noqa: PT012
        while time.monotonic() - started < 5:
            ws.send("busy")
            ws.recv(timeout=5)
            time.sleep(0.05)
    assert ws.close_code == 1001
    assert ws.close_reason == "max lifetime"
    assert time.monotonic() - started < 3


def test_a_websocket_over_the_client_connection_cap_is_503_and_not_upgraded(
    tmp_path: Path, upstream: WsUpstream
) -> None:
    options = {**SERVER, "http": protocol_class(ClientLimits(max_connections=1))}
    with (
        running_gateway(tmp_path, upstream.url, server_options=options) as gw,
        open_ws(gw, "/echo") as first,
    ):
        assert refused(gw, "/echo", {"Authorization": f"Bearer {gw.key}"})[0] == 503
        first.send("ok")
        assert first.recv(timeout=5) == "ok"
    assert len(upstream.handshakes) == 1


# -- Server-Sent Events ---------------------------------------------------------------------------


class _EventSource:
    """An upstream streaming ``text/event-stream``: the second event only after the test says so."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": False})


def test_server_sent_events_stream_through_without_buffering(tmp_path: Path) -> None:
    source = _EventSource()
    with (
        serving(source) as origin,
        running_gateway(tmp_path, origin.url, server_options=SERVER) as gw,
        httpx.stream(
            "GET", gw.url + "/events", headers={"Authorization": f"Bearer {gw.key}"}, timeout=5
        ) as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        chunks = response.iter_raw()
        # The first event arrives while the upstream is still holding back the second one.
        assert next(chunks) == b"data: one\n\n"
        source.release.set()
        assert b"".join(chunks) == b"data: two\n\n"


def test_with_websockets_on_an_h2c_upgrade_is_still_plain_http_and_never_forwarded(
    tmp_path: Path,
) -> None:
    with (
        recording_upstream() as plain,
        running_gateway(tmp_path, plain.url, server_options=SERVER) as gw,
        socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock,
    ):
        sock.sendall(
            b"GET /h2c HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + gw.key.encode() + b"\r\n"
            b"Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        names = {name.lower() for name, _ in plain.last.headers}
        assert not names & {b"upgrade", b"http2-settings", b"connection"}


@pytest.mark.slow
def test_a_real_keyswap_gateway_process_relays_websockets(
    tmp_path: Path, upstream: WsUpstream
) -> None:
    db_url = f"sqlite:///{tmp_path / 'keyswap.db'}"
    store = Store(db_url)
    try:
        store.create_consumer("acme", {})
        _, key = ApiKeys(store, load_secret(db_url, env={})).create("acme")
    finally:
        store.close()
    port = free_port()
    args = ["gateway", "--upstream", upstream.url, "--port", str(port), "--db", db_url,
            "--alg", "ES256", "--websocket-idle-timeout", "0.5"]  # fmt: skip
    with (
        running_keyswap(args, port=port, ready_path="/__keyswap/health") as process,
        connect(
            f"ws://127.0.0.1:{port}/echo",
            additional_headers={"Authorization": f"Bearer {key}"},
            open_timeout=5,
        ) as ws,
    ):
        ws.send("through the real thing")
        assert ws.recv(timeout=5) == "through the real thing"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_reason == "idle timeout"
    assert key not in process.log()


def test_websockets_are_metered_refusals_included(gateway: Gateway) -> None:
    from keyswap.manage import usage as manage

    with open_ws(gateway, "/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
    revoked_record, revoked_key = gateway.admin.create("acme")
    with open_ws(gateway, "/echo", key=revoked_key):
        pass
    gateway.admin.revoke(revoked_record.id)
    deadline = time.monotonic() + 10
    statuses: list[int] = []
    while not statuses:  # until the revocation reaches the node
        try:
            with open_ws(gateway, "/echo", key=revoked_key):
                pass
        except InvalidStatus as exc:
            statuses.append(exc.response.status_code)
        assert time.monotonic() < deadline
    assert statuses == [401]
    assert refused(gateway, "/echo", {"Authorization": "Bearer ks_nope"})[0] == 401
    gateway.server.stop()  # the shutdown writes the counts
    now = time.time()
    window = {"since": now - 3600, "until": now + 3600, "by": "hour"}
    (total,) = manage.query(gateway.admin_store, consumer_id="acme", **window)  # type: ignore[arg-type]
    (revoked,) = manage.query(
        gateway.admin_store,
        consumer_id="acme",
        key_id=revoked_record.id,
        **window,  # type: ignore[arg-type]
    )
    assert revoked.unauthorized == 1
    assert (
        total.requests == 1 + revoked.requests
    )  # the first key's websocket, then the revoked key's
    (everyone,) = manage.query_all(gateway.admin_store, **window)  # type: ignore[arg-type]
    assert everyone.unauthorized == 2
