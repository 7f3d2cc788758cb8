"""``/v1/signing-keys``: list, rotate (``force``: the CLI's safety rule, :mod:`keyswap.manage.signing`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from keyswap.admin.problems import ApiProblem
from keyswap.admin.responses import COMMON, idempotent, json_response, problems
from keyswap.admin.routes_consumers import IdempotencyKey
from keyswap.admin.schemas import RotateIn, SigningKeyOut, SigningKeysOut
from keyswap.admin.state import Authorized, require
from keyswap.errors import ConfigError
from keyswap.manage import signing as manage

__all__ = ["router"]

router = APIRouter(prefix="/v1/signing-keys", tags=["signing-keys"])


@router.get(
    "",
    response_model=SigningKeysOut,
    responses=problems(*COMMON),
    openapi_extra={"security": [{"adminToken": ["signing-keys:read"]}]},
    summary="List signing keys",
)
def list_signing_keys(
    auth: Annotated[Authorized, Depends(require("signing-keys:read"))],
) -> Response:
    """Every signing key (next, active, retired): kid, alg, state, dates, public JWK."""
    records = manage.list_signing_keys(auth.context())
    return json_response(SigningKeysOut(items=[SigningKeyOut.of(r) for r in records]))


@router.post(
    "/rotate",
    response_model=SigningKeysOut,
    responses=problems(*COMMON, 409, 413, 415),
    openapi_extra={"security": [{"adminToken": ["signing-keys:write"]}]},
    summary="Rotate the signing keys",
)
def rotate(
    request: Request,
    auth: Annotated[Authorized, Depends(require("signing-keys:write"))],
    body: RotateIn | None = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """The next key signs, the active one retires, a new next key is published (no keys yet: they
    are created). 409 if the next key was published less than the cache margin ago, unless
    ``force``."""
    given = body or RotateIn()

    def act() -> Response:
        with auth.state.write_lock:
            try:
                rotation = manage.rotate_signing_keys(
                    auth.context(), auth.state.keyring, force=given.force
                )
            except ConfigError:
                raise ApiProblem(
                    409, "another rotation happened at the same moment; list the keys and retry"
                ) from None
        return json_response(SigningKeysOut(items=[SigningKeyOut.of(r) for r in rotation.records]))

    return idempotent(request, auth, given, act)
