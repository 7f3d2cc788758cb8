"""Token verifications per second, one thread: raw crypto, PyJWT, keyswap (cold and warm).

    .venv/bin/python bench/verify_bench.py [--quick] [--algs RS256,ES256,EdDSA]

Rows (per alg, same process, same run):
  raw             `cryptography` public-key verify of one prepared signing input (= 1.00)
  PyJWT decode    jwt.decode(token, prepared key, algorithms, audience, issuer)
  PyJWKClient     the typical user path: PyJWKClient(url).get_signing_key_from_jwt + jwt.decode
  keyswap unique  Verifier.verify_sync on tokens it has never seen: a verifier with a small token
                  cache cycling through more distinct tokens (different jti) than it holds, so every
                  call is a miss + verify + insert (checked with the verifier's metrics)
  keyswap no cache  Verifier(token_cache_size=0), same tokens (only if the Verifier accepts 0)
  keyswap warm    Verifier.verify_sync on one token repeated (verified-token cache hit), each call
                  with a new string object equal to it, as in a server
The Verifiers fetch their JWKS from a real HTTP server this script runs on 127.0.0.1; they are warmed
before timing and the script checks that no JWKS fetch happens during the timed loops.
Fixed loop counts, 5 interleaved repeats (3 with --quick, loops / 5), median.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    AUDIENCE,
    ISSUER,
    BenchKey,
    JWKSHost,
    Target,
    bench_claims,
    fmt,
    fmt_int,
    import_problem,
    markdown_table,
    median,
    print_header,
    print_targets,
)

ALGS = ("RS256", "ES256", "EdDSA")
# Loop counts per repeat (full run), sized so that each loop takes roughly 0.2-0.4 s on the
# reference machine. Fixed, so every run does the same work.
LOOPS: dict[str, dict[str, int]] = {
    "RS256": {"raw": 10_000, "pyjwt": 4_000, "pyjwk": 2_000, "unique": 6_000, "warm": 300_000},
    "ES256": {"raw": 4_000, "pyjwt": 3_000, "pyjwk": 2_000, "unique": 3_000, "warm": 300_000},
    "EdDSA": {"raw": 2_500, "pyjwt": 2_000, "pyjwk": 1_500, "unique": 2_000, "warm": 300_000},
}
LABELS = {
    "raw": "raw `cryptography` verify",
    "pyjwt": "PyJWT `jwt.decode` (prepared key)",
    "pyjwk": "PyJWKClient lookup + `jwt.decode`",
    "unique": "keyswap `verify_sync`, unique tokens",
    "nocache": "keyswap `verify_sync`, token cache off",
    "warm": "keyswap `verify_sync`, warm cache",
}
DISTINCT_TOKENS = 512  # per alg, cycled by the "unique" loops
UNIQUE_CACHE_SIZE = 64  # the "unique" verifier's token cache: far smaller than DISTINCT_TOKENS


def _loop(fn: Callable[[Any], object], items: list[Any]) -> float:
    """Call fn on every item; return elapsed seconds."""
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - t0


def _cycle(items: list[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)]


def _make_verifier(jwks_url: str, algs: tuple[str, ...], **kwargs: Any) -> tuple[Any, Any]:
    from keyswap.verifier.metrics import Metrics
    from keyswap.verifier.verify import IssuerConfig, Verifier

    metrics = Metrics()
    config = IssuerConfig(issuer=ISSUER, jwks_url=jwks_url, audience=AUDIENCE, algorithms=algs)
    verifier = Verifier(config, metrics=metrics, **kwargs)
    verifier.start()
    return verifier, metrics


def _warm(verifier: Any, tokens: list[str], timeout: float = 15.0) -> None:
    """Verify each token once, retrying while the first JWKS fetch is in flight."""
    from keyswap.errors import KeysUnavailable

    deadline = time.monotonic() + timeout
    for token in tokens:
        while True:
            try:
                verifier.verify_sync(token)
                break
            except KeysUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="loops / 5, 3 repeats")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 5)")
    parser.add_argument(
        "--algs", default=",".join(ALGS), help="comma-separated subset of " + ",".join(ALGS)
    )
    args = parser.parse_args()
    algs = tuple(a for a in args.algs.split(",") if a)
    for a in algs:
        if a not in ALGS:
            parser.error(f"unknown alg {a!r}")
    repeats = args.repeats or (3 if args.quick else 5)
    scale = 5 if args.quick else 1

    import jwt

    keyswap_problem = import_problem("keyswap.verifier.verify")
    have_keyswap = keyswap_problem is None
    print_header(
        "Token verification, one thread",
        f"fixed loop counts{' (quick: / 5)' if args.quick else ''}, {repeats} interleaved repeats, "
        f"median; unique = {DISTINCT_TOKENS} distinct tokens per alg cycled through a verifier "
        f"whose token cache holds {UNIQUE_CACHE_SIZE}; warm = one token repeated, default verifier.",
    )

    keys = {alg: BenchKey(alg) for alg in algs}
    tokens = {
        alg: [keys[alg].sign(bench_claims(f"{alg}-{i}")) for i in range(DISTINCT_TOKENS)]
        for alg in algs
    }
    warmups = {alg: keys[alg].sign(bench_claims(f"{alg}-warmup")) for alg in algs}
    methods = ["raw", "pyjwt", "pyjwk"] + (["unique", "nocache", "warm"] if have_keyswap else [])
    ops: dict[tuple[str, str], list[float]] = {}
    checks: list[str] = []
    ok = True

    with JWKSHost(list(keys.values())) as jwks:
        # PyJWT: the prepared key is the same public key object the raw loop uses.
        pyjwk_client = jwt.PyJWKClient(jwks.url)
        fns: dict[tuple[str, str], Callable[[Any], object]] = {}
        for alg in algs:
            token = tokens[alg][0]
            signing_input, _, sig = token.rpartition(".")
            raw = keys[alg].raw_verifier(
                signing_input.encode("ascii"), jwt.utils.base64url_decode(sig.encode("ascii"))
            )

            def raw_only(_t: str, f: Callable[[], object] = raw) -> object:
                return f()

            def pyjwt_decode(t: str, p: Any = keys[alg].public, a: str = alg) -> object:
                return jwt.decode(t, p, algorithms=[a], audience=AUDIENCE, issuer=ISSUER)

            def typical(t: str, a: str = alg) -> object:
                signing_key = pyjwk_client.get_signing_key_from_jwt(t)
                return jwt.decode(
                    t, signing_key.key, algorithms=[a], audience=AUDIENCE, issuer=ISSUER
                )

            fns[alg, "raw"] = raw_only
            fns[alg, "pyjwt"] = pyjwt_decode
            fns[alg, "pyjwk"] = typical
            for m in ("raw", "pyjwt", "pyjwk"):
                fns[alg, m](token)  # warm (PyJWKClient fetches here) and check it works

        verifiers: dict[str, tuple[Any, Any]] = {}
        try:
            if have_keyswap:
                from keyswap.verifier.verify import Verifier

                if "token_cache_size" not in inspect.signature(Verifier).parameters:
                    raise SystemExit(
                        "Verifier has no token_cache_size parameter: cannot defeat its cache"
                    )
                verifiers["warm"] = _make_verifier(jwks.url, algs)
                verifiers["unique"] = _make_verifier(
                    jwks.url, algs, token_cache_size=UNIQUE_CACHE_SIZE
                )
                try:
                    verifiers["nocache"] = _make_verifier(jwks.url, algs, token_cache_size=0)
                except Exception as exc:
                    methods.remove("nocache")
                    checks.append(
                        f"no 'token cache off' row: Verifier(token_cache_size=0) raised {exc!r}"
                    )
                # The warm verifier caches tokens[alg][0], the one its loop repeats; the others are
                # warmed with a token outside the cycle, so their first timed call is a miss too.
                for name, (verifier, _) in verifiers.items():
                    _warm(verifier, [tokens[a][0] if name == "warm" else warmups[a] for a in algs])
                    fns.update({(a, name): verifier.verify_sync for a in algs})

            jwks_before = jwks.count()
            hits_before = {n: m.get("token_cache_hits") for n, (_, m) in verifiers.items()}
            misses_before = {n: m.get("token_cache_misses") for n, (_, m) in verifiers.items()}
            for rep in range(repeats):
                for alg in algs:
                    for method in methods:
                        n = max(1, LOOPS[alg]["unique" if method == "nocache" else method] // scale)
                        if method in ("unique", "nocache"):
                            items = _cycle(tokens[alg], n)
                        elif method == "warm":
                            # A new string object per call, as a server has one per request
                            # (Python caches a string's hash, and the token cache keys by it).
                            items = [(tokens[alg][0] + " ")[:-1] for _ in range(n)]
                        else:
                            items = [tokens[alg][0]] * n
                        elapsed = _loop(fns[alg, method], items)
                        ops.setdefault((alg, method), []).append(n / elapsed)
                print(f"repeat {rep + 1}/{repeats} done", file=sys.stderr, flush=True)
            fetches = jwks.count() - jwks_before
            checks.append(f"JWKS fetches during timed loops: {fetches} (must be 0)")
            ok &= fetches == 0
            for name, (_, m) in verifiers.items():
                hits = m.get("token_cache_hits") - hits_before[name]
                misses = m.get("token_cache_misses") - misses_before[name]
                checks.append(f"keyswap {name}: token-cache hits {hits:,.0f}, misses {misses:,.0f}")
                if name == "unique":
                    ok &= hits == 0
                if name == "warm":
                    ok &= misses == 0
        finally:
            for verifier, _ in verifiers.values():
                verifier.close()

    # Table: one block of columns per alg.
    headers = ["method"]
    for alg in algs:
        headers += [f"{alg} verify/s", "µs", "ratio"]
    rows = []
    for method in methods:
        row = [LABELS[method]]
        for alg in algs:
            value = median(ops[alg, method])
            row += [
                fmt_int(value),
                fmt(1e6 / value, 2 if value > 1e5 else 1),
                fmt(value / median(ops[alg, "raw"])),
            ]
        rows.append(row)
    print(markdown_table(headers, rows))
    print("\nratio = ops/s ÷ raw `cryptography` verify ops/s of the same alg, same run.")
    print("Checks:")
    for c in checks:
        print(f"- {c}")
    if not have_keyswap:
        print(f"- keyswap rows skipped: {keyswap_problem}")
        return 1

    targets = []
    if "RS256" in algs:
        raw = median(ops["RS256", "raw"])
        targets += [
            Target("RS256 keyswap unique ÷ raw", median(ops["RS256", "unique"]) / raw, 0.6),
            Target("RS256 keyswap warm ÷ raw", median(ops["RS256", "warm"]) / raw, 10.0),
        ]
    ok &= print_targets(targets)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
