from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from keyswap.errors import ConfigError, InvalidInput, NotFound
from keyswap.gateway.secret import ServerSecret
from keyswap.manage import Context
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.consumers import NewConsumer, create_consumer, delete_consumer
from keyswap.manage.webhooks import (
    clear_webhook,
    enqueue,
    get_webhook,
    list_deliveries,
    list_webhook_events,
    redeliver,
    rotate_secret,
    set_webhook,
    validate_url,
)
from keyswap.store import Store
from keyswap.store import webhooks as wstore
from keyswap.store.schema import webhook_endpoints
from keyswap.webhooks.secrets import decrypt_secret
from tests.support.gateway_state import Clock, secret

SECRET = secret()


def _acme(ctx: Context) -> int:
    return create_consumer(ctx, NewConsumer("acme")).id


def test_set_webhook_returns_the_secret_once_and_stores_it_only_encrypted(
    ctx: Context, store: Store
) -> None:
    consumer_id = _acme(ctx)
    created = set_webhook(ctx, SECRET, "acme", "https://hooks.example.com/in")
    assert created.secret is not None
    assert created.secret.startswith("whsec_")
    assert created.secret not in repr(created)
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(webhook_endpoints)).one()
    raw = repr(tuple(row)).encode() + bytes(row.secret_blob)
    assert created.secret.encode() not in raw
    assert created.secret.removeprefix("whsec_").encode() not in raw
    key = SECRET.webhook_secret_encryption_key
    assert decrypt_secret(key, consumer_id, bytes(row.secret_blob)) == created.secret
    with pytest.raises(ConfigError):  # bound to its consumer
        decrypt_secret(key, consumer_id + 1, bytes(row.secret_blob))
    with pytest.raises(ConfigError):  # and to the server secret
        decrypt_secret(
            ServerSecret.generate().webhook_secret_encryption_key,
            consumer_id,
            bytes(row.secret_blob),
        )
    shown = get_webhook(ctx, "acme")
    assert shown.url == "https://hooks.example.com/in"
    assert created.secret not in repr(shown.to_json())


def test_changing_the_url_keeps_the_secret_and_rotating_replaces_it(ctx: Context) -> None:
    consumer_id = _acme(ctx)
    first = set_webhook(ctx, SECRET, "acme", "https://a.example.com/")
    again = set_webhook(ctx, SECRET, "acme", "https://b.example.com/")
    assert again.secret is None
    assert again.webhook.url == "https://b.example.com/"
    endpoint = wstore.get_endpoint(ctx.store, consumer_id)
    assert endpoint is not None
    key = SECRET.webhook_secret_encryption_key
    assert decrypt_secret(key, consumer_id, endpoint.secret_blob) == first.secret
    rotated = rotate_secret(ctx, SECRET, "acme")
    assert rotated.secret is not None
    assert rotated.secret != first.secret
    endpoint = wstore.get_endpoint(ctx.store, consumer_id)
    assert endpoint is not None
    assert decrypt_secret(key, consumer_id, endpoint.secret_blob) == rotated.secret


def test_every_change_is_audited_without_the_secret(ctx: Context) -> None:
    _acme(ctx)
    created = set_webhook(ctx, SECRET, "acme", "https://a.example.com/")
    rotated = rotate_secret(ctx, SECRET, "acme")
    clear_webhook(ctx, "acme")
    events = list_events(ctx, AuditQuery(action="webhook")).events
    assert [e.action for e in events] == ["webhook.clear", "webhook.rotate_secret", "webhook.set"]
    assert all(e.target == "consumer:acme" and e.actor_name == "alice" for e in events)
    assert events[-1].changes["url"] == "https://a.example.com/"
    text = repr(events)
    assert created.secret is not None
    assert rotated.secret is not None
    assert created.secret not in text
    assert rotated.secret not in text


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/",
        "ftp://hooks.example.com/",
        "hooks.example.com/in",
        "https://",
        "https://user:pw@hooks.example.com/",
        "https://hooks.example.com/#frag",
        "https://127.0.0.1/",
        "https://localhost/",
        "http://127.0.0.1:8080/",
        "https://10.1.2.3/",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/",
        "https://[::ffff:10.0.0.1]/",
        "https://0.0.0.0/",
        "https://hooks.example.com:99999/",
        "https://hooks.example.com/a b",
        "https://hooks.example.com/\x00",
        "https://hööks.example.com/",
        "https://hooks.example.com/" + "a" * 2100,
        "",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        validate_url(url)


def test_http_to_loopback_only_when_allowed() -> None:
    assert validate_url("http://127.0.0.1:9/x", allow_http_loopback=True)
    assert validate_url("http://localhost:9/x", allow_http_loopback=True)
    assert validate_url("http://[::1]:9/x", allow_http_loopback=True)
    with pytest.raises(InvalidInput):
        validate_url("http://10.0.0.1/", allow_http_loopback=True)
    with pytest.raises(InvalidInput):
        validate_url("http://example.com/", allow_http_loopback=True)


def test_set_webhook_on_unknown_consumer_and_clear_without_one_are_not_found(
    ctx: Context,
) -> None:
    with pytest.raises(NotFound):
        set_webhook(ctx, SECRET, "nobody", "https://a.example.com/")
    _acme(ctx)
    with pytest.raises(NotFound):
        clear_webhook(ctx, "acme")
    with pytest.raises(NotFound):
        get_webhook(ctx, "acme")
    with pytest.raises(NotFound):
        rotate_secret(ctx, SECRET, "acme")


