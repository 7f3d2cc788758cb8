"""Usage metering: gateway throughput with the meter on against off, and reading usage back.

    .venv/bin/python bench/usage_bench.py [--quick] [--part throughput|query|all] [--pg-url URL]

Part 1 (throughput): one `keyswap gateway` (SQLite, ES256, --log-level warning) in front of the bare
upstream (bench/_serve.py bare); wrk -t1 -c32 cycles through the keys of 100 consumers (bench/_keys.lua),
so the meter keeps 100 rows a minute. Configs:
  metering off        --no-usage
  metering on         the default (counts written every 10 s)
  metering on, 1 s    --usage-flush-interval 1 (ten times the writes)
1 s warm-up, then --duration s measured; --rounds rounds, the configs alternating (each round starts
where the previous one ended); medians. Target: metering on >= 0.95x the req/s of metering off.

Part 2 (query): 1,000 consumers x 30 days, as the rollup leaves them: the last day as minute rows
(1,440 per consumer), the 29 days before as hour rows (696 per consumer): 2.14 million rows, one key
per consumer. Then `keyswap.manage.usage.query` for one consumer (a different one each time) over the
30 days, by day and by hour, --queries times; p50 and p99. Also top consumers (by requests) over the
last day and over the 30 days, and the rollup of one hour of minute rows for every consumer (60,000 rows
into 1,000). SQLite (a file, WAL) and PostgreSQL (a scratch schema, dropped after; skipped if it cannot
be reached). Target: query p50 < 50 ms on both.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    Server,
    Target,
    WrkResult,
    fmt,
    fmt_int,
    free_port,
    import_problem,
    markdown_table,
    median,
    print_header,
    print_targets,
    run_wrk,
    serve_argv,
    temp_dir,
)
from cluster_bench import pg_schema_url, start_gateway, wait_ok

KEYS_SCRIPT = Path(__file__).resolve().parent / "_keys.lua"
CONFIGS: dict[str, tuple[str, ...]] = {
    "metering off": ("--no-usage",),
    "metering on": (),
    "metering on, 1 s flush": ("--usage-flush-interval", "1"),
}
COMMON = ("--max-connections-per-consumer", "1000")
DAY = 86400
PG_DEFAULT = os.environ.get(
    "KEYSWAP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


# --------------------------------------------------------------------------- part 1


def setup_consumers(db_url: str, env: dict[str, str], count: int) -> list[str]:
    from keyswap.gateway.apikeys import ApiKeys
    from keyswap.gateway.secret import load_secret
    from keyswap.store import Store

    store = Store(db_url, schema="upgrade")
    try:
        api_keys = ApiKeys(store, load_secret(db_url, env=env), cache_size=0)
        keys = []
        for index in range(count):
            store.create_consumer(f"c{index:04d}")
            keys.append(api_keys.create(f"c{index:04d}")[1])
    finally:
        store.close()
    return keys


def throughput(args: argparse.Namespace) -> list[Target]:
    env = {"KEYSWAP_SECRET": secrets.token_urlsafe(32)}
    results: dict[str, list[WrkResult]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    with temp_dir("keyswap-usage-bench-") as tmp:
        db_url = f"sqlite:///{tmp}/keyswap.db"
        keys = setup_consumers(db_url, env, 100)
        keys_file = tmp / "keys.txt"
        keys_file.write_text("\n".join(keys) + "\n")
        wrk_env = {"BENCH_KEYS": str(keys_file)}
        up_port = free_port()
        upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
        upstream.start(f"http://{HOST}:{up_port}/")
        order = names
        try:
            for round_index in range(args.rounds):
                for name in order:
                    gateway = start_gateway(
                        name.replace(" ", "-").replace(",", ""),
                        db_url,
                        f"http://{HOST}:{up_port}",
                        tmp,
                        env,
                        *CONFIGS[name],
                        *COMMON,
                    )
                    try:
                        wait_ok(gateway.url.rstrip("/"), keys[0])
                        run_wrk(gateway.url, seconds=1, script=KEYS_SCRIPT, env=wrk_env)
                        result = run_wrk(
                            gateway.url,
                            seconds=args.duration,
                            connections=args.connections,
                            script=KEYS_SCRIPT,
                            env=wrk_env,
                            cpu=[gateway],
                        )
                    finally:
                        gateway.stop()
                    results[name].append(result)
                    print(
                        f"  round {round_index + 1} {name}: {result.rps:,.0f} req/s, "
                        f"{result.cpu_us_per_req:.0f} µs CPU/req",
                        file=sys.stderr,
                        flush=True,
                    )
                order = order[::-1]
        finally:
            upstream.stop()
        written = count_usage(db_url)
    off = median([r.rps for r in results["metering off"]])
    off_cpu = median([r.cpu_us_per_req for r in results["metering off"]])
    rows = []
    for name in names:
        runs = results[name]
        rps = median([r.rps for r in runs])
        rows.append(
            [
                name,
                fmt_int(rps),
                fmt(rps / off),
                fmt(median([r.p50_ms for r in runs])),
                fmt(median([r.p99_ms for r in runs])),
                fmt_int(median([r.cpu_us_per_req for r in runs])),
                fmt(median([r.cpu_us_per_req for r in runs]) / off_cpu),
                " ".join(fmt_int(r.rps) for r in runs),
                str(sum(r.non2xx + r.socket_errors for r in runs)),
            ]
        )
    print(
        f"## Metering on against off (wrk -t1 -c{args.connections}, 100 consumers cycled; "
        f"medians of {args.rounds})\n"
    )
    print(
        markdown_table(
            [
                "config",
                "req/s",
                "ratio",
                "p50 ms",
                "p99 ms",
                "CPU µs/req",
                "CPU ratio",
                "req/s per round",
                "errors",
            ],
            rows,
        )
    )
    print(f"\nRequests counted in the database after every run: {written:,}.\n")
    on = median([r.rps for r in results["metering on"]])
    return [Target("req/s, metering on ÷ off", on / off, 0.95, above=True)]


def count_usage(db_url: str) -> int:
    import sqlalchemy as sa

    from keyswap.store import Store
    from keyswap.store.schema import usage

    store = Store(db_url)
    try:
        with store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.sum(usage.c.requests))).scalar() or 0)
    finally:
        store.close()


# --------------------------------------------------------------------------- part 2


def seed(store: Any, consumers: int, now: int) -> int:
    """Minute rows for the last day, hour rows for the 29 days before, per consumer (in SQL)."""
    import sqlalchemy as sa

    minute_from = (now - DAY) // 3600 * 3600  # minute rows: the last day (from an hour's start)
    hour_from = minute_from - 29 * DAY  # hour rows: the 29 days before
    values = (
        "requests, status_2xx, status_3xx, status_4xx, status_5xx, unauthorized, rate_limited, "
        "bytes_in, bytes_out, latency_sum, latency_10ms, latency_50ms, latency_250ms, latency_1s, "
        "latency_slow"
    )
    columns = f"consumer, start, span, key_id, node, {values}"

    def body(span: int, node: str) -> str:
        scale = 60 if span == 3600 else 1
        return (
            f"'c' || c.i, t.s, {span}, 'key_' || c.i, '{node}', {10 * scale}, {9 * scale}, 0, "
            f"{scale}, 0, 0, 0, {1000 * scale}, {20000 * scale}, {0.2 * scale}, {10 * scale}, "
            "0, 0, 0, 0"
        )

    if store.is_postgres:
        minutes = (
            f"INSERT INTO usage ({columns}) SELECT {body(60, 'n1')} FROM generate_series(1, "  # noqa: S608 - integers made here
            f"{consumers}) AS c(i), generate_series({minute_from}, {now - 60}, 60) AS t(s)"
        )
        hours = (
            f"INSERT INTO usage ({columns}) SELECT {body(3600, '')} FROM generate_series(1, "  # noqa: S608 - integers made here
            f"{consumers}) AS c(i), generate_series({hour_from}, {minute_from - 3600}, 3600) AS t(s)"
        )
    else:

        def recursive(first: int, last: int, step: int) -> str:
            return (
                f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < "  # noqa: S608 - integers made here
                f"{consumers}), t(s) AS (SELECT {first} UNION ALL SELECT s + {step} FROM t WHERE "
                f"s < {last})"
            )

        minutes = (
            f"INSERT INTO usage ({columns}) {recursive(minute_from, now - 60, 60)} "  # noqa: S608 - integers made here
            f"SELECT {body(60, 'n1')} FROM c, t"
        )
        hours = (
            f"INSERT INTO usage ({columns}) {recursive(hour_from, minute_from - 3600, 3600)} "  # noqa: S608 - integers made here
            f"SELECT {body(3600, '')} FROM c, t"
        )
    with store.engine.begin() as conn:
        conn.execute(sa.text(minutes))
        conn.execute(sa.text(hours))
        if store.is_postgres:
            conn.execute(sa.text("ANALYZE usage"))
        else:
            conn.execute(sa.text("ANALYZE"))
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM usage")).scalar_one())


def timed(call: Any, repeat: int) -> list[float]:
    samples = []
    for index in range(repeat):
        started = time.perf_counter()
        call(index)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def measure(
    label: str, url: str, args: argparse.Namespace, now: int
) -> tuple[list[str], list[Target]]:
    """Seed one database, time the reads and one rollup; returns the table row and the targets."""
    from keyswap.manage import usage as manage
    from keyswap.store import Store

    store = Store(url, schema="upgrade")
    try:
        started = time.perf_counter()
        count = seed(store, args.consumers, now)
        print(
            f"  {label}: {count:,} rows seeded in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        since = now - 30 * DAY

        def by_day(i: int) -> None:
            name = f"c{(i * 7919) % args.consumers + 1}"
            found = manage.query(store, consumer_id=name, since=since, until=now, by="day")
            assert len(found) >= 30, len(found)

        def by_hour(i: int) -> None:
            name = f"c{(i * 104729) % args.consumers + 1}"
            found = manage.query(store, consumer_id=name, since=since, until=now, by="hour")
            assert len(found) >= 700, len(found)

        def top_day(i: int) -> None:
            manage.top_consumers(store, since=now - DAY, until=now)

        def top_month(i: int) -> None:
            manage.top_consumers(store, since=since, until=now)

        timed(by_day, 5)  # warm the caches
        day = timed(by_day, args.queries)
        hour = timed(by_hour, args.queries)
        top1 = timed(top_day, args.top_queries)
        top30 = timed(top_month, args.top_queries)
        # The oldest hour of minute rows (hour rows left alone: a long hour age).
        oldest = (now - DAY) // 3600 * 3600
        policy = manage.RollupPolicy(hour_age=400 * DAY, retention=0)
        started = time.perf_counter()
        result = manage.rollup(store, now=oldest + 3600 + DAY, policy=policy)
        rollup_ms = (time.perf_counter() - started) * 1000
    finally:
        store.close()
    row = [
        label,
        f"{count:,}",
        fmt(statistics.median(day)),
        fmt(p99(day)),
        fmt(statistics.median(hour)),
        fmt(p99(hour)),
        fmt(statistics.median(top1)),
        fmt(statistics.median(top30)),
        f"{fmt(rollup_ms, 0)} ({result.minutes:,} rows)",
    ]
    targets = [
        Target(f"{label}: query p50 ms, 30 days by day", statistics.median(day), 50, above=False),
        Target(f"{label}: query p50 ms, 30 days by hour", statistics.median(hour), 50, above=False),
    ]
    return row, targets


def query_part(args: argparse.Namespace) -> list[Target]:
    targets: list[Target] = []
    rows: list[list[str]] = []
    databases: list[tuple[str, str, Any]] = []
    tmp_ctx = temp_dir("keyswap-usage-query-")
    tmp = tmp_ctx.__enter__()
    databases.append(("SQLite (file, WAL)", f"sqlite:///{tmp}/usage.db", None))
    scratch = None
    try:
        import sqlalchemy as sa

        admin = sa.create_engine(args.pg_url, poolclass=sa.pool.NullPool)
        schema = "bench_" + uuid.uuid4().hex[:10]
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        scratch = (admin, schema)
        databases.append(("PostgreSQL 127.0.0.1", pg_schema_url(args.pg_url, schema), None))
    except Exception as exc:  # no PostgreSQL: SQLite only
        print(f"  PostgreSQL skipped: {type(exc).__name__}", file=sys.stderr)
    now = int(time.time()) // 60 * 60
    try:
        for label, url, _ in databases:
            row, found = measure(label, url, args, now)
            rows.append(row)
            targets += found
    finally:
        tmp_ctx.__exit__(None, None, None)
        if scratch is not None:
            admin, schema = scratch
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()
    print(
        f"## Reading usage: {args.consumers:,} consumers × 30 days rolled up "
        f"({args.queries} queries each, one consumer per query)\n"
    )
    print(
        markdown_table(
            [
                "database",
                "rows",
                "by day p50 ms",
                "p99 ms",
                "by hour p50 ms",
                "p99 ms",
                "top, 1 day, p50 ms",
                "top, 30 days, p50 ms",
                "rollup of 1 hour, ms",
            ],
            rows,
        )
    )
    print()
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers are not results)")
    parser.add_argument("--part", choices=["throughput", "query", "all"], default="all")
    parser.add_argument("--duration", type=float, default=8.0, help="wrk seconds per run")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--consumers", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-queries", type=int, default=5)
    parser.add_argument("--pg-url", default=PG_DEFAULT)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.consumers, args.queries = 1.0, 2, 50, 20
        args.top_queries = 2
    problem = import_problem("keyswap.gateway.meter")
    if problem:
        raise SystemExit(f"cannot run: {problem}")
    print_header(
        "Usage metering: throughput on against off; reading usage",
        "see the docstring of bench/usage_bench.py",
        tools=["wrk"] if args.part != "query" else [],
    )
    targets: list[Target] = []
    if args.part in ("throughput", "all"):
        targets += throughput(args)
    if args.part in ("query", "all"):
        targets += query_part(args)
    return 0 if print_targets(targets) else 1


if __name__ == "__main__":
    os.environ.pop("KEYSWAP_DB", None)
    sys.exit(main())
