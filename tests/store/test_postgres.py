"""The store's behaviour on PostgreSQL, next to SQLite where it is cheap to run both."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyswap.errors import AlreadyExists, ConfigError, InvalidInput, NotFound
from keyswap.store import Store
from keyswap.store.models import SigningKeyRecord
from keyswap.store.urls import normalize_database_url
from tests.support.cluster import postgres_schema
from tests.support.gateway_state import db_url

DIGEST = b"\x07" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        store = Store(db_url(tmp_path))
        yield store
        store.close()
        return
    with postgres_schema() as url:
        store = Store(url, schema="upgrade")
        yield store
        store.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        Store(url, schema="upgrade").close()
        yield url


def _signing(kid: str, state: str) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=kid,
        alg="ES256",
        state=state,
        public_jwk={"kty": "EC", "kid": kid},
        private_blob=b"\x00encrypted\xff",
        created_at=1.0,
        activated_at=1.0 if state == "active" else None,
        retired_at=None,
    )


def test_postgresql_urls_use_psycopg_3() -> None:
    assert normalize_database_url("postgresql://u:p@db/k") == "postgresql+psycopg://u:p@db/k"
    assert normalize_database_url("postgres://u@db:5433/k") == "postgresql+psycopg://u@db:5433/k"
    kept = "postgresql+psycopg://u@db/k?options=-csearch_path%3Dx"
    assert normalize_database_url(kept) == kept
    with pytest.raises(ConfigError, match="psycopg 3") as caught:
        normalize_database_url("postgresql+psycopg2://u:hunter2@db/k")
    assert "hunter2" not in str(caught.value)


def test_an_unreachable_postgresql_is_a_quick_config_error_without_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot open the database") as caught:
        Store("postgresql://keyswap:hunter2@127.0.0.1:9/keyswap")
    assert "hunter2" not in str(caught.value)
    assert time.monotonic() - started < 5


def test_consumers_keys_and_metadata_round_trip(store: Store) -> None:
    consumer = store.create_consumer("acme", {"plan": "gold", "n": [1, 2.5, None, True]})
    assert store.get_consumer("acme") == consumer
    with pytest.raises(AlreadyExists):
        store.create_consumer("acme")
    store.insert_api_key(
        consumer_id=consumer.id,
        key_id="key_a",
        digest=DIGEST,
        hint="ks_...abcd",
        created_at=10.0,
        expires_at=None,
    )
    found = store.find_api_key(DIGEST)
    assert found is not None
    record, owner = found
    assert (record.id, owner.metadata) == ("key_a", {"plan": "gold", "n": [1, 2.5, None, True]})
    assert store.find_api_key(b"\x08" * 32) is None
    store.revoke_api_key("key_a", now=20.0)
    store.revoke_api_key("key_a", now=30.0)
    assert store.list_api_keys("acme")[0].revoked_at == 20.0
    assert store.delete_consumer("acme") == 1
    assert store.find_api_key(DIGEST) is None


def test_the_warm_start_reads_recent_keys_then_the_other_usable_ones_newest_first(
    store: Store,
) -> None:
    consumer = store.create_consumer("acme")
    for n, (expires_at, revoked) in enumerate(
        [(None, False), (None, False), (50.0, False), (None, True), (500.0, False), (None, False)]
    ):
        store.insert_api_key(
            consumer_id=consumer.id,
            key_id=f"key_{n}",
            digest=bytes([n]) * 32,
            hint="ks_...abcd",
            created_at=10.0 + n,
            expires_at=expires_at,
        )
        if revoked:
            store.revoke_api_key(f"key_{n}", now=20.0)
    store.touch_api_keys({"key_0": 90.0, "key_1": 40.0})
    recent = store.recent_api_keys(since=80.0, limit=10)
    assert [record.id for _, record, _ in recent] == ["key_0"]
    idle = store.idle_api_keys(since=80.0, now=100.0, limit=10)
    # Not used since 80 (key_1) or never; not expired at 100 (key_2 is), not revoked (key_3 is).
    assert [record.id for _, record, _ in idle] == ["key_5", "key_4", "key_1"]
    assert idle[0][0] == bytes([5]) * 32
    assert all(owner.name == "acme" for _, _, owner in idle)
    assert [r.id for _, r, _ in store.idle_api_keys(since=80.0, now=100.0, limit=2)] == [
        "key_5",
        "key_4",
    ]


def test_every_mutation_bumps_the_revision_but_last_used_does_not(store: Store) -> None:
    start = store.revision()
    consumer = store.create_consumer("acme")
    store.insert_api_key(
        consumer_id=consumer.id,
        key_id="key_a",
        digest=DIGEST,
        hint="ks_...abcd",
        created_at=1.0,
        expires_at=None,
    )
    store.touch_api_keys({"key_a": 5.0})
    store.set_consumer_rate_limit("acme", "10/60s")
    assert store.revision() == start + 3
    assert store.list_api_keys()[0].last_used_at == 5.0


def test_a_consumer_rate_limit_is_stored_in_canonical_form_only(store: Store) -> None:
    store.create_consumer("acme")
    assert store.set_consumer_rate_limit("acme", "100/60s").rate_limit == "100/60s"
    assert store.get_consumer("acme").rate_limit == "100/60s"  # type: ignore[union-attr]
    assert store.set_consumer_rate_limit("acme", "unlimited").rate_limit == "unlimited"
    assert store.set_consumer_rate_limit("acme", None).rate_limit is None
    for bad in ("100/1m", "0/60s", "5/0s", "5/86401s", "lots", ""):
        with pytest.raises(InvalidInput):
            store.set_consumer_rate_limit("acme", bad)
    with pytest.raises(NotFound):
        store.set_consumer_rate_limit("nobody", "1/1s")


def test_a_consumer_rate_limit_comes_with_its_keys(store: Store) -> None:
    consumer = store.create_consumer("acme")
    store.set_consumer_rate_limit("acme", "5/1s")
    store.insert_api_key(
        consumer_id=consumer.id,
        key_id="key_a",
        digest=DIGEST,
        hint="ks_...abcd",
        created_at=1.0,
        expires_at=None,
    )
    found = store.find_api_key(DIGEST)
    assert found is not None
    assert found[1].rate_limit == "5/1s"


def test_one_active_one_next_key_and_rotation_is_all_or_nothing(store: Store) -> None:
    assert store.insert_signing_keys([_signing("k1", "active"), _signing("k2", "next")])
    assert not store.insert_signing_keys([_signing("k9", "active")])
    assert store.list_signing_keys()[0].private_blob == b"\x00encrypted\xff"
    assert store.rotate_signing_keys(
        active_kid="k1", next_kid="k2", new_next=_signing("k3", "next"), now=5.0
    )
    assert not store.rotate_signing_keys(
        active_kid="k1", next_kid="k2", new_next=_signing("k4", "next"), now=6.0
    )
    states = {r.kid: r.state for r in store.list_signing_keys()}
    assert states == {"k1": "retired", "k2": "active", "k3": "next"}


def test_concurrent_writers_each_bump_the_revision_once(store: Store) -> None:
    start = store.revision()
    errors: list[BaseException] = []

    def create(index: int) -> None:
        try:
            store.create_consumer(f"c{index}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.revision() == start + 8


def test_commit_hooks_get_each_committed_revision_and_nothing_for_a_rollback(store: Store) -> None:
    seen: list[int] = []
    store.on_commit(seen.append)
    store.create_consumer("acme")
    with pytest.raises(AlreadyExists):
        store.create_consumer("acme")
    store.touch_api_keys({"key_x": 1.0})
    assert seen == [store.revision()]


def test_a_failing_commit_hook_does_not_fail_the_change(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_revision: int) -> None:
        raise RuntimeError("redis is down")

    store.on_commit(broken)
    store.create_consumer("acme")
    assert store.get_consumer("acme") is not None
    assert "change notification could not be sent" in caplog.text


def test_only_one_holder_of_a_postgresql_lock_at_a_time(pg_url: str) -> None:
    first, second = Store(pg_url), Store(pg_url)
    try:
        with first.exclusive("job") as mine:
            assert mine
            with second.exclusive("job") as theirs:
                assert not theirs
            with second.exclusive("other-job") as other:
                assert other
        with second.exclusive("job") as now_mine:
            assert now_mine
    finally:
        first.close()
        second.close()


def test_sqlite_has_no_lock_and_relies_on_conditional_updates(tmp_path: Path) -> None:
    store = Store(db_url(tmp_path))
    try:
        with store.exclusive("job") as one, store.exclusive("job") as two:
            assert one
            assert two
    finally:
        store.close()


def test_a_postgresql_schema_per_deployment_keeps_data_apart(pg_url: str) -> None:
    with postgres_schema() as other_url:
        other = Store(other_url, schema="upgrade")
        mine = Store(pg_url)
        try:
            mine.create_consumer("acme")
            assert other.get_consumer("acme") is None
            assert mine.notify_scope != other.notify_scope
        finally:
            other.close()
            mine.close()


def test_pooled_connections_killed_by_the_server_are_replaced(pg_url: str) -> None:
    store = Store(pg_url)
    try:
        store.revision()  # one pooled connection
        with store.engine.connect() as conn:
            pids = [conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()]
        admin = Store(pg_url)
        with admin.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
        admin.close()
        assert store.revision() == 0  # pre-ping noticed the dead connection
    finally:
        store.close()


def test_the_revision_read_follows_changes_and_a_failure_is_a_database_error(
    store: Store,
) -> None:
    """``revision()`` reads on a pooled DB-API connection: the same counter the mutations bump,
    and a failed read raises SQLAlchemy's error (what callers catch) and discards the connection."""
    before = store.revision()
    store.create_consumer("acme")
    assert store.revision() == before + 1
    with store.engine.begin() as conn:  # the meta table gone: the read fails
        conn.execute(sa.text("ALTER TABLE meta RENAME TO meta_gone"))
    try:
        with pytest.raises(sa.exc.DBAPIError):
            store.revision()
    finally:
        with store.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE meta_gone RENAME TO meta"))
    assert store.revision() == before + 1  # a new connection reads again


