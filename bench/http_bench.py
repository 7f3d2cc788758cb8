"""Requests per second of one small JSON route, bare and behind JWT middleware.

    .venv/bin/python bench/http_bench.py [--quick]

Configs (each served by uvicorn, one worker, uvloop + httptools, see bench/_serve.py):
  bare         Starlette app, one route returning a small JSON (= 1.00)
  keyswap      the same app behind keyswap.verifier.asgi.JWTAuthMiddleware
  handwritten  the same app behind a Starlette BaseHTTPMiddleware doing
               PyJWKClient(url).get_signing_key_from_jwt + jwt.decode (iss/aud checked)
Load: wrk in its own process, -t1 -c32, --latency, a valid RS256 token on every request (also to
bare, so every config parses the same bytes). Per round and config: 2 s warm-up, then the measured
run; rounds interleave the configs (rotating the starting config). Medians over rounds.
The JWKS is served by this script on 127.0.0.1; fetches during measured runs are reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    BenchKey,
    JWKSHost,
    Server,
    Target,
    WrkResult,
    bench_claims,
    fmt,
    fmt_int,
    free_port,
    http_get,
    import_problem,
    markdown_table,
    median,
    print_header,
    print_targets,
    run_wrk,
    serve_argv,
    temp_dir,
)

CONFIGS = ("bare", "keyswap", "handwritten")
LABELS = {
    "bare": "Starlette bare",
    "keyswap": "+ keyswap JWTAuthMiddleware",
    "handwritten": "+ hand-written BaseHTTPMiddleware (PyJWKClient + jwt.decode)",
}


def _tampered(token: str) -> str:
    """The same token with one signature character changed (a bad signature, still well formed)."""
    head, _, sig = token.rpartition(".")
    mid = len(sig) // 2
    return f"{head}.{sig[:mid]}{'A' if sig[mid] != 'A' else 'B'}{sig[mid + 1 :]}"


def check(name: str, url: str, token: str) -> None:
    """Refuse to measure a config that does not behave: 401 without/with a bad token, 200 with it."""
    deadline = time.monotonic() + 15
    status, body = http_get(url, {"Authorization": f"Bearer {token}"})
    while status == 503 and time.monotonic() < deadline:  # keys still loading
        time.sleep(0.1)
        status, body = http_get(url, {"Authorization": f"Bearer {token}"})
    if status != 200:
        raise SystemExit(f"{name}: expected 200 with a valid token, got {status}: {body[:200]!r}")
    if name == "bare":
        return
    for label, headers in (
        ("no token", {}),
        ("bad signature", {"Authorization": f"Bearer {_tampered(token)}"}),
    ):
        status, body = http_get(url, headers)
        if status != 401:
            raise SystemExit(f"{name}: expected 401 with {label}, got {status}: {body[:200]!r}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up, 1 round")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per run (default 2)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument(
        "--server",
        choices=["uvicorn", "granian"],
        default="uvicorn",
        help="ASGI server for every config",
    )
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    rounds = args.rounds or (1 if args.quick else 3)
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            parser.error(f"unknown config {c!r}")

    skipped: list[str] = []
    problem = import_problem("keyswap.verifier.asgi", "keyswap.verifier.verify")
    if "keyswap" in configs and problem:
        configs.remove("keyswap")
        skipped.append(f"keyswap ({problem})")

    print_header(
        "HTTP layer: JWT middleware vs bare app",
        f"{args.server}; wrk -t1 -c{args.connections} -d{duration:g}s --latency after a {warmup:g} s warm-up, "
        f"{rounds} interleaved round(s), medians; RS256 token on every request; "
        "server CPU = utime+stime from /proc/<pid>/stat over the measured run / requests.",
        tools=("wrk",),
    )

    key = BenchKey("RS256")
    token = key.sign(bench_claims("http-bench"))
    auth = {"Authorization": f"Bearer {token}"}
    results: dict[str, list[WrkResult]] = {c: [] for c in configs}
    servers: dict[str, Server] = {}
    with temp_dir("keyswap-http-bench-") as tmp, JWKSHost([key]) as jwks:
        try:
            for name in configs:
                port = free_port()
                extra = ["--jwks-url", jwks.url] if name != "bare" else []
                extra += ["--server", args.server]
                server = Server(name, serve_argv(name, port, *extra), log_dir=tmp)
                servers[name] = server.start(f"http://{HOST}:{port}/")
            for name, server in servers.items():
                check(name, server.url, token)
            hits_before = jwks.count()
            for rnd in range(rounds):
                order = configs[rnd % len(configs) :] + configs[: rnd % len(configs)]
                for name in order:
                    url = servers[name].url
                    if warmup > 0:
                        run_wrk(url, seconds=warmup, connections=args.connections, headers=auth)
                    r = run_wrk(
                        url,
                        seconds=duration,
                        connections=args.connections,
                        headers=auth,
                        cpu=[servers[name]],
                    )
                    results[name].append(r)
                    print(
                        f"round {rnd + 1} {name}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                        f"p99 {r.p99_ms:.2f} ms, {r.cpu_us_per_req:.0f} µs CPU/req, "
                        f"non-2xx {r.non2xx}, socket errors {r.socket_errors}",
                        file=sys.stderr,
                        flush=True,
                    )
            jwks_fetches = jwks.count() - hits_before
        finally:
            for server in servers.values():
                server.stop()

    def med(name: str, attr: str) -> float:
        return median([getattr(r, attr) for r in results.get(name, [])])

    bare_rps = med("bare", "rps")
    bare_cpu = med("bare", "cpu_us_per_req")
    rows = []
    for name in configs:
        rows.append(
            [
                LABELS[name],
                fmt_int(med(name, "rps")),
                fmt(med(name, "rps") / bare_rps),
                fmt(med(name, "p50_ms")),
                fmt(med(name, "p99_ms")),
                fmt_int(med(name, "cpu_us_per_req")),
                fmt(bare_cpu / med(name, "cpu_us_per_req")),
                str(sum(r.non2xx + r.socket_errors for r in results[name])),
            ]
        )
    print(
        markdown_table(
            [
                "config",
                "req/s",
                "ratio vs bare",
                "p50 ms",
                "p99 ms",
                "server CPU µs/req",
                "CPU ratio",
                "errors",
            ],
            rows,
        )
    )
    print(
        "\nCPU ratio = bare CPU µs/req ÷ this config's: the req/s ratio a CPU-bound server would "
        "reach, less noisy than req/s when other processes share the cores."
    )
    print(f"JWKS fetches during measured runs: {jwks_fetches}")
    for s in skipped:
        print(f"Skipped: {s}")

    targets = []
    if "keyswap" in configs and "bare" in configs:
        targets.append(Target("keyswap req/s ÷ bare", med("keyswap", "rps") / bare_rps, 0.85))
    if "keyswap" in configs and "handwritten" in configs:
        targets.append(
            Target(
                "keyswap req/s ÷ hand-written",
                med("keyswap", "rps") / med("handwritten", "rps"),
                5.0,
            )
        )
    ok = print_targets(targets) if targets else True
    errors = sum(r.non2xx + r.socket_errors for rs in results.values() for r in rs)
    if errors:
        print(f"\nWARNING: {errors} non-2xx answers or socket errors during measured runs")
    return 0 if ok and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
