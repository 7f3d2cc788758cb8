"""A consumer's webhook: ``/v1/consumers/{name}/webhook`` (get, put, delete, rotate the secret) and its
events and delivery attempts (list, redeliver). Scopes ``consumers:read`` / ``consumers:write``;
redelivering a sealed event (a rolled key's new API key), or moving the URL while one is pending,
needs ``keys:write`` too.

The signing secret is in the response that generated it and nowhere else: a replay of
``rotate-secret`` (same ``Idempotency-Key``) answers the same webhook with ``secret: null``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from keyswap.admin.auth import check_scope
from keyswap.admin.etags import check_if_match, etag_of
from keyswap.admin.idempotency import Remembered
from keyswap.admin.responses import COMMON, idempotent, json_response, problems
from keyswap.admin.routes_consumers import IdempotencyKey, IfMatch, known_name
from keyswap.admin.schemas_webhooks import (
    DeliveryOut,
    DeliveryPageOut,
    WebhookEventOut,
    WebhookEventPageOut,
    WebhookIn,
    WebhookOut,
    WebhookSecretOut,
)
from keyswap.admin.state import Authorized, require
from keyswap.errors import InvalidInput, NotFound
from keyswap.manage import webhooks as manage
from keyswap.manage.context import Context

__all__ = ["router"]

router = APIRouter(prefix="/v1/consumers/{name}/webhook", tags=["webhooks"])
_READ = [{"adminToken": ["consumers:read"]}]
_WRITE = [{"adminToken": ["consumers:write"]}]
_EVENT_ID = re.compile(r"msg_[0-9a-f]{32}")


def _without_secret(response: Response) -> Remembered:
    body = json.loads(bytes(response.body))
    body["secret"] = None
    return Remembered(response.status_code, json.dumps(body).encode(), {})


def _secret_out(created: manage.NewSecret) -> WebhookSecretOut:
    return WebhookSecretOut(**WebhookOut.of(created.webhook).model_dump(), secret=created.secret)


@router.get(
    "",
    response_model=WebhookOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _READ},
    summary="Get a consumer's webhook",
)
def get_webhook(
    name: str, auth: Annotated[Authorized, Depends(require("consumers:read"))]
) -> Response:
    """The consumer's webhook URL (never its secret), with its ETag; 404 if it has none."""
    return json_response(WebhookOut.of(manage.get_webhook(auth.context(), known_name(name))))


def _moves_a_sealed_event(ctx: Context, name: str, url: str) -> bool:
    """True if the consumer's webhook exists with another URL and a sealed event is pending."""
    try:
        current = manage.get_webhook(ctx, name)
    except NotFound:
        return False
    if current.url == url:
        return False
    pending = manage.list_webhook_events(ctx, name, state="pending", limit=manage.MAX_PAGE)
    return any("sealed" in event.payload for event in pending)


_CREATED: dict[int | str, dict[str, Any]] = {
    201: {
        "model": WebhookSecretOut,
        "description": "The webhook was created: `secret` holds its new signing secret (shown once).",
    }
}


@router.put(
    "",
    response_model=WebhookSecretOut,
    responses={**_CREATED, **problems(*COMMON, 404, 412, 413, 415)},
    openapi_extra={"security": _WRITE},
    summary="Set a consumer's webhook",
)
def put_webhook(
    name: str,
    body: WebhookIn,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
    if_match: IfMatch = None,
) -> Response:
    """Set the consumer's webhook URL. The first time (201) a signing secret is generated and
    returned in ``secret``, once; changing the URL later (200) keeps the secret (``secret: null``).
    A URL that is not an https URL of a public host is refused (422). Moving the URL while a
    sealed event (``key.rolled``: a new API key) waits to be delivered needs ``keys:write`` too."""
    known_name(name)
    if body.allow_http_loopback and not auth.state.webhooks_allow_loopback:
        raise InvalidInput(
            "allow_http_loopback is refused: this keyswap admin was not started with "
            "--webhooks-allow-loopback (local development only)"
        )
    ctx = auth.context()
    with auth.state.write_lock:
        if if_match is not None:
            current = WebhookOut.of(manage.get_webhook(ctx, name))
            check_if_match(if_match, etag_of(current))
        if _moves_a_sealed_event(ctx, name, body.url):
            check_scope(auth.caller, "keys:write")
        created = manage.set_webhook(
            ctx, auth.state.secret, name, body.url, allow_http_loopback=body.allow_http_loopback
        )
    if created.secret is not None:
        return json_response(
            _secret_out(created),
            201,
            etag=False,
            headers={"Location": f"/v1/consumers/{name}/webhook"},
        )
    return json_response(_secret_out(created), etag=False)


