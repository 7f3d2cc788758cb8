"""The admin API's own figures: key creation and one page of consumers, through a real ``keyswap admin``.

Starts ``keyswap admin`` (a subprocess, one worker) on 127.0.0.1 over a database seeded with
``--consumers`` consumers (default 100,000, inserted in bulk), then, over one keep-alive connection:

- **create**: ``POST /v1/consumers/{name}/keys`` ``--creates`` times (default 300), each a new key
  (HMAC, insert, audit event in one transaction): p50 and p99;
- **list**: ``GET /v1/consumers?limit=100&cursor=<name>`` ``--lists`` times (default 300), each from a
  random place among all consumers: p50 and p99.

Usage: ``python bench/admin_bench.py [--db URL] [--consumers N] [--quick]`` (default: a temporary
SQLite file; a PostgreSQL URL whose schema the script may create tables in measures that, with
``--fresh-schema`` making a throwaway schema). Prints a markdown table.

``--beside-gateway``: does the admin API move the gateway's own figures? The one-key gateway benchmark
(bench/gateway_bench.py's keyswap config: ``keyswap gateway`` at default settings but
--max-connections-per-consumer 64, one API key on every request, in front of the bare upstream) run
alternately **without** and **with** a ``keyswap admin`` process on the same database serving a steady
light load from another client (``--admin-rps``, default 4 requests/s, cycling: create a consumer, create
a key for it, list a page of 100 consumers, list a page of 100 keys; each creation notifies the gateway
like a CLI change). Per round and side: wrk -t1 -c32 (warm-up, then the measured run) and wrk -t1 -c1;
the admin process is started before the "with" side and stopped after it; the order alternates per
round; medians; prints with ÷ without for each figure, and the admin requests' own latency. Any non-2xx
answer at the gateway or the admin API fails the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import sqlalchemy as sa

from keyswap.gateway.secret import ServerSecret
from keyswap.manage.actor import Actor
from keyswap.manage.context import Context
from keyswap.manage.tokens import NewAdminToken, create_admin_token
from keyswap.store import Store
from keyswap.store.schema import consumers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    Server,
    WrkResult,
    fmt,
    fmt_int,
    free_port,
    http_get,
    markdown_table,
    median,
    print_header,
    run_wrk,
    serve_argv,
    temp_dir,
)

SECRET = "bench-server-secret-0123456789-abcdefghijkl"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _seed(store: Store, count: int) -> list[str]:
    names = [f"c{i:07d}" for i in range(count)]
    now = time.time()
    with store.engine.begin() as conn:
        for start in range(0, count, 5000):
            rows = [
                {"name": n, "metadata": {}, "created_at": now} for n in names[start : start + 5000]
            ]
            conn.execute(consumers.insert(), rows)
    return names


@contextlib.contextmanager
def _schema(db_url: str | None, fresh: bool) -> Iterator[str | None]:
    """``db_url``, or with ``fresh``, a URL of a new schema in it (dropped afterwards)."""
    if db_url is None or not fresh:
        yield db_url
        return
    name = f"bench_{os.getpid()}"
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        separator = "&" if "?" in db_url else "?"
        yield f"{db_url}{separator}options=-csearch_path%3D{name}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        engine.dispose()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class AdminLoad:
    """A steady light load on a running admin API, from a thread: ``rps`` requests per second."""

    def __init__(self, url: str, token: str, rps: float) -> None:
        self.url = url
        self.token = token
        self.interval = 1.0 / rps
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._run_id = uuid.uuid4().hex[:8]  # new consumer names on every run

    def __enter__(self) -> AdminLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _one(self, client: httpx.Client, step: int) -> httpx.Response:
        name = f"beside-{self._run_id}-{step // 4}"
        kind = step % 4
        if kind == 0:
            return client.post("/v1/consumers", json={"name": name})
        if kind == 1:
            return client.post(f"/v1/consumers/{name}/keys")
        if kind == 2:
            return client.get("/v1/consumers", params={"limit": 100})
        return client.get("/v1/keys", params={"limit": 100})

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        next_at = time.monotonic()
        step = 0
        with httpx.Client(base_url=self.url, headers=headers, timeout=10) as client:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    response = self._one(client, step)
                    if response.status_code >= 300:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                step += 1
                next_at += self.interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))


def beside_gateway(args: argparse.Namespace) -> int:
    """The --beside-gateway mode (see the module docstring)."""
    from keyswap.gateway.apikeys import ApiKeys

    if args.quick:
        args.rounds, args.duration, args.c1_duration, args.warmup = 1, 3.0, 2.0, 1.0
    print_header(
        "The gateway with and without keyswap admin beside it",
        f"one-key gateway benchmark (wrk -t1 -c32 -d{args.duration:g}s after {args.warmup:g} s "
        f"warm-up, then wrk -t1 -c1 -d{args.c1_duration:g}s), without and with a keyswap admin "
        f"process on the same database serving {args.admin_rps:g} requests/s (create consumer, "
        f"create key, list consumers, list keys); {args.rounds} rounds, order alternating; medians.",
        tools=("wrk",),
    )
    keyswap = [sys.executable, "-c", "from keyswap.cli import main; main()"]
    env = {"KEYSWAP_SECRET": SECRET}
    sides = ("without", "with")
    c32: dict[str, list[WrkResult]] = {side: [] for side in sides}
    c1: dict[str, list[WrkResult]] = {side: [] for side in sides}
    admin_ms: list[float] = []
    admin_failures: list[str] = []
    with temp_dir("keyswap-admin-beside-") as tmp, _schema(args.db, args.fresh_schema) as given:
        db_url = given or f"sqlite:///{tmp / 'keyswap.db'}"
        store = Store(db_url, schema="upgrade")
        try:
            store.create_consumer("bench")
            key = ApiKeys(store, ServerSecret(SECRET), cache_size=0).create("bench")[1]
            ctx = Context(store, Actor.cli("bench"))
            token = create_admin_token(
                ctx, ServerSecret(SECRET), NewAdminToken("beside", ("admin",))
            ).token
        finally:
            store.close()
        servers: list[Server] = []
        try:
            up_port = free_port()
            upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
            servers.append(upstream.start(f"http://{HOST}:{up_port}/"))
            gw_port = free_port()
            argv = [*keyswap, "gateway", "--upstream", f"http://{HOST}:{up_port}"]
            argv += ["--port", str(gw_port), "--db", db_url, "--max-connections-per-consumer", "64"]
            gateway = Server("gateway", argv, log_dir=tmp, env=env)
            servers.append(gateway.start(f"http://{HOST}:{gw_port}/"))
            headers = {"Authorization": f"Bearer {key}"}
            deadline = time.monotonic() + 15
            while http_get(gateway.url, headers)[0] != 200:  # signing keys still loading
                if time.monotonic() > deadline:
                    raise SystemExit(f"the gateway never answered 200:\n{gateway.log_tail()}")
                time.sleep(0.1)
            for rnd in range(args.rounds):
                for side in sides if rnd % 2 == 0 else tuple(reversed(sides)):
                    admin: Server | None = None
                    if side == "with":
                        port = free_port()
                        admin_argv = [*keyswap, "admin", "--port", str(port), "--db", db_url]
                        admin = Server(
                            "admin", [*admin_argv, "--log-level", "warning"], log_dir=tmp, env=env
                        )
                        admin.start(f"http://{HOST}:{port}/healthz")
                    try:
                        with contextlib.ExitStack() as stack:
                            load = None
                            if admin is not None:
                                admin_url = admin.url.removesuffix("/healthz")
                                load = stack.enter_context(
                                    AdminLoad(admin_url, token, args.admin_rps)
                                )
                            run_wrk(gateway.url, seconds=args.warmup, headers=headers)
                            r = run_wrk(
                                gateway.url, seconds=args.duration, headers=headers, cpu=[gateway]
                            )
                            r1 = run_wrk(
                                gateway.url,
                                seconds=args.c1_duration,
                                connections=1,
                                headers=headers,
                            )
                        if load is not None:
                            admin_ms.extend(load.latencies_ms)
                            admin_failures.extend(load.failures)
                    finally:
                        if admin is not None:
                            admin.stop()
                    c32[side].append(r)
                    c1[side].append(r1)
                    print(
                        f"round {rnd + 1} {side}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                        f"p99 {r.p99_ms:.2f} ms, CPU {r.cpu_us_per_req:.0f} µs/req; c1 p50 "
                        f"{r1.p50_ms:.3f} ms; non-2xx {r.non2xx + r1.non2xx}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            for server in reversed(servers):
                server.stop()

    def med(data: dict[str, list[WrkResult]], side: str, attr: str) -> float:
        return median([getattr(r, attr) for r in data[side]])

    figures = [
        ("req/s (c32)", c32, "rps", 0),
        ("p50 ms (c32)", c32, "p50_ms", 2),
        ("p99 ms (c32)", c32, "p99_ms", 2),
        ("gateway CPU µs/req (c32)", c32, "cpu_us_per_req", 0),
        ("p50 ms (c1)", c1, "p50_ms", 3),
    ]
    rows = []
    for label, data, attr, digits in figures:
        without, with_ = med(data, "without", attr), med(data, "with", attr)
        cell = fmt_int if digits == 0 else (lambda v, d=digits: fmt(v, d))
        rows.append([label, cell(without), cell(with_), fmt(with_ / without)])
    kind = "PostgreSQL" if "postgres" in db_url else "SQLite"
    print(f"## The gateway without and with keyswap admin beside it ({kind}, medians)\n")
    print(markdown_table(["figure", "without admin", "with admin", "with ÷ without"], rows))
    errors = sum(r.non2xx + r.socket_errors for d in (c32, c1) for rs in d.values() for r in rs)
    print()
    for side in sides:  # the machine's noise: how far rounds of the same side spread
        rps = [r.rps for r in c32[side]]
        print(f"req/s {side} admin, every round: {', '.join(fmt_int(v) for v in rps)}", end="")
        print(f" (min-max {fmt_int(min(rps))}-{fmt_int(max(rps))})")
    if admin_ms:
        print(
            f"admin API beside it: {len(admin_ms)} requests, p50 {statistics.median(admin_ms):.2f} ms, "
            f"p99 {_percentile(admin_ms, 0.99):.2f} ms, failures {len(admin_failures)}"
        )
    print(f"gateway non-2xx answers and socket errors: {errors}")
    for failure in admin_failures[:5]:
        print(f"admin failure: {failure}")
    return 1 if errors or admin_failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--db", default=None, help="database URL (default: a temporary SQLite file)"
    )
    parser.add_argument("--consumers", type=int, default=100_000)
    parser.add_argument("--creates", type=int, default=300)
    parser.add_argument("--lists", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="10,000 consumers, 50 of each request")
    parser.add_argument(
        "--fresh-schema",
        action="store_true",
        help="PostgreSQL: work in a new schema of --db, dropped afterwards",
    )
    beside = parser.add_argument_group("--beside-gateway")
    beside.add_argument(
        "--beside-gateway",
        action="store_true",
        help="the one-key gateway benchmark without and with keyswap admin beside it",
    )
    beside.add_argument("--admin-rps", type=float, default=4.0, help="admin requests per second")
    beside.add_argument("--rounds", type=int, default=5)
    beside.add_argument("--duration", type=float, default=10.0, help="seconds per c32 run")
    beside.add_argument("--c1-duration", type=float, default=5.0, help="seconds per c1 run")
    beside.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per side")
    args = parser.parse_args()
    if args.beside_gateway:
        return beside_gateway(args)
    if args.quick:
        args.consumers, args.creates, args.lists = 10_000, 50, 50
    with tempfile.TemporaryDirectory() as tmp, _schema(args.db, args.fresh_schema) as given:
        db_url = given or f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = Store(db_url, schema="upgrade")
        try:
            started = time.perf_counter()
            names = _seed(store, args.consumers)
            seeded = time.perf_counter() - started
            ctx = Context(store, Actor.cli("bench"))
            token = create_admin_token(
                ctx, ServerSecret(SECRET), NewAdminToken("bench", ("admin",))
            ).token
        finally:
            store.close()
        port = _free_port()
        env = {**os.environ, "KEYSWAP_SECRET": SECRET}
        command = [sys.executable, "-c", "from keyswap.cli import main; main()", "admin"]
        command += ["--port", str(port), "--db", db_url, "--log-level", "warning"]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(url + "/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        print("keyswap admin did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            headers = {"Authorization": f"Bearer {token}"}
            rng = random.Random(7)
            with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
                for _ in range(10):  # warm up
                    client.get("/v1/consumers", params={"limit": 100})
                creates = []
                for i in range(args.creates):
                    name = names[i % len(names)]
                    t0 = time.perf_counter()
                    response = client.post(f"/v1/consumers/{name}/keys")
                    creates.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 201, response.text
                lists = []
                for _ in range(args.lists):
                    cursor = names[rng.randrange(len(names) - 100)]
                    t0 = time.perf_counter()
                    response = client.get("/v1/consumers", params={"limit": 100, "cursor": cursor})
                    lists.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200, response.text
                    assert len(response.json()["items"]) == 100
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    kind = "PostgreSQL" if "postgres" in db_url else "SQLite"
    print(
        f"keyswap admin, {kind}, {args.consumers:,} consumers (seeded in {seeded:.1f} s), one client"
    )
    print()
    print("| request | n | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    print(
        f"| POST /v1/consumers/{{name}}/keys | {len(creates)} | {statistics.median(creates):.2f} "
        f"| {_percentile(creates, 0.99):.2f} |"
    )
    print(
        f"| GET /v1/consumers?limit=100&cursor=... | {len(lists)} | {statistics.median(lists):.2f} "
        f"| {_percentile(lists, 0.99):.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
