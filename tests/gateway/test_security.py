"""Attacks on the gateway through real servers (security corpus G01-G09), one test per row and variant.

A gateway over real SQLite and a recording upstream runs once for the module (uvicorn with httptools,
as in production); attacks that a client library would normalise go over raw sockets with bounded
timeouts. Tests that need another shape (a failing store, a broken upstream, a real ``keyswap gateway``
process, a real ``keyswap origin``) start their own. Every test looks only at the upstream requests
recorded after it started, so the module-wide servers can be shared.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from keyswap.errors import ConfigError
from keyswap.gateway.apikeys import ApiKeys, Principal, generate_key
from keyswap.gateway.app import GatewayApp, GatewaySettings
from keyswap.gateway.keyring import Keyring
from keyswap.gateway.mint import TokenMinter
from keyswap.gateway.secret import load_secret
from keyswap.gateway.wellknown import JWKS_PATH, OPENID_CONFIGURATION_PATH
from keyswap.store import Store
from tests.support.asgi_server import free_port, serving
from tests.support.gateway_state import Clock, QueryCounter, database_bytes
from tests.support.jwks_server import JWKSServer, running_jwks_server
from tests.support.keys import ec_key, thumbprint
from tests.support.keyswap_process import running_keyswap
from tests.support.running_gateway import Gateway, eventually, running_gateway, token_seen_by
from tests.support.upstream import Received, RecordingUpstream, recording_upstream

#: A pipelined request that closes the connection: proves the gateway is still parsing and answering.
SENTINEL = b"GET /__keyswap/health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
INVALID_API_KEY = (401, "Invalid API key")
NO_API_KEY = (401, "No API key provided")


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream
) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway"), upstream.url) as running:
        yield running


@pytest.fixture(scope="module")
def decoy() -> Iterator[JWKSServer]:
    """A server the attacker would like requests routed to; it counts every hit."""
    with running_jwks_server() as server:
        yield server


# -- raw HTTP helpers ------------------------------------------------------------------------------


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` byte for byte and read until the server closes (a hang fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"no close within {timeout} s; got {b''.join(chunks)[:200]!r}")
    return b"".join(chunks)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("latin-1")


def answers(raw: bytes) -> list[Answer]:
    """Split what a connection returned into responses (every answer here has a Content-Length)."""
    out: list[Answer] = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {raw[:200]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = [
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in lines[1:])
        ]
        length = int(dict(headers).get(b"content-length", b"0"))
        out.append(Answer(status, headers, rest[:length]))
        raw = rest[length:]
    return out


def request(
    target: bytes, *lines: bytes, method: bytes = b"GET", body: bytes = b"", close: bool = True
) -> bytes:
    head = method + b" " + target + b" HTTP/1.1\r\nHost: gw.example\r\n"
    head += b"".join(line + b"\r\n" for line in lines)
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


def auth(key: str) -> bytes:
    return b"Authorization: Bearer " + key.encode()


def since(upstream: RecordingUpstream, before: int) -> list[Received]:
    return upstream.received[before:]


def self_signed_jwt(issuer: str, kid: str) -> str:
    """A JWT the consumer made itself, claiming the gateway as issuer and one of its kids."""
    attacker = ec_key(kid)
    now = 1_900_000_000
    return attacker.sign(
        {"iss": issuer, "sub": "admin", "aud": "x", "iat": now, "exp": now + 300, "jti": "j"}
    )


def gateway_kids(gateway: Gateway) -> list[str]:
    return [k["kid"] for k in httpx.get(gateway.url + JWKS_PATH).json()["keys"]]


def assert_minted_token_only(gateway: Gateway, record: Received) -> dict[str, Any]:
    """The upstream saw exactly one Authorization: a token the gateway signed for the key's consumer."""
    values = record.header("authorization")
    assert len(values) == 1, values
    scheme, _, token = values[0].partition(" ")
    assert scheme == "Bearer"
    return verified_claims(gateway, token)


def verified_claims(gateway: Gateway, token: str) -> dict[str, Any]:
    """``token``'s claims, checked with PyJWT against the JWKS fetched from the gateway."""
    jwks = httpx.get(gateway.url + JWKS_PATH).json()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=gateway.app.settings.audience,
        issuer=gateway.app.settings.issuer,
    )
    assert claims["sub"] == "acme"
    return claims


# -- G01/G02: one refusal for every bad key ---------------------------------------------------------


def test_every_refused_key_gets_a_byte_identical_answer_whatever_the_cause(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    admin = gateway.admin
    revoked_record, revoked = admin.create("acme")
    admin.revoke(revoked_record.id)
    _, expired = admin.create("acme", expires_in=1, now=gateway.clock() - 10)
    rolled_record, rolled = admin.create("acme")
    admin.roll(rolled_record.id, grace=0, now=gateway.clock())
    key = gateway.key
    other = "b" if key[-1] != "b" else "c"
    causes: dict[str, list[bytes]] = {
        "unknown": [auth(generate_key())],
        "malformed": [auth("ks_not-a-key")],
        "broken-checksum": [auth(key[:-1] + other)],
        "other-prefix": [auth("sk_" + key[3:])],
        "revoked": [auth(revoked)],
        "expired": [auth(expired)],
        "rolled-out": [auth(rolled)],
        "self-signed-jwt": [auth(self_signed_jwt(gateway.app.settings.issuer, "k"))],
        "two-headers": [auth(key), auth(key)],
        "bearer-alone": [b"Authorization: Bearer"],
        "two-words": [b"Authorization: Bearer " + key.encode() + b" extra"],
        "over-512-bytes": [auth("a" * 600)],
        "non-ascii": [b"Authorization: Bearer ks_\xe9\xe9\xe9"],
    }
    before = len(upstream.received)
    raw = {
        cause: exchange(gateway.port, request(f"/refused/{cause}".encode(), *lines))
        for cause, lines in causes.items()
    }

    assert len(set(raw.values())) == 1, {c: r[:60] for c, r in raw.items()}
    (answer,) = answers(raw["unknown"])
    assert (answer.status, answer.text) == INVALID_API_KEY
    assert answer.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"15"),
        (b"cache-control", b"no-store"),
        (b"www-authenticate", b'Bearer realm="keyswap", error="invalid_token"'),
        (b"connection", b"close"),
    ]  # no Date, no Server: nothing varies between causes
    assert since(upstream, before) == []


class _NoWatcherGateway:
    """A gateway app over a store whose SQL statements are counted (no watcher, no other queries)."""

    def __init__(self, tmp_path: Path, upstream_url: str) -> None:
        db_url = f"sqlite:///{tmp_path / 'counted.db'}"
        self.clock = Clock(1_800_000_000.0)
        self.store = Store(db_url)
        secret = load_secret(db_url, env={})
        self.api_keys = ApiKeys(self.store, secret, clock=self.clock)
        self.store.create_consumer("acme", {})
        self.app = GatewayApp(
            GatewaySettings(upstream_url, "http://127.0.0.1:1", alg="ES256"),
            api_keys=self.api_keys,
            keyring=Keyring(self.store, secret, clock=self.clock),
            clock=self.clock,
        )
        self.queries = QueryCounter(self.store)

    def key_lookups(self) -> list[str]:
        return [s for s in self.queries.statements if "api_keys" in s]


