from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner, Result

from keyswap.cli import main
from keyswap.errors import ConfigError
from keyswap.store import Store, migrate
from keyswap.store.models import AuditRecord
from keyswap.store.schema import SCHEMA_VERSION, metadata
from tests.support.asgi_server import free_port
from tests.support.cluster import postgres_schema
from tests.support.gateway_state import SECRET_TEXT, db_url


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield db_url(tmp_path)
    else:
        with postgres_schema() as url:
            yield url


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"KEYSWAP_SECRET": SECRET_TEXT})


def _downgrade(store: Store, revision: str) -> None:
    with store.engine.begin() as conn:
        command.downgrade(migrate._config(conn), revision)


def test_db_upgrade_creates_the_schema_in_an_empty_postgresql_schema(pg_url: str) -> None:
    result = cli("db", "upgrade", "--db", pg_url)
    assert result.exit_code == 0, result.output
    assert f"from an empty database to revision {migrate.head_revision()}" in result.stdout
    again = cli("db", "upgrade", "--db", pg_url)
    assert "The schema is up to date" in again.stdout
    store = Store(pg_url)
    try:
        assert store.revision() == 0
        assert store.schema_state is not None
        assert store.schema_state.up_to_date
    finally:
        store.close()


def test_the_migrated_schema_is_exactly_the_one_schema_py_describes(any_url: str) -> None:
    store = Store(any_url, schema="upgrade")
    try:
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            version = conn.execute(sa.text("SELECT schema_version FROM meta")).scalar_one()
        assert version == SCHEMA_VERSION == int(migrate.head_revision())
    finally:
        store.close()


def test_migrations_go_down_and_up_again(any_url: str) -> None:
    store = Store(any_url, schema="upgrade")
    try:
        store.create_consumer("acme")
        _downgrade(store, "0001")
        with store.engine.connect() as conn:
            assert "rate_limit" not in {
                c["name"] for c in sa.inspect(conn).get_columns("consumers")
            }
        again = Store(any_url, schema="upgrade")
        assert again.schema_change == ("0001", migrate.head_revision())
        assert again.get_consumer("acme") is not None
        again.close()
    finally:
        store.close()


def test_postgresql_never_creates_its_schema_by_itself(pg_url: str) -> None:
    with pytest.raises(ConfigError, match=r"no keyswap schema yet.*keyswap db upgrade"):
        Store(pg_url)


def test_a_store_refuses_a_postgresql_schema_that_is_behind(pg_url: str) -> None:
    store = Store(pg_url, schema="upgrade")
    _downgrade(store, "0001")
    store.close()
    with pytest.raises(
        ConfigError,
        match=rf"revision 0001.*needs revision {migrate.head_revision()}.*keyswap db upgrade",
    ):
        Store(pg_url)


def test_the_gateway_refuses_to_start_while_the_schema_is_behind(pg_url: str) -> None:
    store = Store(pg_url, schema="upgrade")
    _downgrade(store, "0001")
    store.close()
    port = str(free_port())  # the port is bound first: it must be free for the schema check
    result = cli("gateway", "--db", pg_url, "--upstream", "http://127.0.0.1:9", "--port", port)
    assert result.exit_code == 1
    assert "keyswap db upgrade" in result.stderr
    assert "Traceback" not in result.output
    assert cli("db", "upgrade", "--db", pg_url).exit_code == 0
    Store(pg_url).close()  # starts now


def test_db_status_tells_behind_from_up_to_date(pg_url: str) -> None:
    behind = cli("db", "status", "--db", pg_url)
    assert behind.exit_code == 1
    assert "none (empty database)" in behind.stdout
    assert "keyswap db upgrade" in behind.stdout
    cli("db", "upgrade", "--db", pg_url)
    current = cli("db", "status", "--db", pg_url)
    assert current.exit_code == 0, current.output
    assert "Status:   up to date" in current.stdout


