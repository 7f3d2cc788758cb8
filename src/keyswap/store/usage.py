"""Metered usage in the SQL store: the meter's writes, the rollup, and the reads.

Rows (:data:`keyswap.store.schema.usage`) are keyed by consumer, bucket (``start`` and ``span``), key
and node. How they get there and why no count is ever added twice:

- **Writes** (:class:`SqlUsageSink`): a gateway node writes the *absolute* counts of its own minute
  rows, ``INSERT ... ON CONFLICT DO UPDATE SET count = excluded.count`` (one upsert per row, one
  transaction per batch). Writing the same batch twice leaves the same rows: a flush whose outcome is
  unknown (a timeout, a dropped connection) is simply written again.
- **Rollup** (:func:`rollup`): minute rows older than ``minute_age`` are summed into hour rows
  (``node`` empty; added to any hour row already there) and deleted, one hour per transaction; hour
  rows older than ``hour_age`` likewise into day rows, one day per transaction; day rows older than
  ``retention`` are deleted. Each step sums and deletes in one transaction, so a rollup that fails
  leaves every row counted once (the steps done stay done). On PostgreSQL each step first takes a
  transaction-level advisory lock, so rollups running on several nodes at once take turns (the second
  finds nothing left to do); SQLite serialises writers anyway (``BEGIN IMMEDIATE``). A node never
  writes a minute older than :data:`keyswap.gateway.meter.MAX_HOLD` (12 h), so a rollup (at least a day
  behind) never races a node's write of the same row.
- **Reads** (:func:`read_buckets`, :func:`read_totals`): sums grouped in SQL by the bucket a row
  *starts* in (a coarser row falls whole into the bucket of its start).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from keyswap.errors import ConfigError
from keyswap.store.schema import usage
from keyswap.store.sql import Store

__all__ = [
    "COUNTS",
    "DAY",
    "HOUR",
    "KEY_COLUMNS",
    "LATENCY_BOUNDS",
    "MINUTE",
    "RollupPolicy",
    "RollupResult",
    "SqlUsageSink",
    "UsageRow",
    "UsageSink",
    "consumers_with_usage",
    "read_buckets",
    "read_totals",
    "rollup",
]

MINUTE = 60
HOUR = 3600
DAY = 86400

#: The counters of a usage row, in order (:attr:`UsageRow.counts`).
COUNTS = (
    "requests",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "unauthorized",
    "rate_limited",
    "bytes_in",
    "bytes_out",
    "latency_sum",
    "latency_10ms",
    "latency_50ms",
    "latency_250ms",
    "latency_1s",
    "latency_slow",
)
#: Upper bounds (seconds) of the latency buckets; the last, ``latency_slow``, has none.
LATENCY_BOUNDS = (0.010, 0.050, 0.250, 1.0)
#: What identifies a row.
KEY_COLUMNS = ("consumer", "start", "span", "key_id", "node")


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One node's counts for one consumer, key and minute (absolute values, not increments).

    ``counts`` follows :data:`COUNTS`: every value an int but ``latency_sum`` (seconds, a float).
    ``consumer`` and ``key_id`` are empty for requests refused before a key was known.
    """

    node: str
    start: int
    consumer: str
    key_id: str
    counts: tuple[float, ...]


class UsageSink(Protocol):
    """Where a meter writes its rows: the SQL store (:class:`SqlUsageSink`) today, a columnar store
    (ClickHouse, say, with a ``ReplacingMergeTree`` keyed like :data:`KEY_COLUMNS`) tomorrow.

    ``write`` must be idempotent: the same rows written twice count once (the rows carry absolute
    values). It is called from a worker thread, one batch at a time, and raises on failure (the meter
    keeps the rows and writes them again later).
    """

    def write(self, rows: Sequence[UsageRow]) -> None:
        """Store ``rows`` (each replaces any row with the same node, minute, consumer and key)."""
        ...


