"""``/v1/consumers``: list (cursor, prefix), create, get, update, delete; quota status."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response

from keyswap.admin.etags import check_if_match, etag_of
from keyswap.admin.responses import COMMON, idempotent, json_response, problems
from keyswap.admin.schemas import (
    ConsumerIn,
    ConsumerOut,
    ConsumerPageOut,
    ConsumerPatch,
    QuotaStatusListOut,
    QuotaStatusOut,
    iso,
)
from keyswap.admin.state import Authorized, require
from keyswap.errors import NotFound
from keyswap.manage import consumers as manage
from keyswap.manage import quotas as manage_quotas

__all__ = ["router"]

router = APIRouter(prefix="/v1/consumers", tags=["consumers"])
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_READ = [{"adminToken": ["consumers:read"]}]
_WRITE = [{"adminToken": ["consumers:write"]}]
IfMatch = Annotated[str | None, Header(alias="If-Match", description="An ETag from a read.")]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", description="Makes a retried POST safe.")
]


def known_name(name: str) -> str:
    """A consumer name from a path (anything not shaped like one is simply unknown: 404)."""
    if _NAME.fullmatch(name) is None:
        raise NotFound("unknown consumer")
    return name


@router.get(
    "",
    response_model=ConsumerPageOut,
    responses=problems(*COMMON),
    openapi_extra={"security": _READ},
    summary="List consumers",
)
def list_consumers(
    auth: Annotated[Authorized, Depends(require("consumers:read"))],
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="next_cursor of the last page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    prefix: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Name prefix.")
    ] = None,
) -> Response:
    """Consumers by name, a page at a time."""
    page = manage.page_consumers(auth.context(), after=cursor, prefix=prefix, limit=limit)
    out = ConsumerPageOut(
        items=[ConsumerOut.of(c) for c in page.consumers], next_cursor=page.next_after
    )
    return json_response(out)


@router.post(
    "",
    status_code=201,
    response_model=ConsumerOut,
    responses=problems(*COMMON, 409, 413, 415),
    openapi_extra={"security": _WRITE},
    summary="Create a consumer",
)
def create_consumer(
    request: Request,
    body: ConsumerIn,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a consumer (409 if the name is taken)."""

    def act() -> Response:
        new = manage.NewConsumer(body.name, body.metadata, tuple(body.scopes))
        consumer = manage.create_consumer(auth.context(), new)
        return json_response(
            ConsumerOut.of(consumer), 201, headers={"Location": f"/v1/consumers/{consumer.name}"}
        )

    return idempotent(request, auth, body, act)


@router.get(
    "/{name}",
    response_model=ConsumerOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _READ},
    summary="Get a consumer",
)
def get_consumer(
    name: str, auth: Annotated[Authorized, Depends(require("consumers:read"))]
) -> Response:
    """One consumer, with its ETag."""
    return json_response(ConsumerOut.of(manage.get_consumer(auth.context(), known_name(name))))


@router.get(
    "/{name}/quota",
    response_model=QuotaStatusListOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _READ},
    summary="Get a consumer's quota and credits status",
)
def get_quota_status(
    name: str, auth: Annotated[Authorized, Depends(require("consumers:read"))]
) -> Response:
    """Limit, used and remaining per counter of the consumer's quota and credits, as recorded by
    the gateways (up to 2 s behind)."""
    found = manage_quotas.quota_status(auth.context(), known_name(name))
    items = [
        QuotaStatusOut(
            kind=s.kind,
            period=s.period,
            limit=s.limit,
            used=s.used,
            remaining=s.remaining,
            refills_at=iso(s.refills_at),
        )
        for s in found
    ]
    return json_response(QuotaStatusListOut(items=items))


@router.patch(
    "/{name}",
    response_model=ConsumerOut,
    responses=problems(*COMMON, 404, 412, 413, 415),
    openapi_extra={"security": _WRITE},
    summary="Update a consumer",
)
def update_consumer(
    name: str,
    body: ConsumerPatch,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
    if_match: IfMatch = None,
) -> Response:
    """Change the fields given (metadata, scopes, rate_limit, max_connections, leak_policy, quota,
    credits, credits_refill); ``null`` for rate_limit, max_connections or leak_policy means the
    gateway's default, for quota or credits none, for credits_refill never. Giving ``credits`` starts
    a new balance."""
    known_name(name)
    given = body.model_fields_set
    update = manage.ConsumerUpdate(
        metadata=body.metadata
        if "metadata" in given and body.metadata is not None
        else manage.KEEP,
        scopes=tuple(body.scopes) if "scopes" in given and body.scopes is not None else manage.KEEP,
        rate_limit=body.rate_limit if "rate_limit" in given else manage.KEEP,
        max_connections=body.max_connections if "max_connections" in given else manage.KEEP,
        leak_policy=body.leak_policy if "leak_policy" in given else manage.KEEP,
        quota=body.quota if "quota" in given else manage.KEEP,
        credits=body.credits if "credits" in given else manage.KEEP,
        credits_refill=body.credits_refill if "credits_refill" in given else manage.KEEP,
    )
    ctx = auth.context()
    with auth.state.write_lock:
        current = ConsumerOut.of(manage.get_consumer(ctx, name))
        check_if_match(if_match, etag_of(current))
        consumer = manage.update_consumer(ctx, name, update)
    return json_response(ConsumerOut.of(consumer))


@router.delete(
    "/{name}",
    status_code=204,
    responses=problems(*COMMON, 404, 412),
    openapi_extra={"security": _WRITE},
    summary="Delete a consumer and its keys",
)
def delete_consumer(
    name: str,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
    if_match: IfMatch = None,
) -> Response:
    """Delete a consumer and all its API keys; they stop working at once."""
    known_name(name)
    ctx = auth.context()
    with auth.state.write_lock:
        current = ConsumerOut.of(manage.get_consumer(ctx, name))
        check_if_match(if_match, etag_of(current))
        manage.delete_consumer(ctx, name)
    return json_response(None, 204)
