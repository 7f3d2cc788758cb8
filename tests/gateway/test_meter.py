"""The usage meter: a real gateway and upstream on 127.0.0.1 over a real SQLite file (and PostgreSQL
through a freezing relay); failures injected by sinks that fail, never by mocks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from keyswap.gateway.meter import MAX_HOLD, Exchange, Meter, node_id
from keyswap.manage import usage as manage
from keyswap.store import Store
from keyswap.store.usage import SqlUsageSink, UsageRow
from tests.support.cluster import GatewayProcess, TcpRelay, postgres_schema, relayed_url
from tests.support.gateway_state import Clock, db_url
from tests.support.running_gateway import running_gateway
from tests.support.upstream import RecordingUpstream

DAY = 86400.0


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream().start()
    yield server
    server.stop()


def day_totals(store: Store, consumer: str, key_id: str | None = None) -> manage.UsageBucket:
    now = time.time()
    found = manage.query(
        store, consumer_id=consumer, since=now - DAY, until=now + DAY, by="day", key_id=key_id
    )
    assert len(found) <= 2
    return _sum(found)


def _sum(buckets: Sequence[manage.UsageBucket]) -> manage.UsageBucket:
    fields = ("requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "bytes_in")
    totals = {name: sum(getattr(b, name) for b in buckets) for name in fields}
    return manage.UsageBucket(
        start=buckets[0].start if buckets else 0.0,
        bytes_out=sum(b.bytes_out for b in buckets),
        unauthorized=sum(b.unauthorized for b in buckets),
        rate_limited=sum(b.rate_limited for b in buckets),
        latency_sum=sum(b.latency_sum for b in buckets),
        latency_buckets=tuple(  # type: ignore[arg-type]
            sum(b.latency_buckets[i] for b in buckets) for i in range(5)
        ),
        **totals,
    )


# -- through a real gateway ------------------------------------------------------------------------


def test_gateway_counts_per_key_consumer_and_status_class(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(tmp_path, upstream.url, usage_interval=3600) as gw:
        second_record, second_key = gw.admin.create("acme")
        gw.admin_store.create_consumer("limited", {})
        gw.admin_store.set_consumer_rate_limit("limited", "1/60s")
        _, limited_key = gw.admin.create("limited")
        for _ in range(3):
            assert gw.get("/hello").status_code == 200
        assert gw.get("/status/404").status_code == 404
        assert gw.get("/status/503").status_code == 503
        assert gw.get("/status/302").status_code == 302
        posted = httpx.post(
            gw.url + "/keep",
            content=b"x" * 1000,
            headers={"Authorization": f"Bearer {gw.key}"},
            timeout=10,
        )
        assert posted.status_code == 200
        big = gw.get("/big/100000")
        assert len(big.content) == 100_000
        assert gw.get("/hello", key=second_key).status_code == 200
        assert gw.get("/hello", key="ks_not_a_real_key").status_code == 401
        assert httpx.get(gw.url + "/hello", timeout=10).status_code == 401
        assert gw.get("/hello", key=limited_key).status_code == 200
        assert gw.get("/hello", key=limited_key).status_code == 429
        assert gw.get("/__keyswap/health", key="whatever").status_code == 200  # not usage
        responses = [posted, big]
        gw.server.stop()  # lifespan shutdown: the meter writes everything (SIGTERM does the same)

        store = gw.admin_store
        acme = day_totals(store, "acme")
        assert acme.requests == 9
        assert (acme.status_2xx, acme.status_3xx, acme.status_4xx, acme.status_5xx) == (6, 1, 1, 1)
        assert acme.bytes_in == 1000
        small = sum(len(r.content) for r in responses) - 100_000  # the JSON answer to /keep
        assert acme.bytes_out >= 100_000 + small
        assert sum(acme.latency_buckets) == 9
        assert acme.latency_sum > 0
        assert acme.unauthorized == 0
        assert acme.rate_limited == 0
        assert day_totals(store, "acme", second_record.id).requests == 1
        assert day_totals(store, "acme", gw.key_id).requests == 8
        limited = day_totals(store, "limited")
        assert (limited.requests, limited.status_4xx, limited.rate_limited) == (2, 1, 1)
        assert sum(limited.latency_buckets) == 1  # the refused one never reached the upstream
        now = time.time()
        everyone = _sum(manage.query_all(store, since=now - DAY, until=now + DAY, by="day"))
        assert everyone.requests == 13
        assert everyone.unauthorized == 2


def test_metering_off_writes_nothing(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with running_gateway(tmp_path, upstream.url, usage_interval=None) as gw:
        assert gw.app.meter is None
        assert gw.get("/hello").status_code == 200
        gw.server.stop()
        assert day_totals(gw.admin_store, "acme").requests == 0


def test_periodic_flush_writes_while_serving(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with running_gateway(tmp_path, upstream.url, usage_interval=0.1) as gw:
        for _ in range(2):
            assert gw.get("/hello").status_code == 200
        deadline = time.monotonic() + 10
        while day_totals(gw.admin_store, "acme").requests != 2:
            assert time.monotonic() < deadline, "the meter did not flush"
            time.sleep(0.05)
        assert gw.get("/hello").status_code == 200
        while day_totals(gw.admin_store, "acme").requests != 3:
            assert time.monotonic() < deadline, "the meter did not flush the update"
            time.sleep(0.05)


def test_sigterm_writes_everything(tmp_path: Path, upstream: RecordingUpstream) -> None:
    url = db_url(tmp_path)
    setup = Store(url)
    try:
        from keyswap.gateway.apikeys import ApiKeys
        from keyswap.gateway.secret import load_secret
        from tests.support.gateway_state import SECRET_TEXT

        setup.create_consumer("acme", {})
        keys = ApiKeys(setup, load_secret(url, env={"KEYSWAP_SECRET": SECRET_TEXT}), cache_size=0)
        _, key = keys.create("acme")
        # A flush interval far longer than the test: only the shutdown can write the counts.
        process = GatewayProcess(url, upstream.url, tmp_path, "--usage-flush-interval", "3600")
        process.start()
        try:
            for _ in range(5):
                answer = httpx.get(
                    process.url + "/hello", headers={"Authorization": f"Bearer {key}"}, timeout=10
                )
                assert answer.status_code == 200
            assert day_totals(setup, "acme").requests == 0
        finally:
            process.stop()  # SIGTERM
        assert day_totals(setup, "acme").requests == 5
    finally:
        setup.close()


# -- the meter on its own, over a real store --------------------------------------------------------


class FlakySink:
    """A real sink that fails on demand: before writing (database down), or after writing (the
    answer was lost: the meter cannot know the rows are in)."""

    def __init__(self, inner: SqlUsageSink) -> None:
        self.inner = inner
        self.fail_before = 0
        self.fail_after = 0
        self.calls = 0

    def write(self, rows: Sequence[UsageRow]) -> None:
        self.calls += 1
        if self.fail_before:
            self.fail_before -= 1
            raise ConnectionError("database down")
        self.inner.write(rows)
        if self.fail_after:
            self.fail_after -= 1
            raise TimeoutError("no answer")


def ok(status: int = 200) -> tuple[int, Exchange]:
    exchange = Exchange()
    exchange.bytes_in, exchange.bytes_out, exchange.latency = 5, 50, 0.02
    return status, exchange


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(db_url(tmp_path))
    yield opened
    opened.close()


def test_a_retried_flush_counts_once(store: Store) -> None:
    sink = FlakySink(SqlUsageSink(store))
    clock = Clock(1_700_000_000.0)
    meter = Meter(sink, clock=clock, node="n1")

    async def scenario() -> None:
        for _ in range(4):
            meter.record("acme", "key_a", *ok())
        sink.fail_after = 1
        assert not await meter.flush()  # written, but the meter never heard
        assert await meter.flush()  # written again: same absolute values
        assert await meter.flush()  # nothing changed: nothing written
        clock.advance(60)
        meter.record("acme", "key_a", *ok(500))
        assert await meter.flush()
        assert await meter.flush()
        assert meter.pending == 1  # the finished minute is forgotten, the current one kept

    asyncio.run(scenario())
    assert sink.calls == 3
    totals = manage.query(
        store, consumer_id="acme", since=clock.now - 3600, until=clock.now + 60, by="hour"
    )
    assert [(b.requests, b.status_5xx, b.bytes_in, b.latency_buckets[1]) for b in totals] == [
        (5, 1, 25, 5)
    ]


def test_database_down_keeps_rows_then_writes_them_once(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FlakySink(SqlUsageSink(store))
    clock = Clock(1_700_000_000.0)
    meter = Meter(sink, clock=clock, node="n1")

    async def scenario() -> None:
        sink.fail_before = 3
        for _minute in range(3):
            meter.record("acme", "key_a", *ok())
            meter.record(None, None, 401, None)
            assert not await meter.flush()
            clock.advance(60)
        assert meter.pending == 6  # nothing lost while the database is down
        assert await meter.flush()
        assert meter.pending == 0
        assert await meter.flush()

    with caplog.at_level(logging.INFO, logger="keyswap.gateway"):
        asyncio.run(scenario())
    assert sum("could not be written" in r.getMessage() for r in caplog.records) == 1
    assert any("written again" in r.getMessage() for r in caplog.records)
    since, until = clock.now - 3600, clock.now
    assert [
        b.requests
        for b in manage.query(store, consumer_id="acme", since=since, until=until, by="hour")
    ] == [3]
    everyone = manage.query_all(store, since=since, until=until, by="hour")
    assert [(b.requests, b.unauthorized) for b in everyone] == [(6, 3)]


def test_memory_is_bounded_while_the_database_is_down(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FlakySink(SqlUsageSink(store))
    sink.fail_before = 1000
    clock = Clock(1_700_000_000.0)
    meter = Meter(sink, clock=clock, node="n1", max_rows=3)

    async def scenario() -> None:
        for _minute in range(5):
            meter.record("acme", "key_a", *ok())
            meter.record("acme", "key_a", *ok())
            clock.advance(60)
        await meter.flush()
        assert meter.pending == 3
        assert meter.dropped_requests == 4  # the two oldest minutes
        clock.advance(MAX_HOLD + 120)
        await meter.flush()
        assert meter.pending == 0  # older than the hold: dropped too
        assert meter.dropped_requests == 10

    with caplog.at_level(logging.WARNING, logger="keyswap.gateway"):
        asyncio.run(scenario())
    assert any("usage rows dropped" in r.getMessage() for r in caplog.records)


def test_close_writes_everything_pending(store: Store) -> None:
    meter = Meter(SqlUsageSink(store), interval=3600, clock=Clock(1_700_000_000.0))

    async def scenario() -> None:
        meter.start()
        meter.record("acme", "key_a", *ok())
        await meter.close()

    asyncio.run(scenario())
    assert meter.node is not None
    assert meter.rows_written == 1


def test_node_ids_differ_per_process_and_fit_the_column() -> None:
    first = node_id()
    assert len(first) <= 64
    assert str(__import__("os").getpid()) in first


@pytest.mark.postgres
def test_postgres_outage_through_a_frozen_relay(upstream: RecordingUpstream) -> None:
    with postgres_schema() as url, TcpRelay("127.0.0.1", 5432) as relay:
        setup = Store(url, schema="upgrade")
        store = Store(relayed_url(url, relay), timeout=0.5)
        try:
            clock = Clock(1_700_000_000.0)
            meter = Meter(SqlUsageSink(store), clock=clock, node="pg1")

            async def scenario() -> None:
                meter.record("acme", "key_a", *ok())
                assert await meter.flush()
                meter.record("acme", "key_a", *ok())
                relay.freeze()
                store.engine.dispose()  # new connections: they hang on the frozen relay
                assert not await meter.flush()
                assert meter.pending == 1
                relay.thaw()
                assert await meter.flush()

            asyncio.run(scenario())
            found = manage.query(
                setup,
                consumer_id="acme",
                since=clock.now - 3600,
                until=clock.now + 60,
                by="hour",
            )
            assert [b.requests for b in found] == [2]
        finally:
            store.close()
            setup.close()


def test_meter_with_a_gateway_in_process_counts_websocket_refusals_too() -> None:
    # The meter treats any answer the gateway gave itself (no exchange) as a refusal when 401/429.
    meter = Meter(SqlUsageSink.__new__(SqlUsageSink), clock=Clock(60.0))
    meter.record("acme", "k", 429, None)
    meter.record(None, None, 401, None)
    meter.record("acme", "k", 101, None)
    rows = dict(meter._rows)
    assert rows[(60, "acme", "k")][:7] == [2, 0, 0, 1, 0, 0, 1]
    assert rows[(60, "", "")][:7] == [1, 0, 0, 1, 0, 1, 0]
