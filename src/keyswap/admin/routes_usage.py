"""``/v1/usage``: metered usage per consumer (and key) per bucket, and the top consumers (scope
``usage:read``). Reads only: nothing here is audited."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.responses import Response

from keyswap.admin.responses import COMMON, json_response, problems
from keyswap.admin.routes_audit import Rfc3339, _epoch
from keyswap.admin.schemas import iso
from keyswap.admin.state import Authorized, require
from keyswap.manage import usage as manage

__all__ = ["ConsumerUsageOut", "UsageBucketOut", "UsageOut", "UsageTopOut", "router"]

router = APIRouter(prefix="/v1/usage", tags=["usage"])

#: The period read when ``since`` is not given: seven days back from ``until``.
DEFAULT_PERIOD = 7 * 86400.0


class UsageBucketOut(BaseModel):
    """Usage that started in one bucket (or, as a total, in the whole period)."""

    start: str = Field(description="The bucket's first second, RFC 3339 UTC.")
    requests: int = Field(description="Every request counted (1xx upgrades included).")
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    unauthorized: int = Field(
        description="Refused 401: the consumer's revoked or expired keys (unknown keys: totals only)."
    )
    rate_limited: int = Field(
        description="Refused 429 by the gateway (rate limit, connection cap)."
    )
    bytes_in: int = Field(description="Request body bytes relayed to the upstream.")
    bytes_out: int = Field(description="Response body bytes relayed from the upstream.")
    latency_sum: float = Field(description="Upstream latency to the response head, summed (s).")
    latency_buckets: list[int] = Field(
        description="Upstream responses within 10 ms, 50 ms, 250 ms, 1 s, and slower."
    )

    @classmethod
    def of(cls, bucket: manage.UsageBucket) -> UsageBucketOut:
        data = bucket.to_json()
        data["start"] = iso(bucket.start)
        return cls.model_validate(data)


class UsageOut(BaseModel):
    """Usage per bucket, oldest first (buckets without traffic left out), and the total."""

    consumer: str | None = Field(description="null: every consumer, and refusals without one.")
    key_id: str | None
    since: str
    until: str
    by: Literal["minute", "hour", "day"]
    buckets: list[UsageBucketOut]
    total: UsageBucketOut


class ConsumerUsageOut(BaseModel):
    """One consumer's totals over the period."""

    consumer: str
    error_rate: float = Field(description="(4xx + 5xx) / requests.")
    totals: UsageBucketOut


class UsageTopOut(BaseModel):
    """The top consumers, first the busiest (``by=requests``) or the most failing (``by=errors``)."""

    since: str
    until: str
    by: Literal["requests", "errors"]
    consumers: list[ConsumerUsageOut]


def _period(auth: Authorized, since: float | None, until: float | None) -> tuple[float, float]:
    end = auth.state.clock() if until is None else until
    return (end - DEFAULT_PERIOD if since is None else since), end


def _total(buckets: list[manage.UsageBucket], start: float) -> manage.UsageBucket:
    def total(name: str) -> int:
        return sum(int(getattr(b, name)) for b in buckets)

    lat = [sum(b.latency_buckets[i] for b in buckets) for i in range(5)]
    return manage.UsageBucket(
        start=start,
        requests=total("requests"),
        status_2xx=total("status_2xx"),
        status_3xx=total("status_3xx"),
        status_4xx=total("status_4xx"),
        status_5xx=total("status_5xx"),
        bytes_in=total("bytes_in"),
        bytes_out=total("bytes_out"),
        unauthorized=total("unauthorized"),
        rate_limited=total("rate_limited"),
        latency_sum=sum(b.latency_sum for b in buckets),
        latency_buckets=(lat[0], lat[1], lat[2], lat[3], lat[4]),
    )


_SINCE = Query(description="RFC 3339; from then (default: 7 days before until).")
_UNTIL = Query(description="RFC 3339; up to then (default: now).")


@router.get(
    "",
    response_model=UsageOut,
    responses=problems(*COMMON, 404),
    openapi_extra={"security": [{"adminToken": ["usage:read"]}]},
    summary="Read usage per bucket",
)
def read_usage(
    auth: Annotated[Authorized, Depends(require("usage:read"))],
    consumer: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="A consumer; omitted: every one."),
    ] = None,
    key: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Only this key's usage.")
    ] = None,
    since: Annotated[Rfc3339 | None, _SINCE] = None,
    until: Annotated[Rfc3339 | None, _UNTIL] = None,
    by: Annotated[
        Literal["minute", "hour", "day"], Query(description="Bucket size (UTC).")
    ] = "day",
) -> Response:
    """A consumer's usage (every consumer's without ``consumer``) per bucket, oldest first.

    Buckets hold what started in them; rows rolled up to hours (after a day) or days (after 30 days)
    fall whole into the bucket of their start. 404 for a consumer that neither exists nor has usage.
    """
    low, high = _period(auth, _epoch(since), _epoch(until))
    store = auth.state.store
    if consumer is None:
        buckets = manage.query_all(store, since=low, until=high, by=by, key_id=key)
    else:
        manage.require_consumer(store, consumer)
        buckets = manage.query(
            store, consumer_id=consumer, since=low, until=high, by=by, key_id=key
        )
    body = UsageOut(
        consumer=consumer,
        key_id=key,
        since=iso(low) or "",
        until=iso(high) or "",
        by=by,
        buckets=[UsageBucketOut.of(b) for b in buckets],
        total=UsageBucketOut.of(_total(buckets, low)),
    )
    return json_response(body)


@router.get(
    "/top",
    response_model=UsageTopOut,
    responses=problems(*COMMON),
    openapi_extra={"security": [{"adminToken": ["usage:read"]}]},
    summary="Top consumers by requests or error rate",
)
def top_usage(
    auth: Annotated[Authorized, Depends(require("usage:read"))],
    by: Annotated[Literal["requests", "errors"], Query(description="The order.")] = "requests",
    since: Annotated[Rfc3339 | None, _SINCE] = None,
    until: Annotated[Rfc3339 | None, _UNTIL] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    min_requests: Annotated[
        int, Query(ge=1, le=10**12, description="With by=errors: at least this many requests.")
    ] = 1,
) -> Response:
    """The consumers with the most requests, or the highest error rate ((4xx + 5xx) / requests)."""
    low, high = _period(auth, _epoch(since), _epoch(until))
    found = manage.top_consumers(
        auth.state.store, since=low, until=high, by=by, limit=limit, min_requests=min_requests
    )
    body = UsageTopOut(
        since=iso(low) or "",
        until=iso(high) or "",
        by=by,
        consumers=[
            ConsumerUsageOut(
                consumer=c.consumer,
                error_rate=round(c.error_rate, 6),
                totals=UsageBucketOut.of(c.totals),
            )
            for c in found
        ],
    )
    return json_response(body)
