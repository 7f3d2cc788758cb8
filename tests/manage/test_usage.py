"""Reading usage, rollups with an injected clock, and usage that survives key rolls (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from keyswap.errors import ConfigError, InvalidInput
from keyswap.manage import Context
from keyswap.manage import usage as manage
from keyswap.manage.consumers import NewConsumer, create_consumer
from keyswap.manage.keys import NewKey, create_key, revoke_key, roll_key
from keyswap.store import Store
from keyswap.store.schema import usage
from keyswap.store.usage import COUNTS, DAY, HOUR, RollupPolicy, SqlUsageSink, UsageRow
from tests.support.gateway_state import secret

T0 = 1_700_000_000 // DAY * DAY  # a UTC midnight


def row(
    start: int,
    consumer: str = "acme",
    key_id: str = "key_a",
    node: str = "n1",
    *,
    requests: int = 1,
    s4xx: int = 0,
    s5xx: int = 0,
    bytes_in: int = 10,
    bytes_out: int = 100,
) -> UsageRow:
    counts: dict[str, float] = dict.fromkeys(COUNTS, 0)
    counts.update(
        requests=requests,
        status_2xx=requests - s4xx - s5xx,
        status_4xx=s4xx,
        status_5xx=s5xx,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        latency_sum=0.004 * requests,
        latency_10ms=requests,
    )
    return UsageRow(node, start, consumer, key_id, tuple(counts[name] for name in COUNTS))


def count_rows(store: Store, span: int | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(usage)
    if span is not None:
        query = query.where(usage.c.span == span)
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_query_sums_nodes_and_keys_per_bucket(store: Store) -> None:
    sink = SqlUsageSink(store)
    sink.write(
        [
            row(T0, node="n1", requests=3),
            row(T0, node="n2", requests=2, s5xx=1),
            row(T0 + 60, key_id="key_b", requests=4, s4xx=1),
            row(T0 + 3600, requests=1),
            row(T0, consumer="other", requests=50),
        ]
    )
    minutes = manage.query(store, consumer_id="acme", since=T0, until=T0 + 7200, by="minute")
    assert [(b.start, b.requests) for b in minutes] == [(T0, 5), (T0 + 60, 4), (T0 + 3600, 1)]
    assert minutes[0].status_5xx == 1
    assert minutes[0].status_2xx == 4
    assert minutes[0].bytes_in == 20
    assert minutes[0].bytes_out == 200
    assert minutes[0].latency_buckets[0] == 5
    assert minutes[0].latency_mean == pytest.approx(0.004)
    hours = manage.query(store, consumer_id="acme", since=T0, until=T0 + 7200, by="hour")
    assert [(b.start, b.requests, b.errors) for b in hours] == [(T0, 9, 2), (T0 + 3600, 1, 0)]
    only_b = manage.query(
        store, consumer_id="acme", since=T0, until=T0 + 7200, by="day", key_id="key_b"
    )
    assert [(b.start, b.requests) for b in only_b] == [(T0, 4)]
    everyone = manage.query_all(store, since=T0, until=T0 + DAY, by="day")
    assert [b.requests for b in everyone] == [60]


def test_query_window_bounds_are_aligned_and_exclusive(store: Store) -> None:
    SqlUsageSink(store).write([row(T0 - 60), row(T0), row(T0 + 3600)])
    found = manage.query(store, consumer_id="acme", since=T0 + 30, until=T0 + 3600, by="minute")
    assert [b.start for b in found] == [T0]  # since aligned down to T0; until exclusive


def test_rewriting_the_same_rows_counts_once(store: Store) -> None:
    sink = SqlUsageSink(store)
    batch = [row(T0, requests=7), row(T0 + 60, requests=1)]
    sink.write(batch)
    sink.write(batch)  # a retried flush
    sink.write([row(T0, requests=9)])  # the node's minute grew: absolute value replaces
    found = manage.query(store, consumer_id="acme", since=T0, until=T0 + 120, by="hour")
    assert found[0].requests == 10


def test_rollup_merges_minutes_then_hours_and_is_idempotent(store: Store) -> None:
    sink = SqlUsageSink(store)
    rows = [row(T0 + i * 60, node=f"n{i % 3}", requests=2) for i in range(180)]  # 3 hours
    rows.append(row(T0 + 2 * DAY, requests=5))  # recent: stays a minute row
    sink.write(rows)
    before = manage.query(store, consumer_id="acme", since=T0, until=T0 + 3 * DAY, by="day")
    now = T0 + 2 * DAY + 120
    result = manage.rollup(store, now=now)
    assert result.minutes == 180
    assert result.hours == 0
    assert count_rows(store, 60) == 1
    assert count_rows(store, HOUR) == 3
    assert manage.rollup(store, now=now) == manage.RollupResult(0, 0, 0)
    after = manage.query(store, consumer_id="acme", since=T0, until=T0 + 3 * DAY, by="day")
    assert after == before
    hours = manage.query(store, consumer_id="acme", since=T0, until=T0 + DAY, by="hour")
    assert [b.requests for b in hours] == [120, 120, 120]

    # A month later the hours become one day row; day totals still the same.
    later = T0 + 40 * DAY
    result = manage.rollup(store, now=later)
    assert result.minutes == 1
    assert result.hours == 4
    assert count_rows(store) == 2  # T0's day row, and T0 + 2 days' day row
    assert manage.query(store, consumer_id="acme", since=T0, until=later, by="day") == before


def test_rollup_adds_late_rows_to_an_existing_hour(store: Store) -> None:
    sink = SqlUsageSink(store)
    sink.write([row(T0, node="n1", requests=3)])
    manage.rollup(store, now=T0 + 2 * DAY)
    sink.write([row(T0 + 60, node="n2", requests=4)])  # a node back from a long outage
    manage.rollup(store, now=T0 + 2 * DAY)
    hours = manage.query(store, consumer_id="acme", since=T0, until=T0 + HOUR, by="hour")
    assert [b.requests for b in hours] == [7]
    assert count_rows(store) == 1


def test_retention_drops_old_day_rows(store: Store) -> None:
    SqlUsageSink(store).write([row(T0), row(T0 + 100 * DAY)])
    policy = RollupPolicy(minute_age=DAY, hour_age=30 * DAY, retention=60 * DAY)
    result = manage.rollup(store, now=T0 + 101 * DAY, policy=policy)
    assert result.expired == 1
    assert count_rows(store) == 1


def test_concurrent_rollups_count_once(store: Store) -> None:
    SqlUsageSink(store).write([row(T0 + i * 60, node=f"n{i % 4}") for i in range(240)])
    now = T0 + 3 * DAY
    errors: list[BaseException] = []

    def run() -> None:
        try:
            manage.rollup(store, now=now)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    total = manage.query(store, consumer_id="acme", since=T0, until=now, by="day")
    assert [b.requests for b in total] == [240]


def test_rollup_policy_is_validated() -> None:
    with pytest.raises(ConfigError):
        RollupPolicy(minute_age=3600)
    with pytest.raises(ConfigError):
        RollupPolicy(minute_age=2 * DAY, hour_age=DAY)
    with pytest.raises(ConfigError):
        RollupPolicy(retention=DAY)
    assert RollupPolicy(retention=0).retention == 0


def test_top_consumers_by_requests_and_by_error_rate(store: Store) -> None:
    SqlUsageSink(store).write(
        [
            row(T0, consumer="big", requests=100, s5xx=1),
            row(T0, consumer="flaky", requests=10, s5xx=5),
            row(T0, consumer="tiny", requests=1, s4xx=1),
            row(T0, consumer="", key_id="", requests=500, s4xx=500),  # refused without a key
        ]
    )
    top = manage.top_consumers(store, since=T0, until=T0 + DAY)
    assert [(c.consumer, c.totals.requests) for c in top] == [
        ("big", 100),
        ("flaky", 10),
        ("tiny", 1),
    ]
    errors = manage.top_consumers(store, since=T0, until=T0 + DAY, by="errors")
    assert [c.consumer for c in errors] == ["tiny", "flaky", "big"]
    assert errors[1].error_rate == pytest.approx(0.5)
    sure = manage.top_consumers(store, since=T0, until=T0 + DAY, by="errors", min_requests=5)
    assert [c.consumer for c in sure] == ["flaky", "big"]
    assert len(manage.top_consumers(store, since=T0, until=T0 + DAY, limit=1)) == 1


def test_usage_survives_key_roll_and_revocation(ctx: Context) -> None:
    store = ctx.store
    create_consumer(ctx, NewConsumer("acme"))
    old = create_key(ctx, secret(), NewKey("acme"))
    sink = SqlUsageSink(store)
    sink.write([row(T0, key_id=old.record.id, requests=5)])
    rolled = roll_key(ctx, secret(), old.record.id, grace=0)
    sink.write([row(T0 + 60, key_id=rolled.new.record.id, requests=3)])
    revoke_key(ctx, rolled.new.record.id)
    totals = manage.query(store, consumer_id="acme", since=T0, until=T0 + DAY, by="day")
    assert [b.requests for b in totals] == [8]
    per_key = manage.query(
        store, consumer_id="acme", since=T0, until=T0 + DAY, by="day", key_id=old.record.id
    )
    assert [b.requests for b in per_key] == [5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"consumer_id": "no spaces"}, "consumer name"),
        ({"consumer_id": ""}, "consumer name"),
        ({"by": "week"}, "unknown resolution"),
        ({"since": T0 + 10, "until": T0}, "until must be after"),
        ({"since": float("nan")}, "epoch seconds"),
        ({"since": 1e300}, "epoch seconds"),
        ({"since": 0, "until": T0, "by": "minute"}, "more than"),
        ({"key_id": "key;drop"}, "key id"),
        ({"key_id": "x" * 65}, "key id"),
    ],
)
def test_query_refuses_bad_input(store: Store, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "consumer_id": "acme",
        "since": T0,
        "until": T0 + DAY,
        "by": "hour",
    }
    args.update(kwargs)
    with pytest.raises(InvalidInput, match=message):
        manage.query(store, **args)  # type: ignore[arg-type]


def test_top_refuses_bad_input(store: Store) -> None:
    with pytest.raises(InvalidInput):
        manage.top_consumers(store, since=T0, until=T0 + DAY, by="latency")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        manage.top_consumers(store, since=T0, until=T0 + DAY, limit=0)
