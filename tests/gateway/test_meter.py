"""The usage meter: a real gateway and upstream on 127.0.0.1 over a real SQLite file (and PostgreSQL
through a freezing relay); failures injected by sinks that fail, never by mocks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
        two = [("authorization", f"Bearer {gw.key}"), ("authorization", f"Bearer {gw.key}")]
        assert httpx.get(gw.url + "/hello", headers=two, timeout=10).status_code == 401
        assert gw.get("/hello", key=limited_key).status_code == 200
        assert gw.get("/hello", key=limited_key).status_code == 429
        assert gw.get("/__keyswap/health", key="whatever").status_code == 200  # not usage
        gw.admin_store.create_consumer("former", {})
        former_record, former_key = gw.admin.create("former")
        assert gw.get("/hello", key=former_key).status_code == 200
        gw.admin.revoke(former_record.id)
        deadline = time.monotonic() + 10
        while gw.get("/hello", key=former_key).status_code != 401:  # the change reaches the node
            assert time.monotonic() < deadline
            time.sleep(0.05)
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
        former = day_totals(store, "former", former_record.id)
        # 200s until the revocation reached the node, then a 401 for the revoked key: counted for it
        assert former.unauthorized == former.status_4xx == 1
        assert former.status_2xx == former.requests - 1 >= 1
        now = time.time()
        everyone = _sum(manage.query_all(store, since=now - DAY, until=now + DAY, by="day"))
        assert everyone.requests == 14 + former.requests
        assert everyone.unauthorized == 3 + former.unauthorized


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


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield db_url(tmp_path)
    else:
        with postgres_schema() as url:
            yield url


@pytest.mark.parametrize(
    ("kind", "nodes"), [("sqlite", 1), pytest.param("postgres", 2, marks=pytest.mark.postgres)]
)
def test_sigterm_writes_everything(
    tmp_path: Path, upstream: RecordingUpstream, kind: str, nodes: int
) -> None:
    from keyswap.gateway.apikeys import ApiKeys
    from tests.support.gateway_state import secret

    with database(kind, tmp_path) as url:
        setup = Store(url, schema="upgrade")
        try:
            setup.create_consumer("acme", {})
            _, key = ApiKeys(setup, secret(), cache_size=0).create("acme")
            # A flush interval far longer than the test: only the shutdown can write the counts.
            processes = [
                GatewayProcess(
                    url, upstream.url, tmp_path, "--usage-flush-interval", "3600", name=f"n{i}"
                ).start()
                for i in range(nodes)
            ]
            try:
                for index in range(10):
                    answer = httpx.get(
                        processes[index % nodes].url + "/hello",
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=10,
                    )
                    assert answer.status_code == 200
                assert day_totals(setup, "acme").requests == 0
                assert "usage: counted per consumer and key, written every 3600 s" in (
                    processes[0].log()
                )
            finally:
                for process in processes:
                    process.stop()  # SIGTERM
            assert day_totals(setup, "acme").requests == 10
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


class ListSink:
    """Keeps what it is given (no database): for checks of the counts alone."""

    def __init__(self) -> None:
        self.rows: list[UsageRow] = []

    def write(self, rows: Sequence[UsageRow]) -> None:
        self.rows.extend(rows)


def test_answers_the_gateway_gave_itself_count_as_refusals_only_for_401_and_429() -> None:
    sink = ListSink()
    meter = Meter(sink, clock=Clock(60.0), node="n1")
    meter.record("acme", "k", 429, None)  # rate limit or connection cap
    meter.record(None, None, 401, None)  # no consumer known
    meter.record("acme", "k", 101, None)  # a websocket upgrade
    meter.record("acme", "k", 503, None)  # store down: not a refusal by a limit
    upstream_429 = Exchange()
    upstream_429.latency = 2.0
    meter.record("acme", "k", 429, upstream_429)  # the upstream's own 429

    asyncio.run(meter.flush())
    rows = {(r.consumer, r.key_id): r.counts for r in sink.rows}
    acme, anonymous = rows[("acme", "k")], rows[("", "")]
    # requests, 2xx, 3xx, 4xx, 5xx, 401, 429
    assert acme[:7] == (4, 0, 0, 2, 1, 0, 1)
    assert acme[-1] == 1  # the upstream's answer took over a second
    assert anonymous[:7] == (1, 0, 0, 1, 0, 1, 0)


def test_meter_settings_are_checked() -> None:
    from keyswap.errors import ConfigError

    with pytest.raises(ConfigError):
        Meter(ListSink(), interval=0)
    with pytest.raises(ConfigError):
        Meter(ListSink(), max_rows=0)


def test_two_nodes_add_up_and_never_overwrite_each_other(store: Store) -> None:
    clock = Clock(1_700_000_000.0)
    nodes = [Meter(SqlUsageSink(store), clock=clock, node=f"node{i}") for i in range(2)]

    async def scenario() -> None:
        for index, meter in enumerate(nodes):
            for _ in range(index + 2):
                meter.record("acme", "key_a", *ok())
        for meter in nodes:
            assert await meter.flush()
        nodes[0].record("acme", "key_a", *ok())
        assert await nodes[0].flush()  # its own row grows; node1's row is untouched

    asyncio.run(scenario())
    found = manage.query(
        store, consumer_id="acme", since=clock.now - 60, until=clock.now + 60, by="minute"
    )
    assert [b.requests for b in found] == [6]


def test_the_writer_runs_maintenance_after_flushing(store: Store) -> None:
    calls: list[float] = []
    clock = Clock(1_700_000_000.0)

    async def scenario() -> None:
        done = asyncio.Event()

        def maintenance(now: float) -> None:
            calls.append(now)
            done.set()

        meter = Meter(
            SqlUsageSink(store),
            interval=0.01,
            clock=clock,
            maintenance=maintenance,
            maintenance_interval=3600,
        )
        meter.start()
        meter.record("acme", "key_a", *ok())
        await asyncio.wait_for(done.wait(), 10)
        await meter.close()
        assert meter.rows_written == 1

    asyncio.run(scenario())
    assert calls == [clock.now]  # once: the next one is an hour away on the meter's clock