def _insert(store: Store) -> Any:
    return postgresql.insert(usage) if store.is_postgres else sqlite.insert(usage)


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(f"keyswap:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SqlUsageSink:
    """Writes meter rows to the store's ``usage`` table: one upsert per row, one transaction per batch
    of at most ``batch`` rows.

    Args:
        store: the gateway's store.
        batch: rows per transaction.
    """

    def __init__(self, store: Store, *, batch: int = 500) -> None:
        self.store = store
        self._batch = batch
        insert = _insert(store)
        self._statement = insert.on_conflict_do_update(
            index_elements=list(KEY_COLUMNS),
            set_={name: insert.excluded[name] for name in COUNTS},
        )

    def write(self, rows: Sequence[UsageRow]) -> None:
        """Upsert ``rows`` with their absolute counts (a second write of the same rows changes nothing).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed; nothing of the failed batch is kept.
        """
        for first in range(0, len(rows), self._batch):
            params = [_params(row) for row in rows[first : first + self._batch]]
            with self.store.engine.begin() as conn:
                conn.execute(self._statement, params)


def _params(row: UsageRow) -> dict[str, Any]:
    params: dict[str, Any] = {
        "consumer": row.consumer,
        "start": row.start,
        "span": MINUTE,
        "key_id": row.key_id,
        "node": row.node,
    }
    params.update(zip(COUNTS, row.counts, strict=True))
    return params


# -- rollup --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollupPolicy:
    """When rows are merged and dropped, in seconds of age.

    Attributes:
        minute_age: minute rows older than this become hour rows (default a day; at least a day, since
            a gateway may still write a minute up to 12 hours old after a database outage).
        hour_age: hour rows older than this become day rows (default 30 days; at least ``minute_age``).
        retention: day rows older than this are deleted (default 400 days; ``0``: kept forever).
    """

    minute_age: float = DAY
    hour_age: float = 30 * DAY
    retention: float = 400 * DAY

    def __post_init__(self) -> None:
        if not self.minute_age >= DAY:
            raise ConfigError("minute rows must be kept at least a day before the rollup")
        if not self.hour_age >= self.minute_age:
            raise ConfigError("hour rows must be kept at least as long as minute rows")
        if self.retention and not self.retention >= self.hour_age:
            raise ConfigError("the usage retention must be 0 (forever) or at least the hour age")


@dataclass(frozen=True, slots=True)
class RollupResult:
    """What one rollup did: rows merged away at each level, and rows deleted for age."""

    minutes: int
    hours: int
    expired: int


def rollup(store: Store, *, now: float, policy: RollupPolicy | None = None) -> RollupResult:
    """Merge old minute rows into hours and old hour rows into days, drop expired day rows.

    The work is cut into steps of one hour of minute rows or one day of hour rows, each one
    transaction (all or nothing), so no step holds the database for long; on PostgreSQL each step
    lifts the statement timeout of a gateway's connection (``SET LOCAL``) and takes an advisory lock,
    so rollups on several nodes take turns. Running it twice in a row changes nothing the second time.
    """
    policy = policy or RollupPolicy()
    hour_cut = int(now - policy.minute_age) // HOUR * HOUR
    day_cut = int(now - policy.hour_age) // DAY * DAY
    minutes = _merge_all(store, MINUTE, HOUR, hour_cut)
    hours = _merge_all(store, HOUR, DAY, day_cut)
    expired = 0
    if policy.retention:
        expired_cut = int(now - policy.retention) // DAY * DAY
        with _step(store) as conn:
            expired = int(
                conn.execute(
                    sa.delete(usage).where(usage.c.span == DAY, usage.c.start < expired_cut)
                ).rowcount
            )
    return RollupResult(minutes, hours, expired)


@contextmanager
def _step(store: Store) -> Iterator[Connection]:
    """One rollup transaction: a writer's (SQLite ``BEGIN IMMEDIATE``), locked on PostgreSQL."""
    with store.engine.connect() as conn:
        conn.execution_options(keyswap_immediate=True)
        with conn.begin():
            if store.is_postgres:
                conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key("usage-rollup"))))
            yield conn


def _merge_all(store: Store, span: int, into: int, before: int) -> int:
    """Merge every row of ``span`` starting before ``before``, one ``into`` bucket per step."""
    merged = 0
    while True:
        with _step(store) as conn:
            oldest = conn.execute(
                sa.select(sa.func.min(usage.c.start)).where(
                    usage.c.span == span, usage.c.start < before
                )
            ).scalar()
            if oldest is None:
                return merged
            end = min(before, int(oldest) - int(oldest) % into + into)
            merged += _merge(store, conn, span, into, int(oldest), end)