def test_well_formed_bad_keys_take_the_same_store_path_as_a_good_one(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    counted = _NoWatcherGateway(tmp_path, upstream.url)
    api_keys, clock = counted.api_keys, counted.clock
    _, good = api_keys.create("acme")
    revoked_record, revoked = api_keys.create("acme")
    api_keys.revoke(revoked_record.id)
    _, expired = api_keys.create("acme", expires_in=60, now=clock() - 120)
    rolled_record, rolled = api_keys.create("acme")
    api_keys.roll(rolled_record.id, grace=0)
    keys = {
        "good": good,
        "unknown": generate_key(),
        "revoked": revoked,
        "expired": expired,
        "rolled-out": rolled,
    }
    first: dict[str, list[str]] = {}
    again: dict[str, list[str]] = {}
    try:
        with serving(counted.app) as server, httpx.Client(base_url=server.url) as client:
            assert counted.app.warmed.wait(10)  # the key filter is loaded
            for cause, key in keys.items():
                for seen in (first, again):
                    before = len(counted.key_lookups())
                    response = client.get("/x", headers={"Authorization": f"Bearer {key}"})
                    assert response.status_code == (200 if cause == "good" else 401)
                    seen[cause] = counted.key_lookups()[before:]
            before = len(counted.key_lookups())
            client.get("/x", headers={"Authorization": "Bearer ks_" + "A" * 36})
            malformed = counted.key_lookups()[before:]
    finally:
        counted.store.close()

    # One and the same lookup statement for every key the store holds, whatever its state, then
    # none once the answer is cached. A key the store never held is refused by the key filter and a
    # store revision read (no key lookup, keyswap.gateway.keyfilter): what that tells apart, a key
    # that never existed from one that did, only says something about a key the caller holds.
    # The warm start caches the usable keys, so the good key's first request needs no lookup; what
    # that tells apart (a usable key from a dead one) its status code says anyway.
    held = {
        cause: tuple(statements)
        for cause, statements in first.items()
        if cause not in ("unknown", "good")
    }
    assert len(set(held.values())) == 1
    assert len(held["revoked"]) == 1
    assert first["good"] == []
    assert first["unknown"] == []
    assert all(statements == [] for statements in again.values())
    # A broken checksum is refused without a lookup: the checksum is public, so this tells an
    # attacker nothing about which keys exist.
    assert malformed == []


# -- G03: the key never leaks --------------------------------------------------------------------------


def test_the_api_key_reaches_neither_the_upstream_nor_the_logs_nor_the_database(
    gateway: Gateway, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    secret_part = gateway.key[3:33]  # the 30 random characters
    before = len(upstream.received)
    ok = gateway.get("/g03/ok?page=1")
    refused = httpx.get(
        gateway.url + "/g03/refused", headers={"Authorization": f"Bearer {gateway.key}x"}
    )

    assert ok.status_code == 200
    assert (refused.status_code, refused.text) == INVALID_API_KEY
    lines = ("GET /g03/ok 200 consumer=acme", "GET /g03/refused 401 consumer=-")
    eventually(lambda: all(line in caplog.text for line in lines))  # logged after the answers
    (record,) = since(upstream, before)
    token = token_seen_by(upstream)
    for leaked in (gateway.key, secret_part):
        assert leaked.encode() not in record.raw()
        assert leaked not in caplog.text
        assert leaked not in refused.text
        assert leaked not in str(refused.headers)
        assert leaked.encode() not in database_bytes(gateway.db_path)
        assert leaked not in json.dumps(jwt.decode(token, options={"verify_signature": False}))
    assert token not in caplog.text


class _LeakyFailingApiKeys(ApiKeys):
    """Failure injection: the store fails with an error whose message quotes the key."""

    def lookup_cached(self, key: str, now: float | None = None) -> None:
        return None

    def authenticate(self, key: str, now: float | None = None) -> Any:
        raise RuntimeError(f"lookup failed for {key!r} (digest {self.digest(key).hex()})")

    def store_revision(self) -> int:
        raise RuntimeError("the store is down")

    def quick_revision(self) -> None:
        return None  # every read of the store fails: none on the event loop either


def test_a_store_error_quoting_the_key_gives_503_and_logs_neither_key_nor_traceback(
    tmp_path: Path, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    db_url = f"sqlite:///{tmp_path / 'k.db'}"
    store = Store(db_url)
    secret = load_secret(db_url, env={})
    app = GatewayApp(
        GatewaySettings(upstream.url, "http://127.0.0.1:1", alg="ES256"),
        api_keys=_LeakyFailingApiKeys(store, secret),
        keyring=Keyring(store, secret),
    )
    key = generate_key()
    before = len(upstream.received)
    try:
        with serving(app) as server:
            raw = exchange(server.port, request(b"/x", auth(key)))
    finally:
        store.close()

    (answer,) = answers(raw)
    assert (answer.status, answer.text) == (503, "Service unavailable")
    assert key.encode() not in raw
    assert "API key lookup failed (RuntimeError)" in caplog.text
    assert key not in caplog.text
    assert key[3:33] not in caplog.text
    assert "Traceback" not in caplog.text
    assert since(upstream, before) == []


class BrokenUpstream:
    """A raw upstream that fails on purpose, by path, and keeps every byte it was sent.

    ``/reset`` closes without answering, ``/garbage`` answers something that is not HTTP, ``/stall``
    answers nothing until released, anything else gets a small 200. Every answer closes the
    connection.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.release = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                outer.received.append(data)
                path = data.split(b" ", 2)[1]
                if path == b"/reset":
                    return
                if path == b"/garbage":
                    self.request.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                    return
                if path == b"/stall":
                    outer.release.wait(10)
                    return
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                )

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> BrokenUpstream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.slow
def test_a_real_gateway_process_never_logs_the_key_or_token_when_the_upstream_fails(
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "keyswap.db"
    db_url = f"sqlite:///{db_path}"
    store = Store(db_url)
    try:
        store.create_consumer("acme", {"plan": "free"})
        _, key = ApiKeys(store, load_secret(db_url, env={})).create("acme")
    finally:
        store.close()
    port = free_port()
    with BrokenUpstream() as broken:
        args = [
            "gateway",
            "--upstream", broken.url,
            "--port", str(port),
            "--db", str(db_path),
            "--upstream-timeout", "0.5",
            "--log-level", "debug",
            "--alg", "ES256",
        ]  # fmt: skip
        with running_keyswap(args, port=port, ready_path="/__keyswap/health") as process:
            statuses = {}
            bodies = b""
            for path in ("/ok", "/reset", "/garbage", "/stall"):
                raw = exchange(port, request(path.encode(), auth(key)), timeout=10)
                bodies += raw
                statuses[path] = answers(raw)[0].status
            bodies += exchange(port, request(b"/wrong", auth(generate_key())))
        log = process.log()

    assert statuses == {"/ok": 200, "/reset": 502, "/garbage": 502, "/stall": 504}
    tokens = [
        line.split(b" ", 2)[2].decode()
        for data in broken.received
        for line in data.split(b"\r\n")
        if line.lower().startswith(b"authorization:")
    ]
    assert len(tokens) >= 4
    for leaked in (key, key[3:33], *tokens):
        assert leaked not in log
        assert leaked.encode() not in bodies
    assert all(key.encode() not in data for data in broken.received)
    assert "Traceback" not in log
    assert "GET /reset 502 consumer=acme" in log
    assert "GET /stall 504 consumer=acme" in log
    assert "GET /wrong 401 consumer=-" in log


# -- G04: the consumer's own identity claims never get through ------------------------------------------


def test_a_self_signed_jwt_in_place_of_an_api_key_is_refused(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    token = self_signed_jwt(gateway.app.settings.issuer, gateway_kids(gateway)[0])
    before = len(upstream.received)
    (answer,) = answers(exchange(gateway.port, request(b"/g04/jwt", auth(token))))
    assert (answer.status, answer.text) == INVALID_API_KEY
    assert since(upstream, before) == []


@pytest.mark.parametrize(
    "names",
    [
        (b"Authorization", b"Authorization"),
        (b"authorization", b"AUTHORIZATION"),
        (b"AuThOrIzAtIoN", b"authorization"),
    ],
)
@pytest.mark.parametrize("key_first", [True, False], ids=["key-first", "jwt-first"])
def test_a_second_authorization_header_beside_a_valid_key_is_refused(
    gateway: Gateway, upstream: RecordingUpstream, names: tuple[bytes, bytes], key_first: bool
) -> None:
    token = self_signed_jwt(gateway.app.settings.issuer, gateway_kids(gateway)[0])
    values = [b"Bearer " + gateway.key.encode(), b"Bearer " + token.encode()]
    if not key_first:
        values.reverse()
    lines = [name + b": " + value for name, value in zip(names, values, strict=True)]
    before = len(upstream.received)
    (answer,) = answers(exchange(gateway.port, request(b"/g04/two", *lines)))
    assert (answer.status, answer.text) == INVALID_API_KEY
    assert since(upstream, before) == []


IDENTITY_HEADERS = [
    b"Proxy-Authorization: Basic YWRtaW46YWRtaW4=",
    b"X-Consumer-Id: 1",
    b"X-Consumer-Username: admin",
    b"X-Consumer-Custom-Id: admin",
    b"X-Consumer_Id: 1",
    b"X-Authenticated-User: admin",
    b"X-Authenticated-Userid: admin",
    b"X-Authenticated-Scope: admin",
    b"X-Keyswap-Consumer: admin",
    b"X-Keyswap-Key-Id: key_admin",
    b"X-Forwarded-User: admin",
    b"X-Forwarded-Email: admin@example.com",
]


def test_inbound_identity_headers_never_reach_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    before = len(upstream.received)
    raw = exchange(gateway.port, request(b"/g04/identity", auth(gateway.key), *IDENTITY_HEADERS))

    assert answers(raw)[0].status == 200
    (record,) = since(upstream, before)
    names = {name for name, _ in record.headers}
    for line in IDENTITY_HEADERS:
        assert line.split(b":")[0].lower() not in names
    assert b"admin" not in record.raw()
    assert assert_minted_token_only(gateway, record)["key_id"] == gateway.key_id


@pytest.mark.parametrize(
    "name",
    [b"X-User", b"X-Remote-User", b"Remote-User", b"X-Auth-Request-User", b"X-Auth-Request-Email"],
)
def test_generic_user_identity_headers_never_reach_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream, name: bytes
) -> None:
    before = len(upstream.received)
    exchange(gateway.port, request(b"/g04/user", auth(gateway.key), name + b": admin"))
    (record,) = since(upstream, before)
    assert name.lower() not in {n for n, _ in record.headers}


# -- G05: forwarding and routing headers come from the connection, never from the client -------------

SPOOFED_FORWARDING = [
    b"X-Forwarded-For: 6.6.6.6",
    b"x-forwarded-for: 6.6.6.7",
    b"X-Forwarded-Host: evil.example",
    b"X-Forwarded-Proto: https",
    b"X-Forwarded-Prefix: /admin",
    b"X-Forwarded-Port: 443",
    b"X-Forwarded-Server: evil.example",
    b"Forwarded: for=6.6.6.6;host=evil.example;proto=https",
    b"X-Real-IP: 6.6.6.6",
    b"X-Original-URL: /admin",
    b"X-Rewrite-URL: /admin",
    b"X_Forwarded_For: 6.6.6.6",
    b"X_Forwarded_Host: evil.example",
    b"X_Real_IP: 6.6.6.6",
]


def test_spoofed_forwarding_headers_are_dropped_and_the_gateway_sets_its_own(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    before = len(upstream.received)
    raw = exchange(gateway.port, request(b"/g05/fwd", auth(gateway.key), *SPOOFED_FORWARDING))

    assert answers(raw)[0].status == 200
    (record,) = since(upstream, before)
    assert record.header("x-forwarded-for") == ["127.0.0.1"]
    assert record.header("x-forwarded-proto") == ["http"]
    assert record.header("x-forwarded-host") == ["gw.example"]
    names = {name for name, _ in record.headers}
    for dropped in (
        b"x-forwarded-prefix", b"x-forwarded-port", b"x-forwarded-server", b"forwarded",
        b"x-real-ip", b"x-original-url", b"x-rewrite-url", b"x_forwarded_for",
        b"x_forwarded_host", b"x_real_ip",
    ):  # fmt: skip
        assert dropped not in names
    assert b"6.6.6." not in record.raw()
    assert b"evil.example" not in record.raw()
    assert b"/admin" not in record.raw()


@pytest.mark.parametrize(
    "name", [b"X-HTTP-Method-Override", b"X-HTTP-Method", b"X-Method-Override"]
)
def test_method_override_headers_never_reach_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream, name: bytes
) -> None:
    before = len(upstream.received)
    exchange(
        gateway.port,
        request(b"/g05/override", auth(gateway.key), name + b": DELETE", method=b"POST"),
    )
    (record,) = since(upstream, before)
    assert record.method == "POST"
    assert name.lower() not in {n for n, _ in record.headers}


def test_the_upstream_is_never_chosen_from_host_an_absolute_target_or_routing_headers(
    gateway: Gateway, upstream: RecordingUpstream, decoy: JWKSServer
) -> None:
    evil = f"127.0.0.1:{decoy.port}".encode()
    attempts = [
        b"GET /g05/host HTTP/1.1\r\nHost: " + evil + b"\r\n",
        b"GET http://" + evil + b"/g05/absolute HTTP/1.1\r\nHost: " + evil + b"\r\n",
        b"GET /g05/xfh HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Host: " + evil + b"\r\n",
        b"GET /g05/orig HTTP/1.1\r\nHost: gw\r\nX-Original-URL: http://" + evil + b"/\r\n",
    ]
    before = len(upstream.received)
    for attempt in attempts:
        raw = exchange(gateway.port, attempt + auth(gateway.key) + b"\r\nConnection: close\r\n\r\n")
        assert answers(raw)[0].status == 200

    records = since(upstream, before)
    assert [r.raw_path for r in records] == [
        b"/g05/host", b"/g05/absolute", b"/g05/xfh", b"/g05/orig"
    ]  # fmt: skip
    assert all(r.header("host") == [f"127.0.0.1:{upstream.port}"] for r in records)
    assert sum(decoy.hits.values()) == 0


@pytest.mark.parametrize(
    ("start", "status"),
    [
        (b"CONNECT 127.0.0.1:{port} HTTP/1.1", 400),  # the server refuses authority-form
        (b"OPTIONS * HTTP/1.1", 400),
        (b"GET 127.0.0.1:{port} HTTP/1.1", 400),
    ],
    ids=["connect", "options-asterisk", "authority-form-get"],
)
def test_targets_that_are_not_a_path_are_refused_and_never_tunnelled(
    gateway: Gateway, upstream: RecordingUpstream, decoy: JWKSServer, start: bytes, status: int
) -> None:
    line = start.replace(b"{port}", str(decoy.port).encode())
    data = line + b"\r\nHost: gw\r\n" + auth(gateway.key) + b"\r\nConnection: close\r\n\r\n"
    before = len(upstream.received)
    assert answers(exchange(gateway.port, data))[0].status == status
    assert since(upstream, before) == []
    assert sum(decoy.hits.values()) == 0


# -- G06: hop-by-hop abuse ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listed",
    [
        b"close, Authorization",
        b"close, X-Forwarded-For",
        b"close, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host",
        b"close, host",
        b"keep-alive, close, authorization, x-forwarded-for, x-forwarded-host",
        b"close,Authorization,X-Forwarded-Proto",
    ],
)
def test_names_listed_in_connection_never_remove_what_the_gateway_adds(
    gateway: Gateway, upstream: RecordingUpstream, listed: bytes
) -> None:
    data = request(
        b"/g06/listed",
        auth(gateway.key),
        b"Connection: " + listed + b", X-Listed",
        b"X-Listed: client-private",
        close=False,
    )
    before = len(upstream.received)
    assert answers(exchange(gateway.port, data))[0].status == 200

    (record,) = since(upstream, before)
    assert_minted_token_only(gateway, record)
    assert record.header("x-forwarded-for") == ["127.0.0.1"]
    assert record.header("x-forwarded-proto") == ["http"]
    assert record.header("x-forwarded-host") == ["gw.example"]
    assert record.header("host") == [f"127.0.0.1:{upstream.port}"]
    assert record.header("x-listed") == []
    assert record.header("connection") == []


def test_a_body_still_arrives_whole_when_its_framing_headers_are_listed_in_connection(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    data = request(
        b"/g06/body",
        auth(gateway.key),
        b"Connection: close, Content-Length, Transfer-Encoding",
        b"Content-Length: 11",
        method=b"POST",
        body=b"hello world",
        close=False,
    )
    before = len(upstream.received)
    assert answers(exchange(gateway.port, data))[0].status == 200
    (record,) = since(upstream, before)
    assert record.body_len == 11
    assert record.header("content-length") == ["11"]


def test_an_h2c_upgrade_request_is_answered_as_plain_http_and_the_upgrade_is_not_forwarded(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    # WebSocket upgrades are relayed since issue 16 (tests/gateway/test_websocket.py, G20-G24).
    data = request(
        b"/g06/upgrade",
        auth(gateway.key),
        b"Connection: Upgrade, HTTP2-Settings, close",
        b"Upgrade: h2c",
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        close=False,
    )
    before = len(upstream.received)
    (answer,) = answers(exchange(gateway.port, data))
    assert answer.status == 200
    (record,) = since(upstream, before)
    names = {name for name, _ in record.headers}
    assert not names & {b"upgrade", b"http2-settings", b"connection"}
    assert_minted_token_only(gateway, record)


# -- G07: request smuggling ---------------------------------------------------------------------------


def _next_request(key: str) -> bytes:
    return b"GET /next HTTP/1.1\r\nHost: gw\r\n" + auth(key) + b"\r\n\r\n"


def _smuggling_cases(key: str) -> dict[str, tuple[bytes, int, list[bytes]]]:
    """id -> (bytes sent, status of the first answer, upstream paths expected, in order).

    ``/next`` is a complete, authorised request placed where one reading of the framing puts the
    start of a new request and the other reading puts body bytes.
    """
    nxt = _next_request(key)
    post = b"POST /g07 HTTP/1.1\r\nHost: gw\r\n" + auth(key) + b"\r\n"
    chunk = b"%x\r\n" % len(nxt) + nxt + b"\r\n0\r\n\r\n"
    refused: list[bytes] = []
    return {
        "cl-then-te": (post + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + nxt, 400, refused),
        "te-then-cl": (post + b"Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n" + nxt, 400, refused),
        "two-different-cl": (post + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(nxt) + nxt, 400, refused),
        "cl-list": (post + b"Content-Length: 0, 0\r\n\r\n" + nxt, 400, refused),
        "cl-plus-sign": (post + b"Content-Length: +0\r\n\r\n" + nxt, 400, refused),
        "te-chunked-identity": (post + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + nxt, 400, refused),
        "te-unknown-coding": (post + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + nxt, 400, refused),
        "te-twice": (post + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + nxt, 400, refused),
        "te-space-before-colon": (post + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + nxt, 400, refused),
        "te-obs-fold": (post + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + nxt, 400, refused),
        "obs-fold-value": (post + b"X-A: one\r\n two\r\nContent-Length: 0\r\n\r\n" + nxt, 400, refused),
        "bare-lf-everywhere": (post.replace(b"\r\n", b"\n") + b"Content-Length: 0\n\n" + nxt, 400, refused),
        "bare-lf-in-header": (post + b"X-A: a\nContent-Length: 0\r\n\r\n" + nxt, 400, refused),
        "bad-chunk-terminator": (post + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n" + nxt, 400, refused),
        "lf-in-chunk-extension": (post + b"Transfer-Encoding: chunked\r\n\r\n3;x\nabc\r\n0\r\n\r\n" + nxt, 400, refused),
        "bare-lf-chunk-size": (post + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n" + nxt, 400, refused),
        "cr-in-value": (post + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n" + nxt, 400, refused),
        "nul-in-value": (post + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n" + nxt, 400, refused),
        "space-in-name": (post + b"X A: b\r\nContent-Length: 0\r\n\r\n" + nxt, 400, refused),
        "ctl-in-value": (post + b"X-A: a\x01b\r\nContent-Length: 0\r\n\r\n" + nxt, 400, refused),
        "del-in-value": (post + b"X-A: a\x7fb\r\nContent-Length: 0\r\n\r\n" + nxt, 400, refused),
        "huge-cl": (post + b"Content-Length: 99999999999999999999\r\n\r\n" + nxt, 400, refused),
        # Unambiguous framings: the gateway reads the body, re-frames it, and /next is either a
        # second request of its own (after the body) or body bytes, exactly as the client framed it.
        "request-inside-cl-body": (post + b"Content-Length: %d\r\n\r\n" % len(nxt) + nxt, 200, [b"/g07"]),
        "request-inside-chunked-body": (post + b"Transfer-Encoding: chunked\r\n\r\n" + chunk, 200, [b"/g07"]),
        "te-after-tab": (post + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n" + nxt, 200, [b"/g07", b"/next"]),
        "http10-with-te": (post.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + nxt, 200, [b"/g07"]),
        "after-an-upgrade": (post + b"Content-Length: 0\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n" + nxt, 200, [b"/g07"]),
    }  # fmt: skip


SMUGGLING_IDS = list(_smuggling_cases("ks_x"))


@pytest.mark.parametrize("case", SMUGGLING_IDS)
def test_smuggling_framings_are_refused_or_reframed_and_nothing_extra_reaches_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream, case: str
) -> None:
    data, first_status, expected_paths = _smuggling_cases(gateway.key)[case]
    before = len(upstream.received)

    got = answers(exchange(gateway.port, data + SENTINEL))

    assert got[0].status == first_status
    if first_status == 400:
        assert len(got) == 1  # the connection is closed: nothing after the bad request is read
    records = since(upstream, before)
    assert [r.raw_path for r in records] == expected_paths
    for record in records:
        assert_minted_token_only(gateway, record)
        assert record.header("transfer-encoding") in ([], ["chunked"])
        assert len(record.header("content-length")) <= 1
    if case.startswith("request-inside"):
        assert records[0].body_len == len(_next_request(gateway.key))
    assert gateway.get("/g07/still-up").status_code == 200


def test_a_request_inside_a_body_arrives_as_those_body_bytes(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    inner = _next_request(gateway.key)
    data = request(
        b"/keep/g07", auth(gateway.key), b"Content-Length: %d" % len(inner), method=b"POST",
        body=inner,
    )  # fmt: skip
    before = len(upstream.received)
    assert answers(exchange(gateway.port, data))[0].status == 200
    (record,) = since(upstream, before)
    assert upstream.bodies[upstream.received.index(record)] == inner


@pytest.mark.parametrize(
    "refused",
    ["no-key-sized", "no-key-chunked", "no-key-expect-100", "reserved-path"],
)
def test_the_body_of_a_refused_request_is_discarded_never_parsed_as_a_request(
    gateway: Gateway, upstream: RecordingUpstream, refused: str
) -> None:
    inner = _next_request(gateway.key)
    sized = b"Content-Length: %d" % len(inner)
    data = {
        "no-key-sized": request(b"/g07/refused", sized, method=b"POST", body=inner, close=False),
        "no-key-chunked": request(
            b"/g07/refused",
            b"Transfer-Encoding: chunked",
            method=b"POST",
            body=b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n",
            close=False,
        ),
        "no-key-expect-100": request(
            b"/g07/refused", sized, b"Expect: 100-continue", method=b"POST", body=inner, close=False
        ),
        "reserved-path": request(
            JWKS_PATH.encode(), sized, method=b"POST", body=inner, close=False
        ),
    }[refused]
    before = len(upstream.received)
    got = answers(exchange(gateway.port, data + SENTINEL))
    assert [a.status for a in got] == [405 if refused == "reserved-path" else 401, 200]
    assert since(upstream, before) == []


def test_pipelined_requests_are_each_authenticated_on_their_own(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    with_key = request(b"/g07/one", auth(gateway.key), close=False)
    without_key = request(b"/g07/two", close=False)
    before = len(upstream.received)
    got = answers(exchange(gateway.port, with_key + without_key + with_key + SENTINEL))
    assert [(a.status, a.text if a.status == 401 else "") for a in got] == [
        (200, ""), NO_API_KEY, (200, ""), (200, "")
    ]  # fmt: skip
    assert [r.raw_path for r in since(upstream, before)] == [b"/g07/one", b"/g07/one"]


# -- G08: path confusion ---------------------------------------------------------------------------------

CONFUSING_PATHS = [
    b"/a%2Fb",
    b"//admin",
    b"/%2F%2Fadmin",
    b"/admin;x=1",
    b"/ADMIN",
    b"/admin.",
    b"/admin%00",
    b"/%61dmin",
    b"/a\\b",
    b"/a%5Cb",
    b"/a..b/...",
    b"/.well-known/x",
    b"/a%2eb",
]
#: Dot-segments (raw or encoded) are refused even without an upstream path prefix (G16).
DOT_SEGMENT_PATHS = [
    b"/v1/../admin",
    b"/v1/%2e%2e/admin",
    b"/v1/%2E%2E/admin",
    b"/v1/..%2Fadmin",
    b"/a/./b",
    b"/.%2e/admin",
    b"/v1/..;/admin",
    b"/v1\\..\\admin",
    b"/v1/%252e%252e/admin",
    b"/./__keyswap/health",
    b"/x/../__keyswap/health",
]


@pytest.mark.parametrize("path", CONFUSING_PATHS, ids=[p.decode() for p in CONFUSING_PATHS])
def test_the_path_that_was_authorised_is_forwarded_byte_for_byte(
    gateway: Gateway, upstream: RecordingUpstream, path: bytes
) -> None:
    before = len(upstream.received)
    raw = exchange(gateway.port, request(path + b"?q=%2e%2e&a=1", auth(gateway.key)))
    assert answers(raw)[0].status == 200
    (record,) = since(upstream, before)
    assert (record.raw_path, record.query) == (path, b"q=%2e%2e&a=1")


@pytest.mark.parametrize("path", DOT_SEGMENT_PATHS, ids=[p.decode() for p in DOT_SEGMENT_PATHS])
def test_a_path_with_a_dot_segment_is_refused_even_without_a_prefix(
    gateway: Gateway, upstream: RecordingUpstream, path: bytes
) -> None:
    before = len(upstream.received)
    (without,) = answers(exchange(gateway.port, request(path)))
    assert (without.status, without.text) == NO_API_KEY  # the key check comes first
    (with_key,) = answers(exchange(gateway.port, request(path + b"?q=1", auth(gateway.key))))
    assert (with_key.status, with_key.text) == (400, "Bad request")
    assert since(upstream, before) == []


DISGUISED_RESERVED = [
    b"/%5F%5Fkeyswap/health",
    b"/%5f%5fkeyswap/issuer/.well-known/jwks.json",
    b"/_%5Fkeyswap/health",
    b"//__keyswap/health",
    b"/%2F__keyswap/health",
    b"/__KEYSWAP/health",
    b"/__keyswap",
]


@pytest.mark.parametrize("path", DISGUISED_RESERVED, ids=[p.decode() for p in DISGUISED_RESERVED])
def test_a_disguised_reserved_path_is_an_ordinary_proxied_path_that_needs_a_key(
    gateway: Gateway, upstream: RecordingUpstream, path: bytes
) -> None:
    before = len(upstream.received)
    (without,) = answers(exchange(gateway.port, request(path)))
    assert (without.status, without.text) == NO_API_KEY
    assert since(upstream, before) == []

    (with_key,) = answers(exchange(gateway.port, request(path, auth(gateway.key))))
    assert with_key.status == 200
    (record,) = since(upstream, before)
    assert record.raw_path == path


ESCAPING_RESERVED = [
    b"/__keyswap/../admin",
    b"/__keyswap/%2e%2e/admin",
    b"/__keyswap/..%2Fadmin",
    b"/__keyswap/health/../../admin",
    b"/__keyswap/issuer/.well-known/jwks.json/../../../../admin",
    b"/__keyswap//admin",
    b"/__keyswap/health;x",
]


@pytest.mark.parametrize("path", ESCAPING_RESERVED, ids=[p.decode() for p in ESCAPING_RESERVED])
def test_a_path_under_the_reserved_prefix_is_never_proxied_with_or_without_a_key(
    gateway: Gateway, upstream: RecordingUpstream, path: bytes
) -> None:
    before = len(upstream.received)
    for lines in ((), (auth(gateway.key),)):
        (answer,) = answers(exchange(gateway.port, request(path, *lines)))
        assert (answer.status, answer.text) == (404, "Not found")
        (posted,) = answers(
            exchange(gateway.port, request(JWKS_PATH.encode(), *lines, method=b"POST"))
        )
        assert posted.status == 405
    assert since(upstream, before) == []


# -- G09: what the gateway issues -----------------------------------------------------------------------

PUBLIC_MEMBERS = {
    "RSA": {"kty", "kid", "use", "alg", "n", "e"},
    "EC": {"kty", "kid", "use", "alg", "crv", "x", "y"},
    "OKP": {"kty", "kid", "use", "alg", "crv", "x"},
}
KTY = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_the_jwks_publishes_only_public_signature_keys_with_unique_thumbprint_kids(
    tmp_path: Path, upstream: RecordingUpstream, alg: str
) -> None:
    with running_gateway(tmp_path, upstream.url, alg=alg) as gateway:
        response = httpx.get(gateway.url + JWKS_PATH)
        discovery = httpx.get(gateway.url + OPENID_CONFIGURATION_PATH).json()

    keys = response.json()["keys"]
    assert set(response.json()) == {"keys"}
    assert len(keys) == 2  # the active key and the next one
    assert len({k["kid"] for k in keys}) == len(keys)
    for key in keys:
        assert set(key) == PUBLIC_MEMBERS[KTY[alg]]
        assert (key["use"], key["alg"], key["kty"]) == ("sig", alg, KTY[alg])
        assert key["kid"] == thumbprint(key)
        if alg == "RS256":
            modulus = base64.urlsafe_b64decode(key["n"] + "==")
            assert len(modulus) * 8 >= 2048
            assert key["e"] == "AQAB"
        elif alg == "ES256":
            assert key["crv"] == "P-256"
        else:
            assert key["crv"] == "Ed25519"
    assert discovery["jwks_uri"] == gateway.url + JWKS_PATH
    assert discovery["issuer"] == gateway.url + "/__keyswap/issuer"


def test_minted_tokens_carry_exactly_the_documented_claims_within_the_ttl(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    record_b, key_b = gateway.admin.create("acme")
    tokens = []
    for key in (gateway.key, key_b):
        assert gateway.get("/g09/claims", key=key).status_code == 200
        tokens.append(token_seen_by(upstream))

    kids = gateway_kids(gateway)
    jtis = set()
    for token, key_id in zip(tokens, (gateway.key_id, record_b.id), strict=True):
        header = jwt.get_unverified_header(token)
        assert header == {"alg": "ES256", "kid": kids[0], "typ": "JWT"}
        claims = verified_claims(gateway, token)
        assert set(claims) == {"iss", "sub", "aud", "iat", "exp", "jti", "key_id", "metadata"}
        assert claims["iss"] == gateway.url + "/__keyswap/issuer"
        assert claims["aud"] == upstream.url
        assert claims["key_id"] == key_id
        assert 0 < claims["exp"] - claims["iat"] <= 300
        assert abs(claims["iat"] - gateway.clock()) <= 300
        assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) >= 16
        jtis.add(claims["jti"])
        assert re.search(r"ks_[0-9A-Za-z]{36}", json.dumps(claims)) is None
    assert len(jtis) == 2


@dataclass(frozen=True)
class _OutsideKey:
    """A signing key the gateway never published."""

    kid: str
    alg: str
    private_key: Any


@pytest.mark.slow
def test_a_real_origin_accepts_gateway_tokens_only_for_its_audience_and_the_gateways_keys(
    tmp_path: Path,
) -> None:
    origin_port = free_port()
    origin_url = f"http://127.0.0.1:{origin_port}"
    with running_gateway(tmp_path, origin_url, real_clock=True) as gateway:
        issuer = gateway.app.settings.issuer
        args = [
            "origin",
            "--jwks-url", gateway.url + JWKS_PATH,
            "--issuer", issuer,
            "--audience", origin_url,
            "--algorithms", "ES256",
            "--port", str(origin_port),
        ]  # fmt: skip
        with running_keyswap(args, port=origin_port) as origin:
            through = gateway.get("/through")
            keyring = Keyring(gateway.admin_store, load_secret(gateway.db_url, env={}))
            keyring.reload()
            principal = Principal(gateway.key_id, "acme", 1, {"plan": "free"})
            active = keyring.active()
            outsider = ec_key("outsider").private

            def minted(audience: str, key: Any) -> str:
                minter = TokenMinter(lambda: key, issuer=issuer, audience=audience)
                return minter.token_for(principal).token

            tokens = {
                "control": minted(origin_url, active),
                "other-audience": minted("https://other-service.example", active),
                "outside-key-same-kid": minted(
                    origin_url, _OutsideKey(active.kid, "ES256", outsider)
                ),
                "outside-key-own-kid": minted(
                    origin_url, _OutsideKey("outsider", "ES256", outsider)
                ),
            }
            statuses = {
                name: httpx.get(
                    origin_url + "/direct", headers={"Authorization": f"Bearer {token}"}
                ).status_code
                for name, token in tokens.items()
            }
        log = origin.log()

    assert through.status_code == 200
    assert through.json()["sub"] == "acme"
    assert statuses == {
        "control": 200,
        "other-audience": 401,
        "outside-key-same-kid": 401,
        "outside-key-own-kid": 401,
    }
    assert "Traceback" not in log
    assert all(token not in log for token in tokens.values())
    for cause in ("audience", "signature", "unknown_kid"):  # each refused for its own reason
        assert f"rejected GET '/direct': {cause} 401" in log


# -- resource bounds -------------------------------------------------------------------------------------


def _many_headers(n: int) -> list[bytes]:
    return [b"X-H%d: v" % i for i in range(n)]


def test_a_10_mb_authorization_header_is_the_usual_invalid_key_answer(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    before = len(upstream.received)
    raw = exchange(gateway.port, request(b"/big", auth("a" * 10_000_000)), timeout=20)
    (answer,) = answers(raw)
    assert (answer.status, answer.text) == INVALID_API_KEY
    assert since(upstream, before) == []
    assert gateway.get("/after-10mb").status_code == 200


def test_100k_headers_without_a_key_are_refused_and_never_forwarded(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    before = len(upstream.received)
    raw = exchange(gateway.port, request(b"/many", *_many_headers(100_000)), timeout=20)
    (answer,) = answers(raw)
    assert (answer.status, answer.text) == NO_API_KEY
    assert since(upstream, before) == []
    assert gateway.get("/after-many").status_code == 200


@pytest.mark.parametrize("shape", ["100k-headers", "10-mb-header"])
def test_a_huge_request_head_with_a_valid_key_never_crashes_the_gateway(
    gateway: Gateway, upstream: RecordingUpstream, shape: str
) -> None:
    extra = _many_headers(100_000) if shape == "100k-headers" else [b"X-Big: " + b"a" * 10_000_000]
    raw = exchange(gateway.port, request(b"/huge", auth(gateway.key), *extra), timeout=30)
    if raw:
        assert answers(raw)[0].status < 500
    assert gateway.get("/after-huge").status_code == 200


def test_a_request_head_over_64_kib_is_refused_before_it_reaches_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    before = len(upstream.received)
    raw = exchange(gateway.port, request(b"/head-limit", auth(gateway.key), *_many_headers(10_000)))
    assert answers(raw)[0].status == 431
    assert since(upstream, before) == []


# -- G15: identity and client-IP headers, operator drop lists and allow-lists ----------------------------

#: Identity and client-IP claims an origin behind an auth proxy or CDN may trust (issue 11, item 6).
CLAIMED_IDENTITY = [
    b"X-Client-IP: 6.6.6.1",
    b"True-Client-IP: 6.6.6.2",
    b"CF-Connecting-IP: 6.6.6.3",
    b"Client-IP: 6.6.6.4",
    b"X-Cluster-Client-IP: 6.6.6.5",
    b"Fastly-Client-IP: 6.6.6.6",
    b"X-Forwarded: for=6.6.6.7",
    b"X-Originating-IP: 6.6.6.8",
    b"X-Original-URI: /spoofed-admin",
    b"X-Original-Method: DELETE",
    b"X-Original-Host: spoofed.example",
    b"X-Host: spoofed.example",
    b"X-Webauth-User: spoofed-admin",
    b"X-Auth-User: spoofed-admin",
    b"X-Userinfo: spoofed-admin",
    b"X-Credential-Identifier: spoofed-admin",
    b"X-Anonymous-Consumer: false",
    b"X-Amzn-Oidc-Identity: spoofed-admin",
    b"X-Amzn-Oidc-Data: spoofed-admin",
    b"X-Goog-Authenticated-User-Email: spoofed-admin@example.com",
    b"X-Ms-Client-Principal-Name: spoofed-admin",
    b"X-Remote-Group: spoofed-admins",
    b"X-Email: spoofed-admin@example.com",
    b"X-Groups: spoofed-admins",
    b"X-SSL-Client-Verify: SUCCESS",
    b"X-Client-Cert: spoofed-cert",
]


def _names(record: Received) -> set[bytes]:
    return {name for name, _ in record.headers}


def test_identity_and_client_ip_claims_never_reach_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    before = len(upstream.received)
    data = request(b"/g15/claims", auth(gateway.key), *CLAIMED_IDENTITY, b"X-Request-Id: r-1")
    assert answers(exchange(gateway.port, data))[0].status == 200

    (record,) = since(upstream, before)
    names = _names(record)
    for line in CLAIMED_IDENTITY:
        assert line.split(b":")[0].lower() not in names, line
    assert b"spoofed" not in record.raw()
    assert b"6.6.6." not in record.raw()
    assert b"SUCCESS" not in record.raw()
    assert record.header("x-request-id") == ["r-1"]  # ordinary headers still pass
    assert record.header("x-forwarded-for") == ["127.0.0.1"]


def test_the_operator_drops_more_names_and_patterns(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(
        tmp_path, upstream.url, drop_headers=("X-Tenant", "x-internal-*", "x-debug-?-flag")
    ) as gw:
        before = len(upstream.received)
        data = request(
            b"/g15/drop",
            auth(gw.key),
            b"X-Tenant: other",
            b"X-Internal-Route: admin",
            b"x-internal-: empty-tail",
            b"X-Debug-1-Flag: on",
            b"X-Debug-12-Flag: kept",
            b"X-Tenants: kept",
        )
        assert answers(exchange(gw.port, data))[0].status == 200
        (record,) = since(upstream, before)
        assert_minted_token_only(gw, record)
    names = _names(record)
    assert not names & {b"x-tenant", b"x-internal-route", b"x-internal-", b"x-debug-1-flag"}
    assert record.header("x-debug-12-flag") == ["kept"]
    assert record.header("x-tenants") == ["kept"]


def test_with_an_allow_list_only_those_headers_and_the_gateways_own_are_forwarded(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(
        tmp_path,
        upstream.url,
        forward_headers_only=("Accept, x-request-*", "CF-IPCountry", "authorization", "host"),
        drop_headers=("x-request-secret",),
    ) as gw:
        before = len(upstream.received)
        data = request(
            b"/g15/only",
            auth(gw.key),
            b"Accept: application/json",
            b"X-Request-Id: r-2",
            b"X-Request-Secret: no",
            b"CF-IPCountry: NZ",
            b"CF-Connecting-IP: 6.6.6.6",
            b"X-Other: no",
            b"User-Agent: no",
            b"X-Forwarded-For: 6.6.6.6",
            b"Content-Length: 2",
            method=b"POST",
            body=b"hi",
        )
        assert answers(exchange(gw.port, data))[0].status == 200
        (record,) = since(upstream, before)
        assert_minted_token_only(gw, record)
    assert record.body_len == 2
    assert sorted(_names(record)) == sorted(
        [
            b"host", b"accept", b"x-request-id", b"cf-ipcountry", b"x-forwarded-for",
            b"x-forwarded-proto", b"x-forwarded-host", b"authorization", b"content-length",
        ]
    )  # fmt: skip
    assert record.header("host") == [f"127.0.0.1:{upstream.port}"]  # listing it changes nothing
    assert record.header("x-forwarded-for") == ["127.0.0.1"]


@pytest.mark.parametrize("entry", ["x bad", "x-é", "x:y", "a;b"])
def test_a_header_list_entry_that_is_not_a_name_or_pattern_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match="not a header name or pattern"):
        GatewaySettings("http://127.0.0.1:1", "http://gw", drop_headers=(entry,))
    with pytest.raises(ConfigError, match="not a header name or pattern"):
        GatewaySettings("http://127.0.0.1:1", "http://gw", forward_headers_only=(entry,))


# -- G16: the upstream path prefix cannot be escaped; dot-segments never pass -------------------------

ESCAPING_PREFIX = [
    b"/../internal.txt",
    b"/%2e%2e/internal.txt",
    b"/%2E%2E/internal.txt",
    b"/%2e./internal.txt",
    b"/.%2E/internal.txt",
    b"/%252e%252e/internal.txt",
    b"/v1/../../internal.txt",
    b"/..;/internal.txt",
    b"/..",
    b"/v1/.",
    b"/./internal.txt",
    b"/..%2Finternal.txt",
    b"/v1%2F..%2F..%2Finternal.txt",
    b"/%2Finternal.txt",
    b"/v1%2finternal.txt",
    b"/v1%5Cinternal.txt",
    b"/v1%5c..%5cinternal.txt",
    b"/v1\\..\\internal.txt",
    b"/v1\\internal.txt",
]
INSIDE_PREFIX = [b"/v1/users", b"/.well-known/x", b"/a..b/...", b"/v1/x%20y", b"/a%2eb", b"//v1"]


@pytest.fixture(scope="module")
def prefixed(
    tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream
) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("prefixed"), upstream.url + "/api") as running:
        yield running


@pytest.mark.parametrize("path", ESCAPING_PREFIX, ids=[p.decode() for p in ESCAPING_PREFIX])
def test_a_path_that_could_leave_the_upstream_prefix_is_refused(
    prefixed: Gateway, upstream: RecordingUpstream, path: bytes
) -> None:
    before = len(upstream.received)
    (answer,) = answers(exchange(prefixed.port, request(path, auth(prefixed.key))))
    assert (answer.status, answer.text) == (400, "Bad request")
    assert since(upstream, before) == []


@pytest.mark.parametrize("path", INSIDE_PREFIX, ids=[p.decode() for p in INSIDE_PREFIX])
def test_a_path_inside_the_prefix_is_forwarded_byte_for_byte_after_it(
    prefixed: Gateway, upstream: RecordingUpstream, path: bytes
) -> None:
    before = len(upstream.received)
    raw = exchange(prefixed.port, request(path + b"?q=..%2F..&a=%5c", auth(prefixed.key)))
    assert answers(raw)[0].status == 200
    (record,) = since(upstream, before)
    assert (record.raw_path, record.query) == (b"/api" + path, b"q=..%2F..&a=%5c")


# -- G17: a status the HTTP grammar does not allow is a bad gateway --------------------------------------


class ScriptedUpstream:
    """A raw keep-alive upstream answering every request with ``answer``; it notes when the gateway
    closes a connection (``closed``) and every request that arrives (``requests``)."""

    def __init__(self, answer: bytes) -> None:
        self.requests = 0
        self.closed = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(10)
                data = b""
                while True:
                    try:
                        chunk = self.request.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        outer.closed.set()
                        return
                    data += chunk
                    while b"\r\n\r\n" in data:
                        _, _, data = data.partition(b"\r\n\r\n")
                        outer.requests += 1
                        self.request.sendall(answer)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.parametrize("status", [b"600", b"999", b"099", b"000"])
def test_an_upstream_status_outside_100_599_is_a_502_and_the_connection_is_closed(
    tmp_path: Path, status: bytes
) -> None:
    answer = b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nok"
    with (
        ScriptedUpstream(answer) as scripted,
        running_gateway(tmp_path, scripted.url, upstream_timeout=3) as gw,
    ):
        (got,) = answers(exchange(gw.port, request(b"/g17/odd", auth(gw.key)), timeout=5))
        assert (got.status, got.text) == (502, "Bad gateway")
        assert scripted.closed.wait(5)
        assert gw.app.proxy.pool.connections_opened == 1
        (again,) = answers(exchange(gw.port, request(b"/g17/odd", auth(gw.key)), timeout=5))
        assert again.status == 502
        assert gw.app.proxy.pool.connections_opened == 2  # never reused
    assert scripted.requests == 2


# -- G18: TRACE and CONNECT never leave the gateway -------------------------------------------------------


@pytest.mark.parametrize("method", [b"TRACE", b"CONNECT"])
@pytest.mark.parametrize("with_key", [True, False], ids=["key", "no-key"])
def test_trace_and_connect_are_405_before_the_key_check_and_never_forwarded(
    gateway: Gateway, upstream: RecordingUpstream, method: bytes, with_key: bool
) -> None:
    lines = (auth(gateway.key),) if with_key else ()
    before = len(upstream.received)
    (answer,) = answers(exchange(gateway.port, request(b"/g18/echo", *lines, method=method)))
    assert (answer.status, answer.text) == (405, "Method not allowed")
    allow = dict(answer.headers)[b"allow"]
    assert b"GET" in allow
    assert b"TRACE" not in allow
    assert b"CONNECT" not in allow
    assert since(upstream, before) == []


# -- G19: trailers are never headers ------------------------------------------------------------------------


def _chunked(target: bytes, head: list[bytes], trailer: list[bytes]) -> bytes:
    lines = b"".join(line + b"\r\n" for line in head)
    fields = b"".join(line + b"\r\n" for line in trailer)
    return (
        b"POST " + target + b" HTTP/1.1\r\nHost: gw.example\r\nTransfer-Encoding: chunked\r\n"
        + lines + b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n" + fields + b"\r\n"
    )  # fmt: skip


def test_an_api_key_sent_only_in_the_request_trailer_is_no_api_key(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    before = len(upstream.received)
    data = _chunked(b"/g19/trailer-key", [b"Trailer: Authorization"], [auth(gateway.key)])
    (answer,) = answers(exchange(gateway.port, data))
    assert (answer.status, answer.text) == NO_API_KEY
    assert since(upstream, before) == []


def test_request_trailer_fields_never_reach_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    before = len(upstream.received)
    data = _chunked(
        b"/keep/g19/trailer",
        [auth(gateway.key)],
        [b"X-Trailer-Field: smuggled", b"X-Client-IP: 6.6.6.6", auth("ks_second")],
    )
    assert answers(exchange(gateway.port, data))[0].status == 200
    (record,) = since(upstream, before)
    assert upstream.bodies[-1] == b"hello"
    assert b"smuggled" not in record.raw()
    assert b"x-trailer-field" not in _names(record)
    assert_minted_token_only(gateway, record)


def test_an_upstream_response_trailer_never_becomes_a_response_header(tmp_path: Path) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Upstream-Trailer\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-Upstream-Trailer: leaked\r\nSet-Cookie: session=leaked\r\n\r\n"
    )
    with ScriptedUpstream(answer) as scripted, running_gateway(tmp_path, scripted.url) as gw:
        raw = exchange(gw.port, request(b"/g19/response", auth(gw.key)))
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"leaked" not in raw
        assert b"ok" in body
        # the connection stays usable: a second request on it is answered the same
        raw = exchange(gw.port, request(b"/g19/response", auth(gw.key)))
        assert b"leaked" not in raw
        assert gw.app.proxy.pool.connections_opened == 1
