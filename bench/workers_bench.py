"""`keyswap gateway --workers 2` against `--workers 1`: server CPU per request, req/s, latency.

    .venv/bin/python bench/workers_bench.py [--quick]

One `keyswap gateway` (SQLite, ES256, --log-level warning) in front of the bare upstream
(bench/_serve.py bare, one uvicorn worker); wrk -t1 -c32 sends the same API key on every request (the
key lookup is cached; --max-connections-per-consumer 1000 so that no request is a 429). Configs:
  1 worker                    --workers 1 (the default: one process)
  2 workers                   --workers 2 (a parent supervising two forked workers on one socket)
  2 workers, 2x connections   the same under wrk -c64: each worker sees the connections the single
                              process saw (an event loop's cost per request falls as its load
                              rises: more ready events per wake-up)
Gateway CPU per request is utime + stime of the gateway's whole process tree (parent and workers)
over the measured run, divided by the requests wrk completed. 1 s warm-up, then --duration s
measured; --rounds rounds, the configs alternating and each round starting with the other one;
medians. Target: the 2-worker CPU per request under the same load is at most 1.10x the 1-worker one
(more processes must not cost more per request); the 2x-connections row is reported beside it.
--pin [LOAD:GATEWAY]: wrk and the upstream on the CPUs LOAD, the gateway's processes on GATEWAY
(taskset CPU lists; default 0:1), so that the gateway does not share its CPUs with the load. On 2
vCPUs (0:1) two workers take turns on one CPU (what that costs is what two processes on one core cost
each other, not what they would cost on spare cores); on 4 vCPUs, 0-1:2-3 gives each worker a CPU of
its own, which is what the target is about. The machine is shared and has 2 cores that wrk and the upstream use too:
req/s is reported, not a target.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
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

#: name -> (gateway flags, wrk connections as a multiple of --connections)
CONFIGS: dict[str, tuple[tuple[str, ...], int]] = {
    "1 worker": (("--workers", "1"), 1),
    "2 workers": (("--workers", "2"), 1),
    "2 workers, 2x connections": (("--workers", "2"), 2),
}
#: wrk's connections all use one key: without this the consumer's in-flight cap (a quarter of the
#: upstream pool, per process) would answer some of them 429, cheaper than a proxied request.
COMMON = ("--max-connections-per-consumer", "1000")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers are not results)")
    parser.add_argument("--duration", type=float, default=8.0, help="wrk seconds per run")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--pin",
        nargs="?",
        const="0:1",
        metavar="LOAD:GATEWAY",
        help="wrk and the upstream on the CPUs LOAD, the gateway on GATEWAY (taskset lists; "
        "default 0:1; e.g. 0-1:2-3 on 4 vCPUs)",
    )
    args = parser.parse_args()
    load_cpus, gateway_cpus = None, None
    if args.pin:
        load_cpus, sep, gateway_cpus = args.pin.partition(":")
        if not (sep and load_cpus and gateway_cpus):
            parser.error(f"--pin wants LOAD:GATEWAY CPU lists, got {args.pin!r}")
    if args.quick:
        args.duration, args.rounds = 1.0, 2
    problem = import_problem("keyswap.gateway.workers")
    if problem:
        raise SystemExit(f"cannot run: {problem}")
    print_header(
        "Gateway workers: 2 against 1 (CPU per request)",
        "see the docstring of bench/workers_bench.py",
        tools=["wrk"],
    )
    env = {"KEYSWAP_SECRET": secrets.token_urlsafe(32)}
    results: dict[str, list[WrkResult]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    with temp_dir("keyswap-workers-bench-") as tmp:
        db_url = f"sqlite:///{tmp}/keyswap.db"
        _, key = setup_database(db_url, env)
        headers = {"Authorization": f"Bearer {key}"}
        up_port = free_port()
        upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
        upstream.start(f"http://{HOST}:{up_port}/")
        if load_cpus:
            upstream.pin(load_cpus)
        try:
            for round_index in range(args.rounds):
                order = names if round_index % 2 == 0 else names[::-1]
                for name in order:
                    connections = args.connections * CONFIGS[name][1]
                    gateway = start_gateway(
                        name.replace(" ", "-"),
                        db_url,
                        f"http://{HOST}:{up_port}",
                        tmp,
                        env,
                        *CONFIGS[name][0],
                        *COMMON,
                    )
                    try:
                        wait_ok(gateway.url.rstrip("/"), key)
                        if gateway_cpus:
                            gateway.pin(gateway_cpus)
                        run_wrk(
                            gateway.url,
                            seconds=1,
                            connections=connections,
                            headers=headers,
                            cpus=load_cpus,
                        )
                        result = run_wrk(
                            gateway.url,
                            seconds=args.duration,
                            connections=connections,
                            headers=headers,
                            cpu=[gateway],
                            cpus=load_cpus,
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
        finally:
            upstream.stop()
    rows = []
    for name in names:
        runs = results[name]
        rows.append(
            [
                name,
                fmt_int(median([r.rps for r in runs])),
                fmt(median([r.p50_ms for r in runs])),
                fmt(median([r.p99_ms for r in runs])),
                fmt_int(median([r.cpu_us_per_req for r in runs])),
                " ".join(fmt_int(r.cpu_us_per_req) for r in runs),
                str(sum(r.non2xx + r.socket_errors for r in runs)),
            ]
        )
    pinned = (
        f"; pinned: wrk and the upstream on CPUs {load_cpus}, the gateway on CPUs {gateway_cpus}"
        if args.pin
        else ""
    )
    print(
        f"## One node, cached key (wrk -t1 -c{args.connections}, -c{2 * args.connections} for the "
        f"last row; medians of {args.rounds}{pinned})\n"
    )
    print(
        markdown_table(
            ["config", "req/s", "p50 ms", "p99 ms", "gateway CPU µs/req", "per round", "errors"],
            rows,
        )
    )
    one = median([r.cpu_us_per_req for r in results["1 worker"]])
    two = median([r.cpu_us_per_req for r in results["2 workers"]])
    errors = sum(r.non2xx + r.socket_errors for runs in results.values() for r in runs)
    passed = print_targets(
        [Target("CPU µs/req, 2 workers ÷ 1 worker", two / one, 1.10, above=False)]
    )
    return 0 if passed and not errors else 1


if __name__ == "__main__":
    os.environ.pop("KEYSWAP_DB", None)
    sys.exit(main())
