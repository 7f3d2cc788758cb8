from __future__ import annotations

import pytest

from keyswap.errors import AlreadyExists, InvalidInput, NotFound
from keyswap.manage import Actor, Context
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.consumers import NewConsumer, create_consumer, delete_consumer
from keyswap.manage.keys import NewKey, create_key, revoke_key, set_key_expiry
from keyswap.manage.members import add_member, consumers_of, list_members, remove_member
from tests.support.gateway_state import Clock, secret


def test_members_are_added_listed_and_removed(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    create_consumer(ctx, NewConsumer("globex"))
    alice = add_member(ctx, "acme", "email", "Alice@Example.COM")
    assert (alice.kind, alice.value) == ("email", "alice@example.com")
    add_member(ctx, "globex", "email", "alice@example.com")
    add_member(ctx, "globex", "subject", "auth0|42")
    with pytest.raises(AlreadyExists):
        add_member(ctx, "acme", "email", "alice@example.com")
    assert [m.value for m in list_members(ctx, "acme")] == ["alice@example.com"]
    assert [c.name for c in consumers_of(ctx, [("email", "alice@example.com")])] == [
        "acme",
        "globex",
    ]
    assert [c.name for c in consumers_of(ctx, [("subject", "auth0|42")])] == ["globex"]
    assert consumers_of(ctx, [("subject", "alice@example.com")]) == []
    remove_member(ctx, "acme", alice.id)
    assert list_members(ctx, "acme") == []
    with pytest.raises(NotFound):
        remove_member(ctx, "globex", alice.id)  # another consumer's member id is unknown here
    actions = [e.action for e in list_events(ctx, AuditQuery(action="member")).events]
    assert actions == ["member.remove", "member.add", "member.add", "member.add"]


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("email", "no-at-sign"),
        ("email", "a b@example.com"),
        ("email", "<x>@example.com"),
        ("email", "a@" + "b" * 260),
        ("subject", ""),
        ("subject", "has space"),
        ("phone", "123"),
    ],
)
def test_bad_members_are_refused(ctx: Context, kind: str, value: str) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    with pytest.raises(InvalidInput):
        add_member(ctx, "acme", kind, value)


def test_members_go_with_their_consumer(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    add_member(ctx, "acme", "email", "a@example.com")
    delete_consumer(ctx, "acme")
    assert consumers_of(ctx, [("email", "a@example.com")]) == []
    with pytest.raises(NotFound):
        add_member(ctx, "acme", "email", "a@example.com")


def test_a_portal_actor_is_audited_by_name(ctx: Context, clock: Clock) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    person = Context(ctx.store, Actor.portal("dev@example.com"), clock=clock)
    created = create_key(person, secret(), NewKey("acme"))
    event = list_events(ctx, AuditQuery(actor="portal:dev@example.com")).events[0]
    assert (event.action, event.target) == ("key.create", f"key:{created.record.id}")


def test_a_key_expiry_is_set_and_cleared(ctx: Context, clock: Clock) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    record = create_key(ctx, secret(), NewKey("acme")).record
    later = clock() + 3600
    assert set_key_expiry(ctx, record.id, later).expires_at == later
    assert set_key_expiry(ctx, record.id, None).expires_at is None
    with pytest.raises(InvalidInput):
        set_key_expiry(ctx, record.id, clock() - 1)
    revoke_key(ctx, record.id)
    with pytest.raises(InvalidInput):
        set_key_expiry(ctx, record.id, later)
    with pytest.raises(NotFound):
        set_key_expiry(ctx, "key_unknown", later)
    actions = [e.action for e in list_events(ctx, AuditQuery(action="key.expiry")).events]
    assert len(actions) == 2


def test_a_key_label_is_kept_and_survives_a_roll(ctx: Context) -> None:
    from keyswap.manage.keys import roll_key

    create_consumer(ctx, NewConsumer("acme"))
    record = create_key(ctx, secret(), NewKey("acme", label="  production ")).record
    assert record.label == "production"
    rolled = roll_key(ctx, secret(), record.id, grace=60)
    assert rolled.new.record.label == "production"
    assert create_key(ctx, secret(), NewKey("acme", label="")).record.label is None
    with pytest.raises(InvalidInput):
        create_key(ctx, secret(), NewKey("acme", label="x" * 65))
    with pytest.raises(InvalidInput):
        create_key(ctx, secret(), NewKey("acme", label="bad\nline"))
