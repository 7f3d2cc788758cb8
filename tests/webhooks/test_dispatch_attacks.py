"""Attacks on the dispatcher's SSRF guard: DNS rebinding (the name answers a public address to the
check and a private one to the connection) and IPv6 forms that reach IPv4 addresses, on SQLite and
PostgreSQL, with a real TCP listener on 127.0.0.1 standing for the internal service."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from keyswap.manage import Context
from keyswap.manage.consumers import NewConsumer, create_consumer
from keyswap.manage.webhooks import enqueue, list_deliveries, set_webhook
from keyswap.store import webhooks as wstore
from keyswap.webhooks.dispatch import Dispatcher, RetryPolicy
from keyswap.webhooks.secrets import encrypt_secret, generate_secret
from tests.support.gateway_state import Clock, secret

SECRET = secret()


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts (the internal service)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    try:
        yield running
    finally:
        running.close()


def _endpoint_for(ctx: Context, url: str) -> int:
    """A consumer whose webhook is ``url``, stored as is (a host name the URL check lets through)."""
    consumer = create_consumer(ctx, NewConsumer("acme"))
    blob = encrypt_secret(SECRET.webhook_secret_encryption_key, consumer.id, generate_secret())
    wstore.put_endpoint(
        ctx.store,
        consumer.id,
        url=url,
        secret_blob=blob,
        allow_http_loopback=False,
        replace_secret=False,
        now=ctx.now(),
    )
    event_id = enqueue(
        ctx.store, consumer_id=str(consumer.id), event_type="key.leaked", data={}, now=ctx.now()
    )
    assert event_id is not None
    return consumer.id


def test_dns_rebinding_cannot_point_the_connection_at_a_checked_out_address(
    ctx: Context, clock: Clock, listener: Listener
) -> None:
    # "localhost" stands for an attacker's name whose DNS answers a public address first (to the
    # check) and 127.0.0.1 afterwards (to the connection): the system resolver gives the latter.
    _endpoint_for(ctx, f"https://localhost:{listener.port}/in")
    answers: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        answer = "192.0.2.1" if answers else "93.184.216.34"
        answers.append(answer)
        return [answer]

    dispatcher = Dispatcher(
        ctx.store,
        SECRET,
        policy=RetryPolicy(jitter=0),
        clock=clock,
        timeout=0.5,
        resolver=rebinding,
    )
    dispatcher.run_once()
    dispatcher.close()
    assert listener.accepted == 0
    (attempt,) = list_deliveries(ctx).attempts
    assert attempt.status_code is None
    assert attempt.error in ("connect", "timeout", "network", "blocked_address")


def test_the_connection_goes_only_to_an_address_the_resolver_gave_and_the_check_passed(
    ctx: Context, clock: Clock, listener: Listener
) -> None:
    # The resolver answers a public address for the name; the system would answer 127.0.0.1.
    _endpoint_for(ctx, f"https://localhost:{listener.port}/in")
    dispatcher = Dispatcher(
        ctx.store,
        SECRET,
        policy=RetryPolicy(jitter=0),
        clock=clock,
        timeout=0.5,
        resolver=lambda host, port: ["93.184.216.34"],
    )
    dispatcher.run_once()
    dispatcher.close()
    assert listener.accepted == 0


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
        "fec0::1",  # site-local
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    ],
)
def test_ipv6_forms_of_private_ipv4_addresses_are_blocked(
    ctx: Context, clock: Clock, address: str
) -> None:
    _endpoint_for(ctx, "https://hooks.example.com/in")
    dispatcher = Dispatcher(
        ctx.store,
        SECRET,
        policy=RetryPolicy(jitter=0),
        clock=clock,
        timeout=0.5,
        resolver=lambda host, port: [address],
    )
    dispatcher.run_once()
    dispatcher.close()
    (attempt,) = list_deliveries(ctx).attempts
    assert attempt.error == "blocked_address"


def test_a_loopback_endpoint_still_delivers(ctx: Context, clock: Clock) -> None:
    from tests.support.webhook_receiver import webhook_receiver

    consumer = create_consumer(ctx, NewConsumer("acme"))
    with webhook_receiver() as receiver:
        receiver.secret = set_webhook(
            ctx, SECRET, "acme", receiver.url, allow_http_loopback=True
        ).secret
        enqueue(
            ctx.store,
            consumer_id=str(consumer.id),
            event_type="key.leaked",
            data={},
            now=clock(),
        )
        dispatcher = Dispatcher(ctx.store, SECRET, policy=RetryPolicy(jitter=0), clock=clock)
        dispatcher.run_once()
        dispatcher.close()
        assert len(receiver.received) == 1
        assert receiver.received[0].verified
