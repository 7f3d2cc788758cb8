"""Consumer webhooks: the cost of ``enqueue`` and how fast one dispatcher delivers.

- **enqueue**: ``keyswap.manage.webhooks.enqueue`` ``--events`` times (default 500) for a consumer with a
  webhook, each with an idempotency key (one transaction each): p50 and p99;
- **deliver**: one :class:`~keyswap.webhooks.dispatch.Dispatcher` (default settings: batches of 20, 8
  deliveries at once) drains those events to a real receiver on 127.0.0.1 that answers 204: events
  per second, wall clock.

Usage: ``python bench/webhooks_bench.py [--db URL] [--events N]`` (default: a temporary SQLite file;
give a PostgreSQL URL whose default schema the script may create tables in). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from keyswap.gateway.secret import ServerSecret
from keyswap.manage.actor import Actor
from keyswap.manage.consumers import NewConsumer, create_consumer, delete_consumer
from keyswap.manage.context import Context
from keyswap.manage.webhooks import enqueue, set_webhook
from keyswap.store import Store
from keyswap.webhooks.dispatch import Dispatcher

SECRET = "bench-server-secret-0123456789-abcdefghijkl"


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()


def _run(url: str, events: int) -> list[str]:
    secret = ServerSecret(SECRET)
    store = Store(url, schema="upgrade")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    name = f"bench-hooks-{int(time.time())}"
    ctx = Context(store, Actor.cli("bench"))
    try:
        consumer = create_consumer(ctx, NewConsumer(name))
        port = server.server_address[1]
        set_webhook(ctx, secret, name, f"http://127.0.0.1:{port}/", allow_http_loopback=True)
        timings = []
        for i in range(events):
            started = time.perf_counter()
            enqueue(
                store,
                consumer_id=str(consumer.id),
                event_type="quota.threshold",
                data={"percent": 80, "n": i},
                idempotency_key=f"bench:{i}",
            )
            timings.append(time.perf_counter() - started)
        dispatcher = Dispatcher(store, secret)
        started = time.perf_counter()
        delivered = dispatcher.drain(rounds=10_000)
        elapsed = time.perf_counter() - started
        dispatcher.close()
        timings.sort()
        p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
        return [
            store.url.split(":", 1)[0],
            str(events),
            f"{statistics.median(timings) * 1000:.2f}",
            f"{p99 * 1000:.2f}",
            f"{delivered / elapsed:.0f}",
        ]
    finally:
        delete_consumer(ctx, name)
        server.shutdown()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db", default=None, help="database URL (default: a temporary SQLite file)"
    )
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        row = _run(url, args.events)
    print("| database | events | enqueue p50 ms | enqueue p99 ms | delivered / s |")
    print("|---|---|---|---|---|")
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
