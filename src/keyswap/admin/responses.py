"""Helpers routes share: JSON responses with ETags, the problem responses each route declares, and
running a POST under its ``Idempotency-Key``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response

from keyswap.admin.etags import etag_of
from keyswap.admin.idempotency import IdempotencyCache, Remembered, check_key
from keyswap.admin.problems import PROBLEM_JSON, ApiProblem
from keyswap.admin.state import Authorized

__all__ = ["COMMON", "idempotent", "json_response", "problems"]

_DESCRIPTIONS = {
    400: "Malformed request (JSON syntax, headers, query).",
    401: "No admin token, or an invalid, revoked or expired one.",
    403: "The admin token lacks the scope this needs (named in `scope`).",
    404: "No such resource.",
    409: "Conflicts with the current state.",
    412: "If-Match does not match the resource's current ETag.",
    413: "Request body too large.",
    415: "The request body is not application/json.",
    422: "Invalid values (field errors in `errors`).",
    429: "Too many failed authentication attempts from this address (see Retry-After).",
    500: "An unexpected error (a bug; logged with the request id).",
    503: "The database is unavailable.",
}
#: Statuses every authenticated route may answer.
COMMON = (400, 401, 403, 422, 429, 500, 503)


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: a problem+json response for each status."""
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in sorted(set(statuses))
    }


def json_response(
    model: BaseModel | None,
    status: int = 200,
    *,
    etag: bool = True,
    headers: dict[str, str] | None = None,
) -> Response:
    """``model`` as JSON (with its ETag), or an empty response for ``None``."""
    extra = dict(headers or {})
    if model is None:
        return Response(status_code=status, headers=extra)
    if etag:
        extra["ETag"] = etag_of(model)
    body = json.dumps(model.model_dump(mode="json"), ensure_ascii=False)
    return Response(body, status_code=status, media_type="application/json", headers=extra)


def idempotent(
    request: Request,
    auth: Authorized,
    body: BaseModel | None,
    act: Callable[[], Response],
    *,
    remember: Callable[[Response], Remembered] | None = None,
) -> Response:
    """Run ``act`` once per ``Idempotency-Key`` (see :mod:`keyswap.admin.idempotency`).

    ``remember``: what to keep of a successful response (default: all of it); a replay answers that
    with ``Idempotent-Replayed: true``.

    Raises:
        ApiProblem: 400 for a malformed key; 422 for a key reused with another body.
    """
    key = check_key(request.headers.get("idempotency-key"))
    if key is None:
        return act()
    cache: IdempotencyCache = auth.state.idempotency
    payload = b"" if body is None else body.model_dump_json().encode()
    fingerprint = cache.fingerprint(payload)
    slot = cache.slot((auth.caller.id, request.method, request.url.path, key), fingerprint)
    with slot.lock:
        if slot.response is not None:
            if slot.fingerprint != fingerprint:
                raise ApiProblem(
                    422,
                    "this Idempotency-Key was used with another request body",
                    kind="idempotency-key-reused",
                )
            kept = slot.response
            return Response(
                kept.body,
                status_code=kept.status,
                media_type="application/json",
                headers={**kept.headers, "Idempotent-Replayed": "true"},
            )
        slot.fingerprint = fingerprint
        response = act()
        if 200 <= response.status_code < 300:
            slot.response = (remember or _whole)(response)
        return response


def _whole(response: Response) -> Remembered:
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("etag", "location")}
    return Remembered(response.status_code, bytes(response.body), headers)
