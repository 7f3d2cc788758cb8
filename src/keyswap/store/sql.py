"""The store: consumers, API keys and signing keys over SQLAlchemy Core, on SQLite or PostgreSQL.

Also the audit log (``audit_events``, written in the transaction of the change it records: see
:meth:`Store.recording`) and the admin tokens of the management plane (``admin_tokens``, HMAC digests).

Every mutation runs in one transaction that first bumps ``meta.revision``. That first write serialises
writers (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the row lock on ``meta``), and lets a running gateway
notice a change made by another process with one cheap query (:meth:`Store.revision`). The one write
that does not bump it is :meth:`Store.touch_api_keys` (last-used times): a gateway must not flush its
caches because some key was used.

Change notifications (push, on top of polling the revision):

- PostgreSQL: the bumping transaction also runs ``NOTIFY keyswap_changes, '<schema>:<revision>'``, which
  PostgreSQL delivers at commit and never for a rolled-back transaction
  (:class:`keyswap.store.listen.PostgresListener` receives it);
- any database: callbacks registered with :meth:`Store.on_commit` run after each committed bump with the
  new revision (the gateway's Redis publisher is one); their errors are logged, never raised.

Schema: created and upgraded by the Alembic revisions of :mod:`keyswap.store.migrate`. By default a
SQLite database upgrades itself when opened; any other database must already be at the newest
revision (``keyswap db upgrade``), else opening it raises a :class:`~keyswap.errors.ConfigError`.

SQLite files are created with mode 0600 (their directory 0700 when we create it) and run in WAL mode,
so the CLI can write while a gateway reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as _pg_insert
from sqlalchemy.dialects.sqlite import insert as _sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.pool import StaticPool

from keyswap.errors import AlreadyExists, ConfigError, InvalidInput, NotFound
from keyswap.store import migrate
from keyswap.store.models import (
    AdminTokenRecord,
    ApiKeyRecord,
    AuditRecord,
    Consumer,
    KeyLeak,
    MemberRecord,
    PortalLinkRecord,
    PortalSessionRecord,
    SigningKeyRecord,
    format_scopes,
    validate_consumer_name,
    validate_credits,
    validate_leak_policy,
    validate_max_connections,
    validate_metadata,
    validate_quota,
    validate_rate_limit,
    validate_scopes,
)
from keyswap.store.schema import (
    admin_tokens,
    api_keys,
    audit_events,
    changes,
    consumer_members,
    consumers,
    key_leaks,
    meta,
    portal_links,
    portal_sessions,
    quota_usage,
    signing_keys,
)
from keyswap.store.urls import display_url, is_postgres, normalize_database_url, sqlite_file

__all__ = [
    "KEEP",
    "NOTIFY_CHANNEL",
    "Change",
    "CreateMode",
    "Keep",
    "LeakWrite",
    "QuickRevision",
    "SchemaMode",
    "Store",
]

log = logging.getLogger("keyswap.store")

_IMMEDIATE = "keyswap_immediate"
_REVISION = "keyswap_revision"
_NOTED = "keyswap_noted"
#: Change-log rows older than this many revisions are pruned (a node further behind clears everything).
CHANGE_LOG_KEEP = 10_000
#: Most change-log rows a node reads at once; more than that and it clears everything instead.
CHANGE_LOG_READ = 5_000
#: One change-log row: ``(kind, ref)``; see :data:`keyswap.store.schema.changes`.
Change = tuple[str, str]
#: The PostgreSQL channel every bump is announced on; the payload is ``<schema>:<revision>``.
NOTIFY_CHANNEL = "keyswap_changes"
#: Seconds a PostgreSQL connection attempt may take (unless the URL sets ``connect_timeout``).
PG_CONNECT_TIMEOUT = 3
#: With a ``timeout`` (a gateway's store), how a PostgreSQL connection notices a dead or silent peer:
#: TCP keepalives (first probe after 5 s idle, then every 2 s, 3 misses) and at most 10 s of unacknowledged
#: data (``tcp_user_timeout``, milliseconds). Settings in the URL win.
PG_SOCKET_OPTIONS: Mapping[str, int] = MappingProxyType(
    {
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
    }
)

#: What opening a store does with the schema: ``auto`` (upgrade SQLite, check anything else),
#: ``upgrade`` (always upgrade), ``check`` (refuse unless current), ``any`` (no check: ``db status``).
SchemaMode = Literal["auto", "upgrade", "check", "any"]

#: What opening a SQLite file may create: ``dirs`` (the file and its missing directories), ``file``
#: (the file, in a directory that must exist), ``none`` (nothing: the file must exist).
CreateMode = Literal["dirs", "file", "none"]


class _Conflict(Exception):
    """Internal: a conditional update found the row changed; roll the transaction back."""


class Keep:
    """The type of :data:`KEEP`."""

    def __repr__(self) -> str:
        return "KEEP"


#: For :meth:`Store.update_consumer`: leave this field as it is.
KEEP = Keep()


@dataclass(slots=True)
class _Recording:
    """An audit event waiting for the next committed change of ``store`` in this context."""

    store: Store
    record: AuditRecord
    retention: float | None
    written: bool = False
    facts: dict[str, Any] | None = None


def _note(**facts: Any) -> None:
    """Add what only the store knows (a new key's id, ...) to the pending audit event, if any.

    The facts join the event's changed fields; a target such as ``key:{key_id}`` is filled from them.
    """
    recording = _RECORDING.get()
    if recording is not None and not recording.written:
        recording.facts = {**(recording.facts or {}), **facts}


_RECORDING: ContextVar[_Recording | None] = ContextVar("keyswap_audit_recording", default=None)


class Store:
    """Consumers, API keys and signing keys in one SQL database.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path``, ``postgresql://user@host/db``) or a plain file path
            for SQLite.
        schema: ``auto`` (default): a SQLite database is created or upgraded on open, any other must
            be at the newest revision; ``upgrade``: upgrade whatever it is; ``check``: never upgrade;
            ``any``: skip the check (to report the state, see :attr:`schema_state`).
        create: for a SQLite file: ``dirs`` (default) creates it and its missing directories,
            ``file`` creates it only in an existing directory, ``none`` never creates it (read-only
            use: a mistyped path must not become a new, empty database).
        timeout: for a store that must answer quickly (the gateway's), seconds: on PostgreSQL the
            server cancels any statement running longer (``statement_timeout``), a connection attempt
            gives up after that long (2 s at least; unless the URL sets ``connect_timeout``), a dead or
            silent connection is noticed by the socket (:data:`PG_SOCKET_OPTIONS`); on any database a
            request waits that long at most for a pooled connection. ``None`` (default): no such
            bounds but the 3 s connection timeout (management commands, migrations).

    Raises:
        ConfigError: the URL is invalid, the database cannot be reached, its schema is behind (run
            ``keyswap db upgrade``) or was changed by a newer keyswap; the SQLite file is missing
            (``no database at PATH``) or its directory is, and ``create`` does not allow creating it.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: SchemaMode = "auto",
        create: CreateMode = "dirs",
        timeout: float | None = None,
    ) -> None:
        self.url = normalize_database_url(url)
        self.is_postgres = is_postgres(self.url)
        path = sqlite_file(self.url)
        if path is not None:
            _prepare_sqlite_file(path, create)
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError("the database timeout must be a positive number of seconds")
        self.engine = _create_engine(self.url, file_backed=path is not None, timeout=timeout)
        #: The driver's base exception class (PEP 249 ``Error``).
        self._dbapi_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        #: PostgreSQL: the connection :meth:`revision` reads on, its lock and the process that made
        #: it; the arguments the engine adds to the URL's when it connects.
        self._revision_conn: Any = None
        self._revision_lock = threading.Lock()
        self._revision_pid = 0
        self._pg_connect_args: dict[str, Any] = (
            _postgres_connect_args(sa.make_url(self.url).query, timeout) if self.is_postgres else {}
        )
        self._commit_hooks: list[Callable[[int], object]] = []
        #: ``(before, after)`` revisions if opening the store upgraded the schema.
        self.schema_change: tuple[str | None, str] | None = None
        try:
            self.notify_scope = self._scope()
            self.schema_state = self._prepare_schema(schema)
        except OperationalError as exc:
            self.engine.dispose()
            raise ConfigError(
                f"cannot open the database {display_url(self.url)}: {_first_line(exc.orig)}"
            ) from None
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        """Close every pooled connection (and :meth:`revision`'s own, on PostgreSQL)."""
        conn, self._revision_conn = self._revision_conn, None
        if conn is not None and self._revision_pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({display_url(self.url)!r})"

    # -- transactions -------------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _writing(self, *, bump: bool = True) -> Iterator[Connection]:
        revision: int | None = None
        recording = _RECORDING.get() if bump else None
        if recording is not None and (recording.store is not self or recording.written):
            recording = None
        with self.engine.connect() as conn:
            conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                if bump:
                    revision = conn.execute(
                        sa.update(meta)
                        .where(meta.c.id == 1)
                        .values(revision=meta.c.revision + 1)
                        .returning(meta.c.revision)
                    ).scalar_one()
                    if self.is_postgres:
                        # Delivered by PostgreSQL at commit, never for a rolled-back transaction.
                        payload = f"{self.notify_scope}:{revision}"
                        conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, payload)))
                    conn.info[_REVISION] = revision
                    conn.info[_NOTED] = False
                try:
                    yield conn
                    if revision is not None:
                        if not conn.info[_NOTED]:  # a change nobody described: nodes clear all
                            self._log_change(conn, "all", "")
                        if revision % 256 == 0:
                            conn.execute(
                                sa.delete(changes).where(
                                    changes.c.revision <= revision - CHANGE_LOG_KEEP
                                )
                            )
                    if recording is not None:
                        _write_audit(conn, recording)
                finally:
                    conn.info.pop(_REVISION, None)
                    conn.info.pop(_NOTED, None)
        if recording is not None:
            recording.written = True
        if revision is not None:
            self._committed(revision)

    @contextmanager
    def recording(self, record: AuditRecord, *, retention: float | None = None) -> Iterator[None]:
        """Write ``record`` to the audit log in the transaction of the next change this context makes.

        The first committed change (a write that bumps the revision) made through this store while the
        block runs, on this thread or asyncio task, also inserts the event, so the change and its
        event commit together or not at all; a block that changes nothing records nothing. With
        ``retention`` (seconds), that transaction also deletes events older than ``record.at -
        retention`` (pruning on write). Nested blocks: the innermost one's event goes with the next
        change. Used by :mod:`keyswap.manage`, the one place changes are made.
        """
        token = _RECORDING.set(_Recording(self, record, retention))
        try:
            yield
        finally:
            _RECORDING.reset(token)

    @staticmethod
    def _log_change(conn: Connection, kind: str, *refs: object) -> None:
        """Record in the change log what this transaction changed (one row per ref)."""
        revision = conn.info[_REVISION]
        conn.execute(
            sa.insert(changes),
            [{"revision": revision, "kind": kind, "ref": str(ref)} for ref in refs],
        )
        conn.info[_NOTED] = True

    def changes_since(self, revision: int) -> tuple[int, list[Change] | None]:
        """``(current revision, what changed after revision)``, read in one transaction.

        The list is ``None`` when the log cannot say (some revision in between has no rows: pruned,
        from before the log existed, or more than :data:`CHANGE_LOG_READ` rows): clear everything.
        """
        with self._reading() as conn:
            current = int(
                conn.execute(sa.select(meta.c.revision).where(meta.c.id == 1)).scalar_one()
            )
            if current <= revision:
                return current, []
            if current - revision > CHANGE_LOG_READ:
                return current, None
            rows = conn.execute(
                sa.select(changes.c.revision, changes.c.kind, changes.c.ref)
                .where(changes.c.revision > revision, changes.c.revision <= current)
                .order_by(changes.c.id)
                .limit(CHANGE_LOG_READ + 1)
            ).all()
        if len(rows) > CHANGE_LOG_READ or len({row.revision for row in rows}) != current - revision:
            return current, None
        return current, [(row.kind, row.ref) for row in rows]

    def on_commit(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(revision)`` after every committed change (errors are logged, not raised)."""
        self._commit_hooks.append(callback)

    def _committed(self, revision: int) -> None:
        for hook in self._commit_hooks:
            try:
                hook(revision)
            except Exception:
                log.warning("a change notification could not be sent", exc_info=True)

    def _scope(self) -> str:
        """What tells this database's notifications apart on a shared server: the schema name."""
        if not self.is_postgres:
            return ""
        with self._reading() as conn:
            return str(conn.execute(sa.select(sa.func.current_schema())).scalar() or "")

    def _prepare_schema(self, mode: SchemaMode) -> migrate.SchemaState | None:
        if mode == "any":
            with self._reading() as conn:
                return migrate.schema_state(conn)
        upgrade = mode == "upgrade" or (mode == "auto" and not self.is_postgres)
        for attempt in range(2):
            try:
                with self._writing(bump=False) as conn:
                    if upgrade and self.is_postgres:
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key("schema"))))
                    state = migrate.schema_state(conn)
                    if state.ahead:
                        raise ConfigError(
                            f"the database schema (revision {state.current}, version "
                            f"{state.version}) is newer than this keyswap understands (revision "
                            f"{state.head}); upgrade keyswap"
                        )
                    if state.behind and not upgrade:
                        raise ConfigError(_behind_message(state, self.url))
                    if state.behind:
                        self.schema_change = migrate.upgrade(conn)
                        state = migrate.schema_state(conn)
                return state
            except (IntegrityError, ProgrammingError, OperationalError):
                # Another process created the schema at the same moment; look again.
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- cluster coordination -----------------------------------------------------------------------

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Hold the cluster-wide lock ``name`` while the block runs; yields False if another holds it.

        PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of its own,
        released when the block ends (or when the connection dies). SQLite: always True; callers rely on
        conditional updates (e.g. :meth:`rotate_signing_keys`) for mutual exclusion.
        """
        if not self.is_postgres:
            yield True
            return
        key = _lock_key(name)
        with self.engine.connect() as conn:
            acquired = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())
            conn.commit()
            try:
                yield acquired
            finally:
                if acquired:
                    try:
                        conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                        conn.commit()
                    except Exception:  # the session is gone, and the lock with it
                        conn.invalidate()

    def listen_connect_args(self) -> tuple[list[Any], dict[str, Any]]:
        """Arguments for ``psycopg.connect`` reaching this database (PostgreSQL listeners)."""
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        return list(cargs), dict(cparams)

    # -- change detection ---------------------------------------------------------------------------

    def revision(self) -> int:
        """The change counter: every mutation (except last-used times) increases it.

        Read on a DB-API connection directly (one statement, no SQLAlchemy transaction): the gateway
        reads it often (polls, and before refusing an unknown key), and SQLAlchemy's connection and
        result handling cost ~6x the query itself on SQLite. On PostgreSQL, a connection of its own
        in autocommit mode (one round trip, where a pooled connection costs three: the pre-ping, the
        query, the rollback on return), used by one thread at a time: a thread that finds it busy
        (a read in progress, or hung) reads on a pooled connection instead, never waiting for it.
        A failure raises SQLAlchemy's ``DBAPIError`` (as any other read) and discards the connection.
        """
        if self.is_postgres and self._revision_lock.acquire(blocking=False):
            try:
                return self._own_revision()
            finally:
                self._revision_lock.release()
        try:
            raw = self.engine.raw_connection()  # the pool's own: the driver's error, unwrapped
        except self._dbapi_error as exc:
            raise DBAPIError.instance(
                None, None, exc, self._dbapi_error, dialect=self.engine.dialect
            ) from exc
        try:
            cursor = raw.cursor()
            try:
                cursor.execute(_REVISION_SQL)
                row = cursor.fetchone()
            finally:
                cursor.close()
        except self._dbapi_error as exc:
            raw.invalidate(exc)
            raise DBAPIError.instance(
                _REVISION_SQL, (), exc, self._dbapi_error, dialect=self.engine.dialect
            ) from exc
        finally:
            raw.close()
        if row is None:
            raise OperationalError(_REVISION_SQL, (), Exception("no meta row"))
        return int(row[0])

    def _own_revision(self) -> int:
        """PostgreSQL: :meth:`revision` on the store's own revision connection (lock held). A
        connection that fails is replaced once if it is broken (the server restarted, or dropped it
        while idle), as the pool's pre-ping would; any other failure raises ``DBAPIError``."""
        for _ in range(2):  # the second time round, always on a new connection
            conn = self._revision_conn
            if conn is not None and self._revision_pid != os.getpid():
                # A forked child: the parent's session, never used here (psycopg does not end it
                # when the object goes: it checks the process); a new one is made.
                conn = self._revision_conn = None
            fresh = conn is None
            try:
                if conn is None:
                    conn = self._revision_conn = self._connect_for_revision()
                    self._revision_pid = os.getpid()
                row = conn.execute(_REVISION_SQL).fetchone()
            except self._dbapi_error as exc:
                self._revision_conn = None
                # Replaced only if the server dropped it: a statement it cancelled (the timeout)
                # would be cancelled again, after as long, on a new one. Asked before close():
                # psycopg calls a connection closed cleanly never "broken".
                dropped = conn is not None and conn.broken
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                if fresh or not dropped:
                    raise DBAPIError.instance(
                        _REVISION_SQL, (), exc, self._dbapi_error, dialect=self.engine.dialect
                    ) from exc
                continue
            if row is None:
                raise OperationalError(_REVISION_SQL, (), Exception("no meta row"))
            return int(row[0])
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect_for_revision(self) -> Any:
        """A new autocommit psycopg connection with the engine's arguments (the URL's, then the
        timeouts and socket options the engine adds unless the URL sets them). They replace the
        URL's as the engine's ``connect_args`` do: ``options`` is the URL's (a search path) with the
        ``statement_timeout`` appended, so keeping the URL's would drop the timeout."""
        import psycopg

        cargs, cparams = self.listen_connect_args()
        cparams.update(self._pg_connect_args)
        cparams.setdefault("application_name", "keyswap-revision")
        return psycopg.connect(*cargs, autocommit=True, **cparams)

    def quick_revision(self) -> QuickRevision | None:
        """For a file-backed SQLite store: a reader of :meth:`revision` cheap enough to call on an
        event loop (its own connection, never waiting for a lock); ``None`` for other databases.
        See :class:`QuickRevision`."""
        path = sqlite_file(self.url)
        return None if path is None else QuickRevision(path)

    def bind_secret(self, fingerprint: str) -> bool:
        """Record the server secret's fingerprint on first use; False if another secret is recorded."""
        with self._reading() as conn:
            stored = conn.execute(
                sa.select(meta.c.secret_fingerprint).where(meta.c.id == 1)
            ).scalar_one()
        if stored is None:
            with self._writing(bump=False) as conn:
                conn.execute(
                    sa.update(meta)
                    .where(meta.c.id == 1, meta.c.secret_fingerprint.is_(None))
                    .values(secret_fingerprint=fingerprint)
                )
                stored = conn.execute(
                    sa.select(meta.c.secret_fingerprint).where(meta.c.id == 1)
                ).scalar_one()
        return hmac.compare_digest(str(stored).encode(), fingerprint.encode())

    # -- consumers ----------------------------------------------------------------------------------

    def create_consumer(
        self,
        name: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        scopes: Iterable[str] = (),
        now: float | None = None,
    ) -> Consumer:
        """Create a consumer, with the scopes its keys may be granted (default none).

        Raises:
            InvalidInput: bad name, metadata or scopes.
            AlreadyExists: a consumer with that name exists.
        """
        validate_consumer_name(name)
        data = validate_metadata(dict(metadata or {}))
        granted = validate_scopes(scopes)
        created = time.time() if now is None else now
        try:
            with self._writing() as conn:
                consumer_id = conn.execute(
                    sa.insert(consumers)
                    .values(name=name, metadata=data, created_at=created, scopes=_stored(granted))
                    .returning(consumers.c.id)
                ).scalar_one()
                self._log_change(conn, "consumer", consumer_id)
        except IntegrityError:
            raise AlreadyExists(f"consumer '{name}' already exists") from None
        return Consumer(
            id=consumer_id, name=name, metadata=data, created_at=created, scopes=granted
        )

    def get_consumer(self, name: str) -> Consumer | None:
        """The consumer called ``name``, or ``None``."""
        with self._reading() as conn:
            row = conn.execute(sa.select(consumers).where(consumers.c.name == name)).first()
        return None if row is None else _consumer(row)

    def list_consumers(self) -> list[Consumer]:
        """Every consumer, by name."""
        with self._reading() as conn:
            rows = conn.execute(sa.select(consumers).order_by(consumers.c.name)).all()
        return [_consumer(row) for row in rows]

    def page_consumers(
        self, *, after: str | None = None, prefix: str | None = None, limit: int = 100
    ) -> list[Consumer]:
        """Up to ``limit`` consumers by name: those after ``after`` (a name, the cursor) whose name
        starts with ``prefix``."""
        query = sa.select(consumers).order_by(consumers.c.name).limit(limit)
        if after is not None:
            query = query.where(consumers.c.name > after)
        if prefix:
            query = query.where(consumers.c.name.startswith(prefix, autoescape=True))
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [_consumer(row) for row in rows]

    def delete_consumer(self, name: str) -> int:
        """Delete a consumer and its keys; returns how many keys went with it.

        Raises:
            NotFound: no such consumer.
        """
        with self._writing() as conn:
            consumer_id = conn.execute(
                sa.select(consumers.c.id).where(consumers.c.name == name)
            ).scalar_one_or_none()
            if consumer_id is None:
                raise NotFound(f"unknown consumer '{name}'")
            self._log_change(conn, "consumer", consumer_id)
            deleted = conn.execute(
                sa.delete(api_keys).where(api_keys.c.consumer_id == consumer_id)
            ).rowcount
            conn.execute(sa.delete(consumers).where(consumers.c.id == consumer_id))
        return int(deleted)

    def set_consumer_metadata(self, name: str, metadata: Mapping[str, Any]) -> Consumer:
        """Replace a consumer's metadata.

        Raises:
            InvalidInput: bad metadata.
            NotFound: no such consumer.
        """
        data = validate_metadata(dict(metadata))
        with self._writing() as conn:
            updated = conn.execute(
                sa.update(consumers).where(consumers.c.name == name).values(metadata=data)
            ).rowcount
            if not updated:
                raise NotFound(f"unknown consumer '{name}'")
            row = conn.execute(sa.select(consumers).where(consumers.c.name == name)).one()
            self._log_change(conn, "consumer", row.id)
        return _consumer(row)

    def set_consumer_rate_limit(self, name: str, rate_limit: str | None) -> Consumer:
        """Set a consumer's own rate limit (``None``: the gateway's default; ``"unlimited"``; or
        ``"<requests>/<seconds>s"``).

        Raises:
            InvalidInput: not one of those forms.
            NotFound: no such consumer.
        """
        value = validate_rate_limit(rate_limit)
        with self._writing() as conn:
            updated = conn.execute(
                sa.update(consumers).where(consumers.c.name == name).values(rate_limit=value)
            ).rowcount
            if not updated:
                raise NotFound(f"unknown consumer '{name}'")
            row = conn.execute(sa.select(consumers).where(consumers.c.name == name)).one()
            self._log_change(conn, "consumer", row.id)
        return _consumer(row)

    def set_consumer_connections(self, name: str, max_connections: int | None) -> Consumer:
        """Set a consumer's own cap on requests in flight to the upstream (``None``: the gateway's
        default, ``--max-connections-per-consumer``).

        Raises:
            InvalidInput: not ``None`` nor a whole number 1-10000.
            NotFound: no such consumer.
        """
        value = validate_max_connections(max_connections)
        with self._writing() as conn:
            updated = conn.execute(
                sa.update(consumers).where(consumers.c.name == name).values(max_connections=value)
            ).rowcount
            if not updated:
                raise NotFound(f"unknown consumer '{name}'")
            row = conn.execute(sa.select(consumers).where(consumers.c.name == name)).one()
            self._log_change(conn, "consumer", row.id)
        return _consumer(row)

    def set_consumer_scopes(self, name: str, scopes: Iterable[str]) -> Consumer:
        """Replace the scopes a consumer's keys may be granted (empty: none).

        Keys with scopes of their own keep them as stored; they are granted those the consumer still
        has (:func:`keyswap.store.models.effective_scopes`), so narrowing takes effect on every key.

        Raises:
            InvalidInput: a bad scope, or too many.
            NotFound: no such consumer.
        """
        granted = validate_scopes(scopes)
        with self._writing() as conn:
            updated = conn.execute(
                sa.update(consumers).where(consumers.c.name == name).values(scopes=_stored(granted))
            ).rowcount
            if not updated:
                raise NotFound(f"unknown consumer '{name}'")
            row = conn.execute(sa.select(consumers).where(consumers.c.name == name)).one()
            self._log_change(conn, "consumer", row.id)
        return _consumer(row)

    def update_consumer(
        self,
        name: str,
        *,
        metadata: Mapping[str, Any] | Keep = KEEP,
        rate_limit: str | Keep | None = KEEP,
        max_connections: int | Keep | None = KEEP,
        scopes: Iterable[str] | Keep = KEEP,
        leak_policy: str | Keep | None = KEEP,
        quota: str | Keep | None = KEEP,
        credits: int | Keep | None = KEEP,
        credits_refill: str | Keep | None = KEEP,
        credits_set_at: float | Keep | None = KEEP,
    ) -> Consumer:
        """Change several fields of a consumer in one transaction (:data:`KEEP`: leave it as it is).

        Raises:
            InvalidInput: a bad value (see the ``set_consumer_*`` methods).
            NotFound: no such consumer.
        """
        values: dict[str, Any] = {}
        if not isinstance(metadata, Keep):
            values["metadata"] = validate_metadata(dict(metadata))
        if not isinstance(rate_limit, Keep):
            values["rate_limit"] = validate_rate_limit(rate_limit)
        if not isinstance(max_connections, Keep):
            values["max_connections"] = validate_max_connections(max_connections)
        if not isinstance(scopes, Keep):
            values["scopes"] = _stored(validate_scopes(scopes))
        if not isinstance(leak_policy, Keep):
            values["leak_policy"] = validate_leak_policy(leak_policy)
        if not isinstance(quota, Keep):
            values["quota"] = validate_quota(quota)
        if not isinstance(credits, Keep):
            values["credits"] = validate_credits(credits)
        if not isinstance(credits_refill, Keep):
            values["credits_refill"] = validate_quota(credits_refill)
        if not isinstance(credits_set_at, Keep):
            values["credits_set_at"] = credits_set_at
        if not values:
            consumer = self.get_consumer(name)
            if consumer is None:
                raise NotFound(f"unknown consumer '{name}'")
            return consumer
        with self._writing() as conn:
            updated = conn.execute(
                sa.update(consumers).where(consumers.c.name == name).values(**values)
            ).rowcount
            if not updated:
                raise NotFound(f"unknown consumer '{name}'")
            row = conn.execute(sa.select(consumers).where(consumers.c.name == name)).one()
            self._log_change(conn, "consumer", row.id)
        return _consumer(row)

    # -- quota usage --------------------------------------------------------------------------------

    def add_quota_usage(
        self, deltas: Mapping[tuple[int, str], int], *, now: float
    ) -> dict[tuple[int, str], int]:
        """Add requests counted by one gateway to ``quota_usage`` (one additive upsert per counter,
        one transaction; no revision bump) and return the totals after it, by ``(consumer id,
        counter)``. Counters of consumers deleted meanwhile are skipped.
        """
        totals: dict[tuple[int, str], int] = {}
        if not deltas:
            return totals
        with self._writing(bump=False) as conn:
            upsert = (_pg_insert if conn.dialect.name == "postgresql" else _sqlite_insert)(
                quota_usage
            )
            statement = upsert.on_conflict_do_update(
                index_elements=[quota_usage.c.consumer_id, quota_usage.c.counter],
                set_={
                    "used": quota_usage.c.used + upsert.excluded.used,
                    "updated_at": upsert.excluded.updated_at,
                },
            ).returning(quota_usage.c.used)
            live = set(
                conn.execute(
                    sa.select(consumers.c.id).where(
                        consumers.c.id.in_({consumer for consumer, _ in deltas})
                    )
                ).scalars()
            )
            for (consumer_id, counter), used in sorted(deltas.items()):
                if consumer_id not in live:
                    continue
                total = conn.execute(
                    statement.values(
                        consumer_id=consumer_id, counter=counter, used=used, updated_at=now
                    )
                ).scalar_one()
                totals[(consumer_id, counter)] = int(total)
        return totals

    def quota_usage(self, consumer_id: int, counters: Iterable[str]) -> dict[str, int]:
        """What every gateway has recorded against these counters of a consumer (missing: 0)."""
        wanted = list(counters)
        with self._reading() as conn:
            rows = conn.execute(
                sa.select(quota_usage.c.counter, quota_usage.c.used).where(
                    quota_usage.c.consumer_id == consumer_id,
                    quota_usage.c.counter.in_(wanted),
                )
            ).all()
        found = {row.counter: int(row.used) for row in rows}
        return {counter: found.get(counter, 0) for counter in wanted}

    def prune_quota_usage(self, before: float) -> int:
        """Delete the counters of periods (``q:...``, ``c:<grant>:<period>:...``) last written
        before ``before`` (epoch seconds); those of credits that never refill stay. Returns how many."""
        with self._writing(bump=False) as conn:
            return int(
                conn.execute(
                    sa.delete(quota_usage).where(
                        quota_usage.c.updated_at < before,
                        sa.or_(
                            quota_usage.c.counter.like("q:%"),
                            quota_usage.c.counter.like("c:%:%"),
                        ),
                    )
                ).rowcount
            )

    # -- API keys -----------------------------------------------------------------------------------

    def insert_api_key(
        self,
        *,
        consumer_id: int,
        key_id: str,
        digest: bytes,
        hint: str,
        created_at: float,
        expires_at: float | None,
        scopes: Iterable[str] | None = None,
        label: str | None = None,
    ) -> ApiKeyRecord:
        """Store a new key's digest, with scopes of its own (``None``: its consumer's scopes) and a
        label (validated by the caller).

        Raises:
            NotFound: the consumer no longer exists.
            InvalidInput: a bad scope, or one its consumer does not have (checked in the transaction).
            AlreadyExists: the key id or digest is taken (the caller draws another key).
        """
        own = None if scopes is None else validate_scopes(scopes)
        try:
            with self._writing() as conn:
                _insert_key(
                    conn,
                    consumer_id,
                    key_id,
                    digest,
                    hint,
                    created_at,
                    expires_at,
                    scopes=own,
                    within_consumer=True,
                    label=label,
                )
                self._log_change(conn, "key", key_id)
                row = conn.execute(_key_select().where(api_keys.c.id == key_id)).one()
                _note(key_id=key_id)
        except IntegrityError:
            raise AlreadyExists("key id or digest collision") from None
        return _key(row)

    def find_api_key(self, digest: bytes) -> tuple[ApiKeyRecord, Consumer] | None:
        """The key with this HMAC digest and its consumer, or ``None``."""
        with self._reading() as conn:
            row = conn.execute(_FIND_BY_DIGEST, {"b_digest": digest}).first()
        if row is None or not hmac.compare_digest(bytes(row.digest), digest):
            return None
        return _key(row), _key_consumer(row)

    def find_api_keys_by_id(
        self, key_ids: Iterable[str], *, batch: int = 500
    ) -> dict[str, tuple[ApiKeyRecord, Consumer]]:
        """The keys with these public ids and their consumers, by id (missing ids are left out).

        One query per ``batch`` ids, all in one read transaction (what a gateway re-reads after a
        change).
        """
        wanted = list(dict.fromkeys(key_ids))
        found: dict[str, tuple[ApiKeyRecord, Consumer]] = {}
        if not wanted:
            return found
        with self._reading() as conn:
            for start in range(0, len(wanted), batch):
                chunk = wanted[start : start + batch]
                query = _key_with_consumer_select().where(api_keys.c.id.in_(chunk))
                for row in conn.execute(query):
                    found[row.id] = (_key(row), _key_consumer(row))
        return found

    def api_key_digests(self, key_ids: Iterable[str]) -> list[bytes]:
        """The digests of the keys with these public ids (missing ids are left out)."""
        wanted = list(dict.fromkeys(key_ids))
        found: list[bytes] = []
        with self._reading() as conn:
            for start in range(0, len(wanted), 500):
                query = sa.select(api_keys.c.digest).where(
                    api_keys.c.id.in_(wanted[start : start + 500])
                )
                found.extend(bytes(digest) for digest in conn.execute(query).scalars())
        return found

    def all_api_key_digests(self) -> tuple[int, int, Iterator[bytes]]:
        """``(revision, number of keys, their digests)``, read in one transaction (what a gateway
        loads its key filter from). The digests are all in memory once this returns."""
        with self._reading() as conn:
            revision = int(
                conn.execute(sa.select(meta.c.revision).where(meta.c.id == 1)).scalar_one()
            )
            digests = [bytes(d) for d in conn.execute(sa.select(api_keys.c.digest)).scalars()]
        return revision, len(digests), iter(digests)

    def recent_api_keys(
        self, since: float, limit: int
    ) -> list[tuple[bytes, ApiKeyRecord, Consumer]]:
        """Up to ``limit`` keys last used at or after ``since``, most recent first, with their
        digests and consumers (what a gateway warms its caches with at start)."""
        query = (
            _key_with_consumer_select()
            .where(api_keys.c.last_used_at >= since)
            .order_by(api_keys.c.last_used_at.desc())
            .limit(limit)
        )
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [(bytes(row.digest), _key(row), _key_consumer(row)) for row in rows]

    def idle_api_keys(
        self, since: float, now: float, limit: int
    ) -> list[tuple[bytes, ApiKeyRecord, Consumer]]:
        """Up to ``limit`` keys usable at ``now`` (neither revoked nor expired) that were not used
        since ``since`` (or never), newest first, with their digests and consumers: what a gateway
        fills the rest of its lookup cache with at start, after :meth:`recent_api_keys`."""
        query = (
            _key_with_consumer_select()
            .where(
                sa.or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < since),
                api_keys.c.revoked_at.is_(None),
                sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
            )
            .order_by(api_keys.c.created_at.desc(), api_keys.c.id)
            .limit(limit)
        )
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [(bytes(row.digest), _key(row), _key_consumer(row)) for row in rows]

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this public id, or ``None``."""
        with self._reading() as conn:
            row = conn.execute(_key_select().where(api_keys.c.id == key_id)).first()
        return None if row is None else _key(row)

    def list_api_keys(self, consumer_name: str | None = None) -> list[ApiKeyRecord]:
        """Every key (of one consumer, if named), oldest first.

        Raises:
            NotFound: the named consumer does not exist.
        """
        query = _key_select().order_by(api_keys.c.created_at, api_keys.c.id)
        with self._reading() as conn:
            if consumer_name is not None:
                exists = conn.execute(
                    sa.select(consumers.c.id).where(consumers.c.name == consumer_name)
                ).first()
                if exists is None:
                    raise NotFound(f"unknown consumer '{consumer_name}'")
                query = query.where(consumers.c.name == consumer_name)
            rows = conn.execute(query).all()
        return [_key(row) for row in rows]

    def page_api_keys(
        self, consumer_name: str | None = None, *, after: str | None = None, limit: int = 100
    ) -> list[ApiKeyRecord]:
        """Up to ``limit`` keys (of one consumer, if named) by id, those after ``after`` (a key id,
        the cursor).

        Raises:
            NotFound: the named consumer does not exist.
        """
        query = _key_select().order_by(api_keys.c.id).limit(limit)
        if after is not None:
            query = query.where(api_keys.c.id > after)
        with self._reading() as conn:
            if consumer_name is not None:
                exists = conn.execute(
                    sa.select(consumers.c.id).where(consumers.c.name == consumer_name)
                ).first()
                if exists is None:
                    raise NotFound(f"unknown consumer '{consumer_name}'")
                query = query.where(consumers.c.name == consumer_name)
            rows = conn.execute(query).all()
        return [_key(row) for row in rows]

    def revoke_api_key(self, key_id: str, *, now: float) -> ApiKeyRecord:
        """Revoke a key (idempotent: the first revocation time is kept).

        Raises:
            NotFound: no such key.
        """
        with self._writing() as conn:
            conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = conn.execute(_key_select().where(api_keys.c.id == key_id)).first()
            if row is None:
                raise NotFound(f"unknown key id '{key_id}'")
            self._log_change(conn, "key", key_id)
        return _key(row)

    def roll_api_key(
        self,
        old_id: str,
        *,
        old_expires_at: float,
        new_key_id: str,
        new_digest: bytes,
        new_hint: str,
        created_at: float,
        new_expires_at: float | None,
    ) -> tuple[ApiKeyRecord, ApiKeyRecord]:
        """In one transaction: add the replacement key and make the old one expire at ``old_expires_at``.

        Returns ``(old, new)`` as stored afterwards.

        Raises:
            NotFound: no such key.
            InvalidInput: the old key is revoked, expired or already rolled (checked in the transaction).
            AlreadyExists: the new key id or digest is taken.
        """
        try:
            with self._writing() as conn:
                old = conn.execute(_key_select().where(api_keys.c.id == old_id)).first()
                if old is None:
                    raise NotFound(f"unknown key id '{old_id}'")
                changed = conn.execute(
                    sa.update(api_keys)
                    .where(
                        api_keys.c.id == old_id,
                        api_keys.c.revoked_at.is_(None),
                        api_keys.c.replaced_by.is_(None),
                        sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > created_at),
                    )
                    .values(expires_at=old_expires_at, replaced_by=new_key_id)
                ).rowcount
                if not changed:
                    record = _key(old)
                    raise InvalidInput(
                        f"key '{old_id}' is {record.status_at(created_at)} and cannot be rolled"
                        + (f"; roll '{record.replaced_by}' instead" if record.replaced_by else "")
                    )
                _insert_key(
                    conn,
                    old.consumer_id,
                    new_key_id,
                    new_digest,
                    new_hint,
                    created_at,
                    new_expires_at,
                    scopes=_scopes(old.scopes),  # its own scopes as stored (None: the consumer's)
                    within_consumer=False,
                    label=old.label,
                )
                rows = conn.execute(
                    _key_select().where(api_keys.c.id.in_([old_id, new_key_id]))
                ).all()
                _note(new_key_id=new_key_id, old_expires_at=old_expires_at)
                self._log_change(conn, "key", old_id, new_key_id)
        except IntegrityError:
            raise AlreadyExists("key id or digest collision") from None
        by_id = {row.id: _key(row) for row in rows}
        return by_id[old_id], by_id[new_key_id]

    def find_api_keys(
        self, digests: Iterable[bytes], *, batch: int = 500
    ) -> dict[bytes, tuple[ApiKeyRecord, Consumer]]:
        """The keys with these HMAC digests and their consumers, by digest (unknown ones are left
        out): one query per ``batch`` digests, in one read transaction (a leak report's lookup)."""
        wanted = list(dict.fromkeys(digests))
        found: dict[bytes, tuple[ApiKeyRecord, Consumer]] = {}
        if not wanted:
            return found
        with self._reading() as conn:
            for start in range(0, len(wanted), batch):
                chunk = wanted[start : start + batch]
                query = _key_with_consumer_select().where(api_keys.c.digest.in_(chunk))
                for row in conn.execute(query):
                    found[bytes(row.digest)] = (_key(row), _key_consumer(row))
        return found

    def key_leaks(self, fingerprints: Iterable[str]) -> dict[str, KeyLeak]:
        """The leak reports with these fingerprints, by fingerprint (what a replay finds)."""
        wanted = list(dict.fromkeys(fingerprints))
        found: dict[str, KeyLeak] = {}
        with self._reading() as conn:
            for start in range(0, len(wanted), 500):
                query = sa.select(key_leaks).where(
                    key_leaks.c.fingerprint.in_(wanted[start : start + 500])
                )
                for row in conn.execute(query):
                    found[row.fingerprint] = _key_leak(row)
        return found

    def leaks_of_key(self, key_id: str) -> list[KeyLeak]:
        """Every leak report of one key, oldest first."""
        query = sa.select(key_leaks).where(key_leaks.c.key_id == key_id).order_by(key_leaks.c.id)
        with self._reading() as conn:
            return [_key_leak(row) for row in conn.execute(query)]

    def record_key_leaks(
        self,
        leaks: Sequence[LeakWrite],
        *,
        reported_at: float,
        retention: float | None = None,
    ) -> list[tuple[KeyLeak, bool]]:
        """In one transaction: record leak reports and do what each ``action`` says to its key --
        ``revoke`` and ``roll`` revoke it (``roll`` also adds ``new_key`` = (id, digest, hint) for the
        same consumer, with the old key's own scopes, and marks the old key replaced by it);
        ``notify`` changes no key. A key no longer live when its turn comes (revoked by an earlier
        report in the batch) is left alone (action ``none``). Each recorded report also writes its
        ``audit`` event (with ``new_key_id`` for a roll); ``retention`` prunes older events.

        Returns, per report in order, ``(the report, True)``, or ``(the earlier report, False)`` when
        one with its fingerprint exists (a replay: nothing changes; no revision bump if all are).

        Raises:
            NotFound: no such key (nothing is recorded).
            AlreadyExists: a new key's id or digest is taken (nothing is recorded).
        """
        earlier = self.key_leaks(leak.fingerprint for leak in leaks)
        results: list[tuple[KeyLeak, bool] | None] = [
            (earlier[leak.fingerprint], False) if leak.fingerprint in earlier else None
            for leak in leaks
        ]
        if all(result is not None for result in results):
            return [result for result in results if result is not None]
        pending = [(i, leak) for i, leak in enumerate(leaks) if results[i] is None]
        try:
            with self._writing() as conn:
                recorded = _record_leaks(conn, [leak for _, leak in pending], reported_at)
                for (index, _), outcome in zip(pending, recorded, strict=True):
                    results[index] = outcome
                audits = [
                    (leak.audit, leak_record.new_key_id)
                    for (_, leak), (leak_record, created) in zip(pending, recorded, strict=True)
                    if created and leak.audit is not None
                ]
                if audits:
                    conn.execute(
                        sa.insert(audit_events),
                        [
                            _audit_values(record, {"new_key_id": new} if new else {})
                            for record, new in audits
                        ],
                    )
                    if retention:
                        oldest = audits[0][0].at - retention
                        conn.execute(sa.delete(audit_events).where(audit_events.c.at < oldest))
                refs = [
                    ref
                    for leak_record, created in recorded
                    if created
                    for ref in (leak_record.key_id, leak_record.new_key_id)
                    if ref is not None
                ]
                self._log_change(conn, "key", *dict.fromkeys(refs or [pending[0][1].key_id]))
        except IntegrityError:
            if len(leaks) > 1:  # another node recorded one of them meanwhile: one at a time
                out: list[tuple[KeyLeak, bool]] = []
                for leak in leaks:
                    out.extend(
                        self.record_key_leaks([leak], reported_at=reported_at, retention=retention)
                    )
                return out
            again = self.key_leaks([leaks[0].fingerprint]).get(leaks[0].fingerprint)
            if again is not None:
                return [(again, False)]
            raise AlreadyExists("key id or digest collision") from None
        return [result for result in results if result is not None]

    def touch_api_keys(self, last_used: Mapping[str, float]) -> None:
        """Record last-used times in one batch (never moves a time backwards; no revision bump)."""
        if not last_used:
            return
        statement = (
            sa.update(api_keys)
            .where(
                api_keys.c.id == sa.bindparam("b_id"),
                sa.or_(
                    api_keys.c.last_used_at.is_(None),
                    api_keys.c.last_used_at < sa.bindparam("b_at"),
                ),
            )
            .values(last_used_at=sa.bindparam("b_at"))
        )
        params = [{"b_id": key_id, "b_at": at} for key_id, at in last_used.items()]
        with self._writing(bump=False) as conn:
            conn.execute(statement, params)

    def set_api_key_expiry(
        self, key_id: str, expires_at: float | None, *, now: float
    ) -> ApiKeyRecord:
        """Set (or, with ``None``, clear) a key's expiry.

        Raises:
            NotFound: no such key.
            InvalidInput: the key is revoked, expired or rolled (its expiry is its grace).
        """
        with self._writing() as conn:
            changed = conn.execute(
                sa.update(api_keys)
                .where(
                    api_keys.c.id == key_id,
                    api_keys.c.revoked_at.is_(None),
                    api_keys.c.replaced_by.is_(None),
                    sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
                )
                .values(expires_at=expires_at)
            ).rowcount
            row = conn.execute(_key_select().where(api_keys.c.id == key_id)).first()
            if row is None:
                raise NotFound(f"unknown key id '{key_id}'")
            if not changed:
                raise InvalidInput(
                    f"key '{key_id}' is {_key(row).status_at(now)}; its expiry cannot change"
                )
            self._log_change(conn, "key", key_id)
        return _key(row)

    # -- portal: members, sign-in links, sessions ---------------------------------------------------

    def _consumer_id(self, conn: Connection, name: str) -> int:
        found = conn.execute(sa.select(consumers.c.id).where(consumers.c.name == name)).first()
        if found is None:
            raise NotFound(f"unknown consumer '{name}'")
        return int(found.id)

    def add_consumer_member(
        self, consumer_name: str, kind: str, value: str, *, now: float
    ) -> MemberRecord:
        """Make ``kind``/``value`` (validated by the caller) a member of the consumer.

        Raises:
            NotFound: no such consumer.
            AlreadyExists: already a member.
        """
        try:
            with self._writing() as conn:
                consumer_id = self._consumer_id(conn, consumer_name)
                member_id = conn.execute(
                    sa.insert(consumer_members)
                    .values(consumer_id=consumer_id, kind=kind, value=value, created_at=now)
                    .returning(consumer_members.c.id)
                ).scalar_one()
                _note(member_id=member_id)
                self._log_change(conn, "consumer", consumer_id)
        except IntegrityError:
            raise AlreadyExists(
                f"{kind} {value!r} is already a member of '{consumer_name}'"
            ) from None
        return MemberRecord(int(member_id), consumer_name, kind, value, now)

    def remove_consumer_member(self, consumer_name: str, member_id: int) -> MemberRecord:
        """Remove a member of the consumer by id.

        Raises:
            NotFound: no such consumer, or no such member of it.
        """
        with self._writing() as conn:
            consumer_id = self._consumer_id(conn, consumer_name)
            row = conn.execute(
                sa.select(consumer_members).where(
                    consumer_members.c.id == member_id,
                    consumer_members.c.consumer_id == consumer_id,
                )
            ).first()
            if row is None:
                raise NotFound(f"no member {member_id} of consumer '{consumer_name}'")
            conn.execute(sa.delete(consumer_members).where(consumer_members.c.id == member_id))
            _note(kind=row.kind, value=row.value)
            self._log_change(conn, "consumer", consumer_id)
        return MemberRecord(row.id, consumer_name, row.kind, row.value, float(row.created_at))

    def list_consumer_members(self, consumer_name: str) -> list[MemberRecord]:
        """The consumer's members, oldest first.

        Raises:
            NotFound: no such consumer.
        """
        with self._reading() as conn:
            consumer_id = self._consumer_id(conn, consumer_name)
            rows = conn.execute(
                sa.select(consumer_members)
                .where(consumer_members.c.consumer_id == consumer_id)
                .order_by(consumer_members.c.id)
            ).all()
        return [
            MemberRecord(row.id, consumer_name, row.kind, row.value, float(row.created_at))
            for row in rows
        ]

    def consumers_of(self, identities: Iterable[tuple[str, str]]) -> list[Consumer]:
        """The consumers any of ``identities`` (``(kind, value)`` pairs) is a member of, by name."""
        wanted = [
            sa.and_(consumer_members.c.kind == k, consumer_members.c.value == v)
            for k, v in identities
        ]
        if not wanted:
            return []
        query = (
            sa.select(consumers)
            .where(
                consumers.c.id.in_(sa.select(consumer_members.c.consumer_id).where(sa.or_(*wanted)))
            )
            .order_by(consumers.c.name)
        )
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [_consumer(row) for row in rows]

    def insert_portal_link(
        self,
        *,
        link_id: str,
        digest: bytes,
        consumer_name: str,
        email: str,
        created_at: float,
        expires_at: float,
    ) -> PortalLinkRecord:
        """Store a sign-in link's digest; the e-mail address becomes a member of the consumer if it
        is not one yet.

        Raises:
            NotFound: no such consumer.
            AlreadyExists: the link id or digest is taken.
        """
        try:
            with self._writing() as conn:
                consumer_id = self._consumer_id(conn, consumer_name)
                conn.execute(
                    sa.insert(portal_links).values(
                        id=link_id,
                        digest=digest,
                        consumer_id=consumer_id,
                        email=email,
                        created_at=created_at,
                        expires_at=expires_at,
                    )
                )
                member = conn.execute(
                    sa.select(consumer_members.c.id).where(
                        consumer_members.c.consumer_id == consumer_id,
                        consumer_members.c.kind == "email",
                        consumer_members.c.value == email,
                    )
                ).first()
                if member is None:
                    conn.execute(
                        sa.insert(consumer_members).values(
                            consumer_id=consumer_id,
                            kind="email",
                            value=email,
                            created_at=created_at,
                        )
                    )
                _note(link_id=link_id, member_added=member is None)
                self._log_change(conn, "consumer", consumer_id)
        except IntegrityError:
            raise AlreadyExists("sign-in link id or digest collision") from None
        return PortalLinkRecord(link_id, consumer_name, email, created_at, expires_at, None)

    def use_portal_link(self, digest: bytes, *, now: float) -> PortalLinkRecord | None:
        """Mark the unexpired, unused link with this digest used and return it; ``None`` if there is
        no such link, or it has expired or been used (a link works once)."""
        with self._writing(bump=False) as conn:
            changed = conn.execute(
                sa.update(portal_links)
                .where(
                    portal_links.c.digest == digest,
                    portal_links.c.used_at.is_(None),
                    portal_links.c.expires_at > now,
                )
                .values(used_at=now)
            ).rowcount
            if not changed:
                return None
            row = conn.execute(
                sa.select(portal_links, consumers.c.name.label("consumer_name"))
                .join_from(portal_links, consumers, portal_links.c.consumer_id == consumers.c.id)
                .where(portal_links.c.digest == digest)
            ).one()
        return PortalLinkRecord(
            row.id, row.consumer_name, row.email, float(row.created_at), float(row.expires_at), now
        )

    def create_portal_session(
        self, digest: bytes, record: PortalSessionRecord, *, prune_before: float | None = None
    ) -> None:
        """Store a new session (by the digest of its cookie value); also delete sessions that ended
        before ``prune_before``."""
        with self._writing(bump=False) as conn:
            if prune_before is not None:
                conn.execute(
                    sa.delete(portal_sessions).where(portal_sessions.c.expires_at < prune_before)
                )
            conn.execute(
                sa.insert(portal_sessions).values(
                    digest=digest,
                    identity_kind=record.identity_kind,
                    identity=record.identity,
                    email=record.email,
                    created_at=record.created_at,
                    last_seen_at=record.last_seen_at,
                    expires_at=record.expires_at,
                )
            )

    def get_portal_session(self, digest: bytes) -> PortalSessionRecord | None:
        """The session with this digest, or ``None``."""
        with self._reading() as conn:
            row = conn.execute(
                sa.select(portal_sessions).where(portal_sessions.c.digest == digest)
            ).first()
        if row is None:
            return None
        return PortalSessionRecord(
            row.identity_kind,
            row.identity,
            row.email,
            float(row.created_at),
            float(row.last_seen_at),
            float(row.expires_at),
        )

    def touch_portal_session(self, digest: bytes, now: float) -> None:
        """Record that the session was used at ``now``."""
        with self._writing(bump=False) as conn:
            conn.execute(
                sa.update(portal_sessions)
                .where(portal_sessions.c.digest == digest)
                .values(last_seen_at=now)
            )

    def delete_portal_session(self, digest: bytes) -> None:
        """End a session (signing out)."""
        with self._writing(bump=False) as conn:
            conn.execute(sa.delete(portal_sessions).where(portal_sessions.c.digest == digest))

    # -- signing keys -------------------------------------------------------------------------------

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        """Every signing key, oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                sa.select(signing_keys).order_by(signing_keys.c.created_at, signing_keys.c.kid)
            ).all()
        return [_signing_key(row) for row in rows]

    def insert_signing_keys(self, records: Iterable[SigningKeyRecord]) -> bool:
        """Insert keys in one transaction; False if a constraint refused them (e.g. a second active key)."""
        values = [_signing_values(record) for record in records]
        if not values:
            return True
        try:
            with self._writing() as conn:
                conn.execute(sa.insert(signing_keys), values)
                _note(created={value["kid"]: value["state"] for value in values})
                self._log_change(conn, "signing", "")
        except IntegrityError:
            return False
        return True

    def rotate_signing_keys(
        self, *, active_kid: str, next_kid: str, new_next: SigningKeyRecord, now: float
    ) -> bool:
        """Retire ``active_kid``, activate ``next_kid``, insert ``new_next``: all or nothing.

        Returns False (and changes nothing) if the keys are no longer in those states: another process
        rotated first.
        """
        try:
            with self._writing() as conn:
                retired = conn.execute(
                    sa.update(signing_keys)
                    .where(signing_keys.c.kid == active_kid, signing_keys.c.state == "active")
                    .values(state="retired", retired_at=now)
                ).rowcount
                if retired != 1:
                    raise _Conflict
                activated = conn.execute(
                    sa.update(signing_keys)
                    .where(signing_keys.c.kid == next_kid, signing_keys.c.state == "next")
                    .values(state="active", activated_at=now)
                ).rowcount
                if activated != 1:
                    raise _Conflict
                conn.execute(sa.insert(signing_keys).values(**_signing_values(new_next)))
                _note(retired=active_kid, active=next_kid, next=new_next.kid, alg=new_next.alg)
                self._log_change(conn, "signing", "")
        except (_Conflict, IntegrityError):
            return False
        return True

    def delete_signing_keys(self, kids: Iterable[str]) -> int:
        """Delete retired keys by kid (live keys are never deleted); returns how many went."""
        wanted = list(kids)
        if not wanted:
            return 0
        with self._writing() as conn:
            deleted = conn.execute(
                sa.delete(signing_keys).where(
                    signing_keys.c.kid.in_(wanted), signing_keys.c.state == "retired"
                )
            ).rowcount
            _note(pruned=wanted)
            self._log_change(conn, "signing", "")
        return int(deleted)

    # -- admin tokens -------------------------------------------------------------------------------

    def insert_admin_token(
        self,
        *,
        token_id: str,
        name: str,
        digest: bytes,
        hint: str,
        scopes: Iterable[str],
        created_at: float,
        expires_at: float | None,
    ) -> AdminTokenRecord:
        """Store a new admin token's digest (scopes are checked by :mod:`keyswap.manage.tokens`).

        Raises:
            AlreadyExists: the token id or digest is taken (the caller draws another token).
        """
        try:
            with self._writing() as conn:
                conn.execute(
                    sa.insert(admin_tokens).values(
                        id=token_id,
                        name=name,
                        digest=digest,
                        hint=hint,
                        scopes=format_scopes(scopes),
                        created_at=created_at,
                        expires_at=expires_at,
                    )
                )
                row = conn.execute(
                    sa.select(admin_tokens).where(admin_tokens.c.id == token_id)
                ).one()
                self._log_change(conn, "admin_token", token_id)
        except IntegrityError:
            raise AlreadyExists("admin token id or digest collision") from None
        return _admin_token(row)

    def find_admin_token(self, digest: bytes) -> AdminTokenRecord | None:
        """The admin token with this HMAC digest, or ``None``."""
        with self._reading() as conn:
            row = conn.execute(
                sa.select(admin_tokens).where(admin_tokens.c.digest == digest)
            ).first()
        if row is None or not hmac.compare_digest(bytes(row.digest), digest):
            return None
        return _admin_token(row)

    def get_admin_token(self, token_id: str) -> AdminTokenRecord | None:
        """The admin token with this id, or ``None``."""
        with self._reading() as conn:
            row = conn.execute(sa.select(admin_tokens).where(admin_tokens.c.id == token_id)).first()
        return None if row is None else _admin_token(row)

    def list_admin_tokens(self) -> list[AdminTokenRecord]:
        """Every admin token, oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                sa.select(admin_tokens).order_by(admin_tokens.c.created_at, admin_tokens.c.id)
            ).all()
        return [_admin_token(row) for row in rows]

    def revoke_admin_token(self, token_id: str, *, now: float) -> AdminTokenRecord:
        """Revoke an admin token (idempotent: the first revocation time is kept).

        Raises:
            NotFound: no such token.
        """
        with self._writing() as conn:
            conn.execute(
                sa.update(admin_tokens)
                .where(admin_tokens.c.id == token_id, admin_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = conn.execute(sa.select(admin_tokens).where(admin_tokens.c.id == token_id)).first()
            if row is None:
                raise NotFound(f"unknown admin token id '{token_id}'")
            self._log_change(conn, "admin_token", token_id)
        return _admin_token(row)

    # -- audit log ----------------------------------------------------------------------------------

    def list_audit_events(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        since: float | None = None,
        until: float | None = None,
        actor_kind: str | None = None,
        actor_name: str | None = None,
        action: str | None = None,
        action_prefix: str | None = None,
        target: str | None = None,
        targets: Iterable[str] | None = None,
    ) -> list[AuditRecord]:
        """Audit events, newest first (by id), at most ``limit``; every filter given must match.

        ``before``: only events with a smaller id (the cursor: the last id of the previous page).
        ``since``: only events at or after this time; ``until``: before it. ``action_prefix``: actions starting with it.
        ``targets``: only events on one of these targets.
        """
        query = sa.select(audit_events).order_by(audit_events.c.id.desc()).limit(max(0, limit))
        if before is not None:
            query = query.where(audit_events.c.id < before)
        if since is not None:
            query = query.where(audit_events.c.at >= since)
        if until is not None:
            query = query.where(audit_events.c.at < until)
        if actor_kind is not None:
            query = query.where(audit_events.c.actor_kind == actor_kind)
        if actor_name is not None:
            query = query.where(audit_events.c.actor_name == actor_name)
        if action is not None:
            query = query.where(audit_events.c.action == action)
        if action_prefix is not None:
            query = query.where(audit_events.c.action.startswith(action_prefix, autoescape=True))
        if target is not None:
            query = query.where(audit_events.c.target == target)
        if targets is not None:
            query = query.where(audit_events.c.target.in_(list(targets)))
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [_audit(row) for row in rows]

    def append_audit_event(self, record: AuditRecord, *, retention: float | None = None) -> None:
        """Write an audit event for an action that changes nothing else (e.g. minting a token), in a
        transaction of its own (no revision bump); with ``retention``, also prune as :meth:`recording`
        does."""
        with self._writing(bump=False) as conn:
            _write_audit(conn, _Recording(self, record, retention))

    def prune_audit_events(self, older_than: float) -> int:
        """Delete audit events from before ``older_than`` (epoch seconds); returns how many."""
        with self._writing(bump=False) as conn:
            deleted = conn.execute(
                sa.delete(audit_events).where(audit_events.c.at < older_than)
            ).rowcount
        return int(deleted)


# -- helpers -----------------------------------------------------------------------------------------


def _write_audit(conn: Connection, recording: _Recording) -> None:
    record = recording.record
    facts = recording.facts or {}
    target = record.target
    for name, value in facts.items():  # plain replacement: a stray brace never fails the change
        target = target.replace("{" + name + "}", str(value))
    conn.execute(
        sa.insert(audit_events).values(
            at=record.at,
            actor_kind=record.actor_kind,
            actor_name=record.actor_name,
            action=record.action,
            target=target[:255],
            request_id=record.request_id,
            client=record.client,
            changes={**record.changes, **facts},
        )
    )
    if recording.retention is not None and recording.retention > 0:
        conn.execute(
            sa.delete(audit_events).where(audit_events.c.at < record.at - recording.retention)
        )


def _audit(row: sa.Row[Any]) -> AuditRecord:
    return AuditRecord(
        id=int(row.id),
        at=float(row.at),
        actor_kind=row.actor_kind,
        actor_name=row.actor_name,
        action=row.action,
        target=row.target,
        changes=dict(row.changes or {}),
        request_id=row.request_id,
        client=row.client,
    )


def _admin_token(row: sa.Row[Any]) -> AdminTokenRecord:
    return AdminTokenRecord(
        id=row.id,
        name=row.name,
        hint=row.hint,
        scopes=tuple(str(row.scopes or "").split()),
        created_at=float(row.created_at),
        expires_at=None if row.expires_at is None else float(row.expires_at),
        revoked_at=None if row.revoked_at is None else float(row.revoked_at),
    )


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for ``name`` (PostgreSQL)."""
    digest = hashlib.sha256(f"keyswap:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _behind_message(state: migrate.SchemaState, url: str) -> str:
    where = (
        "has no keyswap schema yet"
        if state.current is None
        else (f"schema is at revision {state.current}")
    )
    return (
        f"the database {display_url(url)} {where}; this keyswap needs revision {state.head}: "
        f"run `keyswap db upgrade --db URL` first"
    )


def _first_line(error: object) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _prepare_sqlite_file(path: Path, create: CreateMode) -> None:
    if create == "none" and not path.is_file():
        raise ConfigError(f"no database at {path}")
    if create == "file" and not path.parent.is_dir():
        raise ConfigError(
            f"cannot create the database {path}: the directory {path.parent} does not exist"
        )
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # created by another process just now
    except OSError as exc:
        raise ConfigError(f"cannot create the database file {path}: {exc.strerror}") from None


def _create_engine(url: str, *, file_backed: bool, timeout: float | None = None) -> Engine:
    options: dict[str, Any] = {}
    is_sqlite = sa.make_url(url).get_backend_name() == "sqlite"
    if is_sqlite and not file_backed:
        # In-memory SQLite: one shared connection, or every connection would see its own database.
        options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    if timeout is not None:
        options["pool_timeout"] = timeout
    if is_postgres(url):
        # Notice connections a database restart killed before using them; bound connection attempts.
        options["pool_pre_ping"] = True
        options["connect_args"] = _postgres_connect_args(sa.make_url(url).query, timeout)
    try:
        engine = sa.create_engine(url, **options)
    except ArgumentError:
        raise ConfigError(
            f"cannot use the database URL {display_url(url)}: unknown database or driver"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            f"the database URL {display_url(url)} needs a driver that is not installed "
            f"({exc.name or exc}); for PostgreSQL: pip install 'keyswap[postgres]'"
        ) from None
    if is_sqlite:
        _configure_sqlite(engine, wal=file_backed)
    return engine


def _postgres_connect_args(query: Mapping[str, Any], timeout: float | None) -> dict[str, Any]:
    """libpq parameters bounding what a PostgreSQL connection may wait (those in the URL win)."""
    args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = (
            PG_CONNECT_TIMEOUT if timeout is None else max(2, math.ceil(timeout))
        )
    if timeout is None:
        return args
    args.update((name, value) for name, value in PG_SOCKET_OPTIONS.items() if name not in query)
    given = query.get("options", "")
    given = given if isinstance(given, str) else " ".join(given)
    if "statement_timeout" not in given:
        limit = f"-c statement_timeout={max(1, round(timeout * 1000))}"
        args["options"] = f"{given} {limit}".strip()
    return args


def _configure_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so pysqlite's own transaction handling is switched off.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout = 10000")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so a read-then-write transaction cannot deadlock.
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _key_select(*extra: Any) -> sa.Select[Any]:
    return sa.select(
        api_keys.c.id,
        api_keys.c.consumer_id,
        consumers.c.name.label("consumer_name"),
        api_keys.c.hint,
        api_keys.c.created_at,
        api_keys.c.expires_at,
        api_keys.c.revoked_at,
        api_keys.c.last_used_at,
        api_keys.c.replaced_by,
        api_keys.c.scopes,
        consumers.c.scopes.label("consumer_scopes"),
        api_keys.c.label,
        *extra,
    ).join_from(api_keys, consumers, api_keys.c.consumer_id == consumers.c.id)


def _key_with_consumer_select() -> sa.Select[Any]:
    return _key_select(
        consumers.c.metadata.label("consumer_metadata"),
        consumers.c.created_at.label("consumer_created_at"),
        consumers.c.rate_limit.label("consumer_rate_limit"),
        consumers.c.max_connections.label("consumer_max_connections"),
        consumers.c.leak_policy.label("consumer_leak_policy"),
        consumers.c.quota.label("consumer_quota"),
        consumers.c.credits.label("consumer_credits"),
        consumers.c.credits_refill.label("consumer_credits_refill"),
        consumers.c.credits_set_at.label("consumer_credits_set_at"),
        api_keys.c.digest,
    )


# Built once: building a statement costs more than running it (a cached lookup's miss is hot).
_FIND_BY_DIGEST = _key_with_consumer_select().where(api_keys.c.digest == sa.bindparam("b_digest"))
#: The store revision, as plain SQL for the DB-API (no parameters: the same text on every driver).
_REVISION_SQL = "SELECT revision FROM meta WHERE id = 1"


class QuickRevision:
    """The store revision of a SQLite file, read in a few microseconds without ever waiting.

    Its own ``sqlite3`` connection (opened on first use, by the thread that calls it; read only; a
    busy timeout of 0), one statement per call. In WAL mode (keyswap's) a reader never waits for a
    writer; anything that would make it wait (a connection holding the file in exclusive locking
    mode, a recovery) fails at once with ``sqlite3.Error`` instead, and the caller reads the
    revision the usual way, on a store thread. The gateway calls it on its event loop before it
    refuses an unknown API key (:meth:`keyswap.gateway.app.GatewayApp`), so that a refusal costs no
    thread hand-off.
    """

    __slots__ = ("_conn", "_path")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def __call__(self) -> int:
        """The revision now.

        Raises:
            sqlite3.Error: the file is locked, missing or unreadable (never waits for it).
        """
        conn = self._conn
        if conn is None:
            # mode=rw: a missing file is an error, never a new, empty database kept open here.
            uri = f"{self._path.absolute().as_uri()}?mode=rw"
            conn = sqlite3.connect(uri, timeout=0, isolation_level=None, uri=True)
            try:
                conn.execute("PRAGMA query_only = 1")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        row = conn.execute(_REVISION_SQL).fetchone()
        if row is None:
            raise sqlite3.OperationalError("no meta row")
        return int(row[0])

    def close(self) -> None:
        """Close its connection (from the thread that used it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _key_consumer(row: sa.Row[Any]) -> Consumer:
    return Consumer(
        id=row.consumer_id,
        name=row.consumer_name,
        metadata=dict(row.consumer_metadata),
        created_at=row.consumer_created_at,
        rate_limit=row.consumer_rate_limit,
        scopes=_scopes(row.consumer_scopes) or (),
        max_connections=row.consumer_max_connections,
        leak_policy=row.consumer_leak_policy,
        quota=row.consumer_quota,
        credits=row.consumer_credits,
        credits_refill=row.consumer_credits_refill,
        credits_set_at=row.consumer_credits_set_at,
    )


def _insert_key(
    conn: Connection,
    consumer_id: int,
    key_id: str,
    digest: bytes,
    hint: str,
    created_at: float,
    expires_at: float | None,
    *,
    scopes: tuple[str, ...] | None,
    within_consumer: bool,
    label: str | None = None,
) -> None:
    owner = conn.execute(
        sa.select(consumers.c.name, consumers.c.scopes).where(consumers.c.id == consumer_id)
    ).first()
    if owner is None:
        raise NotFound("the consumer no longer exists")
    if within_consumer and scopes is not None:
        granted = _scopes(owner.scopes) or ()
        beyond = [scope for scope in scopes if scope not in granted]
        if beyond:
            raise InvalidInput(
                f"consumer '{owner.name}' does not have the scope(s) {', '.join(beyond)}; "
                f"its scopes: {', '.join(granted) or 'none'} "
                f"(keyswap consumers set-scopes changes them)"
            )
    conn.execute(
        sa.insert(api_keys).values(
            id=key_id,
            consumer_id=consumer_id,
            digest=digest,
            hint=hint,
            created_at=created_at,
            expires_at=expires_at,
            scopes=None if scopes is None else format_scopes(scopes),
            label=label,
        )
    )


class LeakWrite(NamedTuple):
    """One leak report to record (:meth:`Store.record_key_leaks`)."""

    fingerprint: str
    key_id: str
    source: str
    url: str
    action: str
    new_key: tuple[str, bytes, str] | None = None  # (id, digest, hint) of a roll's new key
    audit: AuditRecord | None = None


def _record_leaks(
    conn: Connection, leaks: Sequence[LeakWrite], reported_at: float
) -> list[tuple[KeyLeak, bool]]:
    """Record ``leaks`` (none of them recorded before) and act on their keys, in ``conn``'s
    transaction: a few statements for the whole batch (executemany), one insert per new key."""
    wanted = list(dict.fromkeys(leak.key_id for leak in leaks))
    rows: dict[str, Any] = {}
    for start in range(0, len(wanted), 500):
        query = _key_select().where(api_keys.c.id.in_(wanted[start : start + 500]))
        rows.update({row.id: row for row in conn.execute(query)})
    missing = [key_id for key_id in wanted if key_id not in rows]
    if missing:
        raise NotFound(f"unknown key id '{missing[0]}'")
    revoked: set[str] = set()
    revoke_ids: list[str] = []
    rolls: list[dict[str, Any]] = []
    values: list[dict[str, Any]] = []
    out: list[tuple[KeyLeak, bool]] = []
    first: dict[str, KeyLeak] = {}
    for leak in leaks:
        if leak.fingerprint in first:  # the same report twice in one batch
            out.append((first[leak.fingerprint], False))
            continue
        old = rows[leak.key_id]
        action, new_key = leak.action, leak.new_key
        live = (
            old.revoked_at is None
            and leak.key_id not in revoked
            and (old.expires_at is None or old.expires_at > reported_at)
        )
        if action in ("revoke", "roll") and not live:
            action, new_key = "none", None  # revoked by an earlier report
        new_key_id = new_key[0] if action == "roll" and new_key is not None else None
        if action in ("revoke", "roll"):
            revoked.add(leak.key_id)
            if new_key is not None and new_key_id is not None:
                rolls.append({"b_id": leak.key_id, "b_new": new_key_id})
                _insert_key(
                    conn,
                    old.consumer_id,
                    new_key_id,
                    new_key[1],
                    new_key[2],
                    reported_at,
                    None,
                    scopes=_scopes(old.scopes),
                    within_consumer=False,
                )
            else:
                revoke_ids.append(leak.key_id)
        record = KeyLeak(
            0, leak.key_id, old.consumer_id, reported_at, leak.source, leak.url, action, new_key_id
        )
        first[leak.fingerprint] = record
        out.append((record, True))
        values.append(
            {
                "fingerprint": leak.fingerprint,
                "key_id": leak.key_id,
                "consumer_id": old.consumer_id,
                "reported_at": reported_at,
                "source": leak.source,
                "url": leak.url,
                "action": action,
                "new_key_id": new_key_id,
            }
        )
    for start in range(0, len(revoke_ids), 500):
        conn.execute(
            sa.update(api_keys)
            .where(
                api_keys.c.id.in_(revoke_ids[start : start + 500]),
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=reported_at)
        )
    if rolls:
        conn.execute(
            sa.update(api_keys)
            .where(api_keys.c.id == sa.bindparam("b_id"), api_keys.c.revoked_at.is_(None))
            .values(revoked_at=reported_at, replaced_by=sa.bindparam("b_new")),
            rolls,
        )
    if values:
        conn.execute(sa.insert(key_leaks), values)
        fingerprints = [value["fingerprint"] for value in values]
        ids: dict[str, int] = {}
        for start in range(0, len(fingerprints), 500):
            query = sa.select(key_leaks.c.fingerprint, key_leaks.c.id).where(
                key_leaks.c.fingerprint.in_(fingerprints[start : start + 500])
            )
            ids.update({row.fingerprint: row.id for row in conn.execute(query)})
        numbered = {
            fingerprint: dataclasses.replace(record, id=ids[fingerprint])
            for fingerprint, record in first.items()
        }
        out = [
            (numbered[leak.fingerprint], created)
            for leak, (_, created) in zip(leaks, out, strict=True)
        ]
    return out


def _audit_values(record: AuditRecord, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "at": record.at,
        "actor_kind": record.actor_kind,
        "actor_name": record.actor_name,
        "action": record.action,
        "target": record.target[:255],
        "request_id": record.request_id,
        "client": record.client,
        "changes": {**record.changes, **extra},
    }


def _key_leak(row: sa.Row[Any]) -> KeyLeak:
    return KeyLeak(
        id=row.id,
        key_id=row.key_id,
        consumer_id=row.consumer_id,
        reported_at=row.reported_at,
        source=row.source,
        url=row.url,
        action=row.action,
        new_key_id=row.new_key_id,
    )


def _consumer(row: sa.Row[Any]) -> Consumer:
    return Consumer(
        id=row.id,
        name=row.name,
        metadata=dict(row.metadata),
        created_at=row.created_at,
        rate_limit=row.rate_limit,
        scopes=_scopes(row.scopes) or (),
        max_connections=row.max_connections,
        leak_policy=row.leak_policy,
        quota=row.quota,
        credits=row.credits,
        credits_refill=row.credits_refill,
        credits_set_at=row.credits_set_at,
    )


def _stored(scopes: tuple[str, ...]) -> str | None:
    """A consumer's scopes as stored: space-separated, ``NULL`` for none."""
    return format_scopes(scopes) or None


def _scopes(value: str | None) -> tuple[str, ...] | None:
    """Stored scopes as a tuple (``None`` stays ``None``: for a key, "its consumer's")."""
    return None if value is None else tuple(value.split())


def _key(row: sa.Row[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        consumer_id=row.consumer_id,
        consumer_name=row.consumer_name,
        hint=row.hint,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        replaced_by=row.replaced_by,
        scopes=_scopes(row.scopes),
        consumer_scopes=_scopes(row.consumer_scopes) or (),
        label=row.label,
    )


def _signing_key(row: sa.Row[Any]) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=row.kid,
        alg=row.alg,
        state=row.state,
        public_jwk=dict(row.public_jwk),
        private_blob=bytes(row.private_blob),
        created_at=row.created_at,
        activated_at=row.activated_at,
        retired_at=row.retired_at,
    )


def _signing_values(record: SigningKeyRecord) -> dict[str, Any]:
    return {
        "kid": record.kid,
        "alg": record.alg,
        "state": record.state,
        "public_jwk": record.public_jwk,
        "private_blob": record.private_blob,
        "created_at": record.created_at,
        "activated_at": record.activated_at,
        "retired_at": record.retired_at,
    }
