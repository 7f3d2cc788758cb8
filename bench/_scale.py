"""The gateway's *scale* table (``gateway_bench.py --scale``): cost as consumers grow.

One gateway process per round (``keyswap gateway`` with default settings: RS256, access log at info; only
``--max-connections-per-consumer 64``, as one consumer's 32 connections would meet the default cap),
over SQLite with 5,000 consumers holding one API key each, measured with wrk and a Lua script that
cycles through a list of keys (bench/_keys.lua):

  one key       one API key repeated (= 1.00)
  early         1 s from the moment a new gateway process answers ``/__keyswap/health`` (fewer
                than 5,000 requests: each key once), before its warm start is done: the first
                requests pay a store lookup and/or an RS256 signature (~260-330 µs) each. A
                separate process on a copy of the database, so that the next row starts as new.
  cold          1 s from the moment the gateway answers ``/__keyswap/ready`` (what a load balancer
                should route on): the warm start has cached the usable keys and minted their tokens
  cycled        5,000 keys cycled, warm
  unknown       unique unknown well-formed keys (100,000 made-up keys cycled: every one a miss)
  churn         5,000 keys cycled while another process creates a consumer and a key every 0.5 s

and the memory the lookup cache takes per key (``memory``: 1,000,000 entries in a cache of that size,
in a process of its own: RSS growth / keys).

Also runnable alone: ``python bench/_scale.py churn <db-url>`` (the churn process) and
``python bench/_scale.py memory <count>``.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    HOST,
    PYTHON,
    Server,
    WrkResult,
    fmt,
    fmt_int,
    free_port,
    http_get,
    markdown_table,
    median,
    run_wrk,
)

CONSUMERS = 5_000
COLD_SECONDS = 1.0
PRIME_SECONDS = 8.0
#: One consumer over 32 connections would hit the default per-consumer cap (max_connections / 4).
CAP = ("--max-connections-per-consumer", "64")
UNKNOWN = 100_000
SCRIPT = Path(__file__).resolve().with_name("_keys.lua")
ROWS = ("one", "cycled", "unknown", "churn")
LABELS = {
    "one": "one key repeated",
    "early": f"{CONSUMERS:,} consumers cycled from the first /health 200 (first pass, not ready)",
    "cold": f"{CONSUMERS:,} consumers cycled from the first /ready 200 (first pass)",
    "cycled": f"{CONSUMERS:,} consumers (one key each) cycled, warm",
    "unknown": "unique unknown well-formed keys",
    "churn": f"{CONSUMERS:,} consumers cycled, another process creating a consumer + key every 0.5 s",
}
GOALS = {"cycled": 0.8, "early": 0.25, "cold": 0.25, "unknown": 1.0, "churn": 0.7}


def _keyswap(*args: str) -> str:
    argv = [str(Path(sys.executable).with_name("keyswap")), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"keyswap {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def _populate(db: str, tmp: Path) -> tuple[Path, Path, Path]:
    """5,000 consumers with a key each, one more key for the one-key row, 100,000 unknown keys."""
    from keyswap.gateway.apikeys import ApiKeys, generate_key
    from keyswap.gateway.secret import load_secret
    from keyswap.store import Store

    _keyswap("consumers", "create", "solo", "--db", db)  # creates the server secret too
    solo = json.loads(_keyswap("keys", "create", "solo", "--json", "--db", db))["key"]
    store = Store(db)
    try:
        keys = ApiKeys(store, load_secret(db, env=dict(os.environ)), cache_size=0)
        cycled = []
        for n in range(CONSUMERS):
            store.create_consumer(f"c{n:05d}", {"plan": "bench", "n": n})
            cycled.append(keys.create(f"c{n:05d}")[1])
    finally:
        store.close()
    files = (tmp / "one.keys", tmp / "cycled.keys", tmp / "unknown.keys")
    files[0].write_text(solo + "\n")
    files[1].write_text("\n".join(cycled) + "\n")
    files[2].write_text("\n".join(generate_key() for _ in range(UNKNOWN)) + "\n")
    return files


def _gateway(db: str, upstream_url: str, tmp: Path, rnd: int, tag: str = "") -> Server:
    port = free_port()
    argv = [
        str(Path(sys.executable).with_name("keyswap")),
        "gateway",
        "--upstream",
        upstream_url,
        "--port",
        str(port),
        "--db",
        db,
        *CAP,
    ]
    return Server(f"keyswap-scale{tag}-{rnd}", argv, log_dir=tmp).start(f"http://{HOST}:{port}/")


def _first_pass(
    name: str,
    rnd: int,
    gateway: Server,
    upstream: Server,
    keys: Path,
    connections: int,
    results: dict[str, list[WrkResult]],
    wrong: dict[str, int],
) -> None:
    # wrk runs for its whole duration even after the script stops its thread: a short run,
    # checked to stay within the first pass (each request a consumer not seen yet).
    result = run_wrk(
        gateway.url,
        seconds=COLD_SECONDS,
        connections=connections,
        cpu=[gateway, upstream],
        script=SCRIPT,
        env={"BENCH_KEYS": str(keys)},
    )
    results[name].append(result)
    wrong[name] += result.non2xx + result.socket_errors
    if result.requests > CONSUMERS:
        print(f"NOTE: the {name} run went past the first pass ({result.requests})")
    print(
        f"scale round {rnd + 1} {name}: {result.rps:,.0f} req/s ({result.requests} requests), "
        f"CPU {'+'.join(f'{x:.0f}' for x in result.cpu_parts)} µs/req",
        file=sys.stderr,
    )


def _wait_for(url: str, headers: dict[str, str] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, _ = http_get(url, headers or {})
        if status == 200:
            return
        time.sleep(0.02)
    raise SystemExit(f"keyswap gateway (scale): {what or url} never answered 200")


def _wait_ready(url: str, key: str) -> None:
    _wait_for(url + "__keyswap/ready", what="/__keyswap/ready")
    _wait_for(url, {"Authorization": f"Bearer {key}"}, "the one key")


def run_scale(
    *,
    upstream: Server,
    upstream_url: str,
    tmp: Path,
    rounds: int,
    duration: float,
    warmup: float,
    connections: int,
) -> tuple[str, dict[str, float], float]:
    """Run the scale rounds; returns the markdown table, the ratios and the bytes per cached key."""
    db = f"sqlite:///{tmp}/scale.db"
    one, cycled, unknown = _populate(db, tmp)
    files = {"one": one, "cycled": cycled, "unknown": unknown, "churn": cycled}
    results: dict[str, list[WrkResult]] = {name: [] for name in ("early", "cold", *ROWS)}
    expected = {
        "one": 200,
        "early": 200,
        "cold": 200,
        "cycled": 200,
        "churn": 200,
        "unknown": 401,
    }
    wrong: dict[str, int] = {name: 0 for name in expected}
    copy = tmp / "scale-early.db"
    for rnd in range(rounds):
        # A gateway that gets its traffic before its warm start is done (on a copy of the database,
        # so that the keys are as new for the next process).
        shutil.copy(tmp / "scale.db", copy)
        shutil.copy(tmp / "scale.db.secret", tmp / "scale-early.db.secret")  # mode 0600 kept
        early_gateway = _gateway(f"sqlite:///{copy}", upstream_url, tmp, rnd, tag="early")
        try:
            _wait_for(early_gateway.url + "__keyswap/health", what="/__keyswap/health")
            _first_pass("early", rnd, early_gateway, upstream, cycled, connections, results, wrong)
        finally:
            early_gateway.stop()
        gateway = _gateway(db, upstream_url, tmp, rnd)
        try:
            _wait_ready(gateway.url, one.read_text().strip())  # warm start done; 1 key seen
            _first_pass("cold", rnd, gateway, upstream, cycled, connections, results, wrong)
            # Prime: every consumer seen at least once before the warm rows.
            run_wrk(
                gateway.url,
                seconds=PRIME_SECONDS,
                connections=connections,
                script=SCRIPT,
                env={"BENCH_KEYS": str(cycled)},
            )
            order = ROWS[rnd % len(ROWS) :] + ROWS[: rnd % len(ROWS)]
            for name in order:
                env = {"BENCH_KEYS": str(files[name])}
                churn = None
                if name == "churn":
                    churn = subprocess.Popen(
                        [PYTHON, __file__, "churn", db, str(rnd)],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                try:
                    if warmup > 0:
                        run_wrk(
                            gateway.url,
                            seconds=warmup,
                            connections=connections,
                            script=SCRIPT,
                            env=env,
                        )
                    result = run_wrk(
                        gateway.url,
                        seconds=duration,
                        connections=connections,
                        cpu=[gateway, upstream],
                        script=SCRIPT,
                        env=env,
                    )
                finally:
                    created = ""
                    if churn is not None:
                        churn.terminate()
                        created = (churn.communicate(timeout=10)[0] or "").strip()
                results[name].append(result)
                # wrk counts anything but 2xx/3xx as "non-2xx": for unknown keys that is every answer.
                if name == "unknown":
                    wrong[name] += result.requests - result.non2xx + result.socket_errors
                else:
                    wrong[name] += result.non2xx + result.socket_errors
                extra = f", {created} consumers created meanwhile" if created else ""
                print(
                    f"scale round {rnd + 1} {name}: {result.rps:,.0f} req/s, "
                    f"CPU {'+'.join(f'{x:.0f}' for x in result.cpu_parts)} µs/req{extra}",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            gateway.stop()
    per_key = _memory_per_key(1_000_000)
    base = median([r.rps for r in results["one"]])
    ratios: dict[str, float] = {}
    rows = []
    for name in ("one", "early", "cold", "cycled", "unknown", "churn"):
        if not results[name]:
            continue
        rps = median([r.rps for r in results[name]])
        ratio = rps / base
        ratios[name] = ratio
        front = median([r.cpu_parts[0] for r in results[name]])
        goal = GOALS.get(name)
        rows.append(
            [
                LABELS[name],
                fmt_int(rps),
                fmt(ratio),
                "–" if goal is None else f"≥ {goal:g}",
                fmt_int(front),
                fmt(median([r.p99_ms for r in results[name]])),
                f"{wrong[name]} (expected {expected[name]})",
            ]
        )
    table = markdown_table(
        [
            "scale (one gateway process per round)",
            "req/s",
            "vs one key",
            "goal",
            "gateway CPU µs/req",
            "p99 ms",
            "unexpected answers",
        ],
        rows,
    )
    table += (
        f"\n\nLookup cache memory: {per_key:,.0f} bytes of RSS per cached key "
        "(1,000,000 keys, one consumer each, in a cache of that size; the gateway's default "
        "bound is 10,000 known + 10,000 unknown keys)."
    )
    return table, ratios, per_key


# --------------------------------------------------------------------------- helper processes


def _churn(db: str, tag: str) -> None:
    """Create a consumer and a key every 0.5 s until terminated; print how many at the end."""
    import signal

    from keyswap.gateway.apikeys import ApiKeys
    from keyswap.gateway.secret import load_secret
    from keyswap.store import Store

    store = Store(db)
    keys = ApiKeys(store, load_secret(db, env=dict(os.environ)), cache_size=0)
    created = 0
    stop = False

    def done(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, done)
    while not stop:
        name = f"churn{tag}x{created:05d}"
        store.create_consumer(name)
        keys.create(name)
        created += 1
        time.sleep(0.5)
    store.close()
    print(created, flush=True)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fill(count: int) -> int:
    """RSS growth (bytes) of a lookup cache holding ``count`` keys, one consumer each."""
    from keyswap.gateway.apikeys import _entry, _LookupCache
    from keyswap.store.models import ApiKeyRecord, Consumer

    cache = _LookupCache(count, 300.0, 300.0, time.monotonic)
    gc.collect()
    before = _rss()
    now = time.time()
    for n in range(count):
        consumer = Consumer(
            id=n, name=f"c{n:07d}", metadata={"plan": "bench"}, created_at=now, scopes=()
        )
        record = ApiKeyRecord(
            id=f"key_{n:012d}",
            consumer_id=n,
            consumer_name=consumer.name,
            hint="ks_...abcd",
            created_at=now,
            expires_at=None,
            revoked_at=None,
            last_used_at=None,
        )
        cache.put(n.to_bytes(32, "big"), _entry(record, consumer), cache.generation)
    gc.collect()
    assert cache.sizes == (count, 0)
    return _rss() - before


def _memory_per_key(count: int) -> float:
    proc = subprocess.run(
        [PYTHON, __file__, "memory", str(count)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        print(f"memory measurement failed: {proc.stderr[-1000:]}", file=sys.stderr)
        return float("nan")
    return float(proc.stdout.strip())


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "churn":
        _churn(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
    elif command == "memory":
        count = int(sys.argv[2])
        print(_fill(count) / count)
    else:
        raise SystemExit(f"unknown command {command!r}")
