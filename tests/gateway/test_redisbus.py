"""Change announcements over Redis pub/sub."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from keyswap.errors import ConfigError
from keyswap.gateway.redisbus import RedisChanges, check_prefix, check_redis_url
from keyswap.store import Store
from tests.support.cluster import TcpRelay, redis_prefix
from tests.support.gateway_state import db_url
from tests.support.running_gateway import eventually


@pytest.fixture
def redis_env() -> Iterator[tuple[str, str]]:
    with redis_prefix() as env:
        yield env


@pytest.fixture
def subscriber(redis_env: tuple[str, str]) -> Iterator[tuple[RedisChanges, list[int], list[int]]]:
    url, prefix = redis_env
    revisions: list[int] = []
    connects: list[int] = []
    changes = RedisChanges(
        url,
        prefix=prefix,
        on_revision=revisions.append,
        on_connect=lambda: connects.append(1),
        backoff_min=0.05,
        backoff_max=0.2,
    )
    changes.start()
    assert changes.wait_subscribed(5)
    yield changes, revisions, connects
    changes.stop()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "redis://:hunter2@host:notaport/0", "localhost:6379"]
)
def test_a_bad_redis_url_is_a_config_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_redis_url(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("prefix", ["", "a b", "x" * 65, "é", "a:b"])
def test_a_bad_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError):
        check_prefix(prefix)


def test_a_published_revision_reaches_every_subscriber_within_milliseconds(
    redis_env: tuple[str, str], subscriber: tuple[RedisChanges, list[int], list[int]]
) -> None:
    url, prefix = redis_env
    _, revisions, _ = subscriber
    publisher = RedisChanges(url, prefix=prefix)
    try:
        started = time.monotonic()
        assert publisher.publish(41)
        eventually(lambda: revisions == [41], timeout=1.0)
        assert time.monotonic() - started < 1.0
    finally:
        publisher.stop()


def test_another_prefix_is_another_deployment(
    redis_env: tuple[str, str], subscriber: tuple[RedisChanges, list[int], list[int]]
) -> None:
    url, prefix = redis_env
    _, revisions, _ = subscriber
    other = RedisChanges(url, prefix=prefix + "-other")
    mine = RedisChanges(url, prefix=prefix)
    try:
        other.publish(5)
        mine.publish(6)  # a marker: the other one would have arrived first
        eventually(lambda: bool(revisions))
        assert revisions == [6]
    finally:
        other.stop()
        mine.stop()


def test_garbage_on_the_channel_is_ignored(
    redis_env: tuple[str, str], subscriber: tuple[RedisChanges, list[int], list[int]]
) -> None:
    url, prefix = redis_env
    _, revisions, _ = subscriber
    client = redis.Redis.from_url(url)
    try:
        for junk in (b"", b"-1", b"12a", b"\xff", b"9" * 30, b"7"):
            client.publish(f"{prefix}:changes", junk)
    finally:
        client.close()
    eventually(lambda: bool(revisions))
    assert revisions == [7]


def test_the_store_publishes_after_each_commit(
    tmp_path: Path,
    redis_env: tuple[str, str],
    subscriber: tuple[RedisChanges, list[int], list[int]],
) -> None:
    url, prefix = redis_env
    _, revisions, _ = subscriber
    store = Store(db_url(tmp_path))
    publisher = RedisChanges(url, prefix=prefix)
    store.on_commit(publisher.publish)
    try:
        store.create_consumer("acme")
        store.set_consumer_metadata("acme", {"plan": "gold"})
        eventually(lambda: revisions == [1, 2])
    finally:
        publisher.stop()
        store.close()


def test_the_subscriber_reconnects_after_its_connection_is_killed(
    redis_env: tuple[str, str], subscriber: tuple[RedisChanges, list[int], list[int]]
) -> None:
    url, prefix = redis_env
    changes, revisions, connects = subscriber
    client = redis.Redis.from_url(url)
    try:
        killed = client.client_kill_filter(
            _type="pubsub", skipme=True, _id=_client_id(client, changes)
        )
        assert killed == 1
        eventually(lambda: len(connects) == 2)
        assert client.publish(f"{prefix}:changes", b"3") == 1
        eventually(lambda: revisions == [3])
    finally:
        client.close()


def test_publishing_to_an_unreachable_redis_fails_fast_and_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(db_url(tmp_path))
    publisher = RedisChanges("redis://127.0.0.1:9/0", prefix="nowhere", timeout=0.2)
    store.on_commit(publisher.publish)
    try:
        started = time.monotonic()
        store.create_consumer("acme")
        store.create_consumer("other")
        assert time.monotonic() - started < 2
        assert store.revision() == 2
    finally:
        publisher.stop()
        store.close()
    assert caplog.text.count("could not announce a change on Redis") == 1


def test_the_subscriber_keeps_trying_while_redis_is_away(redis_env: tuple[str, str]) -> None:
    url, prefix = redis_env
    parts = urlsplit(url)
    with TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379) as relay:
        revisions: list[int] = []
        changes = RedisChanges(
            f"redis://127.0.0.1:{relay.port}{parts.path}",
            prefix=prefix,
            on_revision=revisions.append,
            backoff_min=0.05,
            backoff_max=0.2,
        )
        try:
            changes.start()
            assert changes.wait_subscribed(5)
            relay.cut()
            eventually(lambda: not changes.subscribed)
            relay.restore()
            assert changes.wait_subscribed(5)
            publisher = RedisChanges(url, prefix=prefix)
            publisher.publish(9)
            publisher.stop()
            eventually(lambda: revisions == [9])
            assert changes.connections == 2
        finally:
            changes.stop()


def _client_id(client: redis.Redis, changes: RedisChanges) -> str:
    for entry in client.client_list(_type="pubsub"):
        if entry.get("name") == changes.client_name:
            return str(entry["id"])
    raise AssertionError("subscriber connection not found")
