"""Schema migrations: the Alembic revisions in ``keyswap/store/migrations``, run by keyswap itself.

No ``alembic.ini`` is needed: :func:`upgrade` hands Alembic an open connection inside the caller's
transaction, so the upgrade is all or nothing (SQLite and PostgreSQL both have transactional DDL). A
database created before migrations existed (tables present, no ``alembic_version``) is the first
revision, ``0001``, and is stamped as such before the newer revisions run.

Who upgrades: SQLite databases upgrade themselves when opened (the demo and single-node setups need no
step); PostgreSQL is upgraded by ``keyswap db upgrade``, and everything else refuses to start while its
schema is behind (:class:`keyswap.store.Store` raises a :class:`~keyswap.errors.ConfigError` saying so).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from keyswap.store.schema import SCHEMA_VERSION, meta

__all__ = [
    "LEGACY_REVISION",
    "MIGRATIONS_DIR",
    "SchemaState",
    "head_revision",
    "schema_state",
    "upgrade",
]

#: Where the revisions live (package data).
MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
#: What a database created before migrations existed is: the initial schema.
LEGACY_REVISION = "0001"


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database's schema stands against the revisions this keyswap ships.

    Attributes:
        current: its Alembic revision (``None``: no keyswap schema at all).
        head: the newest revision this keyswap ships.
        known: ``current`` is one of ours (``False`` for a revision from a newer keyswap).
        version: ``meta.schema_version`` as stored (``None`` without a meta row).
    """

    current: str | None
    head: str
    known: bool
    version: int | None

    @property
    def up_to_date(self) -> bool:
        """The schema is exactly what this keyswap needs."""
        return self.current == self.head and not self.ahead

    @property
    def ahead(self) -> bool:
        """A newer keyswap changed the schema: this one must not touch it."""
        return (self.current is not None and not self.known) or (
            self.version is not None and self.version > SCHEMA_VERSION
        )

    @property
    def behind(self) -> bool:
        """The schema is missing or older: ``keyswap db upgrade`` fixes it."""
        return not self.ahead and self.current != self.head


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str:
    """The newest revision this keyswap ships (e.g. ``"0003"``)."""
    head = _script().get_current_head()
    assert head is not None
    return head


def _known(revision: str) -> bool:
    return any(script.revision == revision for script in _script().walk_revisions())


def schema_state(conn: Connection) -> SchemaState:
    """Inspect the schema over ``conn`` (read only)."""
    current = MigrationContext.configure(conn).get_current_revision()
    inspector = sa.inspect(conn)
    version: int | None = None
    if inspector.has_table("meta"):
        version = conn.execute(sa.select(meta.c.schema_version).where(meta.c.id == 1)).scalar()
        if current is None:
            current = LEGACY_REVISION  # tables from before migrations existed
    return SchemaState(
        current=current,
        head=head_revision(),
        known=current is None or _known(current),
        version=version,
    )


def _config(conn: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = conn
    return config


def upgrade(conn: Connection) -> tuple[str | None, str]:
    """Bring the schema over ``conn`` to the newest revision, in the caller's transaction.

    Returns ``(revision before, revision after)``. The caller serialises concurrent upgrades (SQLite:
    ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock) and checks :attr:`SchemaState.ahead` first.
    """
    state = schema_state(conn)
    if MigrationContext.configure(conn).get_current_revision() is None and state.current:
        command.stamp(_config(conn), state.current)  # a database from before migrations
    if state.current != state.head:
        command.upgrade(_config(conn), "head")
    row = conn.execute(sa.select(meta.c.id).where(meta.c.id == 1)).first()
    if row is None:
        conn.execute(sa.insert(meta).values(id=1, revision=0, schema_version=SCHEMA_VERSION))
    else:
        conn.execute(sa.update(meta).where(meta.c.id == 1).values(schema_version=SCHEMA_VERSION))
    return state.current, state.head
