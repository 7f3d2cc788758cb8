"""PostgreSQL LISTEN/NOTIFY change push, and how the ChangeWatcher takes pushed revisions."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyswap.errors import AlreadyExists
from keyswap.store import ChangeWatcher, Store
from keyswap.store.listen import PostgresListener, parse_payload
from tests.support.cluster import TcpRelay, postgres_schema, relayed_url
from tests.support.gateway_state import db_url
from tests.support.running_gateway import eventually


class Heard:
    """Collects what a listener reports (thread-safe), with a way to wait for it."""

    def __init__(self) -> None:
        self.revisions: list[int] = []
        self.connects = 0
        self._changed = threading.Condition()

    def revision(self, value: int) -> None:
        with self._changed:
            self.revisions.append(value)
            self._changed.notify_all()

    def connect(self) -> None:
        with self._changed:
            self.connects += 1
            self._changed.notify_all()

    def wait(self, predicate: object, timeout: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)  # type: ignore[arg-type]


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        Store(url, schema="upgrade").close()
        yield url


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    store = Store(pg_url)
    yield store
    store.close()


@pytest.fixture
def heard(store: Store) -> Iterator[tuple[Heard, PostgresListener]]:
    heard = Heard()
    listener = PostgresListener(store, heard.revision, heard.connect, backoff_min=0.05)
    listener.start()
    assert listener.wait_listening(5)
    yield heard, listener
    listener.stop()


def test_payloads_are_scoped_to_one_schema() -> None:
    assert parse_payload("t_abc:42", "t_abc") == 42
    assert parse_payload("t_other:42", "t_abc") is None
    assert parse_payload("t_abc:x", "t_abc") is None
    assert parse_payload("42", "t_abc") is None
    assert parse_payload("a:b:7", "a:b") == 7


def test_a_committed_change_reaches_a_listener_well_within_a_second(
    pg_url: str, heard: tuple[Heard, PostgresListener]
) -> None:
    events, _ = heard
    writer = Store(pg_url)  # another process, in effect
    try:
        started = time.monotonic()
        writer.create_consumer("acme")
        assert events.wait(lambda: events.revisions, 1.0)
        assert time.monotonic() - started < 1.0
        assert events.revisions == [writer.revision()]
    finally:
        writer.close()


def test_rolled_back_and_last_used_writes_notify_nobody(
    store: Store, heard: tuple[Heard, PostgresListener]
) -> None:
    events, _ = heard
    store.create_consumer("acme")
    assert events.wait(lambda: len(events.revisions) == 1)
    with pytest.raises(AlreadyExists):
        store.create_consumer("acme")
    store.touch_api_keys({"key_unknown": 1.0})
    store.create_consumer("second")  # a marker: everything before it has been delivered
    assert events.wait(lambda: len(events.revisions) == 2)
    assert events.revisions == [1, 2]


def test_another_schemas_changes_are_ignored(heard: tuple[Heard, PostgresListener]) -> None:
    events, _ = heard
    with postgres_schema() as other_url:
        other = Store(other_url, schema="upgrade")
        try:
            other.create_consumer("acme")
        finally:
            other.close()
    assert not events.wait(lambda: events.revisions, 0.3)


def test_the_listener_reconnects_after_its_connection_is_killed(
    store: Store, heard: tuple[Heard, PostgresListener]
) -> None:
    events, listener = heard
    assert events.connects == 1
    with store.engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": listener.backend_pid})
    assert events.wait(lambda: events.connects == 2)
    assert listener.connections == 2
    store.create_consumer("acme")
    assert events.wait(lambda: events.revisions == [1])


def test_the_listener_keeps_trying_while_the_database_is_away(pg_url: str) -> None:
    target = sa.make_url(pg_url)
    with TcpRelay(target.host or "127.0.0.1", target.port or 5432) as relay:
        store = Store(relayed_url(pg_url, relay))
        events = Heard()
        listener = PostgresListener(
            store, events.revision, events.connect, backoff_min=0.05, backoff_max=0.2
        )
        try:
            listener.start()
            assert listener.wait_listening(5)
            relay.cut()
            eventually(lambda: listener.failures >= 3)  # refused, and tried again
            relay.restore()
            assert events.wait(lambda: events.connects == 2, 5)
            store.create_consumer("acme")
            assert events.wait(lambda: events.revisions == [1])
        finally:
            listener.stop()
            store.close()


def test_the_listener_stops_promptly(store: Store) -> None:
    listener = PostgresListener(store, lambda _r: None)
    listener.start()
    assert listener.wait_listening(5)
    started = time.monotonic()
    listener.stop()
    assert time.monotonic() - started < 1.0
    assert not listener.listening


# -- the watcher side -----------------------------------------------------------------------------------


def test_a_pushed_revision_calls_on_change_once_whoever_brings_it_first(tmp_path: Path) -> None:
    store = Store(db_url(tmp_path))
    changes: list[int] = []
    watcher = ChangeWatcher(store, 60, lambda: changes.append(store.revision()))
    try:
        watcher.start()
        store.create_consumer("acme")
        assert watcher.observe(1)
        assert not watcher.observe(1)  # the second channel brings the same revision
        assert not watcher.poll_once()  # and the poller finds nothing new
        assert not watcher.observe(0)  # an old revision arriving late
        assert changes == [1]
        store.create_consumer("other")
        assert watcher.poll_once()  # polling still works when no push arrives
        assert changes == [1, 2]
    finally:
        watcher.stop()
        store.close()


def test_on_change_calls_never_overlap(tmp_path: Path) -> None:
    store = Store(db_url(tmp_path))
    running, overlaps = [0], [0]
    lock = threading.Lock()

    def slow_change() -> None:
        with lock:
            running[0] += 1
            overlaps[0] = max(overlaps[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    watcher = ChangeWatcher(store, 60, slow_change)
    try:
        threads = [threading.Thread(target=watcher.observe, args=(n,)) for n in range(1, 9)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert overlaps[0] == 1
    finally:
        store.close()


def test_the_watcher_logs_an_outage_once_and_the_recovery_once(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = sa.make_url(pg_url)
    with TcpRelay(target.host or "127.0.0.1", target.port or 5432) as relay:
        store = Store(relayed_url(pg_url, relay))
        watcher = ChangeWatcher(store, 60)
        try:
            watcher.start()
            relay.cut()
            for _ in range(3):
                assert not watcher.poll_once()
            relay.restore()
            watcher.poll_once()
        finally:
            watcher.stop()
            store.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "keyswap.store"]
    assert len([w for w in warnings if "could not read the store revision" in w]) == 1
    assert len([w for w in warnings if "reachable again" in w]) == 1


def test_the_listener_gives_up_a_hung_connection_and_recovers(pg_url: str) -> None:
    target = sa.make_url(pg_url)
    with TcpRelay(target.host or "127.0.0.1", target.port or 5432) as relay:
        store = Store(relayed_url(pg_url, relay))
        events = Heard()
        listener = PostgresListener(
            store,
            events.revision,
            events.connect,
            backoff_min=0.05,
            backoff_max=0.2,
            heartbeat=0.1,
            heartbeat_timeout=0.5,
            connect_timeout=2,
        )
        try:
            listener.start()
            assert listener.wait_listening(5)
            relay.freeze()  # the path hangs: the socket stays open, nothing comes back
            started = time.monotonic()
            eventually(lambda: listener.failures >= 1, timeout=5)
            assert time.monotonic() - started < 2.0  # heartbeat + its deadline, not TCP's minutes
            assert not listener.listening
            relay.thaw()
            assert events.wait(lambda: events.connects == 2, 10)
            store.create_consumer("acme")
            assert events.wait(lambda: events.revisions == [1])
        finally:
            listener.stop()
            store.close()


def test_the_listener_asks_for_tcp_keepalives_and_a_connect_timeout(
    store: Store, pg_url: str
) -> None:
    _, params = PostgresListener(store, lambda _r: None, connect_timeout=4).connect_arguments()
    assert params["connect_timeout"] == 4
    assert params["keepalives"] == 1
    assert params["keepalives_idle"] == 5
    assert params["keepalives_interval"] == 2
    assert params["keepalives_count"] == 3
    assert params["tcp_user_timeout"] == 10_000
    assert params["application_name"] == "keyswap-listener"
    # the database URL's own settings win
    tuned = Store(pg_url + "&keepalives_idle=30&connect_timeout=7")
    try:
        _, params = PostgresListener(tuned, lambda _r: None).connect_arguments()
    finally:
        tuned.close()
    assert str(params["keepalives_idle"]) == "30"
    assert str(params["connect_timeout"]) == "7"
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        PostgresListener(store, lambda _r: None, heartbeat_timeout=0)


def test_the_listener_connects_with_its_settings(store: Store) -> None:
    listener = PostgresListener(store, lambda _r: None)
    listener.start()
    try:
        assert listener.wait_listening(5)
        with store.engine.begin() as conn:
            name = conn.execute(
                sa.text("SELECT application_name FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": listener.backend_pid},
            ).scalar_one()
        assert name == "keyswap-listener"
    finally:
        listener.stop()