def test_enqueue_records_nothing_without_a_webhook(ctx: Context) -> None:
    consumer_id = _acme(ctx)
    assert (
        enqueue(ctx.store, consumer_id=str(consumer_id), event_type="key.leaked", data={}) is None
    )
    assert list_webhook_events(ctx) == []


def test_enqueue_records_one_event_per_idempotency_key(ctx: Context, clock: Clock) -> None:
    consumer_id = _acme(ctx)
    set_webhook(ctx, SECRET, "acme", "https://a.example.com/")
    data: dict[str, object] = {"key_id": "key_1", "url": "https://github.com/x"}
    first = enqueue(
        ctx.store,
        consumer_id=str(consumer_id),
        event_type="key.leaked",
        data=data,
        idempotency_key="leak:key_1",
        now=clock(),
    )
    second = enqueue(
        ctx.store,
        consumer_id=str(consumer_id),
        event_type="key.leaked",
        data=data,
        idempotency_key="leak:key_1",
    )
    other = enqueue(ctx.store, consumer_id=str(consumer_id), event_type="key.revoked", data=data)
    assert first is not None
    assert first.startswith("msg_")
    assert second == first
    assert other not in (None, first)
    events = list_webhook_events(ctx, "acme")
    assert len(events) == 2
    event = next(e for e in events if e.id == first)
    assert event.payload == {
        "type": "key.leaked",
        "timestamp": event.payload["timestamp"],
        "data": data,
    }
    assert event.payload["timestamp"] == "2023-11-14T22:13:20.000Z"
    assert event.state == "pending"
    assert event.attempts == 0


def test_concurrent_enqueue_with_one_idempotency_key_records_one_event(ctx: Context) -> None:
    consumer_id = _acme(ctx)
    set_webhook(ctx, SECRET, "acme", "https://a.example.com/")
    ids: list[str | None] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ids.append(
                enqueue(
                    ctx.store,
                    consumer_id=str(consumer_id),
                    event_type="quota.threshold",
                    data={"percent": 80},
                    idempotency_key="quota:80",
                )
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(ids)) == 1
    assert ids[0] is not None
    assert len(list_webhook_events(ctx)) == 1


@pytest.mark.parametrize(
    ("consumer_id", "event_type", "data", "key"),
    [
        ("acme", "key.leaked", {}, None),
        ("", "key.leaked", {}, None),
        ("1", "leaked", {}, None),
        ("1", "Key.Leaked", {}, None),
        ("1", "key.leaked", {"x": float("nan")}, None),
        ("1", "key.leaked", {"x": object()}, None),
        ("1", "key.leaked", {"x": "a" * 70_000}, None),
        ("1", "key.leaked", {}, ""),
        ("1", "key.leaked", {}, "k" * 256),
    ],
)
def test_enqueue_refuses_bad_input(
    ctx: Context, consumer_id: str, event_type: str, data: dict[str, object], key: str | None
) -> None:
    with pytest.raises(InvalidInput):
        enqueue(
            ctx.store,
            consumer_id=consumer_id,
            event_type=event_type,
            data=data,
            idempotency_key=key,
        )


def test_events_go_with_their_consumer(ctx: Context) -> None:
    consumer_id = _acme(ctx)
    set_webhook(ctx, SECRET, "acme", "https://a.example.com/")
    assert enqueue(ctx.store, consumer_id=str(consumer_id), event_type="key.leaked", data={})
    delete_consumer(ctx, "acme")
    assert list_webhook_events(ctx) == []
    assert wstore.get_endpoint(ctx.store, consumer_id) is None


def test_redeliver_makes_a_finished_event_due_and_is_audited(ctx: Context, clock: Clock) -> None:
    consumer_id = _acme(ctx)
    set_webhook(ctx, SECRET, "acme", "https://a.example.com/")
    event_id = enqueue(
        ctx.store,
        consumer_id=consumer_id,  # type: ignore[arg-type] # an int is accepted too
        event_type="key.leaked",
        data={},
        now=clock(),
    )
    assert event_id is not None
    (_claimed,) = wstore.claim_due_events(ctx.store, owner="n1", now=clock(), lease=30, limit=10)
    wstore.finish_attempt(
        ctx.store,
        event_id,
        owner="n1",
        at=clock(),
        url="https://a.example.com/",
        status_code=204,
        error=None,
        duration=0.01,
        state="delivered",
        next_retry_at=None,
        response_excerpt=None,
    )
    assert list_webhook_events(ctx, state="delivered")[0].id == event_id
    clock.advance(60)
    again = redeliver(ctx, event_id)
    assert again.state == "pending"
    assert again.next_attempt_at == clock()
    (audit,) = list_events(ctx, AuditQuery(action="webhook.redeliver")).events
    assert audit.changes == {"event": event_id}
    page = list_deliveries(ctx, "acme")
    assert [(a.attempt, a.status_code) for a in page.attempts] == [(1, 204)]
    with pytest.raises(NotFound):
        redeliver(ctx, "msg_" + "0" * 32)
    with pytest.raises(NotFound):
        redeliver(ctx, "../etc")
    with pytest.raises(InvalidInput):
        list_deliveries(ctx, limit=0)
    with pytest.raises(NotFound):
        list_deliveries(ctx, "nobody")
