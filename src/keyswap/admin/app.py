"""Build the admin API (a FastAPI app) over an :class:`~keyswap.admin.state.AdminState`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response

from keyswap import __version__
from keyswap.admin import (
    routes_audit,
    routes_consumers,
    routes_health,
    routes_keys,
    routes_members,
    routes_signing,
    routes_usage,
    routes_webhooks,
)
from keyswap.admin.docs_page import CONTENT_SECURITY_POLICY, asset, render_docs
from keyswap.admin.metrics import AdminMetrics
from keyswap.admin.middleware import MAX_BODY, AdminMiddleware, request_id_of
from keyswap.admin.problems import (
    PROBLEM_JSON,
    ApiProblem,
    FieldError,
    Problem,
    from_keyswap_error,
    problem_response,
)
from keyswap.admin.state import AdminState
from keyswap.errors import InvalidInput, KeyswapError
from keyswap.manage.scopes import ADMIN, MANAGEMENT_SCOPES

__all__ = ["build_admin_app"]

logger = logging.getLogger("keyswap.admin")

_DESCRIPTION = (
    """The keyswap management API: consumers (and their webhooks), API keys, signing keys, the audit
log and metered usage.

Authenticate with an admin token (`keyswap admin-tokens create NAME --scopes ...`) as
`Authorization: Bearer ksadm_...`. Scopes: """
    + ", ".join(f"`{s}`" for s in (*MANAGEMENT_SCOPES, ADMIN))
    + """ (`admin` grants all).

Every error is `application/problem+json` (RFC 9457). Reads carry an `ETag`; updates and deletes
take `If-Match` (412 when stale). Every POST takes `Idempotency-Key`. Every response carries
`X-Request-Id`."""
)


def known_query_only(request: Request) -> None:
    """Refuse query parameters the route does not have (a typo such as ``?prefx=`` must not quietly
    list everything).

    Raises:
        ApiProblem: 422 naming them.
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    known = {param.alias for param in getattr(dependant, "query_params", ())}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        errors = [
            FieldError(loc=["query", name[:100]], message="unknown parameter")
            for name in unknown[:20]
        ]
        raise ApiProblem(422, "the request has unknown query parameters", errors=errors)


def _respond(request: Request, problem: ApiProblem) -> Response:
    return problem_response(problem, request_id_of(request.scope))


def _field_errors(errors: list[Any]) -> list[FieldError]:
    result = []
    for error in errors[:50]:
        loc = [part if isinstance(part, int) else str(part)[:100] for part in error.get("loc", ())]
        result.append(FieldError(loc=loc, message=str(error.get("msg", "invalid"))[:300]))
    return result


def _install_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return _respond(request, exc)

    async def on_keyswap(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, KeyswapError)
        if type(exc) is InvalidInput:  # a well-formed request with a value the rules refuse
            return _respond(request, ApiProblem(422, exc.reason))
        return _respond(request, from_keyswap_error(exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return _respond(
                request,
                ApiProblem(400, "the request body is not valid JSON", kind="malformed-json"),
            )
        return _respond(
            request,
            ApiProblem(422, "the request has invalid values", errors=_field_errors(errors)),
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        return _respond(request, ApiProblem(exc.status_code, str(exc.detail), headers=headers))

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        logger.warning("database unavailable: %s", type(exc).__name__)
        return _respond(
            request, ApiProblem(503, "the database is unavailable", headers={"Retry-After": "1"})
        )

    async def on_data(request: Request, exc: Exception) -> Response:
        return _respond(request, ApiProblem(422, "a value the database cannot store"))

    async def on_integrity(request: Request, exc: Exception) -> Response:
        return _respond(request, ApiProblem(409, "conflicts with a concurrent change; retry"))

    app.add_exception_handler(ApiProblem, on_problem)
    app.add_exception_handler(KeyswapError, on_keyswap)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(OperationalError, on_unavailable)
    app.add_exception_handler(InterfaceError, on_unavailable)
    app.add_exception_handler(DataError, on_data)
    app.add_exception_handler(IntegrityError, on_integrity)


def _schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI 3.1 document: FastAPI's, with the problem schema, the security scheme, and every
    validation response as a problem."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title="keyswap admin API",
        version=__version__,
        openapi_version="3.1.0",
        description=_DESCRIPTION,
        routes=app.routes,
    )
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    schemas.setdefault("FieldError", FieldError.model_json_schema())
    components["securitySchemes"] = {
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "An admin token, ksadm_... (keyswap admin-tokens create).",
        }
    }
    problem_content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            responses = op.get("responses", {})
            if "422" in responses:
                responses["422"]["content"] = problem_content
                responses["422"]["description"] = "Invalid values (field errors in `errors`)."
            for status, response in responses.items():
                response["headers"] = _headers(path, method, status)
    app.openapi_schema = spec
    return spec


def _header(description: str, *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def _headers(path: str, method: str, status: str) -> dict[str, Any]:
    """The response headers an operation's response documents."""
    headers = {"X-Request-Id": _header("The request id (the caller's when well-formed).")}
    if status == "200" and method == "get" and path.startswith("/v1/"):
        headers["ETag"] = _header("A strong validator of the representation (for If-Match).")
    if status == "201":
        headers["Location"] = _header("The new resource.")
    if status == "401":
        headers["WWW-Authenticate"] = _header("Bearer.")
    if status == "429":
        headers["Retry-After"] = _header("Seconds until this address may try again.")
    if status == "503":
        headers["Retry-After"] = _header("Seconds to wait.", required=False)
    return headers


#: Headers of /docs and its files: the page may load and call this server only.
_DOCS_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def build_admin_app(
    state: AdminState, *, max_body: int = MAX_BODY, metrics: AdminMetrics | None = None
) -> FastAPI:
    """The admin API over ``state`` (wrapped in :class:`~keyswap.admin.middleware.AdminMiddleware`).

    ``metrics``: counted, and served at ``GET /metrics`` (:mod:`keyswap.admin.metrics`; ``keyswap
    admin`` always passes one).
    """
    app = FastAPI(
        title="keyswap admin API",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(known_query_only)],
    )
    app.state.admin = state
    _install_handlers(app)
    for module in (
        routes_health,
        routes_consumers,
        routes_members,
        routes_webhooks,
        routes_keys,
        routes_signing,
        routes_audit,
        routes_usage,
    ):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        return _schema(app)

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_json() -> Response:
        return JSONResponse(_schema(app))

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return HTMLResponse(render_docs(_schema(app)), headers=_DOCS_HEADERS)

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str, request: Request) -> Response:
        found = asset(name)
        if found is None:
            raise ApiProblem(404, "no such file")
        headers = {**_DOCS_HEADERS, "ETag": found.etag, "Cache-Control": "public, max-age=3600"}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    app.add_middleware(AdminMiddleware, max_body=max_body, metrics=metrics)
    return app
