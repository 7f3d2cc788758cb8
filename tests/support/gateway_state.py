"""Test helpers for the gateway's state: a settable clock, stores on real SQLite files, a fixed secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event

from keyswap.gateway.secret import ServerSecret
from keyswap.store import Store

#: A fixed server secret for tests (42 characters).
SECRET_TEXT = "test-server-secret-0123456789-abcdefghijkl"


def secret() -> ServerSecret:
    return ServerSecret(SECRET_TEXT)


class Clock:
    """A clock tests move by hand (wall-clock or monotonic seconds)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def db_url(tmp_path: Path, name: str = "keyswap.db") -> str:
    return f"sqlite:///{tmp_path / name}"


class QueryCounter:
    """Counts SQL statements a store's engine sends (a real listener, not a mock)."""

    def __init__(self, store: Store) -> None:
        self.statements: list[str] = []
        event.listen(store.engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


def database_bytes(path: Path) -> bytes:
    """Every byte SQLite wrote for the database at ``path`` (main file, WAL, shared memory)."""
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            data += candidate.read_bytes()
    return data
