"""A real upstream for gateway tests: records exactly what it receives, serves what tests ask for.

Routes (any method):

- ``/big/<n>``: ``n`` deterministic bytes (:func:`pattern`), streamed in 64 KiB chunks with a
  Content-Length (``?chunked`` leaves it out, so the response is chunked);
- ``/stall``: waits (up to 10 s, or until :meth:`RecordingUpstream.release`) before answering;
- ``/hop``: answers with hop-by-hop headers the gateway must drop and one it must keep;
- ``/status/<code>``: answers that status with an empty body (3xx with ``Location: /elsewhere``);
- ``/gzip``: a gzip-compressed body with ``Content-Encoding: gzip`` (:data:`GZIP_BODY`);
- anything else: ``200`` JSON ``{"method", "path", "query", "body_sha256", "body_len"}``.

Every request is recorded (:class:`Received`) after its body has been read in full.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.support.asgi_server import ServerThread

_CHUNK = 64 * 1024
GZIP_BODY = gzip.compress(b"compressed " * 200, mtime=0)


def pattern(n: int) -> bytes:
    """``n`` bytes of a fixed, non-repeating-looking pattern."""
    block = hashlib.sha256(b"keyswap").digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


@dataclass(frozen=True)
class Received:
    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body_sha256: str
    body_len: int

    def header(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == key]

    def raw(self) -> bytes:
        """Everything that arrived, as one byte string (for "the key appears nowhere" checks)."""
        parts = [self.method.encode(), self.raw_path, self.query]
        parts += [k + b": " + v for k, v in self.headers]
        return b"\n".join(parts)


class RecordingUpstream:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.server = ServerThread(self, lifespan="off")
        self.url = self.server.url
        self.port = self.server.port

    def start(self) -> RecordingUpstream:
        self.server.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.stop()

    def release(self) -> None:
        self._release.set()

    @property
    def last(self) -> Received:
        with self._lock:
            return self.received[-1]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        digest = hashlib.sha256()
        size = 0
        keep_body = scope["path"].startswith("/keep")
        kept = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if keep_body:
                kept += chunk
            if not message.get("more_body", False):
                break
        record = Received(
            scope["method"],
            scope["raw_path"],
            scope["query_string"],
            list(scope["headers"]),
            digest.hexdigest(),
            size,
        )
        with self._lock:
            self.received.append(record)
            self.bodies.append(bytes(kept))
        path: str = scope["path"]
        if path.startswith("/big/"):
            await self._big(int(path[5:]), chunked=b"chunked" in scope["query_string"], send=send)
        elif path == "/stall":
            await asyncio.to_thread(self._release.wait, 10)
            await self._json(send, {"stalled": True})
        elif path == "/hop":
            body = b"hop"
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-length", b"3"),
                        (b"keep-alive", b"timeout=5"),
                        (b"connection", b"x-upstream-private"),
                        (b"x-upstream-private", b"secret-ish"),
                        (b"proxy-authenticate", b"Basic"),
                        (b"x-kept", b"yes"),
                        (b"set-cookie", b"a=1"),
                        (b"set-cookie", b"b=2"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif path.startswith("/status/"):
            status = int(path[8:])
            headers = [(b"content-length", b"0")]
            if 300 <= status < 400:
                headers.append((b"location", b"/elsewhere"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/gzip":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"content-encoding", b"gzip"),
                        (b"content-length", str(len(GZIP_BODY)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": GZIP_BODY})
        else:
            await self._json(
                send,
                {
                    "method": record.method,
                    "path": record.raw_path.decode("latin-1"),
                    "query": record.query.decode("latin-1"),
                    "body_sha256": record.body_sha256,
                    "body_len": record.body_len,
                },
            )

    @staticmethod
    async def _json(send: Any, document: Any) -> None:
        body = json.dumps(document).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _big(n: int, *, chunked: bool, send: Any) -> None:
        headers = [(b"content-type", b"application/octet-stream")]
        if not chunked:
            headers.append((b"content-length", str(n).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        data = pattern(n)
        for start in range(0, n, _CHUNK):
            await send(
                {
                    "type": "http.response.body",
                    "body": data[start : start + _CHUNK],
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})


@contextmanager
def recording_upstream() -> Iterator[RecordingUpstream]:
    upstream = RecordingUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()
