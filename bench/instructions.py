"""Instructions per operation under valgrind's callgrind: the noise-free companion of the timed benches.

    python bench/instructions.py [--quick] [--parts verify,http,bound] [--keep DIR]

On a shared 2-vCPU machine req/s and verify/s move by ±20 % between runs, which is more than the
margins of the issue-2 targets. callgrind counts the instructions a process executes instead: the same
code, inputs and interpreter give the same count whatever else the machine is doing. The counts are not
time (bignum code runs more instructions per cycle than the Python interpreter, and valgrind has no
SHA-NI, so SHA-256 costs ~18,000 instructions per 650-byte token here against ~1 µs of real time), so
use them to see whether a change made keyswap's own work smaller, and the timed benches for ratios.

Measured:

- verify (one process under callgrind, counters zeroed after set-up): raw ``cryptography`` RS256
  verify of one prepared input; keyswap ``verify_sync`` on unique tokens (512 tokens cycled through a
  token cache of 64: every call parses, checks claims, verifies RSA and inserts); keyswap warm (a hit).
- HTTP (the uvicorn server of ``http_bench.py`` under callgrind, counters zeroed after a warm-up):
  instructions per request of the bare Starlette app and of the app behind ``JWTAuthMiddleware``, one
  keep-alive connection, a valid RS256 token on every request.
- bound (request binding, issue 17), per algorithm (RS256, ES256, EdDSA):
  in process, the bare public-key operation and ``verify_sync`` of never-seen bound tokens (their
  difference is keyswap's parsing and claim checks); over HTTP, the ``bound`` app of ``_serve.py``
  (``JWTAuthMiddleware``, ``bind_request=True``, stated public URL, in-memory replay cache) under
  callgrind, one keep-alive connection, a different pre-minted token bound to ``GET /`` on every
  request (so every request parses, verifies a signature, checks the binding and records the jti).

``--gateway`` measures ``keyswap gateway`` itself (event loop thread and others, per request);
``--gateway-config NAME=FLAGS`` (repeatable) compares configurations, ``--gateway-env VAR=VALUE`` sets
a variable for every gateway, e.g. tracing off against on at 0 % and 1 %::

    python bench/instructions.py --gateway --levels warning --gateway-env OTEL_TRACES_EXPORTER=none \
        --gateway-config off= --gateway-config 'trace-0=--tracing --trace-sample-rate 0' \
        --gateway-config 'trace-1=--tracing --trace-sample-rate 0.01'

``--keep DIR`` keeps the callgrind dumps (``DIR/<what>.cg``) for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    AUDIENCE,
    HOST,
    ISSUER,
    PYTHON,
    BenchKey,
    JWKSHost,
    bench_claims,
    fmt,
    fmt_int,
    free_port,
    markdown_table,
    print_header,
)

VERIFY_MODES = ("raw", "unique", "warm")
BOUND_ALGS = ("RS256", "ES256", "EdDSA")
LABELS = {
    "raw": "raw `cryptography` RS256 verify",
    "unique": "keyswap `verify_sync`, unique tokens",
    "warm": "keyswap `verify_sync`, warm cache",
}
_TOTALS = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


def _valgrind(out: Path, argv: list[str]) -> list[str]:
    # Uncompressed names: each dump then reads on its own (callgrind_annotate DIR/<what>.cg).
    return [
        "valgrind",
        "--tool=callgrind",
        "--compress-strings=no",
        "--compress-pos=no",
        f"--callgrind-out-file={out}",
        *argv,
    ]


def _control(flag: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", flag, str(pid)], check=True, capture_output=True, timeout=120
    )


_KEEP: list[Path] = []  # --keep DIR: where dumps are copied (by name) before they are removed


def _dumped_total(out: Path, name: str = "") -> int:
    """Instructions in the newest dump of ``out`` (``callgrind_control -d`` writes ``out.N``);
    with ``--keep`` the dump is kept as ``DIR/<name>.cg``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: p.stat().st_mtime)
        if dumps:
            match = _TOTALS.search(dumps[-1].read_text())
            if match:
                if _KEEP and name:
                    shutil.copyfile(dumps[-1], _KEEP[0] / f"{name}.cg")
                dumps[-1].unlink()
                return int(match.group(1))
        time.sleep(0.2)
    raise SystemExit(f"no callgrind dump appeared for {out}")


