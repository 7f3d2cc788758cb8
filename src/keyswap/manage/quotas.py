"""Quotas and credits: what a consumer may spend per period, parsed, set and turned into counters.

- A **quota** is ``<n>/day`` or ``<n>/month``: at most ``n`` accepted requests per calendar day or month
  (UTC). ``keyswap consumers set-quota NAME 1000/day`` (``off`` removes it).
- **Credits** are a balance: each accepted request spends one; ``keyswap consumers set-credits NAME 500``
  grants 500 now. With a refill (``--refill 500/month``) the balance is set back to 500 at the start of
  every calendar month (UTC); without one it never refills. Setting credits again starts a new grant.

Both may apply at once; a request refused by one spends nothing from the other. What is spent is
counted per :class:`Counter` (named after the period or the grant), by the gateway
(:mod:`keyswap.gateway.quota`) and recorded in the database (``quota_usage``).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from typing import Literal

from keyswap.errors import InvalidInput
from keyswap.manage.context import Context
from keyswap.store.models import MAX_QUOTA, Consumer

__all__ = [
    "Allowance",
    "Counter",
    "Period",
    "QuotaStatus",
    "canonical",
    "counters_for",
    "parse_allowance",
    "period_bounds",
    "quota_status",
    "set_credits",
    "set_quota",
]

Period = Literal["day", "month"]

_ALLOWANCE = re.compile(r"\s*([0-9]{1,13})\s*/\s*([A-Za-z]+)\s*", re.ASCII)
_PERIODS: dict[str, Period] = {
    "d": "day",
    "day": "day",
    "daily": "day",
    "mo": "month",
    "month": "month",
    "monthly": "month",
}


@dataclass(frozen=True, slots=True)
class Allowance:
    """``amount`` requests (or credits) per calendar ``period`` (UTC)."""

    amount: int
    period: Period

    def __str__(self) -> str:
        return f"{self.amount}/{self.period}"


def parse_allowance(text: str) -> Allowance | None:
    """Parse ``<n>/day`` or ``<n>/month`` (also ``/d``, ``/daily``, ``/mo``, ``/monthly``); ``off``:
    ``None``.

    Raises:
        InvalidInput: another form, or an amount outside 1-10^12.
    """
    if not isinstance(text, str):
        raise InvalidInput("a quota is <requests>/day or <requests>/month, or 'off'")
    if text.strip().lower() == "off":
        return None
    match = _ALLOWANCE.fullmatch(text)
    period = _PERIODS.get(match.group(2).lower()) if match else None
    if match is None or period is None:
        raise InvalidInput(
            f"invalid quota {text[:40]!r}: use <requests>/day or <requests>/month, e.g. 1000/day, "
            "or 'off'"
        )
    amount = int(match.group(1))
    if not 1 <= amount <= MAX_QUOTA:
        raise InvalidInput(f"invalid quota {text[:40]!r}: 1 to {MAX_QUOTA} per period")
    return Allowance(amount, period)


def _stored_allowance(stored: str | None) -> Allowance | None:
    if stored is None:
        return None
    try:
        return parse_allowance(stored)
    except InvalidInput:
        return None  # a newer keyswap's syntax: not enforced by this one


_bounds: dict[Period, tuple[float, float, str]] = {}


def period_bounds(period: Period, now: float) -> tuple[float, float, str]:
    """``(start, end, label)`` of the calendar day or month (UTC) holding ``now``: label
    ``2026-12-07`` or ``2026-12``."""
    cached = _bounds.get(period)
    if cached is not None and cached[0] <= now < cached[1]:
        return cached
    year, month, day = _utc_date(now)
    if period == "day":
        start = float(calendar.timegm((year, month, day, 0, 0, 0)))
        found = (start, start + 86_400.0, f"{year:04d}-{month:02d}-{day:02d}")
    else:
        start = float(calendar.timegm((year, month, 1, 0, 0, 0)))
        following = (year + 1, 1) if month == 12 else (year, month + 1)
        end = float(calendar.timegm((*following, 1, 0, 0, 0)))
        found = (start, end, f"{year:04d}-{month:02d}")
    _bounds[period] = found
    return found


def _utc_date(now: float) -> tuple[int, int, int]:
    import time

    parts = time.gmtime(now)
    return parts.tm_year, parts.tm_mon, parts.tm_mday


@dataclass(frozen=True, slots=True)
class Counter:
    """One thing a request is counted against.

    ``kind`` is ``quota`` or ``credits``; ``name`` is the counter (``q:day:2026-12-07``,
    ``c:<grant ms>``, ``c:<grant ms>:month:2026-12``), unique per consumer and period or grant;
    ``limit`` is what may be spent on it; ``label`` names the period (``2026-12-07``, ``2026-12``) or
    ``grant`` for credits that never refill; ``end`` is when it refills (``None``: never) and
    ``window`` the period's length in seconds (``None``: never refills).
    """

    kind: Literal["quota", "credits"]
    name: str
    limit: int
    label: str
    start: float
    end: float | None

    @property
    def window(self) -> int | None:
        """Seconds in the period (``None`` for credits that never refill)."""
        return None if self.end is None else round(self.end - self.start)


def counters_for(
    *,
    quota: str | None,
    credits: int | None,
    credits_refill: str | None,
    credits_set_at: float | None,
    now: float,
) -> tuple[Counter, ...]:
    """The counters a consumer's request is checked against at ``now`` (empty: none applies)."""
    found: list[Counter] = []
    allowance = _stored_allowance(quota)
    if allowance is not None:
        start, end, label = period_bounds(allowance.period, now)
        found.append(
            Counter("quota", f"q:{allowance.period}:{label}", allowance.amount, label, start, end)
        )
    if credits is not None and credits_set_at is not None:
        grant = f"c:{int(credits_set_at * 1000)}"
        refill = _stored_allowance(credits_refill)
        if refill is None:
            found.append(Counter("credits", grant, credits, "grant", credits_set_at, None))
        else:
            start, end, label = period_bounds(refill.period, now)
            granted_in = period_bounds(refill.period, credits_set_at)[0]
            limit = credits if start <= granted_in else refill.amount
            found.append(
                Counter("credits", f"{grant}:{refill.period}:{label}", limit, label, start, end)
            )
    return tuple(found)


