"""API-key lookups: what a flood of unknown (well-formed, made-up) keys costs next to known keys.

Prints a markdown table of microseconds per lookup, one thread, through ``ApiKeys``:

- unknown, each new: HMAC + one query + an entry in the unknown-key cache (the flood);
- known, each a cache miss: HMAC + one query + an entry in the known-key cache;
- known, cached: HMAC + a cache hit (the hot path);

and checks that the flood left every known key in its cache (issue 11: unknown keys never evict known
ones). Usage: ``python bench/lookup_bench.py [--db URL] [--count N] [--quick]`` (default: a temporary
SQLite file; give a PostgreSQL URL whose schema is upgraded to measure that).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from keyswap.errors import InvalidApiKey
from keyswap.gateway.apikeys import ApiKeys, generate_key
from keyswap.gateway.secret import ServerSecret
from keyswap.store import Store

SECRET = "bench-server-secret-0123456789-abcdefghijkl"


def _per_call(lookup: Callable[[str], object], keys: list[str]) -> float:
    """Microseconds per ``lookup(key)``, over ``keys`` in order (refusals count as answers)."""
    started = time.perf_counter()
    for key in keys:
        with contextlib.suppress(InvalidApiKey):
            lookup(key)
    return (time.perf_counter() - started) / len(keys) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--count", type=int, default=5000, help="lookups per kind (5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is shown (3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (200 lookups, 1 round)")
    args = parser.parse_args()
    count, rounds = (200, 1) if args.quick else (args.count, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = Store(url)
        secret = ServerSecret(SECRET)
        admin = ApiKeys(store, secret, cache_size=0)
        consumer = f"bench{int(time.time() * 1000)}"
        store.create_consumer(consumer)
        known = [admin.create(consumer)[1] for _ in range(200)]
        results: dict[str, list[float]] = {"unknown": [], "known_miss": [], "known_hit": []}
        kept = True
        for _ in range(rounds):
            keys = ApiKeys(store, secret, cache_size=10_000, cache_ttl=3600)
            uncached = ApiKeys(store, secret, cache_size=0)
            flood = [generate_key() for _ in range(count)]
            misses = [known[i % len(known)] for i in range(count)]
            for key in known:
                keys.authenticate(key)
            results["unknown"].append(_per_call(keys.authenticate, flood))
            results["known_miss"].append(_per_call(uncached.authenticate, misses))
            results["known_hit"].append(_per_call(keys.lookup_cached, misses))
            kept = kept and keys.cache_sizes[0] == len(known)
        store.close()
    unknown = statistics.median(results["unknown"])
    print(f"# API-key lookups ({'PostgreSQL' if args.db else 'SQLite'}, {count} per kind)\n")
    print("| lookup | µs each (median) | vs unknown |")
    print("|---|---:|---:|")
    for name, label in (
        ("unknown", "unknown key, each new (the flood)"),
        ("known_miss", "known key, cache miss"),
        ("known_hit", "known key, cached"),
    ):
        value = statistics.median(results[name])
        print(f"| {label} | {value:.1f} | {value / unknown:.2f} |")
    print(f"\nknown keys kept through the flood: {'yes' if kept else 'NO'}")
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
