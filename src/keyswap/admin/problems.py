"""RFC 9457 problem details: every error the admin API answers is ``application/problem+json``.

``type`` is a stable URN per cause (``urn:keyswap:problem:not-found``), ``title`` a fixed human
summary of the cause, ``detail`` what went wrong this time, ``errors`` the field errors of a
validation failure. Nothing here ever repeats a credential.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field
from starlette.responses import Response

from keyswap.errors import InsufficientScope, KeyswapError

__all__ = [
    "PROBLEM_JSON",
    "ApiProblem",
    "FieldError",
    "Problem",
    "from_keyswap_error",
    "problem_response",
]

PROBLEM_JSON = "application/problem+json"
_PREFIX = "urn:keyswap:problem:"

#: status -> (type suffix, title) for the causes without a more specific one.
_BY_STATUS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Missing scope"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    412: ("precondition-failed", "Precondition failed"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "Validation failed"),
    428: ("precondition-required", "Precondition required"),
    429: ("too-many-requests", "Too many requests"),
    500: ("internal-error", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


class FieldError(BaseModel):
    """One invalid field: where (``loc``, e.g. ``["body", "name"]``) and why."""

    loc: list[str | int]
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(description="A stable URN naming the cause.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = Field(default=None, description="The request id.")
    errors: list[FieldError] | None = Field(
        default=None, description="Field errors (validation failures)."
    )
    scope: str | None = Field(default=None, description="The missing scope (403).")


class ApiProblem(Exception):
    """Raised by a route to answer a problem; turned into a response by the app's handler."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        kind: str | None = None,
        title: str | None = None,
        errors: list[FieldError] | None = None,
        scope: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or str(status))
        default_kind, default_title = _BY_STATUS.get(status, ("error", "Error"))
        self.status = status
        self.problem = Problem(
            type=_PREFIX + (kind or default_kind),
            title=title or default_title,
            status=status,
            detail=detail,
            errors=errors,
            scope=scope,
        )
        self.headers = headers or {}


def from_keyswap_error(error: KeyswapError) -> ApiProblem:
    """The problem for a service-layer error (``InvalidInput`` 400, ``NotFound`` 404, ``AlreadyExists``
    and ``Conflict`` 409, ``InsufficientScope`` 403, an auth error 401, ``StoreUnavailable`` 503)."""
    status = error.status if 400 <= error.status < 600 else 500
    kind = error.code.replace("_", "-")
    if isinstance(error, InsufficientScope):
        return ApiProblem(403, error.reason, kind="insufficient-scope", scope=error.scope)
    if status == 401:
        return ApiProblem(401, error.reason, headers={"WWW-Authenticate": "Bearer"})
    if status >= 500:
        # A start-up or configuration error met at request time: the message may name internals.
        return ApiProblem(status, "the request could not be completed", kind=kind)
    return ApiProblem(status, error.reason, kind=kind)


def problem_response(problem: ApiProblem, request_id: str | None = None) -> Response:
    """The ``application/problem+json`` response for ``problem``."""
    body = problem.problem.model_copy(update={"instance": request_id})
    content = json.dumps(body.model_dump(exclude_none=True), ensure_ascii=False)
    return Response(
        content, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers
    )


def problem_schema_ref() -> dict[str, Any]:
    """The OpenAPI content entry of a problem response."""
    return {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
