from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from keyswap.errors import AlreadyExists, ConfigError, InvalidInput, NotFound
from keyswap.store import Store
from keyswap.store.models import SigningKeyRecord
from keyswap.store.schema import meta
from keyswap.store.sql import QuickRevision
from tests.support.gateway_state import db_url

DIGEST = b"\x01" * 32


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(db_url(tmp_path))
    yield store
    store.close()


def _signing(kid: str, state: str, created_at: float = 1.0) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=kid,
        alg="ES256",
        state=state,
        public_jwk={"kty": "EC", "kid": kid},
        private_blob=b"encrypted",
        created_at=created_at,
        activated_at=created_at if state == "active" else None,
        retired_at=None,
    )


def _add_key(store: Store, key_id: str = "key_a", digest: bytes = DIGEST, **extra: Any) -> None:
    consumer = store.get_consumer("acme") or store.create_consumer("acme")
    values: dict[str, Any] = {"created_at": 10.0, "expires_at": None}
    values.update(extra)
    store.insert_api_key(
        consumer_id=consumer.id, key_id=key_id, digest=digest, hint="ks_...abcd", **values
    )


def test_a_new_database_file_gets_the_schema_revision_zero_and_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keyswap.db"
    store = Store(str(path))
    try:
        assert store.revision() == 0
        assert store.url == f"sqlite:///{path}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        store.close()


