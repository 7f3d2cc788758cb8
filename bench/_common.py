"""Shared benchmark plumbing: machine header, servers, wrk, /proc CPU accounting, tables, tokens.

Everything here talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
ISSUER = "https://issuer.bench.invalid"
AUDIENCE = "https://api.bench.invalid"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- machine header


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break  # first processor block is enough
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    return info


def _tool_version(argv: list[str], pattern: str) -> str:
    if shutil.which(argv[0]) is None:
        return "not found"
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"


def machine_info(tools: Sequence[str] = ()) -> dict[str, str]:
    """What the numbers were measured on, read from the running system."""
    cpu = _cpuinfo()
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        openssl = backend.openssl_version_text()
    except Exception:
        openssl = "unknown"
    info = {
        "CPU": f"{cpu.get('model name', 'unknown')} (family {cpu.get('cpu family', '?')} "
        f"model {cpu.get('model', '?')})",
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "cryptography": f"{_version('cryptography')} ({openssl})",
    }
    for dist in ("keyswap", "PyJWT", "starlette", "uvicorn", "uvloop", "httptools", "aiohttp"):
        info[dist] = _version(dist)
    if "wrk" in tools:
        info["wrk"] = _tool_version(["wrk", "-v"], r"wrk\s+(\S+)")
    if "nginx" in tools:
        info["nginx"] = _tool_version(["nginx", "-v"], r"nginx/(\S+)")
    if "valgrind" in tools:
        info["valgrind"] = _tool_version(["valgrind", "--version"], r"valgrind-(\S+)")
    return info


def import_problem(*modules: str) -> str | None:
    """None when every module imports; otherwise why not (a component still being built)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure means the component cannot be measured
            return f"{module}: {type(exc).__name__}: {exc}"
    return None


def print_header(title: str, method: str, tools: Sequence[str] = ()) -> None:
    """Print the title, the machine and the method as a markdown block."""
    print(f"# {title}\n")
    print("Machine: " + "; ".join(f"{k} {v}" for k, v in machine_info(tools).items()))
    print(f"\nMethod: {method}\n", flush=True)


