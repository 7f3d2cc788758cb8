"""The origin app's health path (``/__keyswap/health``) and its start before the gateway.

Real ``Verifier`` and key sets against a real JWKS server on 127.0.0.1 (tests/support/jwks_server.py);
the app is driven in-process (tests/support/asgi.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyswap.errors import ConfigError, ExpiredToken
from keyswap.origin.app import HEALTH_PATH, create_app, health
from keyswap.verifier.asgi import Message, Scope
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.asgi import call_http
from tests.support.jwks_server import JWKSServer
from tests.support.keys import claims, jwks, rsa_key

ISSUER = "https://gateway.test/__keyswap/issuer"
KEY = rsa_key("health-rsa")


class NoKeySets:
    """A verifier-shaped object that reports no key sets (not keyswap's Verifier)."""

    async def verify(self, token: str) -> dict[str, Any]:
        raise ExpiredToken("token expired")

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def make_verifier() -> Iterator[Callable[[str], Verifier]]:
    made: list[Verifier] = []

    def make(jwks_url: str) -> Verifier:
        verifier = Verifier(
            IssuerConfig(issuer=ISSUER, jwks_url=jwks_url, audience=None, algorithms=("RS256",))
        )
        made.append(verifier)
        verifier.start()
        return verifier

    yield make
    for verifier in made:
        verifier.close()


def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Wait (real time, bounded) for ``predicate``; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not reached"
        time.sleep(0.01)
    return time.monotonic() - started


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def test_the_health_path_answers_200_without_a_token_when_the_keys_are_held(
    jwks_server: JWKSServer, make_verifier: Callable[[str], Verifier]
) -> None:
    jwks_server.serve(jwks(KEY))
    verifier = make_verifier(jwks_server.url)
    await verifier.keyset(ISSUER).refresh()
    sent = await call_http(create_app(verifier), HEALTH_PATH)
    assert sent.status == 200
    assert sent.header("content-type") == "application/json"
    assert sent.header("cache-control") == "no-store"
    assert json.loads(sent.body) == {
        "status": "ok",
        "issuers": [{"issuer": ISSUER, "usable": True, "keys": 1}],
    }
    head = await call_http(create_app(verifier), HEALTH_PATH, method="HEAD")
    assert head.status == 200


async def test_the_health_path_answers_503_while_no_keys_are_held_and_shows_no_secrets(
    jwks_server: JWKSServer, make_verifier: Callable[[str], Verifier]
) -> None:
    jwks_server.serve(jwks(KEY), status=503)
    secret_url = (
        jwks_server.url.replace("http://", "http://ops:s3cret@") + "?access_token=t0ps3cret"
    )
    verifier = make_verifier(secret_url)
    wait_until(lambda: verifier.keyset(ISSUER).status().failures >= 1, timeout=5)
    sent = await call_http(create_app(verifier), HEALTH_PATH)
    assert sent.status == 503
    assert json.loads(sent.body) == {
        "status": "unavailable",
        "issuers": [{"issuer": ISSUER, "usable": False, "keys": 0}],
    }
    for secret in (b"s3cret", b"t0ps3cret", str(jwks_server.port).encode()):
        assert secret not in sent.body


async def test_the_health_path_refuses_other_methods_with_405() -> None:
    sent = await call_http(create_app(NoKeySets()), HEALTH_PATH, method="POST", body=b"{}")
    assert sent.status == 405
    assert sent.header("allow") == "GET, HEAD"


async def test_a_verifier_without_key_sets_is_healthy_and_other_paths_still_need_a_token() -> None:
    app = create_app(NoKeySets())
    sent = await call_http(app, HEALTH_PATH)
    assert (sent.status, json.loads(sent.body)) == (200, {"status": "ok", "issuers": []})
    assert health(NoKeySets()) == (True, {"status": "ok", "issuers": []})
    for path in ("/", HEALTH_PATH + "/x", "/__keyswap/healthz", "/__keyswap/HEALTH"):
        assert (await call_http(app, path)).status == 401


async def test_the_health_path_can_be_moved_or_turned_off() -> None:
    moved = create_app(NoKeySets(), health_path="/healthz")
    assert (await call_http(moved, "/healthz")).status == 200
    assert (await call_http(moved, HEALTH_PATH)).status == 401
    off = create_app(NoKeySets(), health_path=None)
    sent = await call_http(off, HEALTH_PATH)
    assert (sent.status, sent.body) == (401, b"No token provided")


@pytest.mark.parametrize("path", ["health", "/health/*", ""])
def test_a_bad_health_path_is_refused_at_construction(path: str) -> None:
    with pytest.raises(ConfigError):
        create_app(NoKeySets(), health_path=path)


async def test_a_websocket_on_the_health_path_is_closed_without_being_accepted() -> None:
    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": HEALTH_PATH,
        "raw_path": HEALTH_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "scheme": "ws",
        "subprotocols": [],
        "state": {},
    }
    inbox: list[Message] = [{"type": "websocket.connect"}, {"type": "websocket.disconnect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await create_app(NoKeySets())(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_an_origin_started_before_its_gateway_serves_within_a_second_of_the_jwks_coming_up(
    jwks_server: JWKSServer, make_verifier: Callable[[str], Verifier]
) -> None:
    jwks_server.serve(jwks(KEY), status=503)  # the gateway is not up yet
    verifier = make_verifier(jwks_server.url)
    app = create_app(verifier, manage_verifier=False)
    token = KEY.sign(claims(iss=ISSUER, aud=None))
    # Five failed fetches within 4 s (+ margin): retries stay short (with the old growing backoff
    # the fifth attempt came 7.5-15 s after the first).
    wait_until(lambda: verifier.keyset(ISSUER).status().failures >= 5, timeout=6.0)
    down = await call_http(app, "/orders", headers=bearer(token))
    assert (down.status, down.body) == (503, b"Signing keys temporarily unavailable")
    assert down.header("retry-after") == "1"
    assert (await call_http(app, HEALTH_PATH)).status == 503

    jwks_server.serve(jwks(KEY))  # the gateway comes up

    async def healthy() -> bool:
        return (await call_http(app, HEALTH_PATH)).status == 200

    started = time.monotonic()
    while not await healthy():
        assert time.monotonic() - started < 1.5, "not serving 1.5 s after the JWKS came up"
        await asyncio.sleep(0.01)
    served = await call_http(app, "/orders", headers=bearer(token))
    assert served.status == 200
    assert json.loads(served.body)["sub"] == "consumer-1"