# --- verify: the child runs under valgrind and waits for the parent between modes -------------------


def _child(spec_path: str) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from keyswap.verifier.jwk import parse_jwk
    from keyswap.verifier.verify import IssuerConfig, Verifier

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("kind") == "bound":
        _bound_child(spec)
        return
    tokens: list[str] = spec["tokens"]
    config = IssuerConfig(issuer=ISSUER, jwks_url=spec["jwks_url"], audience=AUDIENCE)
    unique = Verifier(config, token_cache_size=64)
    warm = Verifier(config)
    for verifier in (unique, warm):
        verifier.keyset(ISSUER).refresh_sync()
        verifier.verify_sync(tokens[0])
    key: Any = parse_jwk(spec["jwk"]).public_key
    signing_input, _, signature = tokens[0].rpartition(".")
    data = signing_input.encode()
    sig = base64.urlsafe_b64decode(signature + "==")
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    key.verify(sig, data, pkcs1, sha256)
    # The warm loop gets a new string object per call, as a server has one per request (Python
    # caches a string's hash, and the token cache keys by it); built here, before the counting.
    copies = [(tokens[0] + " ")[:-1] for _ in range(spec["warm_count"])]
    print("ready", flush=True)
    for line in sys.stdin:
        mode, n = line.split()[1], int(line.split()[2])
        if mode == "raw":
            for _ in range(n):
                key.verify(sig, data, pkcs1, sha256)
        elif mode == "unique":
            verify = unique.verify_sync
            for i in range(n):
                verify(tokens[i % len(tokens)])
        else:
            verify = warm.verify_sync
            for i in range(n):
                verify(copies[i])
        print("done", flush=True)
    unique.close()
    warm.close()


