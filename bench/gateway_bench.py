"""Requests per second and latency through the keyswap gateway, against direct, a naive proxy and nginx.

    .venv/bin/python bench/gateway_bench.py [--quick]

Configs (all in front of the same upstream: the bare Starlette app on uvicorn, one worker):
  direct   wrk -> upstream (= 1.00)
  naive    Starlette + one keep-alive aiohttp.ClientSession: HMAC of the presented API key looked up
           in a dict, then the request forwarded (bench/_serve.py naiveproxy)
  nginx    nginx, 1 worker, proxy_pass with upstream keepalive, access_log off, no key check
  keyswap  `keyswap gateway --upstream ... --db sqlite:///<tmp>/keyswap.db`, default settings
           (RS256, access log at info to a file) but --max-connections-per-consumer 64 (one consumer
           on 32 connections would meet the default cap), consumer + API key created with the CLI; the key
           is sent by wrk on every request
--scale adds the scale table (bench/_scale.py): one key repeated vs 5,000 consumers cycled (first
pass after start, warm, under churn) vs unique unknown keys, and the lookup cache's memory per key.
Load: wrk -t1 -c32 --latency (2 s warm-up, then the measured run), then a wrk -t1 -c1 run for
latency without queueing; rounds interleave the configs (rotating the starting config); medians.
"CPU µs/req" = utime+stime (from /proc, the whole process tree) of the front and of the upstream
over the measured c32 run, divided by its requests.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
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
from _scale import CAP, GOALS, run_scale
from _scale import LABELS as SCALE_LABELS

CONFIGS = ("direct", "naive", "nginx", "keyswap")
LABELS = {
    "direct": "direct: wrk -> uvicorn bare",
    "naive": "naive proxy (Starlette + aiohttp, key check)",
    "nginx": "nginx proxy_pass, keepalive (no key check)",
    "keyswap": "keyswap gateway",
}
KEYSWAP = [str(Path(sys.executable).with_name("keyswap"))]


def nginx_conf(tmp: Path, port: int, upstream_port: int) -> Path:
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/nginx-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temps}
    upstream app {{
        server {HOST}:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(conf)
    return path


def keyswap_cli(*args: str) -> str:
    proc = subprocess.run(
        [*KEYSWAP, *args], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"keyswap {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return proc.stdout


def key_headers(key: str) -> list[dict[str, str]]:
    """The ways a gateway may take an API key, most likely first."""
    return [{"Authorization": f"Bearer {key}"}, {"X-API-Key": key}]


def check_front(name: str, url: str, key: str, candidates: list[dict[str, str]]) -> dict[str, str]:
    """Refuse to measure a front that lets a request without or with a wrong key through.

    Returns the first candidate header carrying `key` that gets a 200.
    """
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    status, body = http_get(url)
    if status != 401:
        raise SystemExit(f"{name}: expected 401 without an API key, got {status}: {body[:200]!r}")
    seen = []
    for headers in candidates:
        bad = {k: v.replace(key, wrong) for k, v in headers.items()}
        status, body = http_get(url, bad)
        if status != 401:
            raise SystemExit(f"{name}: expected 401 with a wrong API key ({bad}), got {status}")
        status, body = http_get(url, headers)
        deadline = time.monotonic() + 15
        while status == 503 and time.monotonic() < deadline:  # signing keys still loading
            time.sleep(0.1)
            status, body = http_get(url, headers)
        if status == 200:
            return headers
        seen.append(f"{next(iter(headers))}: {status} {body[:120]!r}")
    raise SystemExit(f"{name}: no API-key header got a 200: {'; '.join(seen)}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s runs (c1: 2 s), 1 s warm-up, 1 round"
    )
    parser.add_argument("--duration", type=float, help="seconds per measured c32 run (default 10)")
    parser.add_argument(
        "--c1-duration", type=float, help="seconds per c1 run (default 5; 0 = skip)"
    )
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per run (default 2)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument(
        "--gateway-alg",
        choices=["RS256", "ES256", "EdDSA"],
        help="keyswap gateway --alg (default: its own)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="also the scale table: 5,000 consumers cycled, unknown keys, churn, cache memory",
    )
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 10.0)
    c1_duration = args.c1_duration if args.c1_duration is not None else (2.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    rounds = args.rounds or (1 if args.quick else 3)
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            parser.error(f"unknown config {c!r}")
    if "direct" not in configs:
        configs.insert(0, "direct")

    skipped: list[str] = []
    if "nginx" in configs and shutil.which("nginx") is None:
        configs.remove("nginx")
        skipped.append("nginx (not installed)")
    problem = import_problem("keyswap.gateway.cli")
    if "keyswap" in configs and (problem or not Path(KEYSWAP[0]).exists()):
        configs.remove("keyswap")
        skipped.append(f"keyswap ({problem or 'no keyswap console script beside python'})")

    print_header(
        "Gateway: keyswap vs direct, naive Python proxy, nginx",
        f"wrk -t1 -c{args.connections} -d{duration:g}s --latency after a {warmup:g} s warm-up, then "
        f"wrk -t1 -c1 -d{c1_duration:g}s; {rounds} interleaved round(s), medians; "
        "CPU = utime+stime of the front's and the upstream's process trees over the c32 run / requests.",
        tools=("wrk", "nginx"),
    )

    scale_table = ""
    scale_ratios: dict[str, float] = {}
    per_key = float("nan")
    c32: dict[str, list[WrkResult]] = {c: [] for c in configs}
    c1: dict[str, list[WrkResult]] = {c: [] for c in configs}
    servers: dict[str, Server] = {}
    headers: dict[str, dict[str, str]] = {}
    with temp_dir("keyswap-gateway-bench-") as tmp:
        try:
            up_port = free_port()
            upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
            upstream.start(f"http://{HOST}:{up_port}/")
            upstream_url = f"http://{HOST}:{up_port}"
            servers["direct"] = upstream
            headers["direct"] = {}
            status, body = http_get(upstream.url)
            if status != 200:
                raise SystemExit(f"upstream: expected 200, got {status}: {body[:200]!r}")

            key_header_name = "Authorization"
            if "keyswap" in configs:
                db = f"sqlite:///{tmp}/keyswap.db"
                keyswap_cli("consumers", "create", "bench", "--db", db)
                key = json.loads(keyswap_cli("keys", "create", "bench", "--json", "--db", db))[
                    "key"
                ]
                port = free_port()
                gw = Server(
                    "keyswap",
                    [
                        *KEYSWAP,
                        "gateway",
                        "--upstream",
                        upstream_url,
                        "--port",
                        str(port),
                        "--db",
                        db,
                        *CAP,
                        *(["--alg", args.gateway_alg] if args.gateway_alg else []),
                    ],
                    log_dir=tmp,
                )
                servers["keyswap"] = gw.start(f"http://{HOST}:{port}/")
                headers["keyswap"] = check_front("keyswap", gw.url, key, key_headers(key))
                key_header_name = next(iter(headers["keyswap"]))

            if "naive" in configs:
                naive_key = "ks_" + secrets.token_urlsafe(32)
                port = free_port()
                naive = Server(
                    "naive",
                    serve_argv("naiveproxy", port, "--upstream", upstream_url),
                    log_dir=tmp,
                    env={"BENCH_API_KEY": naive_key, "BENCH_KEY_HEADER": key_header_name},
                )
                servers["naive"] = naive.start(f"http://{HOST}:{port}/")
                same = [h for h in key_headers(naive_key) if next(iter(h)) == key_header_name]
                headers["naive"] = check_front("naive", naive.url, naive_key, same)

            if "nginx" in configs:
                port = free_port()
                conf = nginx_conf(tmp, port, up_port)
                argv = [
                    "nginx",
                    "-c",
                    str(conf),
                    "-p",
                    str(tmp),
                    "-e",
                    str(tmp / "nginx-error.log"),
                ]
                servers["nginx"] = Server("nginx", argv, log_dir=tmp).start(
                    f"http://{HOST}:{port}/"
                )
                headers["nginx"] = {}
                status, body = http_get(servers["nginx"].url)
                if status != 200:
                    raise SystemExit(f"nginx: expected 200, got {status}: {body[:200]!r}")

            if args.scale and "keyswap" in configs:
                scale_table, scale_ratios, per_key = run_scale(
                    upstream=upstream,
                    upstream_url=upstream_url,
                    tmp=tmp,
                    rounds=rounds,
                    duration=duration,
                    warmup=warmup,
                    connections=args.connections,
                )

            for rnd in range(rounds):
                order = configs[rnd % len(configs) :] + configs[: rnd % len(configs)]
                for name in order:
                    front = servers[name]
                    cpu = [front] if name == "direct" else [front, upstream]
                    if warmup > 0:
                        run_wrk(
                            front.url,
                            seconds=warmup,
                            connections=args.connections,
                            headers=headers[name],
                        )
                    r = run_wrk(
                        front.url,
                        seconds=duration,
                        connections=args.connections,
                        headers=headers[name],
                        cpu=cpu,
                    )
                    c32[name].append(r)
                    line = (
                        f"round {rnd + 1} {name}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                        f"p99 {r.p99_ms:.2f} ms, CPU {'+'.join(f'{x:.0f}' for x in r.cpu_parts)} µs/req, "
                        f"errors {r.non2xx + r.socket_errors}"
                    )
                    if c1_duration > 0:
                        r1 = run_wrk(
                            front.url, seconds=c1_duration, connections=1, headers=headers[name]
                        )
                        c1[name].append(r1)
                        line += f"; c1 {r1.rps:,.0f} req/s, p50 {r1.p50_ms:.3f} ms"
                    print(line, file=sys.stderr, flush=True)
        finally:
            for server in reversed(list(servers.values())):
                server.stop()

    def med(data: dict[str, list[WrkResult]], name: str, attr: str) -> float:
        return median([getattr(r, attr) for r in data.get(name, [])])

    def cpu_cell(name: str) -> str:
        if name == "direct":
            return "– + " + fmt_int(med(c32, name, "cpu_us_per_req"))
        front = median([r.cpu_parts[0] for r in c32[name]])
        app = median([r.cpu_parts[1] for r in c32[name]])
        return f"{fmt_int(front)} + {fmt_int(app)}"

    def ratio(name: str, other: str) -> str:
        if other not in configs:
            return "n/a"
        return fmt(med(c32, name, "rps") / med(c32, other, "rps"))

    direct_p50 = med(c32, "direct", "p50_ms")
    direct_p50_c1 = med(c1, "direct", "p50_ms")
    rows = []
    for name in configs:
        rows.append(
            [
                LABELS[name],
                fmt_int(med(c32, name, "rps")),
                ratio(name, "direct"),
                ratio(name, "naive"),
                ratio(name, "nginx"),
                fmt(med(c32, name, "p50_ms")),
                fmt(med(c32, name, "p99_ms")),
                fmt(med(c32, name, "p50_ms") - direct_p50),
                cpu_cell(name),
                fmt_int(med(c1, name, "rps")),
                fmt(med(c1, name, "p50_ms"), 3),
                fmt(med(c1, name, "p50_ms") - direct_p50_c1, 3),
                str(sum(r.non2xx + r.socket_errors for r in c32[name] + c1[name])),
            ]
        )
    print(
        markdown_table(
            [
                "config",
                "req/s",
                "vs direct",
                "vs naive",
                "vs nginx",
                "p50 ms",
                "p99 ms",
                "added p50 ms",
                "CPU µs/req front + app",
                "c1 req/s",
                "c1 p50 ms",
                "c1 added p50 ms",
                "errors",
            ],
            rows,
        )
    )
    print(
        "\nadded p50 = p50 − direct p50 (medians). At c32 it includes queueing (≈ 32 / req/s); "
        "c1 (one connection, no queue) is the latency one request gains by passing through the front."
    )
    for s in skipped:
        print(f"Skipped: {s}")

    targets = []
    if scale_table:
        print("\n## Scale\n")
        print(scale_table)
        for name, goal in GOALS.items():
            if name not in scale_ratios:
                continue
            targets.append(
                Target(f"scale: {SCALE_LABELS[name]} ÷ one key", scale_ratios[name], goal)
            )
        targets.append(
            Target("scale: lookup cache bytes per key", per_key, 2048, above=False, unit=" B")
        )
    if "keyswap" in configs:
        ks = med(c32, "keyswap", "rps")
        if "naive" in configs:
            targets.append(
                Target("keyswap req/s ÷ naive proxy", ks / med(c32, "naive", "rps"), 2.5)
            )
        if "nginx" in configs:
            targets.append(Target("keyswap req/s ÷ nginx", ks / med(c32, "nginx", "rps"), 0.55))
        if c1_duration > 0:
            added = med(c1, "keyswap", "p50_ms") - direct_p50_c1
            targets.append(Target("keyswap added p50 at c1", added, 1.0, above=False, unit=" ms"))
    ok = print_targets(targets) if targets else True
    errors = sum(r.non2xx + r.socket_errors for d in (c32, c1) for rs in d.values() for r in rs)
    if errors:
        print(f"\nWARNING: {errors} non-2xx answers or socket errors during measured runs")
    return 0 if ok and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
