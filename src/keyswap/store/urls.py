"""Where the database lives: the default location and URL helpers.

The default is a SQLite file ``keyswap.db`` in the data directory: ``$KEYSWAP_DATA_DIR`` if set, else
``$XDG_DATA_HOME/keyswap``, else ``~/.local/share/keyswap``. ``KEYSWAP_DB`` overrides it with any
SQLAlchemy URL. PostgreSQL runs on psycopg 3: ``postgresql://`` and ``postgres://`` URLs become
``postgresql+psycopg://``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError

from keyswap.errors import ConfigError

__all__ = [
    "DATABASE_FILE_NAME",
    "data_dir",
    "default_database_url",
    "display_url",
    "is_postgres",
    "normalize_database_url",
    "sqlite_file",
]

DATABASE_FILE_NAME = "keyswap.db"

#: The one PostgreSQL driver keyswap uses (LISTEN/NOTIFY needs it): psycopg 3.
POSTGRES_DRIVER = "postgresql+psycopg"
_POSTGRES_ALIASES = frozenset({"postgres", "postgresql"})


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The data directory: ``$KEYSWAP_DATA_DIR``, ``$XDG_DATA_HOME/keyswap`` or ``~/.local/share/keyswap``."""
    env = os.environ if env is None else env
    if env.get("KEYSWAP_DATA_DIR"):
        return Path(env["KEYSWAP_DATA_DIR"]).expanduser()
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]).expanduser() / "keyswap"
    home = env.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".local" / "share" / "keyswap"


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    """``$KEYSWAP_DB`` if set, else ``sqlite:///<data dir>/keyswap.db``."""
    env = os.environ if env is None else env
    if env.get("KEYSWAP_DB"):
        return normalize_database_url(env["KEYSWAP_DB"])
    return normalize_database_url(str(data_dir(env) / DATABASE_FILE_NAME))


def normalize_database_url(value: str) -> str:
    """Accept a SQLAlchemy URL, or a plain file path that becomes ``sqlite:///<absolute path>``.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://`` (psycopg 3); another
    PostgreSQL driver is refused, since change notifications (LISTEN/NOTIFY) use psycopg.

    Raises:
        ConfigError: the value is empty, not a valid URL, or names another PostgreSQL driver.
    """
    value = value.strip()
    if not value:
        raise ConfigError("the database URL is empty")
    if "://" not in value:
        return "sqlite:///" + str(Path(value).expanduser().resolve())
    try:
        parsed = sa.make_url(value)
    except ArgumentError:
        raise ConfigError("the database URL is not valid (expected e.g. sqlite:///path)") from None
    if parsed.drivername in _POSTGRES_ALIASES:
        return parsed.set(drivername=POSTGRES_DRIVER).render_as_string(hide_password=False)
    if (
        parsed.drivername.split("+")[0] in _POSTGRES_ALIASES
        and parsed.drivername != POSTGRES_DRIVER
    ):
        raise ConfigError(
            f"cannot use the database URL {display_url(value)}: unknown database or driver "
            "(keyswap talks to PostgreSQL through psycopg 3: use postgresql://...)"
        )
    return value


def is_postgres(url: str) -> bool:
    """True for a PostgreSQL URL (after :func:`normalize_database_url`)."""
    try:
        return sa.make_url(url).drivername.split("+")[0] in _POSTGRES_ALIASES
    except ArgumentError:
        return False


def sqlite_file(url: str) -> Path | None:
    """The file behind a file-backed SQLite URL; ``None`` for other databases and in-memory SQLite."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if parsed.query.get("mode") == "memory":
        return None
    return Path(database).expanduser()


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"
