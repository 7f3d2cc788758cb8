from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from keyswap.errors import Conflict, InvalidInput, NotFound
from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.keyring import Keyring
from keyswap.manage import Actor, Context
from keyswap.manage.audit import AuditQuery, list_events, record_event, recording
from keyswap.manage.consumers import ConsumerUpdate, NewConsumer, create_consumer, update_consumer
from keyswap.manage.keys import NewKey, create_key, revoke_key
from keyswap.manage.signing import rotate_signing_keys
from keyswap.store import Store
from tests.support.gateway_state import Clock, secret


def events(ctx: Context, **filters: object) -> list[tuple[str, str, str]]:
    page = list_events(ctx, AuditQuery(**filters))  # type: ignore[arg-type]
    return [(f"{e.actor_kind}:{e.actor_name}", e.action, e.target) for e in page.events]


def test_every_change_records_one_event_with_actor_action_target_and_fields(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme", {"plan": "pro"}, ("orders:read",)))
    update_consumer(ctx, "acme", ConsumerUpdate(rate_limit="10/1s", max_connections=3))
    created = create_key(ctx, secret(), NewKey("acme", expires_in=60))
    revoke_key(ctx, created.record.id)
    page = list_events(ctx, AuditQuery())
    assert [(e.action, e.target) for e in page.events] == [
        ("key.revoke", f"key:{created.record.id}"),
        ("key.create", f"key:{created.record.id}"),
        ("consumer.update", "consumer:acme"),
        ("consumer.create", "consumer:acme"),
    ]
    assert {(e.actor_kind, e.actor_name) for e in page.events} == {("cli", "alice")}
    assert page.events[2].changes == {"rate_limit": "10/1s", "max_connections": 3}
    assert page.events[3].changes == {"metadata": {"plan": "pro"}, "scopes": ["orders:read"]}
    assert page.events[1].changes["key_id"] == created.record.id
    assert page.events[1].changes["expires_at"] == ctx.now() + 60
    assert page.events[0].at == ctx.now()


def test_no_secret_reaches_the_audit_log(ctx: Context, store: Store) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    created = create_key(ctx, secret(), NewKey("acme"))
    with store.engine.connect() as conn:
        dump = repr(conn.execute(sa.text("SELECT * FROM audit_events")).all())
    assert created.key not in dump
    assert created.key[-10:] not in dump
    with (
        pytest.raises(ValueError, match="may not carry key"),
        recording(ctx, "x.y", "t", {"key": "ks_..."}),
    ):
        pass


def test_a_refused_change_records_nothing(ctx: Context, store: Store) -> None:
    with pytest.raises(NotFound):
        revoke_key(ctx, "key_missing")
    with pytest.raises(NotFound):
        update_consumer(ctx, "ghost", ConsumerUpdate(rate_limit="unlimited"))
    with pytest.raises(InvalidInput):
        create_consumer(ctx, NewConsumer("bad name"))
    keyring = Keyring(store, secret(), clock=ctx.clock)
    rotate_signing_keys(ctx, keyring)  # creates the first keys
    with pytest.raises(Conflict, match="pass --force"):
        rotate_signing_keys(ctx, keyring)  # the next key is brand new
    assert [action for _, action, _ in events(ctx)] == ["signing_key.create"]


def test_the_event_and_the_change_commit_together_or_not_at_all(ctx: Context, store: Store) -> None:
    # An event that cannot be written (not JSON) rolls the change back with it.
    with (
        pytest.raises(Exception, match="not JSON serializable"),
        recording(ctx, "consumer.create", "consumer:acme", {"odd": object()}),
    ):
        store.create_consumer("acme")
    assert store.get_consumer("acme") is None
    assert events(ctx) == []


def test_a_block_records_once_even_when_it_writes_twice(ctx: Context, store: Store) -> None:
    with recording(ctx, "consumer.create", "consumer:a"):
        store.create_consumer("a")
        store.create_consumer("b")
    assert events(ctx) == [("cli:alice", "consumer.create", "consumer:a")]


def test_another_threads_change_is_not_attributed_to_this_block(ctx: Context, store: Store) -> None:
    other = threading.Thread(target=lambda: store.create_consumer("theirs"))
    with recording(ctx, "consumer.create", "consumer:mine"):
        other.start()
        other.join()
        assert events(ctx) == []  # the other thread's change carried no event
        store.create_consumer("mine")
    assert events(ctx) == [("cli:alice", "consumer.create", "consumer:mine")]


def test_request_id_and_client_are_recorded_for_api_actors(store: Store, clock: Clock) -> None:
    actor = Actor.admin_token("deploy-bot", request_id="req-1", client="10.0.0.7")
    ctx = Context(store, actor, clock=clock)
    create_consumer(ctx, NewConsumer("acme"))
    event = list_events(ctx, AuditQuery()).events[0]
    assert (event.actor_kind, event.actor_name) == ("token", "deploy-bot")
    assert (event.request_id, event.client) == ("req-1", "10.0.0.7")


def test_events_older_than_the_retention_are_pruned_on_write(store: Store, clock: Clock) -> None:
    ctx = Context(store, Actor.cli("alice"), clock=clock, audit_retention=10 * 86400)
    create_consumer(ctx, NewConsumer("old"))
    clock.advance(9 * 86400)
    create_consumer(ctx, NewConsumer("middle"))
    assert len(events(ctx)) == 2
    clock.advance(2 * 86400)  # "old" is 11 days old now
    create_consumer(ctx, NewConsumer("new"))
    assert [target for _, _, target in events(ctx)] == ["consumer:new", "consumer:middle"]
    forever = Context(store, Actor.cli("alice"), clock=clock, audit_retention=0)
    clock.advance(365 * 86400)
    create_consumer(forever, NewConsumer("later"))
    assert len(events(ctx)) == 3


def test_listing_filters_and_pages_newest_first(store: Store, clock: Clock) -> None:
    alice = Context(store, Actor.cli("alice"), clock=clock)
    bot = Context(store, Actor.admin_token("bot"), clock=clock)
    for name in ("a", "b", "c"):
        create_consumer(alice, NewConsumer(name))
        clock.advance(60)
    created = create_key(bot, secret(), NewKey("a"))
    revoke_key(bot, created.record.id)
    assert [a for _, a, _ in events(alice, actor="token")] == ["key.revoke", "key.create"]
    assert len(events(alice, actor="cli:alice")) == 3
    assert events(alice, actor="cli:bob") == []
    assert [a for _, a, _ in events(alice, action="key")] == ["key.revoke", "key.create"]
    assert [a for _, a, _ in events(alice, action="key.revoke")] == ["key.revoke"]
    assert events(alice, target="consumer:b") == [("cli:alice", "consumer.create", "consumer:b")]
    assert len(events(alice, since=clock.now - 60)) == 3
    first = list_events(alice, AuditQuery(limit=2))
    assert first.next_before is not None
    second = list_events(alice, AuditQuery(limit=2, before=first.next_before))
    third = list_events(alice, AuditQuery(limit=2, before=second.next_before))
    ids = [e.id for page in (first, second, third) for e in page.events]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 5
    assert third.next_before is None
    with pytest.raises(InvalidInput, match="unknown actor kind"):
        list_events(alice, AuditQuery(actor="robot"))
    with pytest.raises(InvalidInput, match="limit"):
        list_events(alice, AuditQuery(limit=0))


def test_an_action_without_a_store_change_is_recorded_on_its_own(ctx: Context) -> None:
    record_event(ctx, "token.mint", "consumer:acme", {"kid": "k1"})
    assert events(ctx) == [("cli:alice", "token.mint", "consumer:acme")]


def test_a_target_with_braces_is_recorded_as_given(ctx: Context, store: Store) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    with recording(ctx, "key.create", "key:{key_id} {other}"):
        record, _ = ApiKeys(store, secret()).create("acme")
    (event,) = list_events(ctx, AuditQuery(action="key.create")).events
    assert event.target == f"key:{record.id} {{other}}"