def measure_verify(n: int) -> dict[str, float]:
    key = BenchKey("RS256")
    tokens = [key.sign(bench_claims(f"cg-{i}")) for i in range(512)]
    with JWKSHost([key]) as jwks, tempfile.TemporaryDirectory(prefix="keyswap-cg-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "tokens": tokens,
                    "jwk": key.public_jwk(),
                    "jwks_url": jwks.url,
                    "warm_count": n * 20,
                }
            )
        )
        out = Path(tmp) / "verify.cg"
        argv = [PYTHON, __file__, "--child", str(spec)]
        proc = subprocess.Popen(
            _valgrind(out, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("the verify child did not start")
            result: dict[str, float] = {}
            for mode in VERIFY_MODES:
                count = n * 20 if mode == "warm" else n
                _control("-z", proc.pid)
                proc.stdin.write(f"go {mode} {count}\n")
                proc.stdin.flush()
                if proc.stdout.readline().strip() != "done":
                    raise SystemExit(f"the verify child failed in mode {mode}")
                _control("-d", proc.pid)
                result[mode] = _dumped_total(out) / count
            return result
        finally:
            proc.stdin.close()
            proc.wait(timeout=120)


def bound_claims(htu: str) -> dict[str, Any]:
    """Claims shaped like ``keyswap gateway --bind-request``'s for ``GET <htu>``, but living the
    longest a bound issuer accepts (300 s, not 30 s: valgrind runs the server ~50x slower)."""
    t = int(time.time())
    return {
        "iss": ISSUER,
        "sub": "consumer-bench",
        "aud": AUDIENCE,
        "iat": t,
        "exp": t + 300,
        "jti": secrets.token_urlsafe(16),
        "key_id": "k_bench",
        "metadata": {"plan": "pro"},
        "scope": "read",
        "htm": "GET",
        "htu": htu,
    }


def _raw_verifier(alg: str, public_key: Any, token: str) -> Callable[[], None]:
    """Only the public-key operation of ``token``'s signature check (as ``cryptography`` is called)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    signing_input, _, signature = token.rpartition(".")
    data = signing_input.encode()
    sig = base64.urlsafe_b64decode(signature + "==")
    if alg == "RS256":
        pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
        return lambda: public_key.verify(sig, data, pkcs1, sha256)
    if alg == "ES256":
        der = utils.encode_dss_signature(
            int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        )
        ecdsa = ec.ECDSA(hashes.SHA256())
        return lambda: public_key.verify(der, data, ecdsa)
    return lambda: public_key.verify(sig, data)


def _bound_child(spec: dict[str, Any]) -> None:
    from keyswap.verifier.jwk import parse_jwk
    from keyswap.verifier.verify import IssuerConfig, Verifier

    config = IssuerConfig(
        issuer=ISSUER,
        jwks_url=spec["jwks_url"],
        audience=AUDIENCE,
        algorithms=BOUND_ALGS,
        bind_request=True,
    )
    verifier = Verifier(config)
    verifier.keyset(ISSUER).refresh_sync()
    tokens: dict[str, list[str]] = spec["tokens"]
    raw: dict[str, Callable[[], None]] = {}
    for alg in BOUND_ALGS:
        verifier.verify_sync(tokens[alg].pop())  # warm: the header cache, the key
        raw[alg] = _raw_verifier(alg, parse_jwk(spec["jwks"][alg]).public_key, tokens[alg][0])
        raw[alg]()
    print("ready", flush=True)
    for line in sys.stdin:
        mode, alg, n = line.split()[1], line.split()[2], int(line.split()[3])
        if mode == "raw":
            fn = raw[alg]
            for _ in range(n):
                fn()
        else:
            verify = verifier.verify_sync
            for token in tokens[alg][:n]:
                verify(token)
        print("done", flush=True)
    verifier.close()


def measure_bound_verify(n: int) -> dict[str, dict[str, float]]:
    """Instructions per raw signature check and per ``verify_sync`` of a never-seen bound token."""
    keys = {alg: BenchKey(alg) for alg in BOUND_ALGS}
    result: dict[str, dict[str, float]] = {alg: {} for alg in BOUND_ALGS}
    with (
        JWKSHost(list(keys.values())) as jwks,
        tempfile.TemporaryDirectory(prefix="keyswap-cg-") as tmp,
    ):
        htu = f"http://{HOST}:8000/"
        spec = {
            "kind": "bound",
            "jwks_url": jwks.url,
            "jwks": {alg: key.public_jwk() for alg, key in keys.items()},
            "tokens": {
                alg: [key.sign(bound_claims(htu)) for _ in range(n + 1)]
                for alg, key in keys.items()
            },
        }
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        out = Path(tmp) / "bound-verify.cg"
        argv = [PYTHON, __file__, "--child", str(path)]
        proc = subprocess.Popen(
            _valgrind(out, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("the bound verify child did not start")
            for alg in BOUND_ALGS:
                for mode in ("raw", "verify"):
                    _control("-z", proc.pid)
                    proc.stdin.write(f"go {mode} {alg} {n}\n")
                    proc.stdin.flush()
                    if proc.stdout.readline().strip() != "done":
                        raise SystemExit(f"the bound verify child failed in {mode} {alg}")
                    _control("-d", proc.pid)
                    result[alg][mode] = _dumped_total(out, f"bound-{mode}-{alg}") / n
            return result
        finally:
            proc.stdin.close()
            proc.wait(timeout=120)


# --- HTTP: the benchmark server under valgrind --------------------------------------------------------


def measure_http(app: str, n: int, jwks_url: str, token: str) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="keyswap-cg-") as tmp:
        out = Path(tmp) / f"{app}.cg"
        argv = [PYTHON, str(Path(__file__).resolve().parent / "_serve.py"), app]
        argv += ["--port", str(port), "--jwks-url", jwks_url]
        proc = subprocess.Popen(_valgrind(out, argv), stderr=subprocess.DEVNULL)
        try:
            conn = _connect(port, token, deadline=time.monotonic() + 180)
            warm = max(50, n // 5)  # warm-up: token cache, interpreter caches
            _get_each(conn, itertools.repeat(token, warm), 200, app)
            _control("-z", proc.pid)
            _get_each(conn, itertools.repeat(token, n), 200, app)
            _control("-d", proc.pid)
            return _dumped_total(out, f"http-{app}") / n
        finally:
            proc.terminate()
            proc.wait(timeout=120)


def measure_http_bound(n: int, keys: dict[str, BenchKey], jwks_url: str) -> dict[str, float]:
    """Instructions per request of the ``bound`` app, per algorithm, a never-seen token each time."""
    port = free_port()
    htu = f"http://{HOST}:{port}/"
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="keyswap-cg-") as tmp:
        out = Path(tmp) / "bound.cg"
        argv = [PYTHON, str(Path(__file__).resolve().parent / "_serve.py"), "bound"]
        argv += ["--port", str(port), "--jwks-url", jwks_url]
        proc = subprocess.Popen(_valgrind(out, argv), stderr=subprocess.DEVNULL)
        try:
            first = keys["RS256"].sign(bound_claims(htu))
            conn = _connect(port, first, deadline=time.monotonic() + 180)
            for alg, key in keys.items():
                warm = max(50, n // 5)
                tokens = [key.sign(bound_claims(htu)) for _ in range(warm + n)]
                _get_each(conn, tokens[:warm], 200, f"bound {alg}")
                _control("-z", proc.pid)
                _get_each(conn, tokens[warm:], 200, f"bound {alg}")
                _control("-d", proc.pid)
                result[alg] = _dumped_total(out, f"http-bound-{alg}") / n
            return result
        finally:
            proc.terminate()
            proc.wait(timeout=120)


def _get_each(
    conn: http.client.HTTPConnection, bearers: Iterable[str], expected: int, what: str
) -> None:
    """``GET /`` on ``conn`` once per bearer credential; SystemExit on any other status."""
    for bearer in bearers:
        conn.request("GET", "/", headers={"Authorization": f"Bearer {bearer}"})
        response = conn.getresponse()
        response.read()
        if response.status != expected:
            raise SystemExit(f"{what}: HTTP {response.status}")


def _connect(port: int, token: str, *, deadline: float) -> http.client.HTTPConnection:
    while True:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            conn.request("GET", "/", headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return conn
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"server on port {port} did not answer 200 in time")
        time.sleep(0.5)


# --- gateway: `keyswap gateway` under valgrind, one keep-alive client ------------------------------

KEYSWAP = [str(Path(PYTHON).with_name("keyswap"))]
GATEWAY_LEVELS = ("info", "warning")


def _keyswap(*args: str) -> str:
    proc = subprocess.run(
        [*KEYSWAP, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"keyswap {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def _dump_totals(out: Path, keep: Path | None = None) -> dict[str, int]:
    """Instructions per thread in the newest ``callgrind_control -d`` dump (``--separate-threads``:
    one file per thread, ``out.N-TT``); the files are removed."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dumps = sorted(out.parent.glob(out.name + ".*"))
        if dumps:
            time.sleep(0.5)  # every thread's file is written
            dumps = sorted(out.parent.glob(out.name + ".*"))
            totals: dict[str, int] = {}
            for dump in dumps:
                text = dump.read_text()
                match = _TOTALS.search(text)
                thread = dump.name.rsplit("-", 1)[-1]
                totals[thread] = int(match.group(1)) if match else 0
                if keep is not None:
                    shutil.copy(dump, keep / f"{out.stem}-{thread}.cg")
                dump.unlink()
            return totals
        time.sleep(0.2)
    raise SystemExit(f"no callgrind dump appeared for {out}")


def measure_gateway(
    level: str,
    n: int,
    *,
    db: str,
    key: str,
    upstream_url: str,
    tmp: Path,
    keep: Path | None,
    src: str | None = None,
    config: str = "",
    extra: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    refusals: bool = False,
) -> dict[str, float]:
    """Instructions per proxied request of ``keyswap gateway --log-level <level> <extra>`` (all
    threads), per thread, and the idle background (change watcher polls, pool ticker) per second.
    ``refusals``: also per refusal of a made-up well-formed key (a new one each request, 401)."""
    port = free_port()
    name = f"gateway-{'before-' if src else ''}{config + '-' if config else ''}{level}"
    out = tmp / f"{name}.cg"
    argv = [*KEYSWAP, "gateway", "--upstream", upstream_url, "--port", str(port), "--db", db]
    argv += ["--log-level", level, *extra]
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - the child's stderr
    env = {**os.environ, **(extra_env or {})}
    if src:
        env["PYTHONPATH"] = src
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            *argv,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    try:
        conn = _connect(port, key, deadline=time.monotonic() + 240)
        _get_each(
            conn, itertools.repeat(key, max(100, n // 5)), 200, "gateway"
        )  # warm-up: caches, minted token, the access log's threads
        time.sleep(1.0)
        # The idle background first (change watcher polls the store every second, pool ticker).
        _control("-z", proc.pid)
        idle_start = time.monotonic()
        time.sleep(3.0)
        _control("-d", proc.pid)
        idle_seconds = time.monotonic() - idle_start
        idle = sum(_dump_totals(out).values()) / idle_seconds
        conn.close()  # the keep-alive timeout may have closed it: a new one, warmed
        conn = _connect(port, key, deadline=time.monotonic() + 60)
        _get_each(conn, itertools.repeat(key, 20), 200, "gateway")
        _control("-z", proc.pid)
        started = time.monotonic()
        _get_each(conn, itertools.repeat(key, n), 200, "gateway")
        time.sleep(0.3)  # the last access-log batch (50 ms) is written
        _control("-d", proc.pid)
        elapsed = time.monotonic() - started
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
        threads = _dump_totals(out, keep)
        result = {f"thread {t}": v / n for t, v in threads.items()}
        result["total"] = sum(threads.values()) / n
        result["idle per s"] = idle
        result["background"] = idle * elapsed / n
        result["net"] = result["total"] - result["background"]
        result["seconds"] = elapsed
        if refusals:
            from keyswap.gateway.apikeys import generate_key

            made_up = [generate_key() for _ in range(n + 20)]
            _get_each(conn, made_up[:20], 401, "gateway, a made-up key")
            _control("-z", proc.pid)
            started = time.monotonic()
            _get_each(conn, made_up[20:], 401, "gateway, a made-up key")
            time.sleep(0.3)
            _control("-d", proc.pid)
            refused = _dump_totals(out, keep)
            result["refusal loop"] = refused.get("01", 0) / n
            result["refusal net"] = (
                sum(refused.values()) / n - idle * (time.monotonic() - started) / n
            )
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def gateway_main(
    n: int,
    levels: list[str],
    keep: Path | None,
    before: str | None = None,
    configs: dict[str, tuple[str, ...]] | None = None,
    extra_env: dict[str, str] | None = None,
    refusals: bool = False,
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import Server, serve_argv

    with tempfile.TemporaryDirectory(prefix="keyswap-cg-gw-") as tmp_name:
        tmp = Path(tmp_name)
        db = f"sqlite:///{tmp}/keyswap.db"
        _keyswap("consumers", "create", "bench", "--db", db)
        key = json.loads(_keyswap("keys", "create", "bench", "--json", "--db", db))["key"]
        up_port = free_port()
        upstream = Server("upstream", serve_argv("bare", up_port), log_dir=tmp)
        upstream.start(f"http://{HOST}:{up_port}/")
        try:
            trees = {"before ": str(Path(before).resolve()), "": None} if before else {"": None}
            variants = configs or {"": ()}
            results = {
                f"{tree}{config + ' ' if config else ''}{level}": measure_gateway(
                    level,
                    n,
                    db=db,
                    key=key,
                    upstream_url=f"http://{HOST}:{up_port}",
                    tmp=tmp,
                    keep=keep,
                    src=src,
                    config=config,
                    extra=extra,
                    extra_env=extra_env,
                    refusals=refusals,
                )
                for tree, src in trees.items()
                for config, extra in variants.items()
                for level in levels
            }
        finally:
            upstream.stop()
    rows = []
    for level, r in results.items():
        others = sorted(
            (v for k, v in r.items() if k.startswith("thread ") and k != "thread 01"), reverse=True
        )
        rows.append(
            [
                f"{level.removesuffix(level.split()[-1])}`--log-level {level.split()[-1]}`",
                fmt_int(r["thread 01"]),
                ", ".join(fmt_int(v) for v in others if v),
                fmt_int(r["net"]),
                fmt_int(r["background"]),
                f"{n / r['seconds']:.0f}",
            ]
        )
    print(
        markdown_table(
            [
                "keyswap gateway (one key, one keep-alive client)",
                "event loop thread",
                "other threads",
                "all threads − background",
                "background (idle rate)",
                "req/s under valgrind",
            ],
            rows,
        )
    )
    if refusals:
        print(
            "\n"
            + markdown_table(
                [
                    "keyswap gateway",
                    "proxied request: event loop",
                    "proxied: all threads − background",
                    "made-up key refused (401): event loop",
                    "refused: all threads − background",
                    "refused ÷ proxied (all threads)",
                ],
                [
                    [
                        f"`--log-level {level.split()[-1]}` {level.removesuffix(level.split()[-1])}",
                        fmt_int(r["thread 01"]),
                        fmt_int(r["net"]),
                        fmt_int(r["refusal loop"]),
                        fmt_int(r["refusal net"]),
                        fmt(r["refusal net"] / r["net"]),
                    ]
                    for level, r in results.items()
                ],
            )
        )
    print(
        "\nThe event loop thread's count is the steady one (within ±0.5 % run to run); the other"
        " threads are the access-log writer (at `info`) and background threads (change watcher,"
        " store), whose share per request depends on the request rate under valgrind."
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    parser.add_argument("--parts", default="verify,http,bound", help="verify, http, bound")
    parser.add_argument("--keep", type=Path, help="keep the callgrind dumps in this directory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--gateway",
        action="store_true",
        help="only the gateway: keyswap gateway per proxied request, at each --levels",
    )
    parser.add_argument("--levels", default=",".join(GATEWAY_LEVELS), help="gateway log levels")
    parser.add_argument("-n", type=int, help="operations per measurement")
    parser.add_argument(
        "--before", help="gateway: also measure another source tree (PYTHONPATH; its src folder)"
    )
    parser.add_argument(
        "--gateway-config",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="gateway: a configuration to measure, NAME=extra gateway flags (repeatable), e.g.\n"
        "--gateway-config off= --gateway-config 'trace-0=--tracing --trace-sample-rate 0'",
    )
    parser.add_argument(
        "--refusals",
        action="store_true",
        help="gateway: also instructions per refusal of a made-up well-formed API key (401)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="gateway: an environment variable for every gateway process (repeatable), e.g.\n"
        "OTEL_TRACES_EXPORTER=none",
    )
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return 0
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH (Debian: apt-get install valgrind)")
    if args.gateway:
        n = args.n or (100 if args.quick else 1000)
        print_header(
            "Gateway instructions per request (callgrind)",
            f"valgrind --tool=callgrind --separate-threads=yes on `keyswap gateway` (SQLite, one "
            f"consumer and key, upstream: the bare uvicorn app outside valgrind); one keep-alive "
            f"client, counters zeroed after a warm-up, then {n} requests; the background (change "
            "watcher polls, pool ticker: measured idle for 3 s) is subtracted pro rata.",
            tools=("valgrind",),
        )
        configs: dict[str, tuple[str, ...]] = {}
        for spec in args.gateway_config:
            name, sep, flags = spec.partition("=")
            if not sep or not name or " " in name:
                parser.error(f"--gateway-config wants NAME=ARGS, got {spec!r}")
            configs[name] = tuple(shlex.split(flags))
        extra_env: dict[str, str] = {}
        for spec in args.gateway_env:
            var, sep, value = spec.partition("=")
            if not sep or not var:
                parser.error(f"--gateway-env wants VAR=VALUE, got {spec!r}")
            extra_env[var] = value
        gateway_main(
            n,
            [lv for lv in args.levels.split(",") if lv],
            args.keep,
            args.before,
            configs or None,
            extra_env or None,
            refusals=args.refusals,
        )
        return 0
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        _KEEP.append(args.keep)
    parts = {p for p in args.parts.split(",") if p}
    n = args.n or (200 if args.quick else 2000)
    print_header(
        "Instructions per operation (callgrind)",
        f"valgrind --tool=callgrind; counters zeroed after set-up and warm-up, then {n} operations "
        f"({n * 20} for the warm cache); instructions of the measured process ÷ operations.",
        tools=("valgrind",),
    )
    if "verify" in parts:
        verify = measure_verify(n)
        raw = verify["raw"]
        rows = [
            [
                LABELS[m],
                fmt_int(verify[m]),
                fmt(raw / verify[m]),
                fmt_int(verify[m] - raw) if m == "unique" else "",
            ]
            for m in VERIFY_MODES
        ]
        print(markdown_table(["operation", "instructions", "raw ÷ this", "keyswap's own"], rows))

    per_request: dict[str, float] = {}
    if "http" in parts or "bound" in parts:
        key = BenchKey("RS256")
        token = key.sign(bench_claims("cg-http"))
        apps = ("bare", "keyswap") if "http" in parts else ("bare",)
        with JWKSHost([key]) as jwks:
            per_request = {app: measure_http(app, n, jwks.url, token) for app in apps}
    bare = per_request.get("bare", float("nan"))
    if "http" in parts:
        print()
        print(
            markdown_table(
                ["server (uvicorn, one request)", "instructions", "bare ÷ this"],
                [
                    ["Starlette bare", fmt_int(bare), "1.00"],
                    [
                        "+ keyswap JWTAuthMiddleware",
                        fmt_int(per_request["keyswap"]),
                        fmt(bare / per_request["keyswap"]),
                    ],
                ],
            )
        )
    if "bound" in parts:
        bound_verify = measure_bound_verify(n)
        keys = {alg: BenchKey(alg) for alg in BOUND_ALGS}
        with JWKSHost(list(keys.values())) as jwks:
            bound_http = measure_http_bound(n, keys, jwks.url)
        rows = []
        for alg in BOUND_ALGS:
            raw_i, verify_i, http_i = (
                bound_verify[alg]["raw"],
                bound_verify[alg]["verify"],
                bound_http[alg],
            )
            rows.append(
                [
                    alg,
                    fmt_int(raw_i),
                    fmt_int(verify_i),
                    fmt_int(verify_i - raw_i),
                    fmt_int(http_i),
                    fmt_int(http_i - bare - raw_i),
                    fmt(bare / http_i),
                ]
            )
        print()
        print(f"Bound tokens (Starlette bare: {fmt_int(bare)} instructions per request):\n")
        print(
            markdown_table(
                [
                    "alg",
                    "signature check alone",
                    "verify_sync, bound token",
                    "verify_sync's own",
                    "bound request (HTTP)",
                    "keyswap's own per request",
                    "bare ÷ this",
                ],
                rows,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
