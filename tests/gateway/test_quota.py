"""Quotas and credits in the gateway: exact in Redis, per node without, recorded in the database."""

from __future__ import annotations

import asyncio
import calendar
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from keyswap.gateway.apikeys import Principal
from keyswap.gateway.cluster import ClusterSettings
from keyswap.gateway.quota import (
    QuotaDecision,
    QuotaEnforcer,
    ThresholdEvent,
    ThresholdNotifier,
    quota_exceeded,
)
from keyswap.gateway.ratelimit import MemoryRateLimiter, Rate, RedisRateLimiter
from keyswap.store import Store
from tests.support.cluster import TcpRelay, redis_prefix
from tests.support.gateway_state import Clock, db_url
from tests.support.running_gateway import running_gateway
from tests.support.upstream import RecordingUpstream

NOON = float(calendar.timegm((2026, 12, 7, 12, 0, 0)))
MIDNIGHT = float(calendar.timegm((2026, 12, 8, 0, 0, 0)))


@pytest.fixture
def redis_env() -> Iterator[tuple[str, str]]:
    with redis_prefix() as env:
        yield env


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(db_url(tmp_path), schema="upgrade")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream().start()
    yield server
    server.stop()


def principal(store: Store, **quota: Any) -> Principal:
    """A principal of consumer ``acme`` (created on first use) with these quota fields."""
    consumer = store.get_consumer("acme") or store.create_consumer("acme", {})
    return Principal("key1", "acme", consumer.id, {}, **quota)


async def allowed(enforcer: QuotaEnforcer, who: Principal, n: int) -> list[bool]:
    decisions = [await enforcer.check(who) for _ in range(n)]
    return [d is not None and d.allowed for d in decisions]


# -- per node (no Redis) ----------------------------------------------------------------------------


async def test_a_spent_quota_refuses_until_the_next_period(store: Store) -> None:
    clock = Clock(NOON)
    enforcer = QuotaEnforcer(store, clock=clock)
    who = principal(store, quota="3/day")
    assert await allowed(enforcer, who, 4) == [True, True, True, False]
    refused = await enforcer.check(who)
    assert refused is not None
    assert not refused.allowed
    assert refused.retry_after() == 12 * 3600
    assert refused.used == (3,)  # refused requests are not counted
    clock.now = MIDNIGHT - 0.5
    assert await allowed(enforcer, who, 1) == [False]
    clock.now = MIDNIGHT  # a new calendar day (UTC)
    assert await allowed(enforcer, who, 4) == [True, True, True, False]
    await enforcer.close()


async def test_no_quota_nor_credits_means_no_decision(store: Store) -> None:
    enforcer = QuotaEnforcer(store)
    assert await enforcer.check(principal(store)) is None
    assert await enforcer.check(principal(store, quota="10/fortnight")) is None  # a newer syntax
    await enforcer.close()


async def test_credits_refill_at_the_period_boundary(store: Store) -> None:
    clock = Clock(NOON)
    enforcer = QuotaEnforcer(store, clock=clock)
    who = principal(store, credits=2, credits_refill="3/day", credits_set_at=NOON - 60)
    assert await allowed(enforcer, who, 3) == [True, True, False]
    clock.now = MIDNIGHT + 1
    assert await allowed(enforcer, who, 4) == [True, True, True, False]
    await enforcer.close()


async def test_credits_without_refill_never_come_back(store: Store) -> None:
    clock = Clock(NOON)
    enforcer = QuotaEnforcer(store, clock=clock)
    who = principal(store, credits=2, credits_set_at=NOON - 60)
    assert await allowed(enforcer, who, 3) == [True, True, False]
    clock.advance(400 * 86400)
    refused = await enforcer.check(who)
    assert refused is not None
    assert not refused.allowed
    assert refused.retry_after() is None
    assert b"retry-after" not in dict(refused.headers())
    # a new grant is a new balance
    regranted = principal(store, credits=1, credits_set_at=clock.now)
    assert await allowed(enforcer, regranted, 2) == [True, False]
    await enforcer.close()


