from __future__ import annotations

import json
from typing import Any

import pytest

from keyswap.errors import ConfigError, ExpiredToken
from keyswap.origin import create_app
from keyswap.verifier.asgi import Message, Scope
from tests.support.asgi import call_http, call_websocket, http_scope, run_lifespan

CLAIMS = {"sub": "consumer-1", "iss": "https://issuer.test", "name": "Zoë"}


class LifetimeVerifier:
    """A verifier-shaped fake: token ``good`` verifies, anything else is expired; counts start/close."""

    def __init__(self, *, fail_start: bool = False) -> None:
        self.started = 0
        self.closed = 0
        self.fail_start = fail_start

    async def verify(self, token: str) -> dict[str, Any]:
        if token != "good":
            raise ExpiredToken("token expired")
        return dict(CLAIMS)

    def start(self) -> None:
        if self.fail_start:
            raise ConfigError("cannot start: bad issuer")
        self.started += 1

    def close(self) -> None:
        self.closed += 1


GOOD = [(b"authorization", b"Bearer good")]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/", b""), ("POST", "/orders/42", b'{"qty": 3}'), ("DELETE", "/x/y/z", b"")],
)
async def test_every_path_and_method_answers_the_claims_as_json(
    method: str, path: str, body: bytes
) -> None:
    sent = await call_http(
        create_app(LifetimeVerifier()), path, method=method, headers=GOOD, body=body
    )
    assert sent.status == 200
    assert sent.header("content-type") == "application/json"
    assert sent.header("content-length") == str(len(sent.body))
    assert json.loads(sent.body) == CLAIMS


async def test_a_request_without_a_token_gets_401_no_token_provided() -> None:
    sent = await call_http(create_app(LifetimeVerifier()))
    assert (sent.status, sent.body) == (401, b"No token provided")
    assert sent.header("www-authenticate") == 'Bearer realm="keyswap"'


async def test_a_bad_token_gets_401_invalid_token_with_the_configured_realm() -> None:
    app = create_app(LifetimeVerifier(), realm="orders")
    sent = await call_http(app, headers=[(b"authorization", b"Bearer old")])
    assert (sent.status, sent.body) == (401, b"Invalid token")
    assert sent.header("www-authenticate") == (
        'Bearer realm="orders", error="invalid_token", error_description="token expired"'
    )


async def test_a_client_that_disconnects_during_the_body_gets_no_response() -> None:
    sent_messages: list[Message] = []
    inbox: list[Message] = [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent_messages.append(message)

    scope: Scope = http_scope(method="POST", headers=GOOD)
    await create_app(LifetimeVerifier())(scope, receive, send)
    assert sent_messages == []
    assert inbox == []


async def test_the_lifespan_starts_and_closes_the_verifier() -> None:
    verifier = LifetimeVerifier()
    sent = await run_lifespan(create_app(verifier))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert (verifier.started, verifier.closed) == (1, 1)


async def test_an_unmanaged_verifier_is_left_alone_by_the_lifespan() -> None:
    verifier = LifetimeVerifier()
    sent = await run_lifespan(create_app(verifier, manage_verifier=False))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert (verifier.started, verifier.closed) == (0, 0)


async def test_a_verifier_that_cannot_start_fails_the_startup_with_its_message() -> None:
    sent = await run_lifespan(create_app(LifetimeVerifier(fail_start=True)))
    assert sent == [{"type": "lifespan.startup.failed", "message": "cannot start: bad issuer"}]


async def test_a_websocket_receives_its_claims_then_a_normal_close() -> None:
    sent = await call_websocket(create_app(LifetimeVerifier()), headers=GOOD)
    assert [m["type"] for m in sent.messages] == [
        "websocket.accept",
        "websocket.send",
        "websocket.close",
    ]
    assert json.loads(sent.messages[1]["text"]) == CLAIMS


async def test_an_exempt_path_answers_an_empty_object() -> None:
    sent = await call_http(create_app(LifetimeVerifier(), exempt_paths=["/ping"]), "/ping")
    assert (sent.status, sent.body) == (200, b"{}")
