"""Gateway throughput on PostgreSQL vs SQLite, and how fast a revocation reaches another node.

    .venv/bin/python bench/cluster_bench.py [--quick]

Needs PostgreSQL (--pg-url, default postgresql://postgres@127.0.0.1:5432/test; a scratch schema is
created and dropped), Redis (--redis-url, default redis://127.0.0.1:6379/15; a scratch prefix) and wrk.

Part 1, throughput: one `keyswap gateway` node (ES256, --log-level warning) in front of the bare
upstream (bench/_serve.py bare, one uvicorn worker); wrk -t1 -c32 sends the same API key on every
request, so key lookups are cached and the database is off the hot path. One consumer on 32
connections would meet the default per-consumer connection cap (25: 429s), so every node runs with
--max-connections-per-consumer max(64, 2 x --connections); any non-2xx answer fails the run. Configs:
  sqlite          --db sqlite:///<tmp>/keyswap.db
  postgres        --db postgresql://... (schema upgraded with `keyswap db upgrade`)
  postgres+redis  the same, plus --redis and a rate limit no request reaches (--rate-limit
                  1000000000/1d): one Redis round trip (the Lua INCR) per request
1 s warm-up, then --duration s measured; --rounds rounds interleaved; medians.

Part 2, revocation propagation: two gateway nodes A and B on one database. For each revocation: a
fresh key is used once through B (cached there), revoked with Store.revoke_api_key on the database
(as node A or `keyswap keys revoke` would; the clock starts before the call, so the commit is
included), then B is polled over one keep-alive connection until it answers 401. Configs:
  postgres (LISTEN/NOTIFY)   --db postgresql://...
  sqlite + redis (pub/sub)   --db sqlite:///..., --redis; the revoking Store publishes after commit
  sqlite (polling only)      --db sqlite:///...; the revision poller (every 1 s) is all there is;
                             each revocation waits a random 0-1 s first, so it falls anywhere in
                             node B's poll cycle
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import secrets
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    Server,
    WrkResult,
    fmt,
    fmt_int,
    free_port,
    http_get,
    import_problem,
    markdown_table,
    median,
    print_header,
    run_wrk,
    serve_argv,
    temp_dir,
)

KEYSWAP = str(Path(sys.executable).with_name("keyswap"))


def pg_schema_url(base: str, schema: str) -> str:
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


class Scratch:
    """A PostgreSQL schema and a Redis prefix for one run, removed at the end."""

    def __init__(self, pg_url: str, redis_url: str) -> None:
        import sqlalchemy as sa

        self.base = pg_url
        self.schema = "bench_" + uuid.uuid4().hex[:10]
        self.redis_url = redis_url
        self.prefix = "ksbench" + uuid.uuid4().hex[:8]
        self.secret = secrets.token_urlsafe(32)
        engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
        engine.dispose()

    def pg_url(self) -> str:
        return pg_schema_url(self.base, self.schema)

    def drop(self) -> None:
        import redis
        import sqlalchemy as sa

        engine = sa.create_engine(self.base.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        engine.dispose()
        client = redis.Redis.from_url(self.redis_url)
        keys = list(client.scan_iter(match=f"{self.prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def setup_database(db_url: str, env: dict[str, str]) -> tuple[str, str]:
    """Schema, consumer and one key; returns (key id, key)."""
    from keyswap.gateway.apikeys import ApiKeys
    from keyswap.gateway.secret import load_secret
    from keyswap.store import Store

    store = Store(db_url, schema="upgrade")
    try:
        store.create_consumer("bench")
        record, key = ApiKeys(store, load_secret(db_url, env=env), cache_size=0).create("bench")
    finally:
        store.close()
    return record.id, key


def start_gateway(
    name: str, db_url: str, upstream: str, tmp: Path, env: dict[str, str], *extra: str
) -> Server:
    port = free_port()
    server = Server(
        name,
        [
            KEYSWAP,
            "gateway",
            "--db",
            db_url,
            "--upstream",
            upstream,
            "--port",
            str(port),
            "--alg",
            "ES256",
            "--log-level",
            "warning",
            *extra,
        ],
        log_dir=tmp,
        env=env,
    )
    return server.start(f"http://{HOST}:{port}/")


def wait_ok(url: str, key: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, body = http_get(url + "/", {"Authorization": f"Bearer {key}"})
        if status == 200:
            return
        time.sleep(0.05)
    raise SystemExit(f"{url}: the key never got a 200 (last {status}: {body[:200]!r})")


# --------------------------------------------------------------------------- part 1


def connection_cap(connections: int) -> tuple[str, str]:
    """The gateway flag that keeps ``connections`` of one consumer under its connection cap."""
    return ("--max-connections-per-consumer", str(max(64, 2 * connections)))


def throughput(args: argparse.Namespace, scratch: Scratch, tmp: Path, upstream: str) -> int:
    """Part 1; returns the number of non-2xx answers and socket errors of the measured runs."""
    env = {"KEYSWAP_SECRET": scratch.secret}
    cap = connection_cap(args.connections)
    sqlite_url = f"sqlite:///{tmp}/throughput.db"
    pg_url = scratch.pg_url()
    configs: dict[str, tuple[str, tuple[str, ...]]] = {
        "sqlite": (sqlite_url, ()),
        "postgres": (pg_url, ()),
        "postgres+redis": (
            pg_url,
            (
                "--redis",
                scratch.redis_url,
                "--redis-prefix",
                scratch.prefix,
                "--rate-limit",
                "1000000000/1d",
            ),
        ),
    }
    keys = {
        "sqlite": setup_database(sqlite_url, env)[1],
        "postgres": setup_database(pg_url, env)[1],
    }
    keys["postgres+redis"] = keys["postgres"]
    results: dict[str, list[WrkResult]] = {name: [] for name in configs}
    names = list(configs)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            db_url, extra = configs[name]
            gateway = start_gateway(f"tp-{name}", db_url, upstream, tmp, env, *cap, *extra)
            try:
                headers = {"Authorization": f"Bearer {keys[name]}"}
                wait_ok(gateway.url.rstrip("/"), keys[name])
                run_wrk(gateway.url, seconds=1, connections=args.connections, headers=headers)
                result = run_wrk(
                    gateway.url,
                    seconds=args.duration,
                    connections=args.connections,
                    headers=headers,
                    cpu=[gateway],
                )
                results[name].append(result)
                print(
                    f"  {name}: {result.rps:,.0f} req/s, non-2xx {result.non2xx}, "
                    f"socket errors {result.socket_errors}",
                    file=sys.stderr,
                    flush=True,
                )
            finally:
                gateway.stop()
    base = median([r.rps for r in results["sqlite"]])
    rows = []
    for name in names:
        runs = results[name]
        rps = median([r.rps for r in runs])
        rows.append(
            [
                name,
                fmt_int(rps),
                fmt(rps / base),
                fmt(median([r.p50_ms for r in runs])),
                fmt(median([r.p99_ms for r in runs])),
                fmt_int(median([r.cpu_us_per_req for r in runs])),
                str(sum(r.non2xx + r.socket_errors for r in runs)),
            ]
        )
    print(f"## Throughput, one node, cached key (wrk -c{args.connections}, medians)\n")
    print(
        markdown_table(
            [
                "config",
                "req/s",
                "÷ sqlite",
                "p50 ms",
                "p99 ms",
                "gateway CPU µs/req",
                "non-2xx + socket errors",
            ],
            rows,
        )
    )
    print()
    return sum(r.non2xx + r.socket_errors for runs in results.values() for r in runs)


# --------------------------------------------------------------------------- part 2


def propagation(args: argparse.Namespace, scratch: Scratch, tmp: Path, upstream: str) -> None:
    from keyswap.gateway.apikeys import ApiKeys
    from keyswap.gateway.redisbus import RedisChanges
    from keyswap.gateway.secret import ServerSecret
    from keyswap.store import Store

    secret_text = scratch.secret
    env = {"KEYSWAP_SECRET": secret_text}
    redis_extra = ("--redis", scratch.redis_url, "--redis-prefix", scratch.prefix)
    configs = [
        ("postgres (LISTEN/NOTIFY)", scratch.pg_url(), (), False),
        ("sqlite + redis (pub/sub)", f"sqlite:///{tmp}/redis.db", redis_extra, True),
        ("sqlite (polling only)", f"sqlite:///{tmp}/poll.db", (), False),
    ]
    rows = []
    for label, db_url, extra, publish in configs:
        count = args.revocations if "polling" not in label else args.poll_revocations
        store = Store(db_url, schema="upgrade")
        if store.get_consumer("bench") is None:
            store.create_consumer("bench")
        keys = ApiKeys(store, ServerSecret(secret_text), cache_size=0)
        changes = None
        if publish:
            changes = RedisChanges(scratch.redis_url, prefix=scratch.prefix)
            store.on_commit(changes.publish)
        node_a = start_gateway("node-a", db_url, upstream, tmp, env, *extra)
        node_b = start_gateway("node-b", db_url, upstream, tmp, env, *extra)
        seconds: list[float] = []
        try:
            conn = http.client.HTTPConnection(HOST, int(node_b.url.rsplit(":", 1)[1].strip("/")))
            for _ in range(count):
                record, key = keys.create("bench")
                headers = {"Authorization": f"Bearer {key}"}
                wait_ok(node_b.url.rstrip("/"), key)
                if not extra and not store.is_postgres:
                    # Polling only: revoke at a random point of node B's 1 s poll cycle (else every
                    # revocation lands just after a poll, in step with the previous one).
                    time.sleep(random.random())
                started = time.perf_counter()
                store.revoke_api_key(record.id, now=time.time())
                deadline = started + 10
                while True:
                    conn.request("GET", "/", headers=headers)
                    response = conn.getresponse()
                    response.read()
                    if response.status == 401:
                        seconds.append(time.perf_counter() - started)
                        break
                    if time.perf_counter() > deadline:
                        raise SystemExit(f"{label}: a revocation did not reach node B in 10 s")
            conn.close()
        finally:
            node_a.stop()
            node_b.stop()
            if changes is not None:
                changes.stop()
            store.close()
        ms = sorted(s * 1000 for s in seconds)
        p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
        rows.append([label, str(len(ms)), fmt(median(ms), 1), fmt(p95, 1), fmt(max(ms), 1)])
        print(f"  {label}: median {median(ms):.1f} ms, max {max(ms):.1f} ms", file=sys.stderr)
    print("## Revocation propagation to another node (ms from revoke call to the first 401)\n")
    print(markdown_table(["config", "revocations", "median", "p95", "max"], rows))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers are not results)")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--duration", type=float, default=5.0, help="wrk seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--revocations", type=int, default=50)
    parser.add_argument("--poll-revocations", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.revocations, args.poll_revocations = 1.0, 1, 5, 3
    problem = import_problem("keyswap.gateway.cluster", "psycopg", "redis")
    if problem:
        raise SystemExit(f"cannot run: {problem}")
    print_header(
        "Cluster: throughput on PostgreSQL vs SQLite, revocation propagation",
        "see the docstring of bench/cluster_bench.py",
        tools=["wrk"],
    )
    scratch = Scratch(args.pg_url, args.redis_url)
    try:
        with temp_dir("keyswap-cluster-bench-") as tmp:
            up_port = free_port()
            upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
            upstream.start(f"http://{HOST}:{up_port}/")
            try:
                errors = throughput(args, scratch, tmp, f"http://{HOST}:{up_port}")
                propagation(args, scratch, tmp, f"http://{HOST}:{up_port}")
            finally:
                upstream.stop()
    finally:
        scratch.drop()
    if errors:
        print(f"FAILED: {errors} non-2xx answers or socket errors in the measured throughput runs")
        return 1
    print("non-2xx answers and socket errors in the measured throughput runs: 0")
    return 0


if __name__ == "__main__":
    os.environ.pop("KEYSWAP_DB", None)
    sys.exit(main())
