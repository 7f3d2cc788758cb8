"""A hung database (or Redis) never stalls a request: a deadline on each store call, a bound on the
threads it may pin. The database "hangs" behind a TCP relay of ours that keeps every connection open
and forwards nothing (PostgreSQL and Redis themselves are never stopped)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from keyswap.errors import ConfigError
from keyswap.gateway.apikeys import ApiKeys, generate_key
from keyswap.gateway.app import GatewayApp, GatewaySettings
from keyswap.gateway.keyring import Keyring
from keyswap.gateway.ratelimit import RedisRateLimiter, parse_rate
from keyswap.gateway.storecalls import StoreCalls, StoreTimeout
from keyswap.store import Store
from tests.support.asgi_server import ServerThread, bound_socket
from tests.support.cluster import (
    GatewayProcess,
    TcpRelay,
    postgres_schema,
    redis_prefix,
    relayed_url,
)
from tests.support.gateway_state import SECRET_TEXT, Clock, secret
from tests.support.running_gateway import eventually
from tests.support.upstream import RecordingUpstream

DEADLINE = 0.5  # the gateway's database timeout in these tests
BOUND = DEADLINE + 1.5  # what a request may take at most, with a generous margin for a busy machine


# -- StoreCalls on its own ----------------------------------------------------------------------------


async def test_a_call_that_hangs_costs_the_caller_the_timeout_and_pins_one_thread() -> None:
    calls = StoreCalls(timeout=0.2, threads=2)
    release = threading.Event()
    try:
        started = time.monotonic()
        with pytest.raises(StoreTimeout):
            await calls.run(release.wait)
        assert time.monotonic() - started < 1.0
        assert calls.busy == 1  # still running, unwatched
        assert await calls.run(lambda: 42) == 42  # the other thread serves
    finally:
        release.set()
    for _ in range(100):
        if calls.busy == 0:
            break
        await asyncio.sleep(0.01)
    assert calls.busy == 0  # the slot came back when the call ended
    calls.close()


async def test_when_every_thread_hangs_further_calls_wait_no_more_than_the_timeout() -> None:
    calls = StoreCalls(timeout=0.2, threads=2)
    release = threading.Event()
    try:
        hung = [asyncio.create_task(calls.run(release.wait)) for _ in range(2)]
        started = time.monotonic()
        results = await asyncio.gather(
            *(calls.run(lambda: 1) for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(result, StoreTimeout) for result in results)
        assert time.monotonic() - started < 1.0
        assert threading.active_count() < 40  # no thread per waiting call
        await asyncio.gather(*hung, return_exceptions=True)
    finally:
        release.set()
    calls.close()


async def test_a_call_s_exception_reaches_the_caller() -> None:
    calls = StoreCalls(timeout=1.0, threads=1)

    def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await calls.run(fail)
    calls.close()


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        StoreCalls(timeout=0)
    with pytest.raises(ConfigError):
        Store("sqlite://", timeout=0)


# -- a real gateway over a PostgreSQL that hangs ------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        Store(url, schema="upgrade").close()
        yield url


@pytest.fixture
def relay(pg_url: str) -> Iterator[TcpRelay]:
    target = sa.make_url(pg_url)
    with TcpRelay(target.host or "127.0.0.1", target.port or 5432) as relay:
        yield relay


def _get(url: str, key: str, timeout: float = 10.0) -> tuple[int, float, httpx.Response]:
    started = time.monotonic()
    response = httpx.get(url + "/x", headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
    return response.status_code, time.monotonic() - started, response


def test_a_frozen_database_answers_every_request_within_the_deadline(
    pg_url: str, relay: TcpRelay
) -> None:
    upstream = RecordingUpstream().start()
    admin = Store(pg_url)
    admin.create_consumer("acme")
    admin_keys = ApiKeys(admin, secret(), cache_size=0)
    _, known = admin_keys.create("acme")
    store = Store(relayed_url(pg_url, relay), timeout=DEADLINE)
    monotonic = Clock(1000.0)
    api_keys = ApiKeys(store, secret(), cache_ttl=5.0, monotonic=monotonic)
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = GatewaySettings(upstream.url, url, alg="ES256")
    app = GatewayApp(
        settings,
        api_keys=api_keys,
        keyring=Keyring(store, secret()),
        store_calls=StoreCalls(DEADLINE, threads=4),
    )
    app.prepare()
    server = ServerThread(app, sock=sock).start()
    try:
        assert app.warmed.wait(10)
        # Made after the warm start (which caches every usable key): never seen by this node.
        never_seen = [admin_keys.create("acme")[1] for _ in range(12)]
        assert _get(url, known)[0] == 200
        relay.freeze()
        monotonic.advance(60)  # the known key is stale: the gateway asks the (frozen) database
        status, took, _ = _get(url, known)
        assert (status, took < BOUND) == (200, True)  # the outage fallback, after the deadline
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda key: _get(url, key), never_seen))
        assert {status for status, _, _ in answers} == {503}
        assert all(response.headers["retry-after"] for _, _, response in answers)
        assert max(took for _, took, _ in answers) < BOUND
        monotonic.advance(1.0)  # past the retry interval: the store is asked again (still frozen)
        assert _get(url, generate_key())[0] == 503
        assert app.store_calls.busy <= 4  # the hung lookups pin at most the bound
        assert _get(url, known)[0] == 200
        relay.thaw()
        monotonic.advance(1.0)
        eventually(lambda: _get(url, never_seen[0])[0] == 200, timeout=10)
    finally:
        relay.thaw()
        server.stop()
        store.close()
        admin.close()
        upstream.stop()


def test_the_gateway_command_bounds_lookups_with_db_timeout(
    pg_url: str, relay: TcpRelay, tmp_path: Path
) -> None:
    upstream = RecordingUpstream().start()
    admin = Store(pg_url)
    admin.create_consumer("acme")
    admin_keys = ApiKeys(admin, secret(), cache_size=0)
    _, known = admin_keys.create("acme")
    gateway = GatewayProcess(
        relayed_url(pg_url, relay),
        upstream.url,
        tmp_path,
        "--db-timeout",
        str(DEADLINE),
        "--rotate-every",
        "0",
        "--log-level",
        "info",
    )
    try:
        gateway.start()
        eventually(lambda: "warm start: " in gateway.log(), timeout=10)
        _, fresh = admin_keys.create("acme")  # after the warm start: never seen by this node
        assert _get(gateway.url, known)[0] == 200
        relay.freeze()
        status, took, response = _get(gateway.url, fresh)  # valid, never seen by this node
        assert (status, response.headers.get("retry-after")) == (503, "5")
        assert took < BOUND
        assert _get(gateway.url, known)[0] == 200  # known here: from memory
        relay.thaw()
        eventually(lambda: _get(gateway.url, fresh)[0] == 200, timeout=10)
    finally:
        relay.thaw()
        gateway.stop()
        admin.close()
        upstream.stop()
    assert SECRET_TEXT not in gateway.log()


# -- Redis that hangs ------------------------------------------------------------------------------


def test_a_frozen_redis_costs_a_request_no_more_than_its_timeout() -> None:
    with redis_prefix() as (redis_url, prefix), postgres_schema() as pg:
        Store(pg, schema="upgrade").close()
        parts = urlsplit(redis_url)
        with TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379) as redis_relay:
            relayed = f"redis://127.0.0.1:{redis_relay.port}{parts.path}"
            upstream = RecordingUpstream().start()
            store = Store(pg, timeout=DEADLINE)
            store.create_consumer("acme")
            api_keys = ApiKeys(store, secret())
            _, key = api_keys.create("acme")
            limiter = RedisRateLimiter(relayed, prefix=prefix, timeout=0.2)
            sock = bound_socket()
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            app = GatewayApp(
                GatewaySettings(upstream.url, url, alg="ES256"),
                api_keys=api_keys,
                keyring=Keyring(store, secret()),
                rate_limiter=limiter,
                default_rate=parse_rate("1000/60s"),
            )
            app.prepare()
            server = ServerThread(app, sock=sock).start()
            try:
                assert _get(url, key)[0] == 200
                redis_relay.freeze()
                for _ in range(3):
                    status, took, response = _get(url, key)
                    assert (status, took < 0.2 + 1.0) == (200, True)
                    assert response.headers["ratelimit-limit"] == "1000"  # counted in memory
                assert limiter.redis_down
            finally:
                redis_relay.thaw()
                server.stop()
                store.close()
                upstream.stop()
