from __future__ import annotations

import pytest
import sqlalchemy as sa

from keyswap.errors import InvalidInput, NotFound
from keyswap.manage import Context
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.consumers import NewConsumer, create_consumer
from keyswap.manage.members import list_members
from keyswap.manage.portal import LINK_PATH, create_link, redeem_link
from keyswap.store.schema import portal_links
from tests.support.gateway_state import Clock


def test_a_link_works_once(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    link = create_link(ctx, "acme", "Dev@Example.com")
    assert link.path().startswith(LINK_PATH + "?token=kspl_")
    assert link.url("https://api.example.com/").startswith("https://api.example.com/portal/")
    assert link.token not in repr(link)
    used = redeem_link(ctx, link.token)
    assert used is not None
    assert (used.consumer_name, used.email) == ("acme", "dev@example.com")
    assert redeem_link(ctx, link.token) is None


def test_a_link_expires(ctx: Context, clock: Clock) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    link = create_link(ctx, "acme", "dev@example.com", expires_in=60)
    clock.advance(60)
    assert redeem_link(ctx, link.token) is None


def test_a_link_makes_its_address_a_member_once(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    create_link(ctx, "acme", "dev@example.com")
    create_link(ctx, "acme", "dev@example.com")
    assert [m.value for m in list_members(ctx, "acme")] == ["dev@example.com"]


def test_only_a_digest_of_the_token_is_stored_or_audited(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    link = create_link(ctx, "acme", "dev@example.com")
    with ctx.store.engine.connect() as conn:
        rows = [tuple(map(str, row)) for row in conn.execute(sa.select(portal_links)).all()]
    assert rows
    assert all(link.token not in cell for row in rows for cell in row)
    events = list_events(ctx, AuditQuery(action="portal.link")).events
    assert len(events) == 1
    assert link.token not in repr(events[0])


@pytest.mark.parametrize("token", ["", "kspl_", "kspl_" + "A" * 43, "x" * 500, "ks_abc"])
def test_unknown_tokens_sign_nobody_in(ctx: Context, token: str) -> None:
    assert redeem_link(ctx, token) is None


def test_bad_links_are_refused(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    with pytest.raises(NotFound):
        create_link(ctx, "nobody", "dev@example.com")
    with pytest.raises(InvalidInput):
        create_link(ctx, "acme", "not an address")
    with pytest.raises(InvalidInput):
        create_link(ctx, "acme", "dev@example.com", expires_in=8 * 86400)