def test_only_a_sqlite_file_has_an_event_loop_revision_reader(store: Store) -> None:
    quick = store.quick_revision()
    if store.is_postgres:
        assert quick is None  # a network round trip: always on a store thread
        return
    assert quick is not None
    try:
        assert quick() == store.revision()
        store.create_consumer("acme")
        assert quick() == store.revision()
    finally:
        quick.close()


def test_a_revision_read_that_cannot_connect_is_a_database_error(store: Store) -> None:
    """No connection to be had (the server refusing, the file unopenable): ``revision()`` raises
    SQLAlchemy's ``DBAPIError``, as it documents and as it did before it read on a raw pooled
    connection, not the driver's own exception."""
    dbapi = store.engine.dialect.loaded_dbapi
    store.engine.dispose()  # the next read needs a new connection

    def refuse(*_args: object) -> None:  # failure injection: the connection attempt fails
        raise dbapi.OperationalError("connection refused")

    sa.event.listen(store.engine, "do_connect", refuse)
    own = store._connect_for_revision  # PostgreSQL: revision() reads on a connection of its own
    store._connect_for_revision = refuse  # type: ignore[method-assign]
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised:
            store.revision()
        assert isinstance(raised.value.orig, dbapi.OperationalError)
    finally:
        sa.event.remove(store.engine, "do_connect", refuse)
        store._connect_for_revision = own  # type: ignore[method-assign]
    assert store.revision() >= 0  # connects again


