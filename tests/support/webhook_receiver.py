"""A real webhook receiver on 127.0.0.1: records every request, answers what the test says, and
checks each signature with the ``standardwebhooks`` library (``Webhook.verify``) and by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    """One request as received, and whether its signature verified."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    hand_verified: bool
    parsed: Any = None


def hand_verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check written out (HMAC-SHA256 of ``id.timestamp.body``)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
        for part in headers["webhook-signature"].split(" ")
    )


@dataclass
class Script:
    """What the next answers are: statuses in order (the last one repeats), a body, a delay."""

    statuses: list[int] = field(default_factory=lambda: [204])
    body: bytes = b""
    delay: float = 0.0
    location: str | None = None


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class WebhookReceiver:
    """Threaded HTTP server; set :attr:`secret` to verify signatures."""

    def __init__(self) -> None:
        self.secret: str | None = None
        self.script = Script()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = hand = False
                parsed: Any = None
                if receiver.secret is not None:
                    try:
                        parsed = Webhook(receiver.secret).verify(body, headers)
                        verified = True
                    except WebhookVerificationError:
                        verified = False
                    try:
                        hand = hand_verify(receiver.secret, headers, body)
                    except (KeyError, ValueError):
                        hand = False
                with receiver._lock:
                    receiver.received.append(
                        Received(self.path, headers, body, verified, hand, parsed)
                    )
                    index = len(receiver.received) - 1
                    statuses = receiver.script.statuses
                    status = statuses[min(index, len(statuses) - 1)]
                    answer = receiver.script.body
                    delay = receiver.script.delay
                    location = receiver.script.location
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                if location:
                    self.send_header("location", location)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = _Quiet(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
