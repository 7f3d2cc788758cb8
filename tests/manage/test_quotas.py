"""Quotas and credits in the service layer: parsing, calendar periods, counters, the store's counts."""

from __future__ import annotations

import calendar

import pytest

from keyswap.errors import InvalidInput, NotFound
from keyswap.manage import Context, audit
from keyswap.manage.consumers import ConsumerUpdate, NewConsumer, create_consumer, update_consumer
from keyswap.manage.quotas import (
    Allowance,
    canonical,
    counters_for,
    parse_allowance,
    period_bounds,
    quota_status,
    set_credits,
    set_quota,
)
from keyswap.store import Store
from tests.support.gateway_state import Clock


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)[:6]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1000/day", Allowance(1000, "day")),
        (" 1000 / d ", Allowance(1000, "day")),
        ("5/daily", Allowance(5, "day")),
        ("50000/month", Allowance(50000, "month")),
        ("7/MO", Allowance(7, "month")),
        ("off", None),
        ("OFF", None),
    ],
)
def test_allowances_parse(text: str, expected: Allowance | None) -> None:
    assert parse_allowance(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "1000", "1000/week", "0/day", "-1/day", "1/60s", "10000000000000/day", "x/day", "1/day/2"],
)
def test_bad_allowances_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_allowance(text)


def test_periods_are_calendar_days_and_months_in_utc() -> None:
    now = utc(2026, 12, 7, 13, 5, 9)
    assert period_bounds("day", now) == (utc(2026, 12, 7), utc(2026, 12, 8), "2026-12-07")
    assert period_bounds("month", now) == (utc(2026, 12, 1), utc(2027, 1, 1), "2026-12")
    assert period_bounds("month", utc(2028, 2, 29, 23))[:2] == (utc(2028, 2, 1), utc(2028, 3, 1))
    # the cache never answers for a moment outside it
    assert period_bounds("day", utc(2026, 12, 8))[2] == "2026-12-08"
    assert period_bounds("day", utc(2026, 12, 8) - 0.001)[2] == "2026-12-07"


def test_counters_name_the_period_and_the_grant() -> None:
    now = utc(2026, 12, 7, 12)
    [quota] = counters_for(
        quota="1000/day", credits=None, credits_refill=None, credits_set_at=None, now=now
    )
    assert (quota.kind, quota.name, quota.limit, quota.window) == (
        "quota",
        "q:day:2026-12-07",
        1000,
        86400,
    )
    granted = utc(2026, 12, 7, 10)
    [never] = counters_for(
        quota=None, credits=50, credits_refill=None, credits_set_at=granted, now=now
    )
    assert (never.name, never.limit, never.end, never.label) == (
        f"c:{int(granted * 1000)}",
        50,
        None,
        "grant",
    )


def test_refilled_credits_have_the_grant_first_then_the_refill() -> None:
    granted = utc(2026, 12, 7, 10)
    kwargs = {
        "quota": None,
        "credits": 50,
        "credits_refill": "500/month",
        "credits_set_at": granted,
    }
    [first] = counters_for(**kwargs, now=utc(2026, 12, 20))  # type: ignore[arg-type]
    [later] = counters_for(**kwargs, now=utc(2027, 1, 2))  # type: ignore[arg-type]
    assert first.limit == 50
    assert later.limit == 500
    assert first.name != later.name
    assert later.end == utc(2027, 2, 1)


def test_a_stored_value_from_a_newer_keyswap_is_not_enforced() -> None:
    assert (
        counters_for(
            quota="10/fortnight", credits=None, credits_refill=None, credits_set_at=None, now=1.0
        )
        == ()
    )


