"""Request-bound tokens: what signing and verifying per request costs, per algorithm, on both sides.

    .venv/bin/python bench/binding_bench.py [--quick] [--parts micro,gateway,origin]

micro    in process, one thread: the gateway's per-request mint (binding claims for a GET with a query
         and for a POST with a 1 KiB body, claims, JSON, signature: TokenMinter.mint_per_request) and
         the origin's verification of a never-seen bound token (Verifier.verify_sync: parse, claims,
         signature; bound tokens skip the token cache), for RS256, ES256 and EdDSA; medians of 7
         repeats of N operations.
gateway  wrk -> `keyswap gateway` -> the bare Starlette app (uvicorn, one worker each): the default
         gateway (one cached RS256 token per key) vs `--bind-request` with each --alg (a new token
         per request). Same flags otherwise (--max-connections-per-consumer 64).
origin   wrk -> the bare app vs the same app behind JWTAuthMiddleware with a bound issuer
         (bind_request=True, in-memory replay cache): every request carries a different, never-seen
         token bound to GET / (wrk's Lua script cycles through pre-minted tokens; none is reused
         within a run), for each algorithm.
Load: wrk -t1 -c32 --latency, a warm-up then the measured run; rounds interleave the configs;
medians. Ratios are given by req/s and by CPU (the baseline's server CPU µs per request over the
config's, from /proc: steadier on a shared machine, as it ignores time spent waiting for a core).
Targets: gateway bound with the bound-mode default alg >= 0.5x unbound; origin bound with it >= 0.4x
the bare app (issue 17).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    AUDIENCE,
    BENCH_DIR,
    HOST,
    ISSUER,
    BenchKey,
    JWKSHost,
    Server,
    Target,
    WrkResult,
    fmt,
    fmt_int,
    free_port,
    http_get,
    markdown_table,
    median,
    print_header,
    print_targets,
    run_wrk,
    serve_argv,
    temp_dir,
)

ALGS = ("RS256", "ES256", "EdDSA")
KEYSWAP = [str(Path(sys.executable).with_name("keyswap"))]
LUA = BENCH_DIR / "_keys.lua"


@dataclass(frozen=True)
class _Signing:
    kid: str
    alg: str
    private_key: Any


@dataclass(frozen=True)
class _Principal:
    key_id: str = "k_bench"
    consumer: str = "bench"
    metadata: Any = None
    scopes: tuple[str, ...] = ("read",)


def _per_op(fn: Any, n: int, repeats: int = 7) -> float:
    """Median µs per call of ``fn()`` over ``repeats`` runs of ``n`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(times)


def micro(quick: bool) -> tuple[str, dict[str, dict[str, float]]]:
    from keyswap.gateway.binding import ReadBody, binding_claims
    from keyswap.gateway.mint import TokenMinter
    from keyswap.verifier.verify import IssuerConfig, Verifier

    n = 300 if quick else 1000
    body = ReadBody(secrets.token_bytes(1024), True)
    results: dict[str, dict[str, float]] = {}
    keys = {alg: BenchKey(alg) for alg in ALGS}
    with JWKSHost(list(keys.values())) as host:
        for alg, key in keys.items():
            signing = _Signing(key.kid, alg, key.private)
            minter = TokenMinter(lambda s=signing: s, issuer=ISSUER, audience=AUDIENCE)  # type: ignore[misc]
            principal = _Principal(metadata={"plan": "pro"})

            def mint_get(minter: Any = minter, principal: Any = principal) -> None:
                claims = binding_claims(
                    method="GET",
                    scheme="http",
                    authority="origin:8000",
                    path="/orders/42",
                    query=b"expand=items",
                    body=None,
                    max_body=1 << 20,
                )
                minter.mint_per_request(principal, claims, ttl=30)

            def mint_post(minter: Any = minter, principal: Any = principal) -> None:
                claims = binding_claims(
                    method="POST",
                    scheme="http",
                    authority="origin:8000",
                    path="/orders",
                    query=b"",
                    body=body,
                    max_body=1 << 20,
                )
                minter.mint_per_request(principal, claims, ttl=30)

            sign_get = _per_op(mint_get, n)
            sign_post = _per_op(mint_post, n)
            config = IssuerConfig(
                issuer=ISSUER,
                jwks_url=host.url,
                audience=AUDIENCE,
                algorithms=ALGS,
                bind_request=True,
            )
            tokens = [
                minter.mint_per_request(
                    principal, {"htm": "GET", "htu": "http://origin:8000/x"}, ttl=30
                )[0]
                for _ in range(n * 7 + 1)
            ]
            with Verifier(config) as verifier:
                verifier.verify_sync(tokens.pop())  # fetches the JWKS once
                it = iter(tokens)
                verify = _per_op(lambda it=it, v=verifier: v.verify_sync(next(it)), n)
            raw = _per_op(key.raw_verifier(b"x" * 400, key.raw_sign(b"x" * 400)), n)
            results[alg] = {
                "sign_get": sign_get,
                "sign_post": sign_post,
                "verify": verify,
                "raw_verify": raw,
            }
    rows = [
        [
            alg,
            fmt(r["sign_get"], 1),
            fmt(r["sign_post"], 1),
            fmt(r["verify"], 1),
            fmt(r["raw_verify"], 1),
            fmt(r["sign_get"] + r["verify"], 1),
        ]
        for alg, r in results.items()
    ]
    table = markdown_table(
        [
            "alg",
            "gateway mint, GET + query (µs)",
            "gateway mint, POST 1 KiB (µs)",
            "origin verify (µs)",
            "of which the signature check alone (µs)",
            "both sides (µs)",
        ],
        rows,
    )
    return table, results


def keyswap_cli(*args: str) -> str:
    return subprocess.run(
        [*KEYSWAP, *args], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def gateway_part(
    tmp: Path, rounds: int, duration: float, warmup: float
) -> tuple[str, dict[str, float]]:
    configs = {"unbound RS256 (default)": ("RS256", False)}
    configs.update({f"bound {alg}": (alg, True) for alg in ALGS})
    servers: dict[str, Server] = {}
    headers: dict[str, dict[str, str]] = {}
    results: dict[str, list[WrkResult]] = {name: [] for name in configs}
    try:
        up_port = free_port()
        upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
        upstream.start(f"http://{HOST}:{up_port}/")
        servers["upstream"] = upstream
        for i, (name, (alg, bound)) in enumerate(configs.items()):
            db = f"sqlite:///{tmp}/gw{i}.db"
            keyswap_cli("consumers", "create", "bench", "--db", db)
            key = json.loads(keyswap_cli("keys", "create", "bench", "--json", "--db", db))["key"]
            port = free_port()
            argv = [
                *KEYSWAP,
                "gateway",
                "--upstream",
                upstream.url.rstrip("/"),
                "--port",
                str(port),
                "--db",
                db,
                "--max-connections-per-consumer",
                "64",
                "--alg",
                alg,
                *(["--bind-request"] if bound else []),
            ]
            servers[name] = Server(f"gw{i}", argv, log_dir=tmp).start(f"http://{HOST}:{port}/")
            headers[name] = {"Authorization": f"Bearer {key}"}
            status, body = http_get(servers[name].url, headers=headers[name])
            if status != 200:
                raise SystemExit(f"{name}: expected 200, got {status}: {body[:200]!r}")
        names = list(configs)
        for rnd in range(rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                front = servers[name]
                if warmup > 0:
                    run_wrk(front.url, seconds=warmup, headers=headers[name])
                r = run_wrk(front.url, seconds=duration, headers=headers[name], cpu=[front])
                results[name].append(r)
                print(
                    f"gateway round {rnd + 1} {name}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                    f"CPU {r.cpu_us_per_req:.0f} µs/req, errors {r.non2xx + r.socket_errors}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for server in reversed(list(servers.values())):
            server.stop()
    table, ratios = _ratio_table("gateway", "unbound RS256 (default)", results, "x unbound")
    return table, ratios


def origin_part(
    tmp: Path, rounds: int, duration: float, warmup: float, tokens_per_run: int
) -> tuple[str, dict[str, float]]:
    keys = {alg: BenchKey(alg) for alg in ALGS}
    names = ["bare", *[f"bound {alg}" for alg in ALGS]]
    results: dict[str, list[WrkResult]] = {name: [] for name in names}
    servers: dict[str, Server] = {}
    with JWKSHost(list(keys.values())) as host:
        try:
            port = free_port()
            servers["bare"] = Server("bare", serve_argv("bare", port), log_dir=tmp).start(
                f"http://{HOST}:{port}/"
            )
            bound_port = free_port()
            bound = Server(
                "bound", serve_argv("bound", bound_port, "--jwks-url", host.url), log_dir=tmp
            )
            servers["bound"] = bound.start(f"http://{HOST}:{bound_port}/")
            htu = f"http://{HOST}:{bound_port}/"
            any_token = keys["RS256"].sign(_bound_claims(htu))
            for rnd in range(rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for name in order:
                    if name == "bare":
                        front = servers["bare"]
                        hdrs = {"Authorization": f"Bearer {any_token}"}
                        if warmup > 0:
                            run_wrk(front.url, seconds=warmup, headers=hdrs)
                        r = run_wrk(front.url, seconds=duration, headers=hdrs, cpu=[front])
                    else:
                        key = keys[name.split()[1]]
                        front = servers["bound"]
                        env_file = tmp / f"tokens-{name.split()[1]}-{rnd}.txt"
                        if warmup > 0:
                            _write_tokens(env_file, key, htu, max(1000, tokens_per_run // 4))
                            run_wrk(
                                front.url,
                                seconds=warmup,
                                script=LUA,
                                env={"BENCH_KEYS": str(env_file)},
                            )
                        _write_tokens(env_file, key, htu, tokens_per_run)
                        probe = key.sign(_bound_claims(htu))
                        status, body = http_get(front.url, {"Authorization": f"Bearer {probe}"})
                        if status != 200:
                            raise SystemExit(f"{name}: expected 200, got {status}: {body[:200]!r}")
                        r = run_wrk(
                            front.url,
                            seconds=duration,
                            cpu=[front],
                            script=LUA,
                            env={"BENCH_KEYS": str(env_file)},
                        )
                        if r.requests > tokens_per_run:
                            print(
                                f"warning: {name} sent {r.requests} requests with {tokens_per_run}"
                                " tokens: replays were refused (raise --tokens)",
                                file=sys.stderr,
                            )
                    results[name].append(r)
                    print(
                        f"origin round {rnd + 1} {name}: {r.rps:,.0f} req/s, "
                        f"p50 {r.p50_ms:.2f} ms, CPU {r.cpu_us_per_req:.0f} µs/req, "
                        f"non-2xx {r.non2xx}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            for server in reversed(list(servers.values())):
                server.stop()
    return _ratio_table("origin", "bare", results, "x bare")


def _ratio_table(
    what: str, baseline: str, results: dict[str, list[WrkResult]], label: str
) -> tuple[str, dict[str, float]]:
    """The table, and the req/s ratios to ``baseline``. The CPU ratio (baseline CPU µs/req over
    this config's) is the steadier of the two on a shared machine: it ignores time spent waiting
    for a core."""
    base = median([r.rps for r in results[baseline]])
    base_cpu = median([r.cpu_us_per_req for r in results[baseline]])
    ratios = {name: median([r.rps for r in rs]) / base for name, rs in results.items()}
    rows = [
        [
            name,
            fmt_int(median([r.rps for r in rs])),
            fmt(ratios[name]),
            fmt(median([r.p50_ms for r in rs])),
            fmt_int(median([r.cpu_us_per_req for r in rs])),
            fmt(base_cpu / median([r.cpu_us_per_req for r in rs])),
            str(sum(r.non2xx + r.socket_errors for r in rs)),
        ]
        for name, rs in results.items()
    ]
    headers = [what, "req/s", label, "p50 ms", "server CPU µs/req", label + " by CPU", "errors"]
    return markdown_table(headers, rows), ratios


def _bound_claims(htu: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "sub": "consumer-bench",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 120,  # pre-minting RS256 tokens takes a while on a loaded machine
        "jti": secrets.token_urlsafe(16),
        "htm": "GET",
        "htu": htu,
        "metadata": {"plan": "pro"},
    }


def _write_tokens(path: Path, key: BenchKey, htu: str, count: int) -> None:
    path.write_text("\n".join(key.sign(_bound_claims(htu)) for _ in range(count)) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up, 1 round")
    parser.add_argument("--parts", default="micro,gateway,origin")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--tokens", type=int, help="pre-minted tokens per origin run")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    duration = args.duration or (3.0 if args.quick else 8.0)
    warmup = 1.0 if args.quick else 2.0
    rounds = args.rounds or (1 if args.quick else 3)
    tokens = args.tokens or int(duration * 10000)  # RS256 reached ~9,000 req/s on a quiet machine
    print_header(
        "Request binding: per-request signing and verifying",
        f"micro: in-process medians; wrk -t1 -c32 -d{duration:g}s --latency after a {warmup:g} s "
        f"warm-up; {rounds} interleaved round(s), medians.",
        tools=("wrk",),
    )
    targets: list[Target] = []
    if "micro" in parts:
        table, _ = micro(args.quick)
        print("### Cost per token (one thread)\n\n" + table + "\n")
    with temp_dir("keyswap-binding-bench-") as tmp:
        if "gateway" in parts:
            table, ratios = gateway_part(tmp, rounds, duration, warmup)
            print("### Gateway: bound vs unbound\n\n" + table + "\n")
            from keyswap.gateway.binding import BOUND_DEFAULT_ALG

            targets.append(
                Target(
                    f"gateway bound ({BOUND_DEFAULT_ALG}, the bound-mode default) / unbound",
                    ratios[f"bound {BOUND_DEFAULT_ALG}"],
                    0.5,
                )
            )
        if "origin" in parts:
            table, ratios = origin_part(tmp, rounds, duration, warmup, tokens)
            print("### Origin: bound tokens (every token new) vs the bare app\n\n" + table + "\n")
            from keyswap.gateway.binding import BOUND_DEFAULT_ALG

            targets.append(
                Target(
                    f"origin bound ({BOUND_DEFAULT_ALG}) / bare app",
                    ratios[f"bound {BOUND_DEFAULT_ALG}"],
                    0.4,
                )
            )
    return 0 if print_targets(targets) else 1


if __name__ == "__main__":
    sys.exit(main())
