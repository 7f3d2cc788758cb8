"""Gateway CPU µs per request at each log level, alternating runs (a less noisy measure than req/s).

    python bench/gateway_cpu.py [--levels info,warning] [--rounds 6] [--duration 4] [--connections 8]
                                [--before SRC]

``--before SRC``: also run the gateways of another source tree (``PYTHONPATH=SRC``, e.g. the ``src``
folder of ``git archive main src``), in the same rounds: a before/after comparison in one sitting.

One upstream (the bare app) and one ``keyswap gateway`` per log level, all running at once; each round
runs wrk against every gateway in turn (the order rotates), and the gateway's CPU (utime + stime of its
whole process, every thread: the access log's writer too, from ``/proc``) over the run is divided by
the requests wrk completed. On a shared machine req/s moves with the neighbours; CPU per request moves
much less (it still grows when caches are cold or the cores are contended). Medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    PYTHON,
    Server,
    free_port,
    markdown_table,
    print_header,
    run_wrk,
    serve_argv,
    temp_dir,
)

KEYSWAP = [str(Path(PYTHON).with_name("keyswap"))]


def _keyswap(*args: str) -> str:
    proc = subprocess.run(
        [*KEYSWAP, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"keyswap {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--levels", default="info,warning")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--before", help="another source tree to compare (its src folder)")
    args = parser.parse_args()
    levels = [lv for lv in args.levels.split(",") if lv]
    trees: dict[str, dict[str, str] | None] = {"": None}
    if args.before:
        trees = {"before ": {"PYTHONPATH": str(Path(args.before).resolve())}, "": None}
    configs = [f"{tree}{lv}" for tree in trees for lv in levels]
    print_header(
        "Gateway CPU per request by log level",
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s per run after a 1 s warm-up, "
        f"{args.rounds} alternating rounds, medians; CPU = utime+stime of the gateway process "
        "(all threads) over the run ÷ requests.",
        tools=("wrk",),
    )
    cpu: dict[str, list[float]] = {c: [] for c in configs}
    rps: dict[str, list[float]] = {c: [] for c in configs}
    servers: list[Server] = []
    with temp_dir("keyswap-gateway-cpu-") as tmp:
        try:
            db = f"sqlite:///{tmp}/keyswap.db"
            _keyswap("consumers", "create", "bench", "--db", db)
            key = json.loads(_keyswap("keys", "create", "bench", "--json", "--db", db))["key"]
            up_port = free_port()
            upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
            servers.append(upstream.start(f"http://{HOST}:{up_port}/"))
            gateways: dict[str, Server] = {}
            for tree, env in trees.items():
                for level in levels:
                    port = free_port()
                    argv = [*KEYSWAP, "gateway", "--upstream", f"http://{HOST}:{up_port}"]
                    argv += ["--port", str(port), "--db", db, "--log-level", level]
                    argv += ["--max-connections-per-consumer", "64"]
                    name = f"{tree}{level}"
                    gw = Server(f"gateway-{name.replace(' ', '-')}", argv, log_dir=tmp, env=env)
                    gateways[name] = gw
                    servers.append(gw.start(f"http://{HOST}:{port}/"))
            headers = {"Authorization": f"Bearer {key}"}
            for rnd in range(args.rounds):
                order = configs[rnd % len(configs) :] + configs[: rnd % len(configs)]
                for level in order:
                    gw = gateways[level]
                    run_wrk(gw.url, seconds=1.0, connections=args.connections, headers=headers)
                    r = run_wrk(
                        gw.url,
                        seconds=args.duration,
                        connections=args.connections,
                        headers=headers,
                        cpu=[gw],
                    )
                    if r.non2xx or r.socket_errors:
                        raise SystemExit(f"{level}: {r.non2xx} non-2xx, {r.socket_errors} errors")
                    cpu[level].append(r.cpu_us_per_req)
                    rps[level].append(r.rps)
                    print(
                        f"round {rnd + 1} {level}: {r.rps:,.0f} req/s, "
                        f"{r.cpu_us_per_req:.1f} µs/req",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            for server in reversed(servers):
                server.stop()
    base = statistics.median(cpu[configs[-1]])
    rows = [
        [
            f"{c.removesuffix(c.split()[-1])}`--log-level {c.split()[-1]}`",
            f"{statistics.median(cpu[c]):.1f}",
            f"{statistics.median(cpu[c]) - base:+.1f}",
            ", ".join(f"{x:.0f}" for x in cpu[c]),
            f"{statistics.median(rps[c]):,.0f}",
        ]
        for c in configs
    ]
    print(
        markdown_table(
            ["gateway", "CPU µs/req", f"vs {configs[-1]}", "per round", "req/s (noisy)"], rows
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
