"""What metrics, tracing and JSON logs cost the gateway: throughput and CPU per request, on vs off.

    .venv/bin/python bench/observability_bench.py [--quick] [--rounds 7] [--base-rev REV]

Configs (each its own `keyswap gateway` process in front of the same upstream, the bare Starlette app
on uvicorn; RS256, one consumer and key; `--log-level warning`, so that the access log's own cost does
not hide the differences, except the two log configs):

  before       the gateway of --base-rev (default 98cf020, the last commit without the metrics and
               tracing hooks: `git archive` of its src/ on PYTHONPATH), same flags
  off          this tree, no metrics, no tracing (the hooks are `is None` checks)
  metrics      --metrics-port P (counters on the request path, scraped once a second during the run
               like a busy Prometheus would not even do)
  trace-1%     --tracing --trace-sample-rate 0.01, OTEL_TRACES_EXPORTER=none (spans of the sampled
               1 % are built and dropped: no collector on this machine)
  trace-100%   --tracing --trace-sample-rate 1, OTEL_TRACES_EXPORTER=none (for scale)
  text-info    --log-level info (access log, text)
  json-info    --log-level info --log-format json

Load: wrk -t1 -c32 (1 s warm-up, then the measured run) per config, the configs in a rotated order each
round, alternating rounds; medians. The machine is shared and noisy: read ratios within one run, and
a difference under ~3 % as none. "CPU µs/req" = utime+stime of the gateway process over the
measured run, divided by its requests (the upstream's CPU is not included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    REPO_DIR,
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

KEYSWAP = [str(Path(sys.executable).with_name("keyswap"))]
MODULE = [sys.executable, "-c", "from keyswap.cli import main; main()"]
QUIET = ("--log-level", "warning")
CONFIGS: dict[str, tuple[str, ...]] = {
    "before": QUIET,
    "off": QUIET,
    "metrics": (*QUIET, "--metrics-port", "{metrics_port}"),
    "trace-1%": (*QUIET, "--tracing", "--trace-sample-rate", "0.01"),
    "trace-100%": (*QUIET, "--tracing", "--trace-sample-rate", "1"),
    "text-info": ("--log-level", "info"),
    "json-info": ("--log-level", "info", "--log-format", "json"),
}
#: (config, baseline, what the ratio says)
RATIOS = (
    ("off", "before", "tracing and metrics off vs no hooks at all"),
    ("metrics", "off", "metrics on vs off"),
    ("trace-1%", "off", "tracing on, 1 % sampled, vs off"),
    ("trace-100%", "off", "tracing on, every request sampled, vs off"),
    ("json-info", "text-info", "JSON access log vs text access log (info)"),
)


def keyswap_cli(*args: str) -> str:
    proc = subprocess.run([*KEYSWAP, *args], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"keyswap {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def export_base(rev: str, into: Path) -> Path:
    """``src/`` of ``rev`` extracted into ``into`` (for PYTHONPATH)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_DIR), "archive", rev, "src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 s runs, 2 rounds")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 5)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 7)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--base-rev", default="98cf020", help="the 'before' gateway's commit")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    args = parser.parse_args()
    duration = args.duration or (2.0 if args.quick else 5.0)
    rounds = args.rounds or (2 if args.quick else 7)
    configs = [c for c in args.configs.split(",") if c]
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}")
    print_header(
        "Observability: metrics, tracing and JSON logs, on vs off",
        f"wrk -t1 -c{args.connections} -d{duration:g}s after a 1 s warm-up per config; {rounds} "
        "alternating rounds (rotated order), medians; gateway CPU = utime+stime / requests.",
        tools=("wrk",),
    )
    results: dict[str, list[WrkResult]] = {name: [] for name in configs}
    servers: dict[str, Server] = {}
    scrapes: list[int] = []
    stop_scraping = threading.Event()
    with temp_dir("keyswap-obs-bench-") as tmp:
        try:
            up_port = free_port()
            upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
            upstream.start(f"http://{HOST}:{up_port}/")
            db = f"sqlite:///{tmp}/keyswap.db"
            keyswap_cli("consumers", "create", "bench", "--db", db)
            key = json.loads(keyswap_cli("keys", "create", "bench", "--json", "--db", db))["key"]
            headers = {"Authorization": f"Bearer {key}"}
            base_src = export_base(args.base_rev, tmp) if "before" in configs else None
            metrics_port = free_port()
            for name in configs:
                port = free_port()
                flags = [f.format(metrics_port=metrics_port) for f in CONFIGS[name]]
                env = {"OTEL_TRACES_EXPORTER": "none"}
                if name == "before":
                    assert base_src is not None
                    env["PYTHONPATH"] = str(base_src)
                argv = [*MODULE, "gateway", "--upstream", f"http://{HOST}:{up_port}",
                        "--port", str(port), "--db", db, "--max-connections-per-consumer", "64",
                        *flags]  # fmt: skip
                server = Server(f"gw-{name.replace('%', 'pct')}", argv, log_dir=tmp, env=env)
                servers[name] = server.start(f"http://{HOST}:{port}/__keyswap/health")
                server.url = f"http://{HOST}:{port}/"
                status, body = http_get(server.url, headers)
                if status != 200:
                    raise SystemExit(f"{name}: expected 200, got {status}: {body[:200]!r}")

            def scrape() -> None:
                while not stop_scraping.wait(1.0):
                    try:
                        status, _ = http_get(f"http://{HOST}:{metrics_port}/metrics")
                        scrapes.append(status)
                    except OSError:
                        scrapes.append(0)

            if "metrics" in configs:
                threading.Thread(target=scrape, daemon=True).start()
            for rnd in range(rounds):
                shift = rnd % len(configs)
                order = configs[shift:] + configs[:shift]
                if rnd % 2:
                    order.reverse()
                for name in order:
                    front = servers[name]
                    run_wrk(front.url, seconds=1.0, connections=args.connections, headers=headers)
                    result = run_wrk(
                        front.url,
                        seconds=duration,
                        connections=args.connections,
                        headers=headers,
                        cpu=[front],
                    )
                    results[name].append(result)
                    print(
                        f"round {rnd + 1} {name}: {result.rps:,.0f} req/s, "
                        f"CPU {result.cpu_us_per_req:.0f} µs/req, "
                        f"errors {result.non2xx + result.socket_errors}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            stop_scraping.set()
            for server in reversed(list(servers.values())):
                server.stop()
            if "upstream" in locals():
                upstream.stop()

    def med(name: str, attr: str) -> float:
        return median([getattr(r, attr) for r in results[name]])

    rows = []
    for name in configs:
        rows.append(
            [
                name,
                fmt_int(med(name, "rps")),
                fmt(med(name, "p50_ms")),
                fmt_int(med(name, "cpu_us_per_req")),
                str(sum(r.non2xx + r.socket_errors for r in results[name])),
            ]
        )
    print(markdown_table(["config", "req/s", "p50 ms", "gateway CPU µs/req", "errors"], rows))
    print()
    ratio_rows = []
    for name, base, what in RATIOS:
        if name in results and base in results:
            per_round = [
                a.rps / b.rps for a, b in zip(results[name], results[base], strict=True) if b.rps
            ]
            cpu = med(name, "cpu_us_per_req") - med(base, "cpu_us_per_req")
            ratio_rows.append(
                [
                    what,
                    fmt(med(name, "rps") / med(base, "rps")),
                    fmt(median(per_round)),
                    f"{cpu:+.1f}",
                ]
            )
    print(
        markdown_table(
            [
                "comparison",
                "throughput ratio (medians)",
                "median of per-round ratios",
                "CPU µs/req difference",
            ],
            ratio_rows,
        )
    )
    if scrapes:
        print(f"\n/metrics scraped {len(scrapes)} times during the runs: statuses {set(scrapes)}")
    time.sleep(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