async def test_quota_and_credits_both_apply_and_a_refusal_spends_neither(store: Store) -> None:
    enforcer = QuotaEnforcer(store, clock=Clock(NOON))
    who = principal(store, quota="2/day", credits=5, credits_set_at=NOON)
    assert await allowed(enforcer, who, 3) == [True, True, False]
    refused = await enforcer.check(who)
    assert refused is not None
    assert refused.used == (2, 2)
    assert refused.refused_by is not None
    assert refused.refused_by.kind == "quota"
    await enforcer.close()


async def test_a_gateway_restart_does_not_refill(store: Store) -> None:
    clock = Clock(NOON)
    who = principal(store, credits=3, credits_set_at=NOON)
    first = QuotaEnforcer(store, clock=clock)
    assert await allowed(first, who, 2) == [True, True]
    await first.close()  # records what it counted
    second = QuotaEnforcer(store, clock=clock)
    assert await allowed(second, who, 2) == [True, False]
    second.flush()
    assert store.quota_usage(who.consumer_id, [f"c:{int(NOON * 1000)}"]) == {
        f"c:{int(NOON * 1000)}": 3
    }


async def test_nodes_without_redis_add_up_in_the_database(store: Store) -> None:
    clock = Clock(NOON)
    who = principal(store, quota="10/day")
    a, b = QuotaEnforcer(store, clock=clock), QuotaEnforcer(store, clock=clock)
    assert await allowed(a, who, 4) == [True] * 4
    assert await allowed(b, who, 4) == [True] * 4  # approximate: b had not seen a's yet
    a.flush()
    b.flush()  # b now knows the total of both
    assert await allowed(b, who, 3) == [True, True, False]
    await a.close()
    await b.close()
    assert store.quota_usage(who.consumer_id, ["q:day:2026-12-07"]) == {"q:day:2026-12-07": 10}


async def test_a_failed_flush_keeps_the_counts_for_the_next(tmp_path: Path) -> None:
    store = Store(db_url(tmp_path), schema="upgrade")
    who = principal(store, quota="10/day")
    enforcer = QuotaEnforcer(store, clock=Clock(NOON))
    assert await allowed(enforcer, who, 2) == [True, True]
    store.engine.dispose()
    (tmp_path / "keyswap.db").rename(tmp_path / "moved.db")
    (tmp_path / "keyswap.db").mkdir()  # the database is gone: writes fail
    enforcer.flush()
    assert await allowed(enforcer, who, 1) == [True]  # still counted: 3 here
    (tmp_path / "keyswap.db").rmdir()
    (tmp_path / "moved.db").rename(tmp_path / "keyswap.db")
    enforcer.flush()
    assert store.quota_usage(who.consumer_id, ["q:day:2026-12-07"]) == {"q:day:2026-12-07": 3}
    await enforcer.close()
    store.close()


async def test_a_flush_prunes_ended_periods_at_most_hourly(store: Store) -> None:
    clock, monotonic = Clock(NOON), Clock(0.0)
    who = principal(store, quota="10/day")
    store.add_quota_usage({(who.consumer_id, "q:day:2026-09-01"): 4}, now=NOON - 90 * 86400)
    enforcer = QuotaEnforcer(store, clock=clock, monotonic=monotonic)
    assert await allowed(enforcer, who, 1) == [True]
    enforcer.flush()
    assert store.quota_usage(who.consumer_id, ["q:day:2026-09-01"]) == {"q:day:2026-09-01": 0}
    store.add_quota_usage({(who.consumer_id, "q:day:2026-09-02"): 4}, now=NOON - 90 * 86400)
    assert await allowed(enforcer, who, 1) == [True]
    enforcer.flush()  # within the hour: not again
    assert store.quota_usage(who.consumer_id, ["q:day:2026-09-02"]) == {"q:day:2026-09-02": 4}
    await enforcer.close()


# -- Redis ------------------------------------------------------------------------------------------


async def test_two_nodes_share_one_exact_count_in_redis(
    store: Store, redis_env: tuple[str, str]
) -> None:
    url, prefix = redis_env
    clock = Clock(NOON)
    nodes = [QuotaEnforcer(store, redis_url=url, prefix=prefix, clock=clock) for _ in range(2)]
    who = principal(store, quota="20/day", credits=30, credits_set_at=NOON)
    try:
        decisions = await asyncio.gather(*(nodes[i % 2].check(who) for i in range(50)))
    finally:
        for node in nodes:
            await node.close()
    accepted = [d for d in decisions if d is not None and d.allowed]
    assert len(accepted) == 20
    assert sorted(d.used[0] for d in accepted) == list(range(1, 21))
    assert store.quota_usage(who.consumer_id, ["q:day:2026-12-07"]) == {"q:day:2026-12-07": 20}


async def test_redis_counters_refill_at_the_period_and_expire_after_it(
    store: Store, redis_env: tuple[str, str]
) -> None:
    url, prefix = redis_env
    clock = Clock(NOON)
    enforcer = QuotaEnforcer(store, redis_url=url, prefix=prefix, clock=clock)
    who = principal(store, quota="2/day")
    try:
        assert await allowed(enforcer, who, 3) == [True, True, False]
        clock.now = MIDNIGHT
        assert await allowed(enforcer, who, 3) == [True, True, False]
    finally:
        await enforcer.close()
    client = redis.Redis.from_url(url)
    try:
        key = f"{prefix}:quota:{{{who.consumer_id}}}:q:day:2026-12-08".encode()
        assert client.get(key) == b"2"
        # a day after its period (measured from the gateway's clock at the time it was made)
        assert 0 < client.pttl(key) <= 2 * 86_400_000
    finally:
        client.close()


async def test_a_lost_redis_counter_is_seeded_from_the_database(
    store: Store, redis_env: tuple[str, str]
) -> None:
    url, prefix = redis_env
    clock = Clock(NOON)
    who = principal(store, credits=3, credits_set_at=NOON)
    first = QuotaEnforcer(store, redis_url=url, prefix=prefix, clock=clock)
    assert await allowed(first, who, 2) == [True, True]
    await first.close()
    client = redis.Redis.from_url(url)
    try:
        client.delete(*client.keys(f"{prefix}:quota:*"))  # Redis restarted empty
    finally:
        client.close()
    second = QuotaEnforcer(store, redis_url=url, prefix=prefix, clock=clock)  # a restarted node
    try:
        assert await allowed(second, who, 2) == [True, False]
    finally:
        await second.close()


async def test_redis_down_falls_back_to_each_node_and_requests_keep_flowing(
    store: Store, redis_env: tuple[str, str]
) -> None:
    url, prefix = redis_env
    parts = urlsplit(url)
    clock, monotonic = Clock(NOON), Clock(0.0)
    who = principal(store, quota="5/day")
    with TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379) as relay:
        relayed = f"redis://127.0.0.1:{relay.port}{parts.path}"
        enforcer = QuotaEnforcer(
            store, redis_url=relayed, prefix=prefix, clock=clock, timeout=0.2, monotonic=monotonic
        )
        shared = QuotaEnforcer(store, redis_url=url, prefix=prefix, clock=clock)
        try:
            assert await allowed(enforcer, who, 1) == [True]  # counted in Redis
            relay.freeze()  # Redis hangs: neither answers nor refuses
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await allowed(enforcer, who, 1) == [True]  # after the timeout, in memory
            assert loop.time() - started < 1.0
            down = enforcer.redis_down
            assert down
            started = loop.time()
            assert await allowed(enforcer, who, 4) == [True, True, True, False]
            assert loop.time() - started < 0.1  # Redis is left alone meanwhile
            relay.thaw()
            monotonic.advance(1.0)
            # Redis again: it counted 1 (the frozen call may or may not have landed), never more
            # than the limit in all
            await shared.check(who)
            assert not enforcer.redis_down
        finally:
            await enforcer.close()
            await shared.close()


# -- the rate limit and the quota in one call -------------------------------------------------------


async def test_rate_limit_and_quota_in_one_call_are_exact_across_nodes(
    store: Store, redis_env: tuple[str, str]
) -> None:
    url, prefix = redis_env
    clock = Clock(NOON)
    nodes = [QuotaEnforcer(store, redis_url=url, prefix=prefix, clock=clock) for _ in range(2)]
    limiters = [RedisRateLimiter(url, prefix=prefix) for _ in range(2)]
    assert nodes[0].shares_redis_with(limiters[0])
    assert not nodes[0].shares_redis_with(MemoryRateLimiter())
    assert not QuotaEnforcer(store).shares_redis_with(limiters[0])
    who = principal(store, quota="20/day")
    rate = Rate(1000, 86400)
    try:
        results = await asyncio.gather(
            *(nodes[i % 2].check_with_rate(who, rate, limiters[i % 2]) for i in range(50))
        )
        # the rate limiter counted every request, in the keys it uses itself
        assert (await limiters[0].hit(who.consumer_id, rate)).remaining == 1000 - 51
    finally:
        for node in nodes:
            await node.close()
        for limiter in limiters:
            await limiter.close()
    assert all(rated.allowed for rated, _ in results)
    accepted = [spent for _, spent in results if spent is not None and spent.allowed]
    assert len(accepted) == 20
    assert sorted(spent.used[0] for spent in accepted) == list(range(1, 21))
    assert store.quota_usage(who.consumer_id, ["q:day:2026-12-07"]) == {"q:day:2026-12-07": 20}


async def test_a_request_refused_by_the_rate_limit_spends_no_quota(
    store: Store, redis_env: tuple[str, str]
) -> None:
    url, prefix = redis_env
    enforcer = QuotaEnforcer(store, redis_url=url, prefix=prefix, clock=Clock(NOON))
    limiter = RedisRateLimiter(url, prefix=prefix)
    who = principal(store, quota="10/day", credits=10, credits_set_at=NOON)
    try:
        results = [await enforcer.check_with_rate(who, Rate(3, 86400), limiter) for _ in range(5)]
        alone = await enforcer.check(who)
    finally:
        await enforcer.close()
        await limiter.close()
    assert [rated.allowed for rated, _ in results] == [True, True, True, False, False]
    assert [spent is None for _, spent in results] == [False, False, False, True, True]
    assert results[2][1] is not None
    assert results[2][1].used == (3, 3)
    assert results[3][0].remaining == 0
    assert alone is not None
    assert alone.used == (4, 4)


async def test_with_redis_unreachable_both_fall_back_per_node(store: Store) -> None:
    enforcer = QuotaEnforcer(store, redis_url="redis://127.0.0.1:9/0", clock=Clock(NOON))
    limiter = RedisRateLimiter("redis://127.0.0.1:9/0")
    who = principal(store, quota="2/day")
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = [await enforcer.check_with_rate(who, Rate(3, 60), limiter) for _ in range(5)]
        assert loop.time() - started < 0.5  # one failed Redis call at most, then per node
    finally:
        await enforcer.close()
        await limiter.close()
    assert [rated.allowed for rated, _ in results] == [True] * 3 + [False] * 2
    assert [spent is not None and spent.allowed for _, spent in results] == [True, True, False] + [
        False
    ] * 2
    assert results[3][1] is None  # refused by the rate limit: no quota decision


async def test_a_hanging_redis_leaves_rate_limit_and_quota_per_node_then_shared_again(
    store: Store, redis_env: tuple[str, str]
) -> None:
    url, prefix = redis_env
    parts = urlsplit(url)
    clock, monotonic = Clock(NOON), Clock(0.0)
    who = principal(store, quota="4/day")
    rate = Rate(100, 86400)
    with TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379) as relay:
        relayed = f"redis://127.0.0.1:{relay.port}{parts.path}"
        enforcer = QuotaEnforcer(
            store, redis_url=relayed, prefix=prefix, clock=clock, timeout=0.2, monotonic=monotonic
        )
        limiter = RedisRateLimiter(relayed, prefix=prefix, timeout=0.2)
        try:
            _, first = await enforcer.check_with_rate(who, rate, limiter)
            assert first is not None
            assert first.used == (1,)  # in Redis
            relay.freeze()
            loop = asyncio.get_running_loop()
            started = loop.time()
            results = [await enforcer.check_with_rate(who, rate, limiter) for _ in range(4)]
            assert loop.time() - started < 1.0  # one timeout, then per node without waiting
            assert enforcer.redis_down
            assert [r.allowed for r, _ in results] == [True] * 4
            assert [q is not None and q.allowed for _, q in results] == [True] * 3 + [False]
            relay.thaw()
            monotonic.advance(1.0)
            rated, again = await enforcer.check_with_rate(who, rate, limiter)
            assert rated.allowed
            assert again is not None  # Redis again: its count, whatever the frozen call did
            assert not enforcer.redis_down
        finally:
            await enforcer.close()
            await limiter.close()


# -- thresholds -------------------------------------------------------------------------------------


async def test_thresholds_are_emitted_once_per_period_across_nodes(
    store: Store, redis_env: tuple[str, str]
) -> None:
    url, prefix = redis_env
    clock = Clock(NOON)
    events: list[ThresholdEvent] = []
    nodes = [
        QuotaEnforcer(store, redis_url=url, prefix=prefix, clock=clock, on_threshold=events.append)
        for _ in range(2)
    ]
    who = principal(store, quota="10/day")
    try:
        await asyncio.gather(*(nodes[i % 2].check(who) for i in range(15)))
        assert [(e.threshold, e.used) for e in sorted(events, key=lambda e: e.threshold)] == [
            (80, 8),
            (100, 10),
        ]
        assert events[0].data() == {
            "consumer": "acme",
            "kind": "quota",
            "period": "2026-12-07",
            "period_start": "2026-12-07T00:00:00Z",
            "limit": 10,
            "used": events[0].used,
            "threshold": events[0].threshold,
        }
        assert {e.idempotency_key for e in events} == {
            "quota:acme:q:day:2026-12-07:80",
            "quota:acme:q:day:2026-12-07:100",
        }
        clock.now = MIDNIGHT
        await asyncio.gather(*(nodes[i % 2].check(who) for i in range(15)))
        assert len(events) == 4
        assert events[-1].counter.label == "2026-12-08"
    finally:
        for node in nodes:
            await node.close()


async def test_per_node_thresholds_share_one_idempotency_key(store: Store) -> None:
    events: list[ThresholdEvent] = []
    who = principal(store, quota="5/day")
    nodes = [QuotaEnforcer(store, clock=Clock(NOON), on_threshold=events.append) for _ in range(2)]
    for node in nodes:
        await allowed(node, who, 5)
    keys = [e.idempotency_key for e in events]
    assert len(keys) == 4
    assert len(set(keys)) == 2  # the webhook enqueue records one event per key


async def test_a_failing_threshold_handler_never_fails_a_request(store: Store) -> None:
    def broken(event: ThresholdEvent) -> None:
        raise RuntimeError("boom")

    enforcer = QuotaEnforcer(store, clock=Clock(NOON), on_threshold=broken)
    assert await allowed(enforcer, principal(store, quota="1/day"), 2) == [True, False]


def test_the_notifier_records_events_off_the_calling_thread() -> None:
    release = threading.Event()
    recorded: list[tuple[str, str]] = []

    def enqueue(event: ThresholdEvent) -> None:
        release.wait(5)
        recorded.append((event.idempotency_key, threading.current_thread().name))

    notifier = ThresholdNotifier(enqueue, max_queued=2)
    counter = _counter()
    for threshold in (80, 100, 100, 100):  # the last ones overflow the queue: dropped, not blocking
        notifier(ThresholdEvent("acme", 1, counter, 8, threshold))
    release.set()
    notifier.join()
    notifier.close()
    assert recorded[0] == ("quota:acme:q:day:2026-12-07:80", "keyswap-quota-events")
    assert 2 <= len(recorded) <= 3


def _counter() -> Any:
    from keyswap.manage.quotas import counters_for

    return counters_for(
        quota="10/day", credits=None, credits_refill=None, credits_set_at=None, now=NOON
    )[0]


# -- responses --------------------------------------------------------------------------------------


def test_a_refusal_is_a_problem_with_retry_after_and_ratelimit_fields() -> None:
    decision = QuotaDecision(False, (_counter(),), (10,), NOON)
    status, headers, body = quota_exceeded(decision)
    fields = dict(headers)
    assert status == 429
    assert fields[b"content-type"] == b"application/problem+json"
    assert fields[b"retry-after"] == b"43200"
    assert fields[b"ratelimit-policy"] == b'"quota";q=10;w=86400'
    assert fields[b"ratelimit"] == b'"quota";r=0;t=43200'
    problem = json.loads(body)
    assert problem["status"] == 429
    assert problem["code"] == "quota_exceeded"
    assert problem["title"] == "Quota exceeded"
    assert problem["refills_at"] == "2026-12-08T00:00:00Z"
    assert "2026-12-07 quota of 10 requests is spent" in problem["detail"]


def test_on_the_wire_a_spent_quota_is_429_and_never_reaches_the_origin(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(tmp_path, upstream.url) as gateway:
        gateway.admin_store.update_consumer("acme", quota="2/day")
        gateway.app.on_change()  # as the change watcher would
        first, second, third = (gateway.get("/x") for _ in range(3))
        gateway.admin_store.update_consumer("acme", quota=None)
        gateway.app.on_change()
        free = gateway.get("/x")
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    assert len(upstream.received) == 3
    assert third.headers["content-type"] == "application/problem+json"
    assert third.json()["title"] == "Quota exceeded"
    assert 1 <= int(third.headers["retry-after"]) <= 86400
    assert third.headers["ratelimit-policy"].startswith('"quota";q=2;w=')
    assert first.headers["ratelimit"].startswith('"quota";r=1;t=')
    assert second.headers["ratelimit"].startswith('"quota";r=0;t=')
    assert "retry-after" not in first.headers
    assert free.status_code == 200
    assert "ratelimit" not in free.headers


def test_on_the_wire_rate_limit_and_quota_fields_go_together(
    tmp_path: Path, upstream: RecordingUpstream, redis_env: tuple[str, str]
) -> None:
    url, prefix = redis_env
    cluster = ClusterSettings(redis_url=url, redis_prefix=prefix, rate_limit=Rate(100, 60))
    with running_gateway(tmp_path, upstream.url, cluster=cluster) as gateway:
        assert gateway.app._rate_with_quota  # one Redis call for both
        gateway.admin_store.update_consumer(
            "acme", credits=1, credits_set_at=gateway.clock.now, credits_refill="1/month"
        )
        gateway.app.on_change()
        first, second = gateway.get("/x"), gateway.get("/x")
    assert first.status_code == 200
    assert first.headers["ratelimit-limit"] == "100"
    rate_policy, credits_policy = first.headers.get_list("ratelimit-policy")
    assert rate_policy == "100;w=60"
    assert credits_policy.startswith('"credits";q=1;w=')
    assert first.headers["ratelimit"].startswith('"credits";r=0;t=')
    assert second.status_code == 429
    assert second.json()["title"] == "Credits exhausted"


def test_on_the_wire_thresholds_become_webhook_events_once(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    from keyswap.gateway.secret import load_secret
    from keyswap.manage import Actor, Context
    from keyswap.manage.webhooks import list_webhook_events, set_webhook

    with running_gateway(tmp_path, upstream.url) as gateway:
        ctx = Context(gateway.admin_store, Actor.cli("test"))
        set_webhook(
            ctx, load_secret(gateway.db_url, env={}), "acme", "https://hooks.example.com/in"
        )
        gateway.admin_store.update_consumer("acme", quota="5/day")
        gateway.app.on_change()
        statuses = [gateway.get("/x").status_code for _ in range(7)]
        quotas = gateway.app.quotas
        assert quotas is not None
        notifier = quotas._on_threshold
        assert isinstance(notifier, ThresholdNotifier)
        notifier.join()
        events = list_webhook_events(ctx, "acme")
    assert statuses == [200] * 5 + [429] * 2
    assert sorted(e.payload["data"]["threshold"] for e in events) == [80, 100]
    assert {e.type for e in events} == {"quota.threshold"}
    by_threshold = {e.payload["data"]["threshold"]: e.payload["data"] for e in events}
    assert by_threshold[80]["used"] == 4
    assert by_threshold[100] == {
        "consumer": "acme",
        "kind": "quota",
        "period": by_threshold[100]["period"],
        "period_start": by_threshold[100]["period_start"],
        "limit": 5,
        "used": 5,
        "threshold": 100,
    }