def test_set_quota_and_credits_are_stored_and_audited(ctx: Context, clock: Clock) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    assert set_quota(ctx, "acme", "1000/d").quota == "1000/day"
    consumer = set_credits(ctx, "acme", 500, refill="500/monthly")
    assert (consumer.credits, consumer.credits_refill, consumer.credits_set_at) == (
        500,
        "500/month",
        clock.now,
    )
    assert consumer.quota == "1000/day"
    # refill alone keeps the grant
    clock.advance(10)
    kept = update_consumer(ctx, "acme", ConsumerUpdate(credits_refill=None))
    assert (kept.credits, kept.credits_refill, kept.credits_set_at) == (500, None, clock.now - 10)
    cleared = set_credits(ctx, "acme", None, refill="5/day")
    assert (cleared.credits, cleared.credits_refill, cleared.credits_set_at) == (None, None, None)
    assert set_quota(ctx, "acme", "off").quota is None
    changes = [
        e.changes for e in audit.list_events(ctx, audit.AuditQuery(action="consumer.update")).events
    ]
    assert {"credits": 500, "credits_refill": "500/month"} in changes
    assert {"quota": "1000/day"} in changes


def test_bad_values_and_unknown_consumers(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    with pytest.raises(InvalidInput):
        set_quota(ctx, "acme", "many")
    for bad in (-1, 10**13, True):
        with pytest.raises(InvalidInput):
            set_credits(ctx, "acme", bad)
    with pytest.raises(InvalidInput):
        update_consumer(ctx, "acme", ConsumerUpdate(quota="1/60s"))
    with pytest.raises(NotFound):
        set_quota(ctx, "nobody", "1/day")
    assert canonical(None) is None


def test_the_store_adds_counts_from_every_node(store: Store, ctx: Context) -> None:
    acme = create_consumer(ctx, NewConsumer("acme"))
    assert store.quota_usage(acme.id, ["q:day:x"]) == {"q:day:x": 0}
    assert store.add_quota_usage({(acme.id, "q:day:x"): 3}, now=1.0) == {(acme.id, "q:day:x"): 3}
    totals = store.add_quota_usage({(acme.id, "q:day:x"): 2, (acme.id, "c:1"): 1}, now=2.0)
    assert totals == {(acme.id, "q:day:x"): 5, (acme.id, "c:1"): 1}
    assert store.quota_usage(acme.id, ["q:day:x", "c:1", "c:2"]) == {
        "q:day:x": 5,
        "c:1": 1,
        "c:2": 0,
    }
    # a consumer deleted meanwhile is skipped, not an error
    assert store.add_quota_usage({(acme.id + 1000, "q:day:x"): 1}, now=3.0) == {}
    assert store.add_quota_usage({}, now=3.0) == {}


def test_the_status_shows_what_the_gateways_recorded(
    store: Store, ctx: Context, clock: Clock
) -> None:
    clock.now = utc(2026, 12, 7, 12)
    acme = create_consumer(ctx, NewConsumer("acme"))
    assert quota_status(ctx, "acme") == []
    set_quota(ctx, "acme", "10/day")
    set_credits(ctx, "acme", 5)
    store.add_quota_usage(
        {(acme.id, "q:day:2026-12-07"): 7, (acme.id, f"c:{int(clock.now * 1000)}"): 6},
        now=clock.now,
    )
    quota, credits = quota_status(ctx, "acme")
    assert (quota.kind, quota.period, quota.limit, quota.used, quota.remaining) == (
        "quota",
        "2026-12-07",
        10,
        7,
        3,
    )
    assert quota.refills_at == utc(2026, 12, 8)
    assert (credits.kind, credits.period, credits.remaining, credits.refills_at) == (
        "credits",
        "grant",
        0,
        None,
    )
    with pytest.raises(NotFound):
        quota_status(ctx, "nobody")


def test_pruning_drops_ended_periods_but_never_a_grant_without_refill(
    store: Store, ctx: Context
) -> None:
    acme = create_consumer(ctx, NewConsumer("acme"))
    names = ["q:day:2026-10-01", "q:month:2026-10", "c:1:month:2026-10", "c:1"]
    store.add_quota_usage({(acme.id, name): 1 for name in names}, now=100.0)
    store.add_quota_usage({(acme.id, "q:day:2026-12-07"): 1}, now=300.0)
    assert store.prune_quota_usage(200.0) == 3
    left = store.quota_usage(acme.id, [*names, "q:day:2026-12-07"])
    assert {name for name, used in left.items() if used} == {"c:1", "q:day:2026-12-07"}
