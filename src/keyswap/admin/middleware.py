"""The admin API's outer layer (pure ASGI): request ids, body limits, content types, the last resort.

- ``X-Request-Id``: the caller's when well-formed (1-128 of ``[A-Za-z0-9._:-]``), else a new one; in
  every response, in the request log line and (through the route) in audit events;
- request bodies: at most ``max_body`` bytes (413), JSON only when there is one (415), no NUL
  characters in a JSON body or the query (400: neither database stores them);
- any exception a route lets through is logged with the request id and answered with a problem 500
  (a bug: the tests look for none);
- ``GET /metrics``: Prometheus metrics of the admin API (:mod:`keyswap.admin.metrics`), no token;
- one log line per request (``keyswap.admin``), its fields also on the record for ``--log-format
  json``: ``method``, ``path``, ``status``, ``latency_ms``, ``request_id``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyswap.admin.metrics import AdminMetrics, render
from keyswap.admin.problems import ApiProblem, problem_response

__all__ = ["MAX_BODY", "AdminMiddleware", "request_id_of"]

logger = logging.getLogger("keyswap.admin")

#: Largest request body accepted (bytes).
MAX_BODY = 64 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def request_id_of(scope: Scope) -> str:
    """The request id the middleware gave this request."""
    state: dict[str, Any] = scope.get("state") or {}
    return str(state.get("request_id", ""))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class AdminMiddleware:
    """Wraps the admin app (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, max_body: int = MAX_BODY, metrics: AdminMetrics | None = None
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_seen: list[int] = []
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_seen.append(int(message["status"]))
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            refusal, replay = await self._read_body(scope, receive)
            if self.metrics is not None and scope.get("path") == "/metrics" and refusal is None:
                await self._metrics(scope, send_with_id)
            elif refusal is not None:
                await problem_response(refusal, request_id)(scope, receive, send_with_id)
            else:
                await self.app(scope, replay, send_with_id)
        except Exception:
            logger.exception(
                "admin request failed: %s %s (request id %s)",
                scope.get("method"),
                scope.get("path"),
                request_id,
            )
            if not response_started:
                await problem_response(
                    ApiProblem(500, "an unexpected error occurred; it has been logged"), request_id
                )(scope, receive, send_with_id)
        elapsed = time.perf_counter() - started
        status = status_seen[0] if status_seen else None
        if self.metrics is not None and status is not None:
            self.metrics.observe(str(scope.get("method", "")), status, elapsed)
        logger.info(
            "%s %s %s %.1fms request_id=%s",
            scope.get("method"),
            scope.get("path"),
            "-" if status is None else status,
            elapsed * 1000,
            request_id,
            extra={
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "latency_ms": round(elapsed * 1000, 3),
                "request_id": request_id,
            },
        )

    async def _metrics(self, scope: Scope, send: Send) -> None:
        assert self.metrics is not None
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body, content_type = render(self.metrics, _header(scope, b"accept") or "")
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[ApiProblem | None, Receive]:
        """Read the whole body (bounded) and check it; returns a refusal or a receive that replays it."""
        query = scope.get("query_string", b"")
        if query and any(b < 0x20 or b == 0x7F for b in unquote_to_bytes(query)):
            return ApiProblem(400, "control characters are not allowed in the query"), receive
        method = scope.get("method", "GET")
        if method not in _BODY_METHODS:
            return None, receive
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body:
            return ApiProblem(
                413, f"the request body must be at most {self.max_body} bytes"
            ), receive
        chunks: list[bytes] = []
        size = 0
        disconnected = False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return (
                    ApiProblem(413, f"the request body must be at most {self.max_body} bytes"),
                    receive,
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            if not _is_json(_header(scope, b"content-type")):
                return ApiProblem(415, "send the request body as application/json"), receive
            if b"\\u0000" in body or b"\x00" in body:
                return ApiProblem(
                    400, "NUL characters are not allowed in the request body"
                ), receive
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent and not disconnected:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay
