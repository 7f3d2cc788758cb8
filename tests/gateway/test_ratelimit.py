"""Per-consumer rate limits: parsing, the fixed window in memory and in Redis, the 429 on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from click.testing import CliRunner

from keyswap.cli import main
from keyswap.errors import InvalidInput
from keyswap.gateway.cluster import ClusterSettings
from keyswap.gateway.ratelimit import (
    MemoryRateLimiter,
    Rate,
    RateDecision,
    RedisRateLimiter,
    parse_rate,
    rate_for,
    with_rate_headers,
)
from tests.support.cluster import TcpRelay, redis_prefix
from tests.support.gateway_state import Clock
from tests.support.running_gateway import running_gateway
from tests.support.upstream import RecordingUpstream

T0 = 1_700_000_040.0  # a multiple of 60: the start of a one-minute window


@pytest.fixture
def redis_env() -> Iterator[tuple[str, str]]:
    with redis_prefix() as env:
        yield env


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream().start()
    yield server
    server.stop()


# -- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/60s", Rate(100, 60)),
        ("100/1m", Rate(100, 60)),
        ("10/s", Rate(10, 1)),
        ("5000/1h", Rate(5000, 3600)),
        (" 7 / 90 ", Rate(7, 90)),
        ("1/1d", Rate(1, 86400)),
    ],
)
def test_rates_read_as_requests_per_window(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text",
    ["", "100", "0/60s", "-1/60s", "10/0s", "10/1.5s", "10/2d", "x/60s", "10/forever", "1e3/1s"],
)
def test_other_rates_are_refused_with_a_clear_message(text: str) -> None:
    with pytest.raises(InvalidInput, match="rate"):
        parse_rate(text)


def test_a_rate_prints_in_the_canonical_stored_form() -> None:
    assert str(parse_rate("100/1m")) == "100/60s"
    assert parse_rate("100/1m").policy == "100;w=60"


def test_a_consumers_own_limit_wins_over_the_default() -> None:
    default = Rate(100, 60)
    assert rate_for(None, default) == default
    assert rate_for("5/1s", default) == Rate(5, 1)
    assert rate_for("unlimited", default) is None
    assert rate_for(None, None) is None
    assert rate_for("from a newer keyswap", default) == default


# -- the window, in memory --------------------------------------------------------------------------


async def test_a_window_allows_its_requests_then_refuses_until_it_ends() -> None:
    clock = Clock(T0 + 15)
    limiter = MemoryRateLimiter(clock=clock)
    rate = Rate(3, 60)
    decisions = [await limiter.hit(1, rate) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].reset == 45
    clock.advance(44.5)
    assert not (await limiter.hit(1, rate)).allowed
    assert (await limiter.hit(1, rate)).reset == 1  # never 0 while refused
    clock.advance(0.5)  # the next window, aligned to the epoch
    fresh = await limiter.hit(1, rate)
    assert (fresh.allowed, fresh.remaining, fresh.reset) == (True, 2, 60)


async def test_consumers_and_window_lengths_are_counted_apart() -> None:
    limiter = MemoryRateLimiter(clock=Clock(T0))
    assert (await limiter.hit(1, Rate(1, 60))).allowed
    assert not (await limiter.hit(1, Rate(1, 60))).allowed
    assert (await limiter.hit(2, Rate(1, 60))).allowed
    assert (await limiter.hit(1, Rate(1, 3600))).allowed


async def test_counters_of_ended_windows_are_dropped_past_the_bound() -> None:
    clock = Clock(T0)
    limiter = MemoryRateLimiter(clock=clock, max_entries=10)
    for consumer in range(10):
        await limiter.hit(consumer, Rate(5, 1))
    clock.advance(1)
    await limiter.hit(99, Rate(5, 1))
    assert len(limiter._counters) == 1


def test_a_decision_speaks_the_ratelimit_header_fields() -> None:
    allowed = RateDecision(True, Rate(100, 60), 99, 42)
    assert allowed.headers() == [
        (b"ratelimit-limit", b"100"),
        (b"ratelimit-remaining", b"99"),
        (b"ratelimit-reset", b"42"),
        (b"ratelimit-policy", b"100;w=60"),
    ]
    refused = RateDecision(False, Rate(100, 60), 0, 42)
    assert (b"retry-after", b"42") in refused.headers()


# -- the window, in Redis ---------------------------------------------------------------------------


async def test_two_nodes_share_one_exact_count_in_redis(redis_env: tuple[str, str]) -> None:
    url, prefix = redis_env
    nodes = [RedisRateLimiter(url, prefix=prefix) for _ in range(2)]
    rate = Rate(20, 86400)
    try:
        decisions = await asyncio.gather(*(nodes[i % 2].hit(7, rate) for i in range(50)))
    finally:
        for node in nodes:
            await node.close()
    assert sum(d.allowed for d in decisions) == 20
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(20))
    assert all(1 <= d.reset <= 86400 for d in decisions)


async def test_redis_counters_expire_after_their_window(redis_env: tuple[str, str]) -> None:
    url, prefix = redis_env
    limiter = RedisRateLimiter(url, prefix=prefix)
    try:
        await limiter.hit(3, Rate(5, 10))
    finally:
        await limiter.close()
    client = redis.Redis.from_url(url)
    try:
        (key,) = client.keys(f"{prefix}:rl:*")
        assert isinstance(key, bytes)  # the client does not decode responses
        assert key.startswith(f"{prefix}:rl:{{3}}:10000:".encode())
        assert 0 < client.pttl(key) <= 11_000
    finally:
        client.close()


async def test_limits_fall_back_to_each_node_while_redis_is_down_and_recover(
    redis_env: tuple[str, str],
) -> None:
    url, prefix = redis_env
    parts = urlsplit(url)
    monotonic = Clock(0.0)
    rate = Rate(2, 86400)
    with TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379) as relay:
        relayed = f"redis://127.0.0.1:{relay.port}{parts.path}"
        limiter = RedisRateLimiter(relayed, prefix=prefix, timeout=0.2, monotonic=monotonic)
        shared = RedisRateLimiter(url, prefix=prefix)
        try:
            assert (await limiter.hit(1, rate)).remaining == 1  # counted in Redis
            relay.cut()
            in_memory = [await limiter.hit(1, rate) for _ in range(3)]
            # (a local: mypy would keep a narrowed `limiter.redis_down` past the awaits below)
            down_after_cut = limiter.redis_down
            assert down_after_cut
            assert [d.allowed for d in in_memory] == [True, True, False]  # a per-node window
            relay.restore()
            monotonic.advance(0.5)
            assert not (await limiter.hit(1, rate)).allowed  # still in memory: no retry yet
            monotonic.advance(0.5)
            again = await limiter.hit(1, rate)  # Redis again: the shared count goes on
            assert (again.allowed, again.remaining) == (True, 0)
            assert not limiter.redis_down
            assert not (await shared.hit(1, rate)).allowed
        finally:
            await limiter.close()
            await shared.close()


async def test_an_unreachable_redis_costs_a_request_no_more_than_the_timeout() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:9/0", timeout=0.2)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        decision = await limiter.hit(1, Rate(1, 60))
        assert decision.allowed
        assert loop.time() - started < 0.5
    finally:
        await limiter.close()


# -- on the wire ------------------------------------------------------------------------------------


def test_the_request_over_the_limit_is_429_and_never_reaches_the_origin(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(tmp_path, upstream.url) as gateway:
        gateway.admin_store.set_consumer_rate_limit("acme", "2/86400s")
        gateway.app.on_change()  # as the change watcher would
        first, second, third = (gateway.get("/x") for _ in range(3))
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    assert len(upstream.received) == 2
    assert third.text == "Too many requests"
    assert third.headers["ratelimit-limit"] == "2"
    assert third.headers["ratelimit-remaining"] == "0"
    assert third.headers["retry-after"] == third.headers["ratelimit-reset"]
    assert 1 <= int(third.headers["retry-after"]) <= 86400
    assert third.headers["ratelimit-policy"] == "2;w=86400"
    assert second.headers["ratelimit-remaining"] == "0"
    assert first.headers["ratelimit-remaining"] == "1"
    assert "retry-after" not in first.headers


def test_the_default_limit_applies_to_consumers_without_their_own(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    cluster = ClusterSettings(rate_limit=Rate(1, 86400))
    with running_gateway(tmp_path, upstream.url, cluster=cluster) as gateway:
        assert gateway.get("/x").status_code == 200
        assert gateway.get("/x").status_code == 429
        gateway.admin_store.set_consumer_rate_limit("acme", "unlimited")
        gateway.app.on_change()
        exempt = gateway.get("/x")
    assert exempt.status_code == 200
    assert "ratelimit-limit" not in exempt.headers


async def test_upstream_ratelimit_fields_are_replaced_by_the_gateways() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    decision = RateDecision(True, Rate(10, 60), 9, 30)
    wrapped = with_rate_headers(send, decision)
    upstream_headers = [(b"RateLimit-Limit", b"5000"), (b"x-kept", b"yes")]
    await wrapped({"type": "http.response.start", "status": 200, "headers": upstream_headers})
    await wrapped({"type": "http.response.body", "body": b"ok"})
    assert sent[0]["headers"] == [(b"x-kept", b"yes"), *decision.headers()]
    assert sent[1] == {"type": "http.response.body", "body": b"ok"}


def test_no_limit_means_no_ratelimit_fields(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with running_gateway(tmp_path, upstream.url) as gateway:
        response = gateway.get("/x")
    assert response.status_code == 200
    assert not any(name.startswith("ratelimit") for name in response.headers)


def test_consumers_set_limit_from_the_command_line(tmp_path: Path) -> None:
    db = str(tmp_path / "keyswap.db")

    def cli(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, [*args, "--db", db], env={"KEYSWAP_REDIS_URL": None})
        return result.exit_code, result.output

    assert cli("consumers", "create", "acme")[0] == 0
    assert cli("consumers", "set-limit", "acme", "--rate", "100/1m") == (
        0,
        "Consumer 'acme' may make 100/60s (requests/window).\n",
    )
    code, listed = cli("consumers", "list", "--json")
    assert code == 0
    assert '"rate_limit": "100/60s"' in listed
    assert "not rate limited" in cli("consumers", "set-limit", "acme", "--rate", "unlimited")[1]
    assert "default rate limit" in cli("consumers", "set-limit", "acme", "--rate", "default")[1]
    code, message = cli("consumers", "set-limit", "acme", "--rate", "lots")
    assert code == 2  # a bad flag value is a usage error
    assert message.startswith("Error: Invalid value for '--rate': invalid rate 'lots'")
    code, message = cli("consumers", "set-limit", "nobody", "--rate", "1/s")
    assert code == 1
    assert "unknown consumer 'nobody'" in message


def test_a_gateway_with_a_bad_rate_limit_does_not_start(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "gateway",
            "--upstream",
            "http://127.0.0.1:9",
            "--rate-limit",
            "fast",
            "--db",
            str(tmp_path / "k.db"),
        ],
    )
    assert result.exit_code == 2  # a bad flag value is a usage error
    assert "Error: Invalid value for '--rate-limit': invalid rate 'fast'" in result.output
    assert not (tmp_path / "k.db").exists()