def test_a_schema_from_a_newer_keyswap_is_refused(pg_url: str) -> None:
    store = Store(pg_url, schema="upgrade")
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    store.close()
    for mode in ("auto", "upgrade"):
        with pytest.raises(ConfigError, match="newer than this keyswap"):
            Store(pg_url, schema=mode)


def test_concurrent_upgrades_of_one_postgresql_schema_create_it_once(pg_url: str) -> None:
    barrier, errors, changes = threading.Barrier(4), [], []

    def upgrade() -> None:
        barrier.wait()
        try:
            store = Store(pg_url, schema="upgrade")
            changes.append(store.schema_change)
            store.close()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert changes.count(None) == 3
    assert (None, migrate.head_revision()) in changes


def test_a_sqlite_database_from_before_migrations_is_adopted_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # What keyswap 0.1 created: the initial tables and a meta row, no alembic_version table.
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(migrate._config(conn), "0001")
        conn.execute(sa.text("DROP TABLE alembic_version"))
        conn.execute(sa.text("INSERT INTO meta VALUES (1, 7, 1, NULL)"))
        conn.execute(
            sa.text("INSERT INTO consumers (name, metadata, created_at) VALUES ('acme', '{}', 1.0)")
        )
    engine.dispose()
    store = Store(str(path))
    try:
        assert store.schema_change == ("0001", migrate.head_revision())
        consumer = store.get_consumer("acme")
        assert consumer is not None
        assert consumer.rate_limit is None
        assert store.revision() == 7
    finally:
        store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (migrate.head_revision(),)
        ]


def _insert_0002_rows(store: Store) -> None:
    """Consumer 'acme' (rate limit 5/1s) with one API key 'key_old', written as revision 0002 knew them."""
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO consumers (name, metadata, created_at, rate_limit) "
                "VALUES ('acme', '{}', 1.0, '5/1s')"
            )
        )
        consumer_id = conn.execute(sa.text("SELECT id FROM consumers")).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO api_keys (id, consumer_id, digest, hint, created_at) "
                "VALUES ('key_old', :cid, :digest, 'ks_...abcd', 1.0)"
            ),
            {"cid": consumer_id, "digest": b"d" * 32},
        )


def test_migrations_ship_inside_the_package() -> None:
    versions = sorted(p.name for p in (migrate.MIGRATIONS_DIR / "versions").glob("*.py"))
    assert versions == [
        "0001_initial.py",
        "0002_consumer_rate_limit.py",
        "0003_scopes.py",
        "0004_consumer_connections.py",
        "0005_changes.py",
        "0006_audit.py",
        "0007_webhooks.py",
        "0008_usage.py",
        "0009_quotas.py",
        "0010_portal.py",
        "0011_leaks.py",
    ]
    assert (migrate.MIGRATIONS_DIR / "env.py").is_file()


def test_0003_adds_scopes_and_keeps_consumers_and_keys_both_ways(any_url: str) -> None:
    store = Store(any_url, schema="upgrade")
    try:
        _downgrade(store, "0002")
        with store.engine.connect() as conn:
            assert "scopes" not in {c["name"] for c in sa.inspect(conn).get_columns("api_keys")}
        _insert_0002_rows(store)
        upgraded = Store(any_url, schema="upgrade")
        try:
            assert upgraded.schema_change == ("0002", migrate.head_revision())
            consumer = upgraded.get_consumer("acme")
            assert consumer is not None
            assert (consumer.scopes, consumer.rate_limit) == ((), "5/1s")
            (key,) = upgraded.list_api_keys()
            assert (key.id, key.scopes, key.effective_scopes) == ("key_old", None, ())
            upgraded.set_consumer_scopes("acme", ["orders:read"])
            assert upgraded.list_api_keys()[0].effective_scopes == ("orders:read",)
        finally:
            upgraded.close()
        _downgrade(store, "0002")
        with store.engine.connect() as conn:
            names = {c["name"] for c in sa.inspect(conn).get_columns("consumers")}
            assert "scopes" not in names
            assert "rate_limit" in names
            keys = conn.execute(sa.text("SELECT id FROM api_keys")).scalars().all()
        assert keys == ["key_old"]  # dropping the columns did not cascade to the keys
    finally:
        store.close()


