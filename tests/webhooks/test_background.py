from __future__ import annotations

import time
from pathlib import Path

import pytest

from keyswap.gateway.secret import ServerSecret
from keyswap.manage import Actor, Context
from keyswap.manage.consumers import NewConsumer, create_consumer
from keyswap.manage.webhooks import enqueue, list_webhook_events, set_webhook
from keyswap.store import Store
from keyswap.webhooks.background import background_dispatcher
from tests.support.asgi_server import free_port
from tests.support.gateway_state import SECRET_TEXT, db_url
from tests.support.keyswap_process import running_keyswap
from tests.support.webhook_receiver import WebhookReceiver


def _eventually(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("not within the time")


def _prepare(url: str, receiver: WebhookReceiver) -> tuple[Store, int]:
    store = Store(url)
    ctx = Context(store, Actor.cli("alice"))
    consumer = create_consumer(ctx, NewConsumer("acme"))
    created = set_webhook(
        ctx, ServerSecret(SECRET_TEXT), "acme", receiver.url, allow_http_loopback=True
    )
    receiver.secret = created.secret
    return store, consumer.id


def test_the_background_thread_delivers_what_is_enqueued(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    store, consumer_id = _prepare(db_url(tmp_path), receiver)
    try:
        with background_dispatcher(store, ServerSecret(SECRET_TEXT), interval=0.05) as thread:
            assert thread is not None
            event_id = enqueue(
                store, consumer_id=str(consumer_id), event_type="key.rolled", data={}
            )
            _eventually(lambda: len(receiver.received) == 1)
        assert receiver.received[0].verified
        assert receiver.received[0].headers["webhook-id"] == event_id
    finally:
        store.close()


def test_disabled_runs_nothing(tmp_path: Path) -> None:
    with background_dispatcher(db_url(tmp_path), ServerSecret(SECRET_TEXT), enabled=False) as t:
        assert t is None


@pytest.mark.parametrize("command", ["gateway", "admin"])
def test_keyswap_gateway_and_admin_deliver_in_the_background(
    tmp_path: Path, receiver: WebhookReceiver, command: str
) -> None:
    url = db_url(tmp_path)
    store, consumer_id = _prepare(url, receiver)
    port = free_port()
    env = {"KEYSWAP_SECRET": SECRET_TEXT}
    args = [command, "--port", str(port), "--db", url]
    if command == "gateway":
        args += ["--upstream", "http://127.0.0.1:9"]
    try:
        with running_keyswap(args, port=port, ready_path="/healthz", env=env):
            enqueue(store, consumer_id=str(consumer_id), event_type="key.leaked", data={"n": 1})
            _eventually(lambda: len(receiver.received) == 1)
        assert receiver.received[0].verified
        ctx = Context(store, Actor.cli("alice"))
        assert [e.state for e in list_webhook_events(ctx)] == ["delivered"]
    finally:
        store.close()