@router.delete(
    "",
    status_code=204,
    responses=problems(*COMMON, 404, 412),
    openapi_extra={"security": _WRITE},
    summary="Remove a consumer's webhook",
)
def delete_webhook(
    name: str,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
    if_match: IfMatch = None,
) -> Response:
    """Remove the consumer's webhook; its undelivered events fail."""
    known_name(name)
    ctx = auth.context()
    with auth.state.write_lock:
        current = WebhookOut.of(manage.get_webhook(ctx, name))
        check_if_match(if_match, etag_of(current))
        manage.clear_webhook(ctx, name)
    return json_response(None, 204)


@router.post(
    "/rotate-secret",
    response_model=WebhookSecretOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _WRITE},
    summary="Rotate a webhook's signing secret",
)
def rotate_secret(
    request: Request,
    name: str,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A new signing secret, in ``secret`` (this response only); the old one stops at once."""
    known_name(name)

    def act() -> Response:
        created = manage.rotate_secret(auth.context(), auth.state.secret, name)
        return json_response(_secret_out(created), etag=False)

    return idempotent(request, auth, None, act, remember=_without_secret)


@router.get(
    "/events",
    response_model=WebhookEventPageOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _READ},
    summary="List a consumer's webhook events",
)
def list_events(
    name: str,
    auth: Annotated[Authorized, Depends(require("consumers:read"))],
    state: Annotated[
        str | None, Query(pattern=r"^(pending|delivered|failed)$", description="Only these.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The consumer's events, newest first."""
    events = manage.list_webhook_events(auth.context(), known_name(name), state=state, limit=limit)
    return json_response(WebhookEventPageOut(items=[WebhookEventOut.of(e) for e in events]))


@router.get(
    "/deliveries",
    response_model=DeliveryPageOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _READ},
    summary="List a consumer's webhook delivery attempts",
)
def list_deliveries(
    name: str,
    auth: Annotated[Authorized, Depends(require("consumers:read"))],
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[1-9][0-9]{0,17}$", description="next_cursor of the last page."),
    ] = None,
    event: Annotated[
        str | None, Query(pattern=r"^msg_[0-9a-f]{32}$", description="Only this event's.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The consumer's delivery attempts, newest first, a page at a time."""
    page = manage.list_deliveries(
        auth.context(),
        known_name(name),
        event_id=event,
        before=None if cursor is None else int(cursor),
        limit=limit,
    )
    return json_response(
        DeliveryPageOut(
            items=[DeliveryOut.of(a) for a in page.attempts],
            next_cursor=None if page.next_before is None else str(page.next_before),
        )
    )


@router.post(
    "/events/{event_id}/redeliver",
    response_model=WebhookEventOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _WRITE},
    summary="Deliver a webhook event again",
)
def redeliver(
    request: Request,
    name: str,
    event_id: str,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Make the event due now, whatever its state, with the same ``webhook-id``; 404 unless it is
    one of this consumer's events. An event that carries a secret (``key.rolled``: a new API key;
    listed as ``sealed``) needs ``keys:write`` too: whoever may change the webhook URL could
    otherwise have the key sent to a URL of their choosing."""
    known_name(name)
    if _EVENT_ID.fullmatch(event_id) is None:
        raise NotFound("unknown webhook event")
    ctx = auth.context()

    def act() -> Response:
        event = manage.get_webhook_event(ctx, event_id)
        if event.consumer_name != name:
            raise NotFound("unknown webhook event")  # another consumer's: as if it did not exist
        if "sealed" in event.payload:
            check_scope(auth.caller, "keys:write")
        return json_response(WebhookEventOut.of(manage.redeliver(ctx, event_id)), etag=False)

    return idempotent(request, auth, None, act)
