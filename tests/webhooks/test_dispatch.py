from __future__ import annotations

import json
import logging
import threading

import pytest
import sqlalchemy as sa

from keyswap.manage import Context
from keyswap.manage.consumers import NewConsumer, create_consumer
from keyswap.manage.webhooks import (
    clear_webhook,
    enqueue,
    list_deliveries,
    list_webhook_events,
    redeliver,
    set_webhook,
)
from keyswap.store import Store
from keyswap.store import webhooks as wstore
from keyswap.webhooks.dispatch import EXCERPT_BYTES, Dispatcher, RetryPolicy
from tests.support.gateway_state import Clock, secret
from tests.support.webhook_receiver import WebhookReceiver

SECRET = secret()
NO_JITTER = RetryPolicy(jitter=0)


def _setup(ctx: Context, receiver: WebhookReceiver, name: str = "acme") -> int:
    consumer = create_consumer(ctx, NewConsumer(name))
    created = set_webhook(ctx, SECRET, name, receiver.url, allow_http_loopback=True)
    receiver.secret = created.secret
    return consumer.id


def _dispatcher(store: Store, clock: Clock, **kwargs: object) -> Dispatcher:
    options: dict[str, object] = {"policy": NO_JITTER, "clock": clock, "timeout": 2.0}
    options.update(kwargs)
    return Dispatcher(store, SECRET, **options)  # type: ignore[arg-type]


def _enqueue(ctx: Context, consumer_id: int, clock: Clock, **data: object) -> str:
    event_id = enqueue(
        ctx.store,
        consumer_id=str(consumer_id),
        event_type="key.leaked",
        data=data or {"key_id": "key_1"},
        now=clock(),
    )
    assert event_id is not None
    return event_id


def test_an_event_is_delivered_signed_per_standard_webhooks(
    ctx: Context, clock: Clock, receiver: WebhookReceiver
) -> None:
    consumer_id = _setup(ctx, receiver)
    event_id = _enqueue(ctx, consumer_id, clock, key_id="key_1", found_at="https://x.test/")
    dispatcher = _dispatcher(ctx.store, clock)
    try:
        assert dispatcher.run_once() == 1
    finally:
        dispatcher.close()
    (got,) = receiver.received
    assert got.verified
    assert got.hand_verified
    assert got.headers["webhook-id"] == event_id
    assert got.headers["webhook-timestamp"] == str(int(clock()))
    assert got.headers["content-type"] == "application/json"
    assert got.parsed == {
        "type": "key.leaked",
        "timestamp": got.parsed["timestamp"],
        "data": {"key_id": "key_1", "found_at": "https://x.test/"},
    }
    (attempt,) = list_deliveries(ctx, "acme").attempts
    assert (attempt.status_code, attempt.error, attempt.next_retry_at) == (204, None, None)
    assert attempt.event_type == "key.leaked"
    (event,) = list_webhook_events(ctx)
    assert (event.state, event.attempts, event.finished_at) == ("delivered", 1, clock())
    assert dispatcher.run_once() == 0


def test_a_tampered_body_or_other_secret_does_not_verify(
    ctx: Context, clock: Clock, receiver: WebhookReceiver
) -> None:
    """The receiver's check can fail: a rotated secret is not the one it knows."""
    from keyswap.manage.webhooks import rotate_secret

    consumer_id = _setup(ctx, receiver)
    rotate_secret(ctx, SECRET, "acme")  # the receiver still has the old secret
    _enqueue(ctx, consumer_id, clock)
    dispatcher = _dispatcher(ctx.store, clock)
    dispatcher.run_once()
    dispatcher.close()
    (got,) = receiver.received
    assert not got.verified
    assert not got.hand_verified


def test_a_failed_delivery_is_retried_with_backoff_and_every_attempt_recorded(
    ctx: Context, clock: Clock, receiver: WebhookReceiver
) -> None:
    receiver.script.statuses = [500, 200]
    receiver.script.body = b"oops"
    consumer_id = _setup(ctx, receiver)
    event_id = _enqueue(ctx, consumer_id, clock)
    dispatcher = _dispatcher(ctx.store, clock)
    try:
        assert dispatcher.run_once() == 1
        (event,) = list_webhook_events(ctx)
        assert (event.state, event.next_attempt_at) == ("pending", clock() + 10)
        clock.advance(9)
        assert dispatcher.run_once() == 0  # not due yet
        clock.advance(1)
        assert dispatcher.run_once() == 1
    finally:
        dispatcher.close()
    assert [r.headers["webhook-id"] for r in receiver.received] == [event_id, event_id]
    assert all(r.verified for r in receiver.received)
    first_ts, second_ts = (int(r.headers["webhook-timestamp"]) for r in receiver.received)
    assert second_ts - first_ts == 10
    attempts = list_deliveries(ctx, "acme").attempts
    assert [(a.attempt, a.status_code) for a in attempts] == [(2, 200), (1, 500)]
    assert attempts[1].next_retry_at == attempts[1].at + 10
    assert attempts[1].response_excerpt == "oops"
    assert attempts[0].next_retry_at is None
    assert list_webhook_events(ctx)[0].state == "delivered"


