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
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    args = parser.parse_args()
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