def test_postgres_revision_reads_on_its_own_connection_and_survives_its_loss(pg_url: str) -> None:
    """One autocommit connection of its own (one round trip a read); killed by the server while
    idle, it is replaced on the next read without an error (as the pool's pre-ping would); a
    thread that finds it busy reads on a pooled connection instead of waiting."""
    store = Store(pg_url)
    admin = Store(pg_url)
    try:
        before = store.revision()
        conn = store._revision_conn
        assert conn is not None
        assert not conn.closed
        pid = conn.info.backend_pid
        assert store.revision() == before
        assert store._revision_conn is conn
        with admin.engine.begin() as sql:
            assert sql.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        admin.create_consumer("acme")
        assert store.revision() == before + 1  # no error: a new connection
        assert store._revision_conn is not None
        assert store._revision_conn is not conn
        assert store._revision_lock.acquire(blocking=False)  # as if another thread were reading
        try:
            admin.create_consumer("acme2")
            assert store.revision() == before + 2  # the pooled path, at once
        finally:
            store._revision_lock.release()
        own = store._revision_conn
        store.close()
        assert own.closed
    finally:
        store.close()
        admin.close()


def test_a_forked_child_never_uses_nor_ends_its_parent_s_revision_connection(pg_url: str) -> None:
    store = Store(pg_url)
    try:
        store.revision()
        parent = store._revision_conn
        assert parent is not None
        parent_pid = parent.info.backend_pid
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports by its exit status only
            try:
                store.revision()  # its own connection, the parent's left alone
                mine = store._revision_conn
                ok = mine is not None and mine.info.backend_pid != parent_pid
                gc.collect()
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.revision() >= 0  # the parent's connection still works
        assert store._revision_conn is parent
        assert parent.info.backend_pid == parent_pid
    finally:
        store.close()