def canonical(text: str | None) -> str | None:
    """A quota or refill as stored: ``"<n>/day"``/``"<n>/month"``; ``None`` or ``"off"``: ``None``.

    Raises:
        InvalidInput: a bad quota.
    """
    allowance = None if text is None else parse_allowance(text)
    return None if allowance is None else str(allowance)


def set_quota(ctx: Context, name: str, quota: str | None) -> Consumer:
    """Set (``"<n>/day"``, ``"<n>/month"``) or remove (``None`` or ``"off"``) a consumer's request
    quota (audited as ``consumer.update`` with ``quota``). Running gateways pick it up within a second;
    what was already spent in the current period still counts.

    Raises:
        InvalidInput: a bad quota.
        NotFound: no such consumer.
    """
    from keyswap.manage.consumers import ConsumerUpdate, update_consumer

    return update_consumer(ctx, name, ConsumerUpdate(quota=canonical(quota)))


def set_credits(
    ctx: Context, name: str, credits: int | None, *, refill: str | None = None
) -> Consumer:
    """Grant a consumer a credit balance of ``credits`` now (a new grant: what the previous one had
    left is replaced), refilled to ``refill`` (``"<n>/day"``, ``"<n>/month"``; ``None``: never) at
    each period start; ``credits=None`` removes credits (and the refill). Audited as
    ``consumer.update`` with ``credits`` and ``credits_refill``.

    Raises:
        InvalidInput: a bad amount or refill.
        NotFound: no such consumer.
    """
    from keyswap.manage.consumers import ConsumerUpdate, update_consumer

    refill_value = canonical(refill) if credits is not None else None
    return update_consumer(ctx, name, ConsumerUpdate(credits=credits, credits_refill=refill_value))


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """Where one counter of a consumer stands, as the database has it (every gateway writes its counts
    every 2 s: up to that far behind). ``refills_at`` is ``None`` for credits that never refill."""

    kind: Literal["quota", "credits"]
    period: str
    limit: int
    used: int
    remaining: int
    refills_at: float | None


def quota_status(ctx: Context, name: str) -> list[QuotaStatus]:
    """The consumer's quota and credits now: limit, used and remaining per counter (empty: none).

    Raises:
        NotFound: no such consumer.
    """
    from keyswap.manage.consumers import get_consumer

    consumer = get_consumer(ctx, name)
    counters = counters_for(
        quota=consumer.quota,
        credits=consumer.credits,
        credits_refill=consumer.credits_refill,
        credits_set_at=consumer.credits_set_at,
        now=ctx.now(),
    )
    if not counters:
        return []
    used = ctx.store.quota_usage(consumer.id, [c.name for c in counters])
    return [
        QuotaStatus(
            c.kind,
            c.label,
            c.limit,
            used[c.name],
            max(0, c.limit - used[c.name]),
            c.end,
        )
        for c in counters
    ]