def test_downgrading_0002_keeps_every_api_key(any_url: str) -> None:
    """0002's downgrade once rebuilt ``consumers`` on SQLite, and the cascade deleted every API key."""
    store = Store(any_url, schema="upgrade")
    try:
        _downgrade(store, "0002")
        _insert_0002_rows(store)
        _downgrade(store, "0001")
        with store.engine.connect() as conn:
            names = {c["name"] for c in sa.inspect(conn).get_columns("consumers")}
            consumers = conn.execute(sa.text("SELECT name FROM consumers")).scalars().all()
            keys = conn.execute(sa.text("SELECT id FROM api_keys")).scalars().all()
        assert "rate_limit" not in names
        assert (consumers, keys) == (["acme"], ["key_old"])
    finally:
        store.close()


def test_0004_adds_consumer_connection_caps_and_keeps_consumers_and_keys_both_ways(
    any_url: str,
) -> None:
    store = Store(any_url, schema="upgrade")
    try:
        _downgrade(store, "0003")
        with store.engine.begin() as conn:
            names = {c["name"] for c in sa.inspect(conn).get_columns("consumers")}
            assert "max_connections" not in names
            conn.execute(
                sa.text(
                    "INSERT INTO consumers (name, metadata, created_at, rate_limit) "
                    "VALUES ('acme', '{}', 1.0, '5/1s')"
                )
            )
            consumer_id = conn.execute(sa.text("SELECT id FROM consumers")).scalar_one()
            conn.execute(
                sa.text(
                    "INSERT INTO api_keys (id, consumer_id, digest, hint, created_at) "
                    "VALUES ('key_old', :cid, :digest, 'ks_...abcd', 1.0)"
                ),
                {"cid": consumer_id, "digest": b"d" * 32},
            )
        upgraded = Store(any_url, schema="upgrade")
        try:
            assert upgraded.schema_change == ("0003", migrate.head_revision())
            consumer = upgraded.get_consumer("acme")
            assert consumer is not None
            assert (consumer.max_connections, consumer.rate_limit) == (None, "5/1s")
            assert upgraded.set_consumer_connections("acme", 3).max_connections == 3
            found = upgraded.find_api_key(b"d" * 32)
            assert found is not None
            assert found[1].max_connections == 3
        finally:
            upgraded.close()
        _downgrade(store, "0003")
        with store.engine.connect() as conn:
            names = {c["name"] for c in sa.inspect(conn).get_columns("consumers")}
            assert "max_connections" not in names
            assert "rate_limit" in names
            keys = conn.execute(sa.text("SELECT id FROM api_keys")).scalars().all()
        assert keys == ["key_old"]  # dropping the column did not cascade to the keys
    finally:
        store.close()


def test_0006_adds_the_audit_log_and_admin_tokens_and_keeps_the_rest_both_ways(
    any_url: str,
) -> None:
    store = Store(any_url, schema="upgrade")
    try:
        store.create_consumer("acme", scopes=("a",))
        _downgrade(store, "0005")
        with store.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        assert not tables & {"audit_events", "admin_tokens"}
        upgraded = Store(any_url, schema="upgrade")
        try:
            assert upgraded.schema_change == ("0005", migrate.head_revision())
            consumer = upgraded.get_consumer("acme")
            assert consumer is not None
            assert consumer.scopes == ("a",)
            assert upgraded.list_audit_events() == []
            assert upgraded.list_admin_tokens() == []
            record = AuditRecord(1.0, "cli", "alice", "consumer.update", "consumer:acme", {"a": 1})
            with upgraded.recording(record):
                upgraded.update_consumer("acme", rate_limit="unlimited")
            (stored,) = upgraded.list_audit_events()
            assert (stored.id, stored.changes) == (1, {"a": 1})
        finally:
            upgraded.close()
    finally:
        store.close()


def test_0005_adds_the_change_log_and_a_node_behind_it_clears_everything(any_url: str) -> None:
    store = Store(any_url, schema="upgrade")
    try:
        _downgrade(store, "0004")
        with store.engine.begin() as conn:
            assert "changes" not in sa.inspect(conn).get_table_names()
            conn.execute(sa.text("UPDATE meta SET revision = revision + 3"))
        upgraded = Store(any_url, schema="upgrade")
        try:
            assert upgraded.schema_change == ("0004", migrate.head_revision())
            before = upgraded.revision()
            # Revisions from before the log have no rows: a node that saw an older one clears all.
            assert upgraded.changes_since(before - 1) == (before, None)
            acme = upgraded.create_consumer("acme")
            assert upgraded.changes_since(before)[1] == [("consumer", str(acme.id))]
        finally:
            upgraded.close()
        _downgrade(store, "0004")
        with store.engine.begin() as conn:
            assert "changes" not in sa.inspect(conn).get_table_names()
    finally:
        store.close()


def _revision_before_webhooks() -> str:
    """The revision the webhooks migration builds on (whatever the chain became at a merge)."""
    import re

    (path,) = (migrate.MIGRATIONS_DIR / "versions").glob("*_webhooks.py")
    found = re.search(r'^down_revision = "([0-9]+)"', path.read_text(), re.MULTILINE)
    assert found is not None
    return found.group(1)


def test_the_webhooks_migration_adds_its_tables_and_keeps_the_rest_both_ways(
    any_url: str,
) -> None:
    store = Store(any_url, schema="upgrade")
    try:
        store.create_consumer("acme", scopes=("a",))
        before = _revision_before_webhooks()
        _downgrade(store, before)
        with store.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        assert not tables & {"webhook_endpoints", "webhook_events", "webhook_attempts"}
        upgraded = Store(any_url, schema="upgrade")
        try:
            assert upgraded.schema_change == (before, migrate.head_revision())
            consumer = upgraded.get_consumer("acme")
            assert consumer is not None
            assert consumer.scopes == ("a",)
            from keyswap.store import webhooks as wstore

            wstore.put_endpoint(
                upgraded,
                consumer.id,
                url="https://a.example.com/",
                secret_blob=b"x" * 40,
                allow_http_loopback=False,
                now=1.0,
            )
            assert (
                wstore.insert_event(
                    upgraded,
                    event_id="msg_" + "1" * 32,
                    consumer_id=consumer.id,
                    event_type="key.leaked",
                    payload={"type": "key.leaked"},
                    idempotency_key="k",
                    now=1.0,
                )
                == "msg_" + "1" * 32
            )
        finally:
            upgraded.close()
    finally:
        store.close()


def test_the_leaks_migration_adds_leak_policies_and_the_leak_log_and_keeps_the_rest_both_ways(
    any_url: str,
) -> None:
    import re

    (path,) = (migrate.MIGRATIONS_DIR / "versions").glob("*_leaks.py")
    found = re.search(r'^down_revision = "([0-9]+)"', path.read_text(), re.MULTILINE)
    assert found is not None
    before = found.group(1)
    store = Store(any_url, schema="upgrade")
    try:
        store.update_consumer(store.create_consumer("acme").name, leak_policy="roll")
        _downgrade(store, before)
        with store.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            columns = {c["name"] for c in sa.inspect(conn).get_columns("consumers")}
        assert "key_leaks" not in tables
        assert "leak_policy" not in columns
        upgraded = Store(any_url, schema="upgrade")
        try:
            assert upgraded.schema_change == (before, migrate.head_revision())
            consumer = upgraded.get_consumer("acme")
            assert consumer is not None
            assert consumer.leak_policy is None
            assert upgraded.key_leaks(["x"]) == {}
        finally:
            upgraded.close()
    finally:
        store.close()
