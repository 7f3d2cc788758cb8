"""Paged listings (the admin API's cursors): consumers by name with a prefix, keys by id, audit time
ranges; on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from keyswap.errors import InvalidInput, NotFound
from keyswap.manage import consumers, keys
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.context import Context
from tests.support.gateway_state import Clock, secret


def test_consumer_pages_walk_every_name_once_in_order(ctx: Context) -> None:
    names = [*sorted(f"c{i:02d}" for i in range(7)), "c_x", "c%y", "d"]
    for name in names:
        if name != "c%y":
            consumers.create_consumer(ctx, consumers.NewConsumer(name))
    seen: list[str] = []
    after = None
    while True:
        page = consumers.page_consumers(ctx, after=after, limit=3)
        seen += [c.name for c in page.consumers]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == sorted(n for n in names if n != "c%y")
    # LIKE metacharacters in a prefix are plain characters
    assert [c.name for c in consumers.page_consumers(ctx, prefix="c_").consumers] == ["c_x"]
    assert consumers.page_consumers(ctx, prefix="c%").consumers == []
    last = consumers.page_consumers(ctx, prefix="d", limit=1)
    assert [c.name for c in last.consumers] == ["d"]
    assert last.next_after is None


@pytest.mark.parametrize("limit", [0, 1001, -1])
def test_a_page_limit_outside_1_to_1000_is_refused(ctx: Context, limit: int) -> None:
    with pytest.raises(InvalidInput):
        consumers.page_consumers(ctx, limit=limit)
    with pytest.raises(InvalidInput):
        keys.page_keys(ctx, limit=limit)


def test_key_pages_by_id_per_consumer_and_global(ctx: Context) -> None:
    for name in ("a", "b"):
        consumers.create_consumer(ctx, consumers.NewConsumer(name))
    made = [keys.create_key(ctx, secret(), keys.NewKey(n)).record.id for n in ("a", "a", "b", "a")]
    first = keys.page_keys(ctx, limit=2)
    second = keys.page_keys(ctx, after=first.next_after, limit=2)
    assert second.next_after is None
    assert [k.id for k in first.keys + second.keys] == sorted(made)
    only_a = keys.page_keys(ctx, "a")
    assert {k.consumer_name for k in only_a.keys} == {"a"}
    assert len(only_a.keys) == 3
    with pytest.raises(NotFound):
        keys.page_keys(ctx, "nobody")


def test_audit_events_in_a_time_range(ctx: Context, clock: Clock) -> None:
    start = clock()
    consumers.create_consumer(ctx, consumers.NewConsumer("early"))
    clock.advance(100)
    consumers.create_consumer(ctx, consumers.NewConsumer("late"))
    targets = [e.target for e in list_events(ctx, AuditQuery(until=start + 50)).events]
    assert targets == ["consumer:early"]
    targets = [e.target for e in list_events(ctx, AuditQuery(since=start + 50)).events]
    assert targets == ["consumer:late"]
    assert list_events(ctx, AuditQuery(since=start + 50, until=start + 60)).events == []