def test_a_revision_read_blocked_on_postgresql_ends_within_the_store_timeout(pg_url: str) -> None:
    """The revision connection carries the engine's statement_timeout, also when the URL sets
    ``options`` (the schema's search path): a read blocked by a lock (a migration holding the meta
    table) is cancelled by the server within the timeout, as on a pooled connection."""
    assert "options=" in pg_url  # the tests' URLs set the search path
    store = Store(pg_url, timeout=0.5)
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        store.revision()  # its own connection, made
        with admin.connect() as sql:
            sql.execute(sa.text("LOCK TABLE meta IN ACCESS EXCLUSIVE MODE"))
            result: list[BaseException | int] = []
            reader = threading.Thread(target=lambda: result.append(_revision_or_error(store)))
            started = time.monotonic()
            reader.start()
            reader.join(5)
            blocked = reader.is_alive()
            sql.rollback()  # releases the lock (a reader still blocked then returns)
            reader.join(5)
        assert not blocked, "the revision read waited on the lock past the store's timeout"
        assert time.monotonic() - started < 3
        assert isinstance(result[0], sa.exc.DBAPIError)
        assert store.revision() >= 0  # usable afterwards
    finally:
        store.close()
        admin.dispose()


def _revision_or_error(store: Store) -> BaseException | int:
    try:
        return store.revision()
    except BaseException as exc:  # handed to the test's thread
        return exc


def test_a_cancelled_revision_read_is_not_tried_again_on_a_new_connection(pg_url: str) -> None:
    """A statement the server cancelled at the store's timeout fails the read after that timeout
    (as on a pooled connection), not after twice as long on a second, new connection: only a
    connection the server dropped is replaced."""
    store = Store(pg_url, timeout=1.0)
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        store.revision()
        with admin.connect() as sql:
            sql.execute(sa.text("LOCK TABLE meta IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            with pytest.raises(sa.exc.DBAPIError):
                store.revision()
            took = time.monotonic() - started
            sql.rollback()
        assert took < 1.7, f"one cancelled read took {took:.2f} s (timeout 1 s)"
        assert store.revision() >= 0
    finally:
        store.close()
        admin.dispose()