def test_the_schedule_backs_off_exponentially_and_gives_up_after_max_age(
    ctx: Context, clock: Clock, receiver: WebhookReceiver
) -> None:
    receiver.script.statuses = [503]
    consumer_id = _setup(ctx, receiver)
    _enqueue(ctx, consumer_id, clock)
    policy = RetryPolicy(first=10, factor=3, longest=100, max_age=400, jitter=0)
    dispatcher = _dispatcher(ctx.store, clock, policy=policy)
    waits = []
    try:
        for _ in range(20):
            assert dispatcher.run_once() == 1
            (event,) = list_webhook_events(ctx)
            if event.state != "pending":
                break
            assert event.next_attempt_at is not None
            waits.append(event.next_attempt_at - clock())
            clock.now = event.next_attempt_at
    finally:
        dispatcher.close()
    assert waits == [10, 30, 90, 100, 100]  # t = 10, 40, 130, 230, 330; the next (430) is too late
    assert event.state == "failed"
    assert len(list_deliveries(ctx).attempts) == 6


def test_default_schedule_spans_about_a_day() -> None:
    policy = RetryPolicy(jitter=0)
    t, attempt, times = 0.0, 1, [0.0]
    while (due := policy.next_attempt(attempt=attempt, created_at=0, now=t)) is not None:
        t, attempt = due, attempt + 1
        times.append(t)
    assert len(times) == 11
    assert 20 * 3600 < times[-1] <= 24 * 3600
    assert RetryPolicy(jitter=0.1).delay(1, rng=lambda: 0.0) == pytest.approx(9.0)
    with pytest.raises(ValueError):
        RetryPolicy(first=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=0.9)


def test_redirects_are_not_followed(ctx: Context, clock: Clock, receiver: WebhookReceiver) -> None:
    receiver.script.statuses = [302]
    receiver.script.location = "http://169.254.169.254/latest"
    consumer_id = _setup(ctx, receiver)
    _enqueue(ctx, consumer_id, clock)
    dispatcher = _dispatcher(ctx.store, clock)
    dispatcher.run_once()
    dispatcher.close()
    assert len(receiver.received) == 1
    (attempt,) = list_deliveries(ctx).attempts
    assert attempt.status_code == 302
    assert list_webhook_events(ctx)[0].state == "pending"


def test_a_slow_receiver_times_out_and_a_large_body_is_cut(
    ctx: Context, clock: Clock, receiver: WebhookReceiver
) -> None:
    consumer_id = _setup(ctx, receiver)
    _enqueue(ctx, consumer_id, clock)
    receiver.script.delay = 1.0
    dispatcher = _dispatcher(ctx.store, clock, timeout=0.2)
    dispatcher.run_once()
    (attempt,) = list_deliveries(ctx).attempts
    assert attempt.error == "timeout"
    assert attempt.status_code is None
    assert attempt.duration < 1.0
    receiver.script.delay = 0
    receiver.script.statuses = [200]
    receiver.script.body = b"\x00<html>" + b"x" * 100_000
    clock.advance(10)
    dispatcher.run_once()
    dispatcher.close()
    latest = list_deliveries(ctx).attempts[0]
    assert latest.status_code == 200
    assert latest.response_excerpt is not None
    assert len(latest.response_excerpt) == EXCERPT_BYTES
    assert latest.response_excerpt.startswith(" <html>")


def test_an_unreachable_receiver_is_a_connect_error(
    ctx: Context, clock: Clock, receiver: WebhookReceiver
) -> None:
    consumer_id = _setup(ctx, receiver)
    receiver.stop()
    _enqueue(ctx, consumer_id, clock)
    dispatcher = _dispatcher(ctx.store, clock)
    dispatcher.run_once()
    dispatcher.close()
    (attempt,) = list_deliveries(ctx).attempts
    assert attempt.error == "connect"
    assert list_webhook_events(ctx)[0].state == "pending"