def _merge(store: Store, conn: Connection, span: int, into: int, first: int, before: int) -> int:
    """Sum rows of ``span`` starting in ``[first, before)`` into rows of ``into``; delete them."""
    where = sa.and_(usage.c.span == span, usage.c.start >= first, usage.c.start < before)
    bucket = (usage.c.start - usage.c.start % into).label("bucket")
    sums = [sa.func.sum(usage.c[name]).label(name) for name in COUNTS]
    grouped = conn.execute(
        sa.select(usage.c.consumer, usage.c.key_id, bucket, *sums)
        .where(where)
        .group_by(usage.c.consumer, usage.c.key_id, bucket)
    ).all()
    if not grouped:
        return 0
    insert = _insert(store)
    statement = insert.on_conflict_do_update(
        index_elements=list(KEY_COLUMNS),
        set_={name: usage.c[name] + insert.excluded[name] for name in COUNTS},
    )
    params = []
    for row in grouped:
        values: dict[str, Any] = {
            "consumer": row.consumer,
            "start": int(row.bucket),
            "span": into,
            "key_id": row.key_id,
            "node": "",
        }
        for name in COUNTS:
            value = getattr(row, name) or 0
            values[name] = float(value) if name == "latency_sum" else int(value)
        params.append(values)
    for first in range(0, len(params), 1000):
        conn.execute(statement, params[first : first + 1000])
    return int(conn.execute(sa.delete(usage).where(where)).rowcount)


# -- reads ---------------------------------------------------------------------------------------------


def _sums() -> list[Any]:
    # Cast: PostgreSQL sums bigints as numeric (Decimal in Python, slow to convert).
    return [
        sa.cast(sa.func.coalesce(sa.func.sum(usage.c[name]), 0), usage.c[name].type).label(name)
        for name in COUNTS
    ]


def read_buckets(
    store: Store,
    *,
    consumer: str | None,
    since: int,
    until: int,
    step: int,
    key_id: str | None = None,
) -> list[Any]:
    """Sums per bucket of ``step`` seconds for rows starting in ``[since, until)``, oldest first.

    ``consumer``: ``None`` for every consumer (and the refusals without one). Each row has
    ``bucket`` (its start) and every name of :data:`COUNTS`; buckets without rows are absent.
    """
    bucket = (usage.c.start - usage.c.start % step).label("bucket")
    query = sa.select(bucket, *_sums()).where(usage.c.start >= since, usage.c.start < until)
    if consumer is not None:
        query = query.where(usage.c.consumer == consumer)
    if key_id is not None:
        query = query.where(usage.c.key_id == key_id)
    query = query.group_by(bucket).order_by(bucket)
    with store.engine.connect() as conn:
        return list(conn.execute(query).all())


def read_totals(
    store: Store,
    *,
    since: int,
    until: int,
    order: Literal["requests", "errors"],
    limit: int,
    min_requests: int = 1,
) -> list[Any]:
    """Per-consumer sums over rows starting in ``[since, until)``: the ``limit`` first by requests, or
    by error rate ((4xx + 5xx) / requests, then errors) among consumers with at least ``min_requests``.

    Rows have ``consumer``, every name of :data:`COUNTS`, and ``errors``. Refusals without a consumer
    are left out.
    """
    requests = sa.func.sum(usage.c.requests)
    errors = sa.func.sum(usage.c.status_4xx + usage.c.status_5xx)
    query = (
        sa.select(usage.c.consumer, *_sums(), errors.label("errors"))
        .where(usage.c.start >= since, usage.c.start < until, usage.c.consumer != "")
        .group_by(usage.c.consumer)
    )
    if order == "requests":
        query = query.order_by(requests.desc(), usage.c.consumer)
    else:
        rate = sa.cast(errors, sa.Double()) / sa.func.nullif(requests, 0)
        query = query.having(requests >= max(1, min_requests)).order_by(
            rate.desc(), errors.desc(), usage.c.consumer
        )
    with store.engine.connect() as conn:
        return list(conn.execute(query.limit(limit)).all())


def consumers_with_usage(store: Store, names: Iterable[str]) -> set[str]:
    """Which of ``names`` have any usage row."""
    wanted = list(names)
    if not wanted:
        return set()
    query = sa.select(usage.c.consumer).where(usage.c.consumer.in_(wanted)).distinct()
    with store.engine.connect() as conn:
        return {row.consumer for row in conn.execute(query)}
