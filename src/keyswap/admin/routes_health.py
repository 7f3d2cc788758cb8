"""``/healthz`` (the process is up) and ``/readyz`` (the database answers, its schema is current)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from keyswap.admin.problems import ApiProblem
from keyswap.admin.responses import json_response, problems
from keyswap.admin.state import state_of
from keyswap.store import migrate

__all__ = ["Health", "router"]

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """A health answer."""

    status: str


@router.get("/healthz", response_model=Health, responses=problems(500), summary="Liveness")
def healthz() -> Response:
    """200 while the process serves."""
    return json_response(Health(status="ok"), etag=False)


@router.get("/readyz", response_model=Health, responses=problems(500, 503), summary="Readiness")
def readyz(request: Request) -> Response:
    """200 when the database answers and its schema is the newest this keyswap knows; else 503."""
    store = state_of(request).store
    try:
        with store.engine.connect() as conn:
            state = migrate.schema_state(conn)
    except SQLAlchemyError:
        raise ApiProblem(503, "the database does not answer", kind="not-ready") from None
    if not state.up_to_date:
        raise ApiProblem(
            503, "the database schema is not current (keyswap db upgrade)", kind="not-ready"
        )
    return json_response(Health(status="ready"), etag=False)
