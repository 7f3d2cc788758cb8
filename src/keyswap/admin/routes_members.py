"""``/v1/consumers/{name}/members`` (who may manage a consumer in the developer portal) and
``/v1/consumers/{name}/portal-links`` (single-use sign-in links to the portal)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from starlette.responses import Response

from keyswap.admin.responses import COMMON, json_response, problems
from keyswap.admin.routes_consumers import known_name
from keyswap.admin.schemas import _In, iso
from keyswap.admin.state import Authorized, require
from keyswap.manage import members as manage
from keyswap.manage import portal as manage_portal
from keyswap.store.models import MemberRecord

__all__ = ["router"]

router = APIRouter(prefix="/v1/consumers/{name}", tags=["members"])
_READ = [{"adminToken": ["consumers:read"]}]
_WRITE = [{"adminToken": ["consumers:write"]}]
_VALUE = r"^[\x21-\x7e]{1,255}$"
_EMAIL = r"^[\x21-\x7e]{1,64}@[\x21-\x7e]{1,252}$"
MemberId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="A member's id.")]


class MemberIn(_In):
    """A member to add: an e-mail address or an OIDC subject."""

    kind: Literal["email", "subject"]
    value: str = Field(pattern=_VALUE, max_length=255, description="The address or subject.")


class MemberOut(BaseModel):
    """A member of a consumer."""

    id: int
    consumer: str
    kind: str
    value: str
    created_at: str | None

    @classmethod
    def of(cls, member: MemberRecord) -> MemberOut:
        """The view of a stored member."""
        return cls(
            id=member.id,
            consumer=member.consumer_name,
            kind=member.kind,
            value=member.value,
            created_at=iso(member.created_at),
        )


class MembersOut(BaseModel):
    """Every member of a consumer, oldest first."""

    items: list[MemberOut]


class LinkIn(_In):
    """A sign-in link to make for an e-mail address (which becomes a member if it is not one)."""

    email: str = Field(pattern=_EMAIL, max_length=254)
    expires_in: int = Field(
        default=900, ge=1, le=7 * 86400, description="Seconds the link works (default 15 min)."
    )


class LinkOut(BaseModel):
    """A new sign-in link; ``token`` (and so ``path`` and ``url``) appear in this response only."""

    id: str
    consumer: str
    email: str
    expires_at: str | None
    token: str
    path: str = Field(description="Append to the portal's public URL.")
    url: str | None = Field(description="The whole link, if the admin API knows the portal's URL.")


@router.get(
    "/members",
    response_model=MembersOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _READ},
    summary="List a consumer's members",
)
def list_members(
    name: str, auth: Annotated[Authorized, Depends(require("consumers:read"))]
) -> Response:
    """The people who may manage this consumer in the portal."""
    found = manage.list_members(auth.context(), known_name(name))
    return json_response(MembersOut(items=[MemberOut.of(m) for m in found]), etag=False)


@router.post(
    "/members",
    status_code=201,
    response_model=MemberOut,
    responses=problems(*COMMON, 404, 409, 413, 415),
    openapi_extra={"security": _WRITE},
    summary="Add a member",
)
def add_member(
    name: str,
    body: MemberIn,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
) -> Response:
    """Make a person (e-mail address or OIDC subject) a member of this consumer (409 if one)."""
    member = manage.add_member(auth.context(), known_name(name), body.kind, body.value)
    return json_response(MemberOut.of(member), 201, etag=False)


@router.delete(
    "/members/{member_id}",
    status_code=204,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": _WRITE},
    summary="Remove a member",
)
def remove_member(
    name: str,
    member_id: MemberId,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
) -> Response:
    """Remove a member; the person no longer sees this consumer in the portal."""
    manage.remove_member(auth.context(), known_name(name), member_id)
    return Response(status_code=204)


@router.post(
    "/portal-links",
    status_code=201,
    response_model=LinkOut,
    responses=problems(*COMMON, 404, 413, 415),
    openapi_extra={"security": _WRITE},
    summary="Make a portal sign-in link",
)
def create_link(
    name: str,
    body: LinkIn,
    auth: Annotated[Authorized, Depends(require("consumers:write"))],
) -> Response:
    """A single-use, short-lived sign-in link to the developer portal for an e-mail address, which
    becomes a member of this consumer if it is not one. Hand it to the person; no mail is sent."""
    link = manage_portal.create_link(
        auth.context(), known_name(name), body.email, expires_in=float(body.expires_in)
    )
    portal_url = auth.state.portal_url
    out = LinkOut(
        id=link.record.id,
        consumer=link.record.consumer_name,
        email=link.record.email,
        expires_at=iso(link.record.expires_at),
        token=link.token,
        path=link.path(),
        url=link.url(portal_url) if portal_url else None,
    )
    return json_response(out, 201, etag=False, headers={"Cache-Control": "no-store"})
