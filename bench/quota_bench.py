"""What quotas cost the gateway per request, with Redis and without.

    .venv/bin/python bench/quota_bench.py [--quick]

Needs Redis (--redis-url, default redis://127.0.0.1:6379/15; a scratch prefix, deleted after) and wrk.

Part 1, on the wire (the method of bench/cluster_bench.py part 1): one `keyswap gateway` node (ES256,
SQLite, --log-level warning) in front of the bare upstream (bench/_serve.py bare); wrk -t1 -c32 sends
the same API key on every request. Gateway CPU (process tree, user + system) per request. Configs,
interleaved over --rounds rounds, medians:
  plain              no Redis, no limits
  quota (per node)   consumer quota 10^12/day (never reached), no Redis: counted in memory
  redis              --redis and a rate limit no request reaches (--rate-limit 1000000000/1d):
                     the reference, one Lua round trip per request (what the rate limits cost)
  redis+quota        the same plus the quota: the rate limit and the quota in one Lua script
                     (QuotaEnforcer.check_with_rate) instead of the rate limit's
The quota's cost with Redis is (redis+quota - redis); the target is <= 40 us/req.

Part 2, in process: CPU time (time.process_time, this process only: the Redis server is another
process) per call of QuotaEnforcer.check, QuotaEnforcer.check_with_rate and RedisRateLimiter.hit,
32 concurrent callers on one event loop (as a loaded gateway batches them into pipelined round
trips), --calls calls each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

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
from cluster_bench import setup_database, start_gateway, wait_ok

QUOTA = "1000000000000/day"


def set_quota(db_url: str, quota: str | None) -> None:
    from keyswap.store import Store

    store = Store(db_url)
    try:
        store.update_consumer("bench", quota=quota)
    finally:
        store.close()


def on_the_wire(
    args: argparse.Namespace, redis_url: str, prefix: str, tmp: Path
) -> dict[str, float]:
    # as the other harnesses: no per-consumer cap on requests in flight below wrk's connections
    env = {
        "KEYSWAP_SECRET": secrets.token_urlsafe(32),
        "KEYSWAP_MAX_CONNECTIONS_PER_CONSUMER": "64",
    }
    redis_extra = ("--redis", redis_url, "--redis-prefix", prefix, "--rate-limit", "1000000000/1d")
    configs: dict[str, tuple[str, tuple[str, ...], str | None]] = {
        "plain": (f"sqlite:///{tmp}/plain.db", (), None),
        "quota (per node)": (f"sqlite:///{tmp}/quota.db", (), QUOTA),
        "redis": (f"sqlite:///{tmp}/redis.db", redis_extra, None),
        "redis+quota": (f"sqlite:///{tmp}/redisquota.db", redis_extra, QUOTA),
    }
    if args.configs:
        configs = {name: configs[name] for name in args.configs.split(",")}
    keys = {}
    for name, (db_url, _, quota) in configs.items():
        keys[name] = setup_database(db_url, env)[1]
        set_quota(db_url, quota)
    up_port = free_port()
    upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
    upstream.start(f"http://{HOST}:{up_port}/")
    results: dict[str, list[WrkResult]] = {name: [] for name in configs}
    names = list(configs)
    try:
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                db_url, extra, _ = configs[name]
                gateway = start_gateway(
                    f"q-{len(results[name])}-{name.split()[0]}",
                    db_url,
                    f"http://{HOST}:{up_port}",
                    tmp,
                    env,
                    *extra,
                )
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
                        f"  {name}: {result.rps:,.0f} req/s, {result.cpu_us_per_req:.0f} us/req",
                        file=sys.stderr,
                        flush=True,
                    )
                finally:
                    gateway.stop()
    finally:
        upstream.stop()
    base = median([r.rps for r in results[names[0]]])
    cpu = {name: median([r.cpu_us_per_req for r in runs]) for name, runs in results.items()}
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
                fmt_int(cpu[name]),
                " ".join(fmt_int(r.cpu_us_per_req) for r in runs),
                str(sum(r.non2xx + r.socket_errors for r in runs)),
            ]
        )
    print(f"## On the wire, one node, cached key (wrk -c{args.connections}, medians)\n")
    print(
        markdown_table(
            [
                "config",
                "req/s",
                f"÷ {names[0]}",
                "p50 ms",
                "p99 ms",
                "gateway CPU µs/req",
                "per round",
                "errors",
            ],
            rows,
        )
    )
    print()
    return cpu


async def _per_call(make_call: object, calls: int, concurrency: int = 32) -> float:
    call = make_call  # an async callable of no arguments

    async def worker(n: int) -> None:
        for _ in range(n):
            await call()  # type: ignore[operator]

    await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm-up
    started = time.process_time()
    await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
    return (time.process_time() - started) / (calls // concurrency * concurrency) * 1e6


async def in_process(args: argparse.Namespace, redis_url: str, prefix: str) -> dict[str, float]:
    from keyswap.gateway.apikeys import Principal
    from keyswap.gateway.quota import QuotaEnforcer
    from keyswap.gateway.ratelimit import Rate, RedisRateLimiter

    who = Principal("k", "bench", 1, {}, quota=QUOTA)
    memory = QuotaEnforcer(None)
    shared = QuotaEnforcer(None, redis_url=redis_url, prefix=prefix)
    limiter = RedisRateLimiter(redis_url, prefix=prefix)
    rate = Rate(1_000_000_000, 86400)
    found: dict[str, float] = {}
    try:
        found["QuotaEnforcer.check, memory"] = await _per_call(
            lambda: memory.check(who), args.calls
        )
        found["QuotaEnforcer.check, Redis"] = await _per_call(lambda: shared.check(who), args.calls)
        found["QuotaEnforcer.check_with_rate (rate limit + quota)"] = await _per_call(
            lambda: shared.check_with_rate(who, rate, limiter), args.calls
        )
        found["RedisRateLimiter.hit (reference)"] = await _per_call(
            lambda: limiter.hit(1, rate), args.calls
        )
    finally:
        await memory.close()
        await shared.close()
        await limiter.close()
    print(f"## In process, CPU per call ({args.calls} calls, 32 concurrent)\n")
    print(markdown_table(["call", "CPU µs/call"], [[k, fmt(v, 1)] for k, v in found.items()]))
    print()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers are not results)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--duration", type=float, default=5.0, help="wrk seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--calls", type=int, default=64_000)
    parser.add_argument(
        "--configs", default="", help="comma-separated subset of the configs of part 1 (in order)"
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.calls = 1.0, 1, 6400
    problem = import_problem("keyswap.gateway.quota", "redis")
    if problem:
        raise SystemExit(f"cannot run: {problem}")
    print_header(
        "Quotas: gateway CPU per request with Redis and without",
        "see the docstring of bench/quota_bench.py",
        tools=["wrk"],
    )
    prefix = "ksbench" + uuid.uuid4().hex[:8]
    try:
        with temp_dir("keyswap-quota-bench-") as tmp:
            cpu = on_the_wire(args, args.redis_url, prefix, tmp)
        asyncio.run(in_process(args, args.redis_url, prefix))
    finally:
        import redis

        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    if "redis" not in cpu or "redis+quota" not in cpu:
        return 0
    print_targets(
        [
            Target(
                "quota with Redis, gateway CPU µs/req over the rate-limit reference",
                cpu["redis+quota"] - cpu["redis"],
                40.0,
                above=False,
                unit=" µs",
            )
        ]
    )
    return 0


if __name__ == "__main__":
    os.environ.pop("KEYSWAP_DB", None)
    sys.exit(main())