# --------------------------------------------------------------------------- numbers and tables


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_int(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}"


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; the first column is left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    aligns = [
        ":" + "-" * max(w - 1, 2) if i == 0 else "-" * max(w - 1, 2) + ":"
        for i, w in enumerate(widths)
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    return "\n".join([line(headers), "| " + " | ".join(aligns) + " |", *(line(r) for r in rows)])


@dataclass
class Target:
    """One pass/fail target, printed after the tables."""

    label: str
    value: float
    threshold: float
    above: bool = True  # True: pass when value >= threshold; False: pass when value < threshold
    unit: str = "x"

    @property
    def passed(self) -> bool:
        if self.value != self.value:
            return False
        return self.value >= self.threshold if self.above else self.value < self.threshold

    def line(self) -> str:
        op = ">=" if self.above else "<"
        verdict = "PASS" if self.passed else "FAIL"
        return f"- {verdict}: {self.label} = {fmt(self.value, 3)}{self.unit} (target {op} {self.threshold}{self.unit})"


def print_targets(targets: Sequence[Target]) -> bool:
    print("\nTargets:")
    for t in targets:
        print(t.line())
    return all(t.passed for t in targets)


# --------------------------------------------------------------------------- ports, HTTP, servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One GET on a fresh connection; returns (status, body)."""
    match = re.fullmatch(r"http://([^/:]+):(\d+)(/.*)?", url)
    if match is None:
        raise ValueError(f"not a plain http://host:port URL: {url}")
    conn = http.client.HTTPConnection(match.group(1), int(match.group(2)), timeout=timeout)
    try:
        conn.request("GET", match.group(3) or "/", headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def proc_tree_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and all its live descendants, in seconds (from /proc/<pid>/stat)."""
    children = _proc_children()
    total_ticks = 0
    stack = [pid]
    seen: set[int] = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total_ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        stack.extend(children.get(p, []))
    return total_ticks / CLK_TCK


class Server:
    """A server subprocess in its own session; output goes to a log file in `log_dir`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd or REPO_DIR
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_url: str, *, timeout: float = 30.0) -> Server:
        """Start and wait until `ready_url` answers any HTTP status; `self.url` is `ready_url`."""
        self.url = ready_url
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                http_get(ready_url, timeout=1.0)
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        return proc_tree_cpu_seconds(self.pid)

    def pin(self, cpus: str) -> None:
        """Move every thread of this server's processes (its session) onto ``cpus`` (taskset)."""
        found = subprocess.run(
            ["pgrep", "-s", str(self.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in {*found, str(self.pid)}:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", cpus, pid], capture_output=True, check=False
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then SIGKILL the whole session this server started."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # Any straggler in the session this server started (e.g. nginx workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def serve_argv(app: str, port: int, *extra: str) -> list[str]:
    """argv for `bench/_serve.py`: one uvicorn worker (uvloop + httptools) serving `app`."""
    return [PYTHON, str(BENCH_DIR / "_serve.py"), app, "--port", str(port), *extra]


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    cpu_us_per_req: float = float("nan")  # sum over the measured servers
    cpu_parts: list[float] = field(default_factory=list)  # per measured server, in `cpu` order
    raw: str = field(default="", repr=False)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"cannot parse wrk time {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(text: str) -> WrkResult:
    """Parse `wrk --latency` output."""
    requests = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", text, re.M)
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M)
    p50 = re.search(r"^\s*50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", text, re.M)
    if not (requests and rps and p50 and p99):
        raise ValueError(f"unexpected wrk output:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        requests=int(requests.group(1)),
        seconds=_ms(requests.group(2)) / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(x) for x in sock.groups()) if sock else 0,
        raw=text,
    )


def run_wrk(
    url: str,
    *,
    seconds: float,
    connections: int = 32,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    cpu: Sequence[Server] = (),
    script: Path | None = None,
    env: dict[str, str] | None = None,
    cpus: str | None = None,
) -> WrkResult:
    """Run wrk against `url`; measure the CPU each server in `cpu` spends per request.

    `script`: a wrk Lua script (`-s`); `env`: extra environment for wrk (read by the script);
    `cpus`: run wrk on these CPUs only (`taskset -c`)."""
    argv = [
        *(["taskset", "-c", cpus] if cpus else []),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    before = [s.cpu_seconds() for s in cpu]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    after = [s.cpu_seconds() for s in cpu]
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    result = parse_wrk(proc.stdout)
    if cpu and result.requests:
        result.cpu_parts = [
            (a - b) * 1e6 / result.requests for a, b in zip(after, before, strict=True)
        ]
        result.cpu_us_per_req = sum(result.cpu_parts)
    return result


# --------------------------------------------------------------------------- keys, tokens, JWKS


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64u(n: int, length: int | None = None) -> str:
    return b64u(n.to_bytes(length or (n.bit_length() + 7) // 8, "big"))


class BenchKey:
    """A signing key for one alg (RS256, ES256, EdDSA) with its public JWK; signs with `cryptography`."""

    def __init__(self, alg: str, kid: str | None = None) -> None:
        self.alg = alg
        self.kid = kid or f"bench-{alg.lower()}"
        self.private: Any
        if alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        self.public = self.private.public_key()

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any]
        if self.alg == "RS256":
            nums = self.public.public_numbers()
            jwk = {"kty": "RSA", "n": _int_b64u(nums.n), "e": _int_b64u(nums.e)}
        elif self.alg == "ES256":
            nums = self.public.public_numbers()
            jwk = {
                "kty": "EC",
                "crv": "P-256",
                "x": _int_b64u(nums.x, 32),
                "y": _int_b64u(nums.y, 32),
            }
        else:
            raw = self.public.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def raw_sign(self, data: bytes) -> bytes:
        if self.alg == "RS256":
            return bytes(self.private.sign(data, padding.PKCS1v15(), hashes.SHA256()))
        if self.alg == "ES256":
            r, s = utils.decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return bytes(self.private.sign(data))

    def raw_verifier(self, data: bytes, signature: bytes) -> Any:
        """A zero-argument callable doing only the public-key operation (the 1.00 baseline)."""
        pub = self.public
        if self.alg == "RS256":
            pad, sha = padding.PKCS1v15(), hashes.SHA256()
            return lambda: pub.verify(signature, data, pad, sha)
        if self.alg == "ES256":
            der = utils.encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            ecdsa = ec.ECDSA(hashes.SHA256())
            return lambda: pub.verify(der, data, ecdsa)
        return lambda: pub.verify(signature, data)

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        signing_input = (
            b64u(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64u(json.dumps(claims, separators=(",", ":")).encode())
        )
        return signing_input + "." + b64u(self.raw_sign(signing_input.encode("ascii")))


def bench_claims(jti: str, *, ttl: int = 3600, now: float | None = None) -> dict[str, Any]:
    """The claim set the research baseline used: iss/sub/aud/iat/nbf/exp/jti/scope."""
    t = int(now if now is not None else time.time())
    return {
        "iss": ISSUER,
        "sub": "consumer-bench",
        "aud": AUDIENCE,
        "iat": t,
        "nbf": t,
        "exp": t + ttl,
        "jti": jti,
        "scope": "read write",
    }


class JWKSHost:
    """A JWKS served over HTTP on 127.0.0.1 from a thread; `hits` counts GETs."""

    def __init__(self, keys: Sequence[BenchKey]) -> None:
        self.body = json.dumps({"keys": [k.public_jwk() for k in keys]}).encode()
        self.hits = 0
        self._lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with host._lock:
                    host.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=3600")
                self.send_header("Content-Length", str(len(host.body)))
                self.end_headers()
                self.wfile.write(host.body)

        self._httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://{HOST}:{self._httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def count(self) -> int:
        with self._lock:
            return self.hits

    def __enter__(self) -> JWKSHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
