"""GitHub secret scanning reports: how long a real gateway takes to answer a batch.

Starts ``keyswap gateway --secret-scanning github`` (a subprocess, SQLite by default) and a stand-in
for GitHub's public keys document (a thread), then posts signed reports of 1,000 tokens: all unknown;
10, 100 or all 1,000 of them live keys (revoked); each again (a replay). Prints
the median answer time (POST to answer, one client) over the rounds and checks the issue's goal: a
1,000-token batch answered within 2 s, even when every token is a live key.

Usage: ``python bench/secret_scanning_bench.py [--db URL] [--rounds N] [--quick]`` (a PostgreSQL URL
must point to an upgraded schema).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    PYTHON,
    Server,
    Target,
    fmt,
    free_port,
    markdown_table,
    median,
    print_header,
    print_targets,
    temp_dir,
)

from keyswap.gateway.apikeys import ApiKeys, generate_key
from keyswap.gateway.secret import ServerSecret
from keyswap.store import Store

SECRET = "bench-server-secret-0123456789-abcdefghijkl"
BATCH = 1000


class GitHubKeys:
    """GitHub's public keys document on 127.0.0.1, and reports signed with its private key."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        pem = (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        document = json.dumps(
            {"public_keys": [{"key_identifier": "bench", "key": pem, "is_current": True}]}
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/keys"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def headers(self, body: bytes) -> dict[str, str]:
        signature = self.private.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "content-type": "application/json",
            "github-public-key-identifier": "bench",
            "github-public-key-signature": base64.b64encode(signature).decode(),
        }

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _report(tokens: list[str], url: str) -> bytes:
    return json.dumps(
        [{"token": t, "type": "keyswap_api_key", "url": url, "source": "content"} for t in tokens]
    ).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is shown (5)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (1 round)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    print_header(
        "Secret scanning: answer time of a 1,000-token report",
        f"one keyswap gateway process, {args.db or 'SQLite'}; signed reports posted one at a time; "
        f"median of {rounds} round(s), each with fresh live keys",
    )
    github = GitHubKeys()
    results: dict[str, list[float]] = {}
    try:
        with temp_dir("keyswap-leak-bench-") as tmp:
            url = args.db or f"sqlite:///{tmp / 'bench.db'}"
            store = Store(url)
            admin = ApiKeys(store, ServerSecret(SECRET), cache_size=0)
            consumer = f"bench{int(time.time() * 1000)}"
            store.create_consumer(consumer)
            port = free_port()
            gateway = Server(
                "gateway",
                [
                    str(Path(PYTHON).with_name("keyswap")),
                    "gateway",
                    "--db",
                    url,
                    "--upstream",
                    "http://127.0.0.1:9",
                    "--port",
                    str(port),
                    "--log-level",
                    "error",
                    "--no-webhooks",
                    "--secret-scanning",
                    "github",
                    "--secret-scanning-keys-url",
                    github.url,
                ],
                log_dir=tmp,
                env={"KEYSWAP_SECRET": SECRET},
            )
            endpoint = f"http://127.0.0.1:{port}/__keyswap/secret-scanning/github"
            gateway.start(f"http://127.0.0.1:{port}/__keyswap/health")
            try:
                with httpx.Client(timeout=30) as client:
                    for round_number in range(rounds):
                        for live in (0, 10, 100, 1000):
                            keys = [admin.create(consumer)[1] for _ in range(live)]
                            tokens = keys + [generate_key() for _ in range(BATCH - live)]
                            body = _report(tokens, f"https://example.com/r{round_number}/{live}")
                            headers = github.headers(body)
                            for name, repeat in ((f"{live} live", 1), (f"{live} live, replay", 2)):
                                if live == 0 and repeat == 2:
                                    continue
                                started = time.perf_counter()
                                response = client.post(endpoint, content=body, headers=headers)
                                elapsed = time.perf_counter() - started
                                if response.status_code != 200:
                                    raise RuntimeError(f"{response.status_code}: {response.text}")
                                labels = [item["label"] for item in response.json()]
                                if labels.count("true_positive") != live:
                                    raise RuntimeError("wrong labels")
                                results.setdefault(name, []).append(elapsed)
            finally:
                gateway.stop()
                store.close()
    finally:
        github.stop()
    rows = [[name, fmt(median(times) * 1000, 0)] for name, times in results.items()]
    print(markdown_table(["1,000 tokens", "answer ms (median)"], rows))
    worst = max(median(times) for times in results.values())
    return 0 if print_targets([Target("slowest batch", worst, 2.0, above=False, unit=" s")]) else 1


if __name__ == "__main__":
    sys.exit(main())
