"""Replay caches: each jti once while its token lives; bounded in memory; shared and outage-safe in Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from keyswap.errors import ConfigError, ReplayCacheUnavailable
from keyswap.verifier.replay import MemoryReplayCache, RedisReplayCache, replay_key
from tests.support.cluster import TcpRelay, redis_prefix

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class TestMemory:
    def test_a_key_is_accepted_once_while_it_lives(self) -> None:
        cache = MemoryReplayCache(10)
        assert cache.first_use_sync("a", expires=130, now=100)
        assert not cache.first_use_sync("a", expires=130, now=129)

    def test_after_expiry_the_entry_is_gone(self) -> None:
        # A token cannot verify after exp + leeway, so forgetting it then is safe.
        cache = MemoryReplayCache(10)
        cache.first_use_sync("a", expires=130, now=100)
        assert cache.first_use_sync("a", expires=200, now=131)

    def test_expired_entries_make_room_for_new_ones(self) -> None:
        cache = MemoryReplayCache(2)
        cache.first_use_sync("a", expires=110, now=100)
        cache.first_use_sync("b", expires=120, now=100)
        assert cache.first_use_sync("c", expires=140, now=115)
        assert len(cache) == 2

    def test_full_of_live_entries_it_refuses_rather_than_forget_one(self) -> None:
        cache = MemoryReplayCache(2)
        cache.first_use_sync("a", expires=200, now=100)
        cache.first_use_sync("b", expires=200, now=100)
        with pytest.raises(ReplayCacheUnavailable):
            cache.first_use_sync("c", expires=200, now=101)
        assert not cache.first_use_sync("a", expires=200, now=101)  # "a" was not forgotten

    def test_an_expired_entry_not_yet_purged_is_recorded_anew_at_the_young_end(self) -> None:
        cache = MemoryReplayCache(2)
        cache.first_use_sync("a", expires=110, now=100)
        cache.first_use_sync("b", expires=150, now=100)
        assert cache.first_use_sync("a", expires=170, now=120)  # "a" expired at 110
        assert not cache.first_use_sync("a", expires=170, now=121)
        # "b" is now the oldest: it goes first once it expires, and "a" stays.
        assert cache.first_use_sync("c", expires=190, now=160)
        assert not cache.first_use_sync("a", expires=170, now=161)

    def test_racing_threads_with_one_key_see_one_first_use(self) -> None:
        import threading

        cache = MemoryReplayCache(100_000)
        wins: list[bool] = []
        barrier = threading.Barrier(8)

        def use(keys: list[str]) -> None:
            barrier.wait()
            wins.extend(cache.first_use_sync(k, expires=200.0, now=100.0) for k in keys)

        keys = [f"k{i}" for i in range(2000)]
        threads = [threading.Thread(target=use, args=(keys,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == len(keys)

    def test_the_async_form_is_the_same_check(self) -> None:
        cache = MemoryReplayCache()
        assert run(cache.first_use("k", expires=10, now=1)) is True
        assert run(cache.first_use("k", expires=10, now=2)) is False

    def test_a_size_below_one_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError):
            MemoryReplayCache(0)


def test_keys_are_a_hash_of_issuer_and_jti() -> None:
    assert replay_key("iss", "j") != replay_key("iss2", "j")
    assert len(replay_key("i" * 1000, "j" * 1000)) == 64


@pytest.fixture
def redis_env() -> Iterator[tuple[str, str]]:
    with redis_prefix() as env:
        yield env


@pytest.mark.redis
class TestRedis:
    def test_two_processes_sharing_redis_see_one_first_use(
        self, redis_env: tuple[str, str]
    ) -> None:
        url, prefix = redis_env
        one = RedisReplayCache(url, prefix=prefix + ":")
        two = RedisReplayCache(url, prefix=prefix + ":")
        now = time.time()
        key = uuid.uuid4().hex

        async def both() -> tuple[bool, bool]:
            try:
                return (
                    await one.first_use(key, expires=now + 30, now=now),
                    await two.first_use(key, expires=now + 30, now=now),
                )
            finally:
                await one.aclose()
                await two.aclose()

        assert run(both()) == (True, False)

    def test_concurrent_uses_have_exactly_one_winner(self, redis_env: tuple[str, str]) -> None:
        url, prefix = redis_env
        cache = RedisReplayCache(url, prefix=prefix + ":")
        now = time.time()

        async def race() -> list[bool]:
            try:
                return list(
                    await asyncio.gather(
                        *(cache.first_use("same", expires=now + 30, now=now) for _ in range(20))
                    )
                )
            finally:
                await cache.aclose()

        assert sorted(run(race())) == [False] * 19 + [True]

    def test_the_key_expires_with_the_token(self, redis_env: tuple[str, str]) -> None:
        import redis

        url, prefix = redis_env
        cache = RedisReplayCache(url, prefix=prefix + ":")
        now = time.time()

        async def use() -> None:
            try:
                await cache.first_use("k", expires=now + 30, now=now)
            finally:
                await cache.aclose()

        run(use())
        client = redis.Redis.from_url(url)
        try:
            ttl = client.pttl(prefix + ":k")
        finally:
            client.close()
        assert 25_000 < ttl <= 30_000

    def test_redis_hanging_refuses_quickly_by_default(self, redis_env: tuple[str, str]) -> None:
        url, prefix = redis_env
        target = urlsplit(url)
        with TcpRelay(target.hostname or "127.0.0.1", target.port or 6379) as relay:
            cache = RedisReplayCache(
                f"redis://127.0.0.1:{relay.port}", prefix=prefix + ":", timeout=0.2
            )
            now = time.time()

            async def scenario() -> tuple[bool, float]:
                try:
                    first = await cache.first_use("a", expires=now + 30, now=now)
                    relay.freeze()
                    started = time.monotonic()
                    with pytest.raises(ReplayCacheUnavailable):
                        await cache.first_use("b", expires=now + 30, now=now)
                    return first, time.monotonic() - started
                finally:
                    relay.thaw()
                    await cache.aclose()

            first, waited = run(scenario())
        assert first is True
        assert waited < 2.0

    def test_redis_down_with_local_fallback_checks_replays_in_this_process(
        self, redis_env: tuple[str, str]
    ) -> None:
        url, prefix = redis_env
        target = urlsplit(url)
        with TcpRelay(target.hostname or "127.0.0.1", target.port or 6379) as relay:
            cache = RedisReplayCache(
                f"redis://127.0.0.1:{relay.port}",
                prefix=prefix + ":",
                timeout=0.2,
                on_error="local",
            )
            now = time.time()

            async def scenario() -> tuple[bool, bool]:
                relay.freeze()
                try:
                    return (
                        await cache.first_use("c", expires=now + 30, now=now),
                        await cache.first_use("c", expires=now + 30, now=now),
                    )
                finally:
                    relay.thaw()
                    await cache.aclose()

            assert run(scenario()) == (True, False)

    def test_bad_settings_are_config_errors(self) -> None:
        with pytest.raises(ConfigError):
            RedisReplayCache("http://x")
        with pytest.raises(ConfigError):
            RedisReplayCache("redis://x", on_error="ignore")  # type: ignore[arg-type]


def test_a_full_cache_scans_for_expired_entries_at_most_once_a_second() -> None:
    cache = MemoryReplayCache(2)
    cache.first_use_sync("long", expires=1000, now=100)  # a long-lived entry at the oldest end
    cache.first_use_sync("short", expires=105, now=100)
    assert cache.first_use_sync("new", expires=200, now=106)  # the scan finds "short" expired
    with pytest.raises(ReplayCacheUnavailable):
        cache.first_use_sync("newer", expires=200, now=106.5)
