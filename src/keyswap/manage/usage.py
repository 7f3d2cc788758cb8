"""Reading metered usage: per consumer (and key) over time, totals of every consumer, top consumers.

The gateway's meter (:mod:`keyswap.gateway.meter`) writes the rows, the rollup
(:func:`rollup`, :mod:`keyswap.store.usage`) merges old ones; this module only reads them (usage is
not a change to audit). A consumer is named as everywhere else in keyswap (``consumer_id`` is its
name). Usage belongs to the consumer: it is kept per key too, but rolling, revoking or deleting a key
changes none of its consumer's counts.

Buckets hold what *started* in them: a row coarser than the asked resolution (an hour row when reading
by minute, once minutes were rolled up) falls whole into the bucket of its start. Buckets without
traffic are left out. Times are epoch seconds; hours and days are UTC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from keyswap.errors import InvalidInput, NotFound
from keyswap.store.models import validate_consumer_name
from keyswap.store.sql import Store
from keyswap.store.usage import (
    COUNTS,
    DAY,
    HOUR,
    MINUTE,
    RollupPolicy,
    RollupResult,
    consumers_with_usage,
    read_buckets,
    read_totals,
)
from keyswap.store.usage import rollup as _rollup

__all__ = [
    "MAX_BUCKETS",
    "RESOLUTIONS",
    "ConsumerUsage",
    "RollupPolicy",
    "RollupResult",
    "UsageBucket",
    "query",
    "query_all",
    "require_consumer",
    "rollup",
    "top_consumers",
]

#: Bucket lengths by name.
RESOLUTIONS: dict[str, int] = {"minute": MINUTE, "hour": HOUR, "day": DAY}
#: Most buckets one query may span (``(until - since) / resolution``): 100,000 (69 days by minute).
MAX_BUCKETS = 100_000
Resolution = Literal["minute", "hour", "day"]


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """Usage in one bucket: what started in ``[start, start + resolution)``.

    Attributes:
        start: the bucket's first second (epoch, UTC-aligned).
        requests: every request counted (each status class below, plus 1xx websocket upgrades).
        status_2xx, status_3xx, status_4xx, status_5xx: requests by the status class answered
            (the gateway's own refusals included: 401, 429, 502, 504...).
        unauthorized: refused with 401: a revoked or expired key of this consumer (and in the totals
            without a consumer, also missing, malformed and unknown keys).
        rate_limited: refused with 429 by the gateway (rate limit or connection cap).
        bytes_in, bytes_out: request and response body bytes relayed to and from the upstream.
        latency_sum: seconds, the upstream latency (to the response head) summed over
            ``upstream_responses`` responses.
        latency_buckets: how many upstream responses took at most 10 ms, 50 ms, 250 ms, 1 s, more.
    """

    start: float
    requests: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    bytes_in: int
    bytes_out: int
    unauthorized: int = 0
    rate_limited: int = 0
    latency_sum: float = 0.0
    latency_buckets: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)

    @property
    def errors(self) -> int:
        """Requests answered 4xx or 5xx."""
        return self.status_4xx + self.status_5xx

    @property
    def upstream_responses(self) -> int:
        """Responses the upstream gave (the latency samples)."""
        return sum(self.latency_buckets)

    @property
    def latency_mean(self) -> float | None:
        """Mean upstream latency, seconds (``None`` without upstream responses)."""
        count = self.upstream_responses
        return self.latency_sum / count if count else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``--json`` and the admin API show)."""
        return {
            "start": self.start,
            "requests": self.requests,
            "status_2xx": self.status_2xx,
            "status_3xx": self.status_3xx,
            "status_4xx": self.status_4xx,
            "status_5xx": self.status_5xx,
            "unauthorized": self.unauthorized,
            "rate_limited": self.rate_limited,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "latency_sum": round(self.latency_sum, 6),
            "latency_buckets": list(self.latency_buckets),
        }


@dataclass(frozen=True, slots=True)
class ConsumerUsage:
    """One consumer's totals over a period (:func:`top_consumers`)."""

    consumer: str
    totals: UsageBucket

    @property
    def error_rate(self) -> float:
        """(4xx + 5xx) / requests; 0 without requests."""
        requests = self.totals.requests
        return self.totals.errors / requests if requests else 0.0


def _bucket(start: float, counts: Sequence[Any]) -> UsageBucket:
    """A bucket from ``counts`` in the order of :data:`COUNTS` (positional: faster than names)."""
    (
        requests,
        s2,
        s3,
        s4,
        s5,
        unauthorized,
        rate_limited,
        bytes_in,
        bytes_out,
        latency_sum,
        b10,
        b50,
        b250,
        b1s,
        slow,
    ) = counts
    return UsageBucket(
        float(start),
        int(requests or 0),
        int(s2 or 0),
        int(s3 or 0),
        int(s4 or 0),
        int(s5 or 0),
        int(bytes_in or 0),
        int(bytes_out or 0),
        int(unauthorized or 0),
        int(rate_limited or 0),
        float(latency_sum or 0.0),
        (int(b10 or 0), int(b50 or 0), int(b250 or 0), int(b1s or 0), int(slow or 0)),
    )


def _window(since: float, until: float, by: str) -> tuple[int, int, int]:
    """``(since aligned down, until aligned up, step)``.

    Raises:
        InvalidInput: an unknown resolution, times not finite or out of order, too many buckets.
    """
    step = RESOLUTIONS.get(by)
    if step is None:
        raise InvalidInput(f"unknown resolution {str(by)[:20]!r}: use minute, hour or day")
    for value in (since, until):
        if not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > 1e11:
            raise InvalidInput("since and until must be epoch seconds")
    if until <= since:
        raise InvalidInput("until must be after since")
    low = math.floor(since / step) * step
    high = math.ceil(until / step) * step
    if (high - low) // step > MAX_BUCKETS:
        raise InvalidInput(
            f"that is more than {MAX_BUCKETS} {by}s: ask for a coarser resolution or a shorter period"
        )
    return low, high, step


def query(
    store: Store,
    *,
    consumer_id: str,
    since: float,
    until: float,
    by: Resolution,
    key_id: str | None = None,
) -> list[UsageBucket]:
    """One consumer's usage per ``by`` bucket, oldest first, for buckets overlapping ``[since, until)``.

    ``consumer_id``: the consumer's name (it need not exist any more: deleted consumers keep their
    usage). ``key_id``: only that key's requests (its consumer's totals do not depend on it).

    Raises:
        InvalidInput: a bad consumer name or key id, an unknown resolution, ``until <= since``, or more
            than :data:`MAX_BUCKETS` buckets.
    """
    validate_consumer_name(consumer_id)
    _check_key_id(key_id)
    low, high, step = _window(since, until, by)
    rows = read_buckets(
        store, consumer=consumer_id, since=low, until=high, step=step, key_id=key_id
    )
    return [_bucket(row[0], row[1:]) for row in rows]


def query_all(
    store: Store, *, since: float, until: float, by: Resolution, key_id: str | None = None
) -> list[UsageBucket]:
    """Every consumer's usage summed per bucket, with the requests refused before a key was known
    (the only place ``unauthorized`` counts show). Same rules as :func:`query`.

    Raises:
        InvalidInput: as :func:`query`.
    """
    _check_key_id(key_id)
    low, high, step = _window(since, until, by)
    rows = read_buckets(store, consumer=None, since=low, until=high, step=step, key_id=key_id)
    return [_bucket(row[0], row[1:]) for row in rows]


def top_consumers(
    store: Store,
    *,
    since: float,
    until: float,
    by: Literal["requests", "errors"] = "requests",
    limit: int = 10,
    min_requests: int = 1,
) -> list[ConsumerUsage]:
    """The consumers with the most requests, or the highest error rate ((4xx + 5xx) / requests, ties
    by error count; only consumers with at least ``min_requests``), over rows starting in
    ``[since, until)`` (aligned to the hour). Each entry's ``totals.start`` is the aligned ``since``.

    Raises:
        InvalidInput: ``by`` is neither, ``limit`` outside 1-1000, bad times.
    """
    if by not in ("requests", "errors"):
        raise InvalidInput(f"unknown order {str(by)[:20]!r}: use requests or errors")
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidInput("limit must be 1-1000")
    if not isinstance(min_requests, int) or min_requests < 1:
        raise InvalidInput("min_requests must be at least 1")
    low, high, _ = _window(since, until, "hour")
    rows = read_totals(
        store, since=low, until=high, order=by, limit=limit, min_requests=min_requests
    )
    return [ConsumerUsage(row[0], _bucket(low, row[1 : 1 + len(COUNTS)])) for row in rows]


def require_consumer(store: Store, consumer_id: str) -> None:
    """Refuse a consumer that neither exists nor has usage (a deleted consumer's usage stays readable).

    Raises:
        InvalidInput: not a consumer name.
        NotFound: no such consumer, and no usage under that name.
    """
    validate_consumer_name(consumer_id)
    if store.get_consumer(consumer_id) is None and not consumers_with_usage(store, [consumer_id]):
        raise NotFound(f"unknown consumer '{consumer_id}'")


def rollup(store: Store, *, now: float, policy: RollupPolicy | None = None) -> RollupResult:
    """Merge minute rows older than a day into hours, hour rows older than 30 days into days, and
    delete day rows past the retention (defaults of :class:`RollupPolicy`). Idempotent; safe on
    several nodes at once (see :mod:`keyswap.store.usage`)."""
    return _rollup(store, now=now, policy=policy)


def _check_key_id(key_id: str | None) -> None:
    if key_id is None:
        return
    if not isinstance(key_id, str) or not 1 <= len(key_id) <= 64 or not key_id.isascii():
        raise InvalidInput("a key id is 1-64 ASCII characters")
    if not all(c.isalnum() or c in "_-" for c in key_id):
        raise InvalidInput("a key id is letters, digits, '_' and '-'")
