"""``/v1/audit-events``: the audit log, newest first, filtered, a page at a time."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BeforeValidator
from starlette.responses import Response

from keyswap.admin.responses import COMMON, json_response, problems
from keyswap.admin.schemas import AuditEventOut, AuditPageOut
from keyswap.admin.state import Authorized, require
from keyswap.manage import audit as manage

__all__ = ["router"]

router = APIRouter(prefix="/v1/audit-events", tags=["audit"])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


#: RFC 3339 date-time (section 5.6): a date, `T`, a time, and `Z` or an offset. pydantic alone would also
#: take epoch numbers, bare dates and times without an offset, which the document says are refused.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str) and _RFC3339.fullmatch(value) is None:
        raise ValueError("an RFC 3339 date-time with an offset, e.g. 2026-12-07T09:30:00Z")
    return value


Rfc3339 = Annotated[datetime, BeforeValidator(_rfc3339)]


def _epoch(value: datetime | None) -> float | None:
    """Epoch seconds (no overflow at the ends of the calendar; naive times are UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH).total_seconds()


@router.get(
    "",
    response_model=AuditPageOut,
    responses=problems(*COMMON),
    openapi_extra={"security": [{"adminToken": ["audit:read"]}]},
    summary="List audit events",
)
def list_events(
    auth: Annotated[Authorized, Depends(require("audit:read"))],
    actor: Annotated[
        str | None,
        Query(
            pattern=r"^(token|oidc|cli|system|portal)(:[\x21-\x7e]{1,255})?$",
            description="A kind (token, cli, oidc, system, portal) or kind:name.",
        ),
    ] = None,
    action: Annotated[
        str | None,
        Query(
            pattern=r"^[A-Za-z0-9_.-]{1,100}$",
            description="An action (key.revoke) or a family (key).",
        ),
    ] = None,
    target: Annotated[
        str | None, Query(pattern=r"^[\x21-\x7e]{1,300}$", description="consumer:acme, key:key_...")
    ] = None,
    since: Annotated[Rfc3339 | None, Query(description="RFC 3339; events at or after.")] = None,
    until: Annotated[Rfc3339 | None, Query(description="RFC 3339; events before.")] = None,
    cursor: Annotated[str | None, Query(pattern=r"^[1-9][0-9]{0,17}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Audit events matching every filter given, newest first."""
    query = manage.AuditQuery(
        since=_epoch(since),
        until=_epoch(until),
        actor=actor,
        action=action,
        target=target,
        before=None if cursor is None else int(cursor),
        limit=limit,
    )
    page = manage.list_events(auth.context(), query)
    cursor_out = None if page.next_before is None else str(page.next_before)
    return json_response(
        AuditPageOut(items=[AuditEventOut.of(e) for e in page.events], next_cursor=cursor_out)
    )