@pytest.mark.parametrize(
    ("addresses", "error"),
    [
        (["10.0.0.7"], "blocked_address"),
        (["93.184.216.34", "127.0.0.1"], "blocked_address"),
        (["::ffff:192.168.1.1"], "blocked_address"),
        ([], "dns"),
    ],
)
def test_a_host_that_resolves_to_a_private_address_is_not_contacted(
    ctx: Context, clock: Clock, addresses: list[str], error: str
) -> None:
    consumer = create_consumer(ctx, NewConsumer("acme"))
    set_webhook(ctx, SECRET, "acme", "https://hooks.example.com/in")
    _enqueue(ctx, consumer.id, clock)
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return addresses

    dispatcher = _dispatcher(ctx.store, clock, resolver=resolver)
    dispatcher.run_once()
    dispatcher.close()
    assert asked == [("hooks.example.com", 443)]
    (attempt,) = list_deliveries(ctx).attempts
    assert attempt.error == error


def test_an_event_of_a_consumer_without_webhook_fails_at_once(
    ctx: Context, clock: Clock, receiver: WebhookReceiver
) -> None:
    consumer_id = _setup(ctx, receiver)
    event_id = _enqueue(ctx, consumer_id, clock)
    clear_webhook(ctx, "acme")
    dispatcher = _dispatcher(ctx.store, clock)
    dispatcher.run_once()
    (attempt,) = list_deliveries(ctx).attempts
    assert attempt.error == "no_endpoint"
    assert list_webhook_events(ctx)[0].state == "failed"
    # set it again and redeliver: the same event arrives
    created = set_webhook(ctx, SECRET, "acme", receiver.url, allow_http_loopback=True)
    receiver.secret = created.secret
    redeliver(ctx, event_id)
    dispatcher.run_once()
    dispatcher.close()
    (got,) = receiver.received
    assert got.verified
    assert got.headers["webhook-id"] == event_id


def test_a_leased_event_is_not_delivered_by_another_dispatcher_until_the_lease_ends(
    ctx: Context, clock: Clock, receiver: WebhookReceiver
) -> None:
    consumer_id = _setup(ctx, receiver)
    _enqueue(ctx, consumer_id, clock)
    (held,) = wstore.claim_due_events(ctx.store, owner="dead-node", now=clock(), lease=60, limit=5)
    other = _dispatcher(ctx.store, clock)
    assert other.run_once() == 0
    clock.advance(61)  # the holder died: its lease ends
    assert other.run_once() == 1
    other.close()
    assert len(receiver.received) == 1
    # the late holder's result does not overwrite the state (its lease is gone)
    assert not wstore.finish_attempt(
        ctx.store,
        held.event.id,
        owner="dead-node",
        at=clock(),
        url=receiver.url,
        status_code=500,
        error=None,
        duration=0.1,
        state="pending",
        next_retry_at=clock() + 10,
        response_excerpt=None,
    )
    assert list_webhook_events(ctx)[0].state == "delivered"


def test_two_dispatchers_never_deliver_one_event_twice(
    ctx: Context, clock: Clock, receiver: WebhookReceiver
) -> None:
    consumer_id = _setup(ctx, receiver)
    ids = {_enqueue(ctx, consumer_id, clock, n=n) for n in range(30)}
    dispatchers = [_dispatcher(ctx.store, clock, batch=3, owner=f"node{i}") for i in range(3)]
    errors: list[BaseException] = []

    def run(dispatcher: Dispatcher) -> None:
        try:
            dispatcher.drain()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for dispatcher in dispatchers:
        dispatcher.close()
    assert not errors
    delivered = [r.headers["webhook-id"] for r in receiver.received]
    assert sorted(delivered) == sorted(ids)
    assert len(list_deliveries(ctx).attempts) == 30


def test_the_secret_is_never_logged_nor_stored_in_clear(
    ctx: Context, clock: Clock, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.script.statuses = [500, 204]
    consumer_id = _setup(ctx, receiver)
    assert receiver.secret is not None
    _enqueue(ctx, consumer_id, clock)
    dispatcher = _dispatcher(ctx.store, clock)
    dispatcher.run_once()
    clock.advance(10)
    dispatcher.run_once()
    dispatcher.close()
    assert len(receiver.received) == 2
    raw_secret = receiver.secret.removeprefix("whsec_")
    assert raw_secret not in caplog.text
    dump = []
    with ctx.store.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):  # noqa: S608 - table names from the database
                dump.append(repr(tuple(row)))
    text = "\n".join(dump)
    assert "webhook_endpoints" in sa.inspect(ctx.store.engine).get_table_names()
    assert raw_secret not in text
    assert receiver.secret not in json.dumps(text)
