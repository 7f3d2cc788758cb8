"""API keys: ``/v1/consumers/{name}/keys`` (create, list) and ``/v1/keys`` (list, get, revoke, roll).

A key's secret is in the response that created it and nowhere else. A replay of a creating request
(same ``Idempotency-Key``, same body) answers the same status and record **without** ``key``: the
secret is never stored, so it cannot be shown twice. Revoke the replayed key if its secret was lost.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from keyswap.admin.etags import check_if_match, etag_of
from keyswap.admin.idempotency import Remembered
from keyswap.admin.responses import COMMON, idempotent, json_response, problems
from keyswap.admin.routes_consumers import IdempotencyKey, IfMatch, known_name
from keyswap.admin.schemas import KeyCreated, KeyCreateIn, KeyOut, KeyPageOut, RolledOut, RollIn
from keyswap.admin.state import Authorized, require
from keyswap.errors import NotFound
from keyswap.manage import keys as manage

__all__ = ["router"]

router = APIRouter(tags=["keys"])
_ID = re.compile(r"key_[A-Za-z0-9]{1,60}")
_READ = [{"adminToken": ["keys:read"]}]
_WRITE = [{"adminToken": ["keys:write"]}]
Cursor = Annotated[
    str | None, Query(pattern=r"^[A-Za-z0-9_]{1,64}$", description="next_cursor of the last page.")
]
Limit = Annotated[int, Query(ge=1, le=1000)]


def known_id(key_id: str) -> str:
    """A key id from a path (anything not shaped like one is simply unknown: 404)."""
    if _ID.fullmatch(key_id) is None:
        raise NotFound("unknown key id")
    return key_id


def _without_secret(response: Response) -> Remembered:
    """What a replay of a key-creating request answers: the response without the secret."""
    body = json.loads(bytes(response.body))
    if "key" in body:
        body["key"] = None
    if isinstance(body.get("new"), dict):
        body["new"]["key"] = None
    return Remembered(response.status_code, json.dumps(body).encode(), {})


@router.post(
    "/v1/consumers/{name}/keys",
    status_code=201,
    response_model=KeyCreated,
    responses=problems(*COMMON, 404, 413, 415),
    openapi_extra={"security": _WRITE},
    summary="Create an API key",
)
def create_key(
    request: Request,
    name: str,
    auth: Annotated[Authorized, Depends(require("keys:write"))],
    body: KeyCreateIn | None = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a key for the consumer; ``key`` (the secret) is in this response only. A replay with
    the same Idempotency-Key answers the same record with ``key: null``."""
    known_name(name)
    given = body or KeyCreateIn()

    def act() -> Response:
        new = manage.NewKey(
            name,
            expires_in=None if given.expires_in is None else float(given.expires_in),
            scopes=None if given.scopes is None else tuple(given.scopes),
        )
        ctx = auth.context()
        created = manage.create_key(ctx, auth.state.secret, new, prefix=auth.state.key_prefix)
        view = KeyOut.of(created.record, ctx.now())
        out = KeyCreated(**view.model_dump(), key=created.key)
        return json_response(out, 201, etag=False, headers={"Location": f"/v1/keys/{view.id}"})

    return idempotent(request, auth, given, act, remember=_without_secret)


@router.get(
    "/v1/consumers/{name}/keys",
    response_model=KeyPageOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _READ},
    summary="List a consumer's keys",
)
def list_consumer_keys(
    name: str,
    auth: Annotated[Authorized, Depends(require("keys:read"))],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Response:
    """The consumer's keys by id, a page at a time (never a secret)."""
    ctx = auth.context()
    page = manage.page_keys(ctx, known_name(name), after=cursor, limit=limit)
    now = ctx.now()
    return json_response(
        KeyPageOut(items=[KeyOut.of(k, now) for k in page.keys], next_cursor=page.next_after)
    )


@router.get(
    "/v1/keys",
    response_model=KeyPageOut,
    responses=problems(*COMMON),
    openapi_extra={"security": _READ},
    summary="List every key",
)
def list_keys(
    auth: Annotated[Authorized, Depends(require("keys:read"))],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Response:
    """Every key by id, a page at a time (never a secret)."""
    ctx = auth.context()
    page = manage.page_keys(ctx, after=cursor, limit=limit)
    now = ctx.now()
    return json_response(
        KeyPageOut(items=[KeyOut.of(k, now) for k in page.keys], next_cursor=page.next_after)
    )


@router.get(
    "/v1/keys/{key_id}",
    response_model=KeyOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _READ},
    summary="Get a key",
)
def get_key(key_id: str, auth: Annotated[Authorized, Depends(require("keys:read"))]) -> Response:
    """One key's record, with its ETag."""
    ctx = auth.context()
    return json_response(KeyOut.of(manage.get_key(ctx, known_id(key_id)), ctx.now()))


@router.post(
    "/v1/keys/{key_id}/revoke",
    response_model=KeyOut,
    responses=problems(*COMMON, 404, 412, 413, 415),
    openapi_extra={"security": _WRITE},
    summary="Revoke a key",
)
def revoke_key(
    request: Request,
    key_id: str,
    auth: Annotated[Authorized, Depends(require("keys:write"))],
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Revoke a key at once (revoking twice keeps the first time; running gateways refuse it
    within a second)."""
    known_id(key_id)

    def act() -> Response:
        ctx = auth.context()
        with auth.state.write_lock:
            check_if_match(if_match, etag_of(KeyOut.of(manage.get_key(ctx, key_id), ctx.now())))
            record = manage.revoke_key(ctx, key_id)
        return json_response(KeyOut.of(record, ctx.now()))

    return idempotent(request, auth, None, act)


@router.post(
    "/v1/keys/{key_id}/roll",
    status_code=201,
    response_model=RolledOut,
    responses=problems(*COMMON, 404, 412, 413, 415),
    openapi_extra={"security": _WRITE},
    summary="Roll a key",
)
def roll_key(
    request: Request,
    key_id: str,
    auth: Annotated[Authorized, Depends(require("keys:write"))],
    body: RollIn | None = None,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Replace a key; the old one keeps working ``grace`` seconds (default 24 h). The new key's
    secret is in this response only (a replay answers ``new.key: null``). 422 if the key is
    revoked, expired or already rolled."""
    known_id(key_id)
    given = body or RollIn()

    def act() -> Response:
        ctx = auth.context()
        with auth.state.write_lock:
            check_if_match(if_match, etag_of(KeyOut.of(manage.get_key(ctx, key_id), ctx.now())))
            rolled = manage.roll_key(
                ctx,
                auth.state.secret,
                key_id,
                grace=None if given.grace is None else float(given.grace),
                prefix=auth.state.key_prefix,
            )
        now = ctx.now()
        new = KeyCreated(**KeyOut.of(rolled.new.record, now).model_dump(), key=rolled.new.key)
        out = RolledOut(new=new, old=KeyOut.of(rolled.old, now))
        return json_response(out, 201, etag=False, headers={"Location": f"/v1/keys/{new.id}"})

    return idempotent(request, auth, given, act, remember=_without_secret)
