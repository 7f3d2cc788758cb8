"""Alembic environment for keyswap's schema.

keyswap runs migrations itself (``keyswap db upgrade``, or automatically for SQLite), handing Alembic an
open connection inside its own transaction (:mod:`keyswap.store.migrate`). For developers writing a new
revision with the ``alembic`` command, ``sqlalchemy.url`` (or ``$KEYSWAP_DB``) names the database.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from keyswap.store.schema import metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:  # the alembic command line, for developers
    _url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("KEYSWAP_DB", "")
    _engine = sa.create_engine(_url)
    try:
        with _engine.begin() as _conn:
            _run(_conn)
    finally:
        _engine.dispose()