def test_create_none_never_creates_a_missing_database(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "keyswap.db"
    for target in (path, tmp_path / "keyswap.db"):
        with pytest.raises(ConfigError) as caught:
            Store(str(target), create="none")
        assert caught.value.reason == f"no database at {target}"
        assert not target.exists()
    assert not path.parent.exists()


def test_create_none_opens_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "keyswap.db"
    Store(str(path)).close()
    store = Store(str(path), create="none")
    try:
        assert store.list_consumers() == []
    finally:
        store.close()


def test_create_file_needs_the_directory_to_exist(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "keyswap.db"
    with pytest.raises(ConfigError) as caught:
        Store(str(path), create="file")
    assert caught.value.reason == (
        f"cannot create the database {path}: the directory {path.parent} does not exist"
    )
    assert not path.parent.exists()
    here = tmp_path / "here.db"
    Store(str(here), create="file").close()
    assert here.is_file()


def test_sqlite_files_run_in_wal_mode(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_reopening_a_database_keeps_its_data(tmp_path: Path) -> None:
    first = Store(db_url(tmp_path))
    first.create_consumer("acme", {"tier": "gold"})
    first.close()
    second = Store(db_url(tmp_path))
    try:
        consumer = second.get_consumer("acme")
        assert consumer is not None
        assert consumer.metadata == {"tier": "gold"}
        assert second.revision() == 1
    finally:
        second.close()


def test_a_database_from_a_newer_keyswap_is_refused(tmp_path: Path) -> None:
    store = Store(db_url(tmp_path))
    with store.engine.begin() as conn:
        conn.execute(sa.update(meta).values(schema_version=99))
    store.close()
    with pytest.raises(ConfigError, match="newer"):
        Store(db_url(tmp_path))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense://host/db", "unknown database or driver"),
        ("postgresql+nodriver://u:hunter2@db/x", "unknown database or driver"),
    ],
)
def test_an_unusable_url_is_a_config_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Store(url)
    assert "hunter2" not in str(caught.value)


def test_a_database_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(ConfigError, match="cannot open the database"):
        Store(f"sqlite:///{tmp_path / 'dir.db'}")


def test_in_memory_sqlite_works_across_threads_and_connections() -> None:
    store = Store("sqlite://")
    try:
        store.create_consumer("acme")
        assert [c.name for c in store.list_consumers()] == ["acme"]
    finally:
        store.close()


MUTATIONS: dict[str, Callable[[Store], object]] = {
    "create_consumer": lambda s: s.create_consumer("other"),
    "set_consumer_metadata": lambda s: s.set_consumer_metadata("acme", {"x": 1}),
    "delete_consumer": lambda s: s.delete_consumer("acme"),
    "insert_api_key": lambda s: _add_key(s, "key_b", b"\x02" * 32),
    "revoke_api_key": lambda s: s.revoke_api_key("key_a", now=20.0),
    "roll_api_key": lambda s: s.roll_api_key(
        "key_a",
        old_expires_at=50.0,
        new_key_id="key_b",
        new_digest=b"\x02" * 32,
        new_hint="ks_...wxyz",
        created_at=20.0,
        new_expires_at=None,
    ),
    "insert_signing_keys": lambda s: s.insert_signing_keys([_signing("k3", "retired")]),
    "rotate_signing_keys": lambda s: s.rotate_signing_keys(
        active_kid="k1", next_kid="k2", new_next=_signing("k3", "next"), now=5.0
    ),
    "delete_signing_keys": lambda s: s.delete_signing_keys(["k0"]),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_every_mutation_bumps_the_revision(store: Store, mutation: str) -> None:
    _add_key(store)
    store.insert_signing_keys(
        [_signing("k0", "retired"), _signing("k1", "active"), _signing("k2", "next")]
    )
    before = store.revision()
    MUTATIONS[mutation](store)
    assert store.revision() == before + 1


def test_last_used_writes_do_not_bump_the_revision(store: Store) -> None:
    _add_key(store)
    before = store.revision()
    store.touch_api_keys({"key_a": 15.0})
    assert store.revision() == before
    record = store.get_api_key("key_a")
    assert record is not None
    assert record.last_used_at == 15.0


def test_last_used_never_moves_backwards(store: Store) -> None:
    _add_key(store)
    store.touch_api_keys({"key_a": 30.0})
    store.touch_api_keys({"key_a": 20.0, "key_unknown": 40.0})
    record = store.get_api_key("key_a")
    assert record is not None
    assert record.last_used_at == 30.0


def test_a_refused_mutation_changes_nothing_and_does_not_bump(store: Store) -> None:
    store.create_consumer("acme")
    before = store.revision()
    with pytest.raises(AlreadyExists, match="'acme' already exists"):
        store.create_consumer("acme")
    with pytest.raises(NotFound):
        store.delete_consumer("nobody")
    assert store.revision() == before
    assert len(store.list_consumers()) == 1


def test_consumers_are_listed_by_name_with_their_metadata(store: Store) -> None:
    store.create_consumer("zeta", {"a": 1}, now=5.0)
    store.create_consumer("alpha")
    listed = store.list_consumers()
    assert [c.name for c in listed] == ["alpha", "zeta"]
    assert listed[1].metadata == {"a": 1}
    assert listed[1].created_at == 5.0


def test_bad_consumer_input_is_refused_by_the_store_itself(store: Store) -> None:
    with pytest.raises(InvalidInput):
        store.create_consumer("bad name")
    with pytest.raises(InvalidInput):
        store.create_consumer("ok", {"x": "y" * 2000})
    store.create_consumer("ok")
    with pytest.raises(InvalidInput):
        store.set_consumer_metadata("ok", {"x": float("nan")})


def test_unknown_names_and_ids_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="unknown consumer 'ghost'"):
        store.set_consumer_metadata("ghost", {})
    with pytest.raises(NotFound, match="unknown consumer 'ghost'"):
        store.list_api_keys("ghost")
    with pytest.raises(NotFound, match="unknown key id 'key_nope'"):
        store.revoke_api_key("key_nope", now=1.0)
    with pytest.raises(NotFound):
        store.insert_api_key(
            consumer_id=999, key_id="k", digest=DIGEST, hint="h", created_at=1.0, expires_at=None
        )


def test_deleting_a_consumer_deletes_its_keys(store: Store) -> None:
    _add_key(store)
    _add_key(store, "key_b", b"\x02" * 32)
    assert store.delete_consumer("acme") == 2
    assert store.find_api_key(DIGEST) is None
    assert store.list_api_keys() == []


def test_keys_are_found_by_digest_with_their_consumer(store: Store) -> None:
    store.create_consumer("acme", {"tier": "gold"})
    _add_key(store, expires_at=99.0)
    found = store.find_api_key(DIGEST)
    assert found is not None
    record, consumer = found
    assert (record.id, record.consumer_name, record.expires_at) == ("key_a", "acme", 99.0)
    assert consumer.metadata == {"tier": "gold"}
    assert store.find_api_key(b"\x09" * 32) is None


def test_a_duplicate_key_id_or_digest_is_refused(store: Store) -> None:
    _add_key(store)
    with pytest.raises(AlreadyExists):
        _add_key(store, "key_a", b"\x02" * 32)
    with pytest.raises(AlreadyExists):
        _add_key(store, "key_b", DIGEST)


def test_revoking_twice_keeps_the_first_revocation_time(store: Store) -> None:
    _add_key(store)
    store.revoke_api_key("key_a", now=20.0)
    assert store.revoke_api_key("key_a", now=30.0).revoked_at == 20.0


def test_rolling_shortens_the_old_key_and_links_it_to_the_new_one(store: Store) -> None:
    _add_key(store, expires_at=500.0)
    old, new = store.roll_api_key(
        "key_a",
        old_expires_at=120.0,
        new_key_id="key_b",
        new_digest=b"\x02" * 32,
        new_hint="ks_...wxyz",
        created_at=20.0,
        new_expires_at=500.0,
    )
    assert (old.expires_at, old.replaced_by) == (120.0, "key_b")
    assert (new.id, new.consumer_name, new.expires_at) == ("key_b", "acme", 500.0)


@pytest.mark.parametrize("state", ["revoked", "expired", "rolled"])
def test_a_key_that_is_not_usable_cannot_be_rolled(store: Store, state: str) -> None:
    _add_key(store, expires_at=15.0 if state == "expired" else None)
    if state == "revoked":
        store.revoke_api_key("key_a", now=12.0)
    if state == "rolled":
        store.roll_api_key(
            "key_a",
            old_expires_at=100.0,
            new_key_id="key_c",
            new_digest=b"\x03" * 32,
            new_hint="h",
            created_at=12.0,
            new_expires_at=None,
        )
    before = store.revision()
    with pytest.raises(InvalidInput, match=f"is {state} and cannot be rolled"):
        store.roll_api_key(
            "key_a",
            old_expires_at=100.0,
            new_key_id="key_b",
            new_digest=b"\x02" * 32,
            new_hint="h",
            created_at=20.0,
            new_expires_at=None,
        )
    assert store.get_api_key("key_b") is None
    assert store.revision() == before


def test_keys_are_listed_oldest_first_and_by_consumer(store: Store) -> None:
    _add_key(store, "key_new", b"\x02" * 32, created_at=20.0)
    _add_key(store, "key_old", b"\x03" * 32, created_at=10.0)
    other = store.create_consumer("other")
    store.insert_api_key(
        consumer_id=other.id,
        key_id="key_x",
        digest=b"\x04" * 32,
        hint="h",
        created_at=5.0,
        expires_at=None,
    )
    assert [k.id for k in store.list_api_keys("acme")] == ["key_old", "key_new"]
    assert [k.id for k in store.list_api_keys()] == ["key_x", "key_old", "key_new"]


def test_only_one_active_and_one_next_signing_key_can_exist(store: Store) -> None:
    assert store.insert_signing_keys([_signing("k1", "active"), _signing("k2", "next")])
    assert not store.insert_signing_keys([_signing("k3", "active")])
    assert not store.insert_signing_keys([_signing("k4", "next")])
    assert store.insert_signing_keys([_signing("k5", "retired"), _signing("k6", "retired")])
    assert sorted(k.kid for k in store.list_signing_keys()) == ["k1", "k2", "k5", "k6"]


def test_rotation_is_all_or_nothing_when_another_process_rotated_first(store: Store) -> None:
    store.insert_signing_keys([_signing("k1", "active"), _signing("k2", "next")])
    assert store.rotate_signing_keys(
        active_kid="k1", next_kid="k2", new_next=_signing("k3", "next"), now=5.0
    )
    before = store.revision()
    assert not store.rotate_signing_keys(
        active_kid="k1", next_kid="k2", new_next=_signing("k4", "next"), now=6.0
    )
    states = {k.kid: k.state for k in store.list_signing_keys()}
    assert states == {"k1": "retired", "k2": "active", "k3": "next"}
    assert store.revision() == before


def test_live_signing_keys_are_never_deleted(store: Store) -> None:
    store.insert_signing_keys(
        [_signing("k0", "retired"), _signing("k1", "active"), _signing("k2", "next")]
    )
    assert store.delete_signing_keys(["k0", "k1", "k2"]) == 1
    assert sorted(k.kid for k in store.list_signing_keys()) == ["k1", "k2"]


def test_the_first_secret_fingerprint_is_bound_and_another_is_refused(store: Store) -> None:
    assert store.bind_secret("a" * 64)
    assert store.bind_secret("a" * 64)
    assert not store.bind_secret("b" * 64)


def test_two_stores_on_one_file_see_each_others_changes(tmp_path: Path) -> None:
    first, second = Store(db_url(tmp_path)), Store(db_url(tmp_path))
    try:
        before = second.revision()
        first.create_consumer("acme")
        assert second.revision() == before + 1
        assert second.get_consumer("acme") is not None
    finally:
        first.close()
        second.close()


def test_stores_opening_a_new_file_at_once_create_one_schema(tmp_path: Path) -> None:
    barrier, opened, errors = threading.Barrier(6), [], []

    def open_store() -> None:
        barrier.wait()
        try:
            opened.append(Store(db_url(tmp_path)))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert {store.revision() for store in opened} == {0}
    finally:
        for store in opened:
            store.close()


def test_the_quick_revision_reader_never_waits_for_a_lock(tmp_path: Path) -> None:
    """A writer holding a rollback-journal file exclusively: a normal reader would wait (the
    store's connections wait up to 10 s); the quick reader fails at once (busy timeout 0) and works
    again once the lock is gone. It never writes (query_only)."""
    path = tmp_path / "plain.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE meta (id INTEGER PRIMARY KEY, revision INTEGER NOT NULL)")
    writer.execute("INSERT INTO meta VALUES (1, 41)")
    quick = QuickRevision(path)
    try:
        assert quick() == 41
        assert quick._conn is not None
        assert quick._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only|query_only"):
            quick._conn.execute("UPDATE meta SET revision = 0")
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("UPDATE meta SET revision = 42 WHERE id = 1")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            quick()
        writer.execute("COMMIT")
        assert quick() == 42
    finally:
        quick.close()
        writer.close()
    missing = QuickRevision(tmp_path / "nowhere" / "x.db")
    with pytest.raises(sqlite3.Error):
        missing()


def test_the_quick_revision_reader_never_creates_a_database(tmp_path: Path) -> None:
    """The database file gone (moved away for a moment): the reader fails (the caller falls back to
    the usual read) and creates no empty database in its place, which it would keep reading ("no
    such table") once the real file is moved back; it reads the real one once it is back."""
    path = tmp_path / "keyswap.db"
    away = tmp_path / "moved.db"
    store = Store(f"sqlite:///{away}")
    store.create_consumer("acme")
    revision = store.revision()
    store.close()
    quick = QuickRevision(path)
    try:
        with pytest.raises(sqlite3.Error):
            quick()
        assert not path.exists()
        away.rename(path)
        assert quick() == revision
    finally:
        quick.close()
