"""The gateway app on real servers: real SQLite store, real ApiKeys/Keyring, a recording upstream."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy.exc import OperationalError

from keyswap.errors import ConfigError
from keyswap.gateway.apikeys import ApiKeys, generate_key
from keyswap.gateway.app import GatewayApp, GatewaySettings
from keyswap.gateway.keyring import Keyring
from keyswap.gateway.secret import load_secret
from keyswap.gateway.wellknown import JWKS_PATH, OPENID_CONFIGURATION_PATH
from keyswap.store import Store
from tests.support.asgi_server import free_port, raw_http, serving
from tests.support.gateway_state import database_bytes
from tests.support.running_gateway import Gateway, eventually, running_gateway, token_seen_by
from tests.support.upstream import RecordingUpstream, pattern, recording_upstream


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[Gateway]:
    with running_gateway(tmp_path, upstream.url) as running:
        yield running


def _verify(gateway: Gateway, token: str, audience: str) -> dict[str, Any]:
    """Verify ``token`` with PyJWT against the JWKS fetched over HTTP from the gateway."""
    jwks = httpx.get(gateway.url + JWKS_PATH).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["ES256", "RS256", "EdDSA"],
        audience=audience,
        issuer=gateway.url + "/__keyswap/issuer",
    )
    return claims


def test_a_valid_key_reaches_the_upstream_with_a_jwt_that_verifies_against_the_jwks(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    response = gateway.get("/hello?x=1")

    assert response.status_code == 200
    assert response.json()["path"] == "/hello"
    token = token_seen_by(upstream)
    claims = _verify(gateway, token, audience=upstream.url)
    assert claims["sub"] == "acme"
    assert claims["metadata"] == {"plan": "free"}
    assert claims["key_id"] == gateway.key_id
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.get_unverified_header(token)["typ"] == "JWT"


def test_the_api_key_appears_nowhere_in_what_the_upstream_received(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    gateway.get("/anything")
    assert gateway.key.encode() not in upstream.last.raw()
    assert gateway.key[3:].encode() not in upstream.last.raw()


def test_a_configured_audience_replaces_the_upstream_url(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(tmp_path, upstream.url, audience="https://api.example") as gateway:
        gateway.get("/x")
        claims = _verify(gateway, token_seen_by(upstream), audience="https://api.example")
    assert claims["aud"] == "https://api.example"


def test_a_missing_key_is_401_with_a_bearer_challenge_and_never_reaches_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = httpx.get(gateway.url + "/hello", headers=headers)
        assert response.status_code == 401
        assert response.text == "No API key provided"
        assert response.headers["www-authenticate"] == 'Bearer realm="keyswap"'
    assert upstream.received == []


def test_every_bad_key_gets_the_identical_401_and_never_reaches_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    revoked = gateway.admin.create("acme")[1]
    gateway.admin.revoke(gateway.admin_store.list_api_keys("acme")[-1].id)
    expired_record, expired = gateway.admin.create("acme", expires_in=1, now=gateway.clock() - 10)
    assert expired_record.expires_at is not None
    bad_values = [
        f"Bearer {generate_key()}",  # well-formed, unknown
        "Bearer ks_not-a-key",  # malformed
        f"Bearer {gateway.key[:-1]}x",  # checksum broken
        f"Bearer {revoked}",
        f"Bearer {expired}",
        "Bearer",
        "Bearer two words",
    ]
    answers = set()
    for value in bad_values:
        response = httpx.get(gateway.url + "/hello", headers={"Authorization": value})
        answers.add((response.status_code, response.text, tuple(sorted(response.headers.items()))))
    status, _, _ = raw_http(
        gateway.port,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + gateway.key.encode()
        + b"\r\nAuthorization: Bearer "
        + gateway.key.encode()
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert status == 401
    assert len(answers) == 1
    (status, body, headers) = answers.pop()
    assert (status, body) == (401, "Invalid API key")
    assert dict(headers)["www-authenticate"] == 'Bearer realm="keyswap", error="invalid_token"'
    assert upstream.received == []


def test_issuer_documents_need_no_key_and_may_be_cached(gateway: Gateway) -> None:
    jwks = httpx.get(gateway.url + JWKS_PATH)
    discovery = httpx.get(gateway.url + OPENID_CONFIGURATION_PATH)

    assert jwks.status_code == 200
    assert jwks.headers["content-type"] == "application/jwk-set+json"
    assert jwks.headers["cache-control"] == "public, max-age=300"
    keys = jwks.json()["keys"]
    assert len(keys) == 2  # active + next, published ahead of use
    assert all(set(k) <= {"kty", "kid", "use", "alg", "crv", "x", "y"} for k in keys)
    assert discovery.json()["issuer"] == gateway.url + "/__keyswap/issuer"
    assert discovery.json()["jwks_uri"] == gateway.url + JWKS_PATH
    assert discovery.json()["id_token_signing_alg_values_supported"] == ["ES256"]


def test_reserved_paths_are_never_proxied(gateway: Gateway, upstream: RecordingUpstream) -> None:
    assert gateway.get("/__keyswap/anything").status_code == 404
    assert httpx.post(gateway.url + JWKS_PATH).status_code == 405
    assert upstream.received == []


def test_the_token_is_reused_until_half_its_life_is_gone(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    gateway.get("/1")
    first = token_seen_by(upstream)
    gateway.clock.advance(140)
    gateway.get("/2")
    assert token_seen_by(upstream) == first

    gateway.clock.advance(20)
    gateway.get("/3")
    assert token_seen_by(upstream) != first


def test_revocation_by_another_process_is_refused_within_five_seconds(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    assert gateway.get("/before").status_code == 200
    gateway.admin.revoke(gateway.key_id)

    eventually(lambda: gateway.get("/after").status_code == 401, timeout=5)
    seen = len(upstream.received)
    assert gateway.get("/again").status_code == 401
    assert len(upstream.received) == seen


def test_a_metadata_change_reaches_the_next_token(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    gateway.get("/before")
    gateway.admin_store.set_consumer_metadata("acme", {"plan": "pro"})

    def upgraded() -> bool:
        gateway.get("/after")
        claims = jwt.decode(token_seen_by(upstream), options={"verify_signature": False})
        return bool(claims["metadata"] == {"plan": "pro"})

    eventually(upgraded, timeout=5)


def test_access_log_has_one_line_per_request_without_key_token_or_query(
    gateway: Gateway, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyswap.access")
    gateway.get("/logged?api_key=secret-in-query")
    httpx.get(gateway.url + "/refused")

    # The server thread logs after the response is sent: wait (bounded) for both lines.
    deadline = time.monotonic() + 5.0
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == "keyswap.access"]
        if len(lines) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    assert len(lines) == 2
    assert lines[0].startswith(f"GET /logged 200 consumer=acme key_id={gateway.key_id} ")
    assert lines[0].endswith("ms")
    assert lines[1].startswith("GET /refused 401 consumer=- key_id=- ")
    everything = "\n".join(lines) + caplog.text
    assert gateway.key not in everything
    assert token_seen_by(upstream) not in everything
    assert "secret-in-query" not in everything


def test_the_database_file_never_holds_a_key_or_token_in_clear(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    gateway.get("/x")
    gateway.admin.flush_last_used(force=True)
    data = database_bytes(gateway.db_path)
    assert gateway.key.encode() not in data
    assert gateway.key[3:].encode() not in data
    assert token_seen_by(upstream).encode() not in data


def test_an_unreachable_upstream_is_502_and_a_slow_one_504(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(tmp_path / "a", f"http://127.0.0.1:{free_port()}") as gateway:
        response = gateway.get("/x")
        assert (response.status_code, response.text) == (502, "Bad gateway")
    with running_gateway(tmp_path / "b", upstream.url, upstream_timeout=0.3) as gateway:
        response = gateway.get("/stall")
        assert (response.status_code, response.text) == (504, "Gateway timeout")
    upstream.release()


@pytest.mark.parametrize(
    "settings",
    [
        {"alg": "HS256"},
        {"public_url": "localhost:8080"},
        {"token_ttl": 0},
        {"upstream_timeout": 0},
        {"jwks_max_age": -1},
    ],
)
def test_bad_settings_are_a_config_error(settings: dict[str, Any]) -> None:
    options: dict[str, Any] = {"upstream": "http://127.0.0.1:7878", "public_url": "http://h:1"}
    options.update(settings)
    with pytest.raises(ConfigError):
        GatewaySettings(**options)


def test_the_bearer_scheme_is_case_insensitive(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + "/x", headers={"Authorization": f"bEaReR {gateway.key}"})
    assert response.status_code == 200


class FailingApiKeys(ApiKeys):
    """Failure injection: the key store is down (every lookup misses the cache and fails)."""

    def lookup_cached(self, key: str, now: float | None = None) -> None:
        return None

    def authenticate(self, key: str, now: float | None = None) -> Any:
        raise OperationalError("SELECT ...", {"digest": b"..."}, Exception("database is locked"))

    def store_revision(self) -> int:
        raise OperationalError("SELECT ...", {}, Exception("database is locked"))

    def quick_revision(self) -> None:
        return None  # every read of the store fails: none on the event loop either


def test_a_failing_key_store_is_503_never_500_and_logs_no_key(
    tmp_path: Path, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    db_url = f"sqlite:///{tmp_path / 'k.db'}"
    store = Store(db_url)
    secret = load_secret(db_url, env={})
    settings = GatewaySettings(upstream.url, "http://127.0.0.1:1", alg="ES256")
    app = GatewayApp(
        settings, api_keys=FailingApiKeys(store, secret), keyring=Keyring(store, secret)
    )
    key = generate_key()
    try:
        with serving(app) as server:
            response = httpx.get(server.url + "/x", headers={"Authorization": f"Bearer {key}"})
    finally:
        store.close()
    assert (response.status_code, response.text) == (503, "Service unavailable")
    assert response.headers["retry-after"] == "5"
    assert "API key lookup failed (OperationalError)" in caplog.text
    assert key not in caplog.text
    assert upstream.received == []


def test_two_mib_bodies_pass_through_the_whole_gateway_intact(
    gateway: Gateway, upstream: RecordingUpstream
) -> None:
    body = pattern(2 * 1024 * 1024)
    headers = {"Authorization": f"Bearer {gateway.key}"}

    sent = httpx.post(gateway.url + "/upload", content=body, headers=headers, timeout=30)
    received = httpx.get(f"{gateway.url}/big/{len(body)}?chunked", headers=headers, timeout=30)

    assert sent.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert hashlib.sha256(received.content).digest() == hashlib.sha256(body).digest()


def test_the_signing_keys_a_first_start_creates_are_in_the_audit_log(gateway: Gateway) -> None:
    events = gateway.admin_store.list_audit_events(action_prefix="signing_key")
    assert [(e.actor_kind, e.actor_name, e.action) for e in events] == [
        ("system", "startup", "signing_key.create")
    ]
    assert events[0].changes["alg"] == "ES256"


KEY = b"ks_" + b"a" * 40
HEADER_CASES = [
    [],
    [(b"host", b"gw")],
    [(b"authorization", b"Bearer " + KEY)],
    [(b"authorization", b"bearer   " + KEY + b"  ")],
    [(b"Authorization", b"Bearer " + KEY)],  # not lower case (another server)
    [(b"authorization", b"Bearer " + KEY), (b"authorization", b"Bearer " + KEY)],
    [(b"authorization", b"Basic dXNlcjpwYXNz")],
    [(b"authorization", b"Bearer")],
    [(b"authorization", b"Bearer ")],
    [(b"authorization", b"Bearer " + b"a" * 600)],
    [(b"authorization", b"Bearer k\xe9y")],
    [(b"authorization", b"\x00")],
    [(b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")],
    [(b"tracestate", b"a=b"), (b"authorization", b"Bearer " + KEY)],
    [(b"authorization", b"Bearer " + KEY), (b"traceparent", b"x"), (b"authorization", b"x")],
    [(b"Tracestate", b"a=b"), (b"User-Agent", b"x"), (b"authorization", b"Bearer " + KEY)],
    [(b"user-agent", b"traceparent"), (b"x-traceparent", b"x")],
]


@pytest.mark.parametrize("headers", HEADER_CASES)
def test_a_traced_gateway_reads_the_key_as_an_untraced_one(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """With tracing on, one pass finds the key and the trace headers; the key, or the error, is
    the one the untraced gateway's reading gives."""
    from keyswap.gateway.app import _api_key_from, _authorization_and_trace, _traced_api_key

    def outcome(read: Callable[[], str]) -> tuple[str, str]:
        try:
            return "key", read()
        except Exception as exc:
            return type(exc).__name__, str(exc)

    value, several, traced = _authorization_and_trace(headers)
    assert outcome(lambda: _traced_api_key(value, several)) == outcome(
        lambda: _api_key_from(headers)
    )
    assert traced == any(name.lower() in (b"traceparent", b"tracestate") for name, _ in headers)
