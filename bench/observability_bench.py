"""What metrics, tracing and JSON logs cost the gateway: throughput and CPU per request, on vs off.

    .venv/bin/python bench/observability_bench.py [--quick] [--rounds 7] [--base-rev REV]

Configs (each its own `keyswap gateway` process in front of the same upstream, the bare Starlette app
on uvicorn; RS256, one consumer and key; `--log-level warning`, so that the access log's own cost does
not hide the differences, except the two log configs):

  before       the gateway of --base-rev (default 98cf020, the last commit without the metrics and
               tracing hooks: `git archive` of its src/ on PYTHONPATH), same flags
  before:CFG   CFG's flags on the gateway of --base-rev (e.g. --configs trace-1%,before:trace-1%
               --base-rev a7a30c0: a change's effect on one config, alternating in one run)
  off          this tree, no metrics, no tracing (the hooks are `is None` checks)
  metrics      --metrics-port P (counters on the request path, scraped once a second during the run
               like a busy Prometheus would not even do)
  trace-1%     --tracing --trace-sample-rate 0.01, OTEL_TRACES_EXPORTER=none (spans of the sampled
               1 % are built and dropped: no collector on this machine)
  trace-100%   --tracing --trace-sample-rate 1, OTEL_TRACES_EXPORTER=none (for scale)
  trace-1%-otlp, trace-100%-otlp  the same, exporting over OTLP/HTTP (the default exporter) to
               a local collector that keeps nothing (`_serve.py otlpsink`, another process): the
               batch exporter's thread, its protobuf encoding and POSTs, is then in the gateway's
               CPU too
  text-info    --log-level info (access log, text)
  json-info    --log-level info --log-format json

Load: wrk -t1 -c32 (1 s warm-up, then the measured run) per config, the configs in a rotated order each
round, alternating rounds; medians. The machine is shared and noisy: read ratios within one run, and
a difference under ~3 % as none. "CPU µs/req" = utime+stime of the gateway process over the
measured run, divided by its requests (the upstream's CPU is not included).

Then the default request path of --base-rev against this tree's (metrics and tracing off), each in a
child process running it in-process the same way, the two alternating 8 times: "tracing off costs
nothing" measured without wrk's noise.

Before the wrk runs, an in-process table (--in-process-batches, default 40): one GatewayApp per
config (off, metrics, tracing at 0 % and 1 %) in this process, called directly through ASGI (no HTTP
server, no client) and forwarding to the same upstream; batches of 500 requests alternate between the
configs; CPU time of this process per request, the lowest quarter of the batches (what the code
costs when the machine lets it run) and the median. Less noisy than wrk on a shared machine, since
neither wrk nor uvicorn's HTTP parsing is in it; it measures the request path keyswap owns.
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
    "trace-1%-otlp": (*QUIET, "--tracing", "--trace-sample-rate", "0.01"),
    "trace-100%-otlp": (*QUIET, "--tracing", "--trace-sample-rate", "1"),
    "text-info": ("--log-level", "info"),
    "json-info": ("--log-level", "info", "--log-format", "json"),
}
#: (config, baseline, what the ratio says, target: least throughput ratio, or None)
RATIOS = (
    ("off", "before", "tracing and metrics off vs no hooks at all", 0.97),
    ("metrics", "off", "metrics on vs off", 0.95),
    ("trace-1%", "off", "tracing on, 1 % sampled, vs off", 0.95),
    ("trace-100%", "off", "tracing on, every request sampled, vs off", None),
    ("trace-1%-otlp", "off", "tracing on, 1 % sampled, exported over OTLP, vs off", 0.95),
    (
        "trace-100%-otlp",
        "off",
        "tracing on, every request sampled, exported over OTLP, vs off",
        None,
    ),
    ("json-info", "text-info", "JSON access log vs text access log (info)", None),
)


def keyswap_cli(*args: str) -> str:
    proc = subprocess.run(
        [*KEYSWAP, *args], capture_output=True, text=True, timeout=60, check=False
    )
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


IN_PROCESS = ("off", "metrics", "trace-0%", "trace-1%")


def in_process(upstream_url: str, db: str, key: str, *, batches: int, size: int) -> str:
    """CPU per request of the gateway's request path, measured inside one process: one
    ``GatewayApp`` per config on one event loop, called directly (no HTTP server, no client), each
    forwarding to the real upstream; batches of ``size`` requests alternate between the configs.
    ``time.process_time`` (this process only: the upstream is another process) per batch; the
    lowest quarter of the batches is what the code costs when the machine lets it run."""
    import asyncio
    import logging

    from keyswap.gateway.app import GatewayApp, GatewaySettings, build_gateway
    from keyswap.gateway.metrics import GatewayMetrics
    from keyswap.gateway.tracing import Tracing, TracingSettings, build_tracing

    logging.getLogger("keyswap").setLevel(logging.WARNING)

    def tracing(rate: float) -> Tracing:
        import os

        os.environ["OTEL_TRACES_EXPORTER"] = "none"
        return build_tracing(TracingSettings(sample_rate=rate))

    async def run() -> dict[str, list[float]]:
        settings = GatewaySettings(upstream_url, "http://gateway.bench")
        apps: dict[str, GatewayApp] = {}
        for name in IN_PROCESS:
            options: dict[str, object] = {}
            if name == "metrics":
                options["metrics"] = GatewayMetrics()
            elif name.startswith("trace-"):
                options["tracing"] = tracing(float(name[6:-1]) / 100)
            apps[name] = build_gateway(settings, db_url=db, env={}, **options)  # type: ignore[arg-type]
            await apps[name].startup()
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [
                (b"host", b"gateway.bench"),
                (b"authorization", f"Bearer {key}".encode()),
                (b"accept", b"*/*"),
                (b"user-agent", b"bench"),
            ],
            "client": ("127.0.0.1", 40000),
            "scheme": "http",
        }

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: object) -> None:
            return None

        for app in apps.values():
            for _ in range(300):
                await app(scope, receive, send)
        times: dict[str, list[float]] = {name: [] for name in IN_PROCESS}
        for batch in range(batches):
            shift = batch % len(IN_PROCESS)
            for name in IN_PROCESS[shift:] + IN_PROCESS[:shift]:
                app = apps[name]
                started = time.process_time()
                for _ in range(size):
                    await app(scope, receive, send)
                times[name].append((time.process_time() - started) / size * 1e6)
        for app in apps.values():
            await app.shutdown()
        return times

    times = asyncio.run(run())

    def low(values: list[float]) -> float:
        ordered = sorted(values)
        return median(ordered[: max(1, len(ordered) // 4)])

    rows = []
    base = low(times["off"])
    for name in IN_PROCESS:
        rows.append(
            [
                name,
                fmt(low(times[name]), 1),
                fmt(median(times[name]), 1),
                f"{low(times[name]) - base:+.1f}",
                fmt(base / low(times[name])),
            ]
        )
    return markdown_table(
        [
            "in-process config",
            "CPU µs/req (lowest quarter)",
            "CPU µs/req (median)",
            "vs off, µs",
            "implied throughput ratio",
        ],
        rows,
    )


def _request_path_cpu(upstream_url: str, db: str, key: str, batches: int, size: int) -> list[float]:
    """CPU µs per request of a default ``build_gateway`` app (no metrics, no tracing: the only
    arguments every keyswap version takes), called in-process; one value per batch."""
    import asyncio
    import logging

    from keyswap.gateway.app import GatewaySettings, build_gateway

    logging.getLogger("keyswap").setLevel(logging.WARNING)

    async def run() -> list[float]:
        app = build_gateway(
            GatewaySettings(upstream_url, "http://gateway.bench"), db_url=db, env={}
        )
        await app.startup()
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [
                (b"host", b"gateway.bench"),
                (b"authorization", f"Bearer {key}".encode()),
                (b"accept", b"*/*"),
                (b"user-agent", b"bench"),
            ],
            "client": ("127.0.0.1", 40000),
            "scheme": "http",
        }

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: object) -> None:
            return None

        for _ in range(300):
            await app(scope, receive, send)
        times = []
        for _ in range(batches):
            started = time.process_time()
            for _ in range(size):
                await app(scope, receive, send)
            times.append((time.process_time() - started) / size * 1e6)
        await app.shutdown()
        return times

    return asyncio.run(run())


def before_vs_off(
    upstream_url: str, db: str, key: str, base_src: Path, *, runs: int, batches: int
) -> str:
    """The default request path of --base-rev against this tree's (metrics and tracing off), each
    in a child process of its own (``--child``), the two alternating ``runs`` times."""
    import os

    low: dict[str, list[float]] = {"before": [], "off": []}
    for run in range(runs):
        for name in ("before", "off") if run % 2 == 0 else ("off", "before"):
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            if name == "before":
                env["PYTHONPATH"] = str(base_src)
            child = subprocess.run(
                [sys.executable, __file__, "--child", upstream_url, db, key, str(batches)],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
                check=True,
            )
            times = sorted(json.loads(child.stdout))
            low[name].append(median(times[: max(1, len(times) // 4)]))
    rows = [
        [name, fmt(median(values), 1), " ".join(f"{v:.0f}" for v in values)]
        for name, values in low.items()
    ]
    ratio = median(low["before"]) / median(low["off"])
    rows.append(["off vs before (implied throughput ratio)", fmt(ratio), ""])
    return markdown_table(
        ["default request path, in-process", "CPU µs/req (median of runs)", "per run"], rows
    )


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _, _, url, db, key, count = sys.argv
        print(json.dumps(_request_path_cpu(url, db, key, int(count), 500)))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 s runs, 2 rounds")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 5)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 7)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--base-rev", default="98cf020", help="the 'before' gateway's commit")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument(
        "--in-process-batches",
        type=int,
        default=None,
        help="batches of 500 requests per config for the in-process table (default 40; 0 = skip)",
    )
    args = parser.parse_args()
    batches = args.in_process_batches
    if batches is None:
        batches = 6 if args.quick else 40
    duration = args.duration or (2.0 if args.quick else 5.0)
    rounds = args.rounds or (2 if args.quick else 7)
    configs = [c for c in args.configs.split(",") if c]
    for name in configs:
        if name.removeprefix("before:") not in CONFIGS:
            parser.error(f"unknown config {name!r}")
    print_header(
        "Observability: metrics, tracing and JSON logs, on vs off",
        f"wrk -t1 -c{args.connections} -d{duration:g}s after a 1 s warm-up per config; {rounds} "
        "alternating rounds (rotated order), medians; gateway CPU = utime+stime / requests.",
        tools=("wrk",),
    )
    results: dict[str, list[WrkResult]] = {name: [] for name in configs}
    in_process_table = ""
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
            olds = [name for name in configs if name.startswith("before")]
            base_src = export_base(args.base_rev, tmp) if olds else None
            sink_url = None
            if any(name.endswith("-otlp") for name in configs):
                sink_port = free_port()
                sink = Server("otlpsink", serve_argv("otlpsink", sink_port), log_dir=tmp)
                servers["otlpsink"] = sink.start(f"http://{HOST}:{sink_port}/v1/traces")
                sink_url = f"http://{HOST}:{sink_port}/v1/traces"
            metrics_port = free_port()
            for name in configs:
                port = free_port()
                flags = [
                    f.format(metrics_port=metrics_port)
                    for f in CONFIGS[name.removeprefix("before:")]
                ]
                env = {"OTEL_TRACES_EXPORTER": "none"}
                if name.endswith("-otlp"):
                    assert sink_url is not None
                    env = {
                        "OTEL_TRACES_EXPORTER": "otlp",
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": sink_url,
                    }
                if name.startswith("before"):
                    assert base_src is not None
                    env["PYTHONPATH"] = str(base_src)
                argv = [*MODULE, "gateway", "--upstream", f"http://{HOST}:{up_port}",
                        "--port", str(port), "--db", db, "--max-connections-per-consumer", "64",
                        *flags]  # fmt: skip
                server = Server(
                    f"gw-{name.replace('%', 'pct').replace(':', '-')}", argv, log_dir=tmp, env=env
                )
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

            if batches > 0 and "off" in configs:  # before the wrk runs: the others idle meanwhile
                in_process_table = in_process(
                    f"http://{HOST}:{up_port}", db, key, batches=batches, size=500
                )
                if "before" in configs:
                    assert base_src is not None
                    in_process_table += "\n\n" + before_vs_off(
                        f"http://{HOST}:{up_port}",
                        db,
                        key,
                        base_src,
                        runs=2 if args.quick else 8,
                        batches=max(4, batches // 4),
                    )
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
    missed = []
    pairs = list(RATIOS) + [
        (name[7:], name, f"{name[7:]}: this tree vs --base-rev", None)
        for name in configs
        if name.startswith("before:") and name[7:] in configs
    ]
    for name, base, what, target in pairs:
        if name in results and base in results:
            per_round = [
                a.rps / b.rps for a, b in zip(results[name], results[base], strict=True) if b.rps
            ]
            cpu = med(name, "cpu_us_per_req") - med(base, "cpu_us_per_req")
            ratio = median(per_round)
            verdict = "–"
            if target is not None:
                verdict = f"≥ {target:.2f}: " + ("pass" if ratio >= target else "MISS")
                if ratio < target:
                    missed.append(what)
            ratio_rows.append(
                [
                    what,
                    fmt(med(name, "rps") / med(base, "rps")),
                    fmt(ratio),
                    f"{cpu:+.1f}",
                    verdict,
                ]
            )
    print(
        markdown_table(
            [
                "comparison",
                "throughput ratio (medians)",
                "median of per-round ratios",
                "CPU µs/req difference",
                "target (per-round ratio)",
            ],
            ratio_rows,
        )
    )
    if in_process_table:
        print()
        print(in_process_table)
    if scrapes:
        print(f"\n/metrics scraped {len(scrapes)} times during the runs: statuses {set(scrapes)}")
    errors = sum(r.non2xx + r.socket_errors for rs in results.values() for r in rs)
    return 1 if missed or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
