from __future__ import annotations

import pytest

from keyswap.errors import AlreadyExists, InvalidApiKey, InvalidInput, NotFound
from keyswap.gateway.apikeys import ApiKeys
from keyswap.manage import Context
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.consumers import (
    ConsumerUpdate,
    NewConsumer,
    create_consumer,
    delete_consumer,
    get_consumer,
    update_consumer,
)
from keyswap.manage.keys import NewKey, create_key, list_keys, roll_key
from keyswap.store import Store
from tests.support.gateway_state import Clock, secret


def test_an_update_changes_every_field_or_none(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme", {"a": 1}))
    with pytest.raises(InvalidInput):
        update_consumer(ctx, "acme", ConsumerUpdate(metadata={"a": 2}, rate_limit="fast"))
    consumer = get_consumer(ctx, "acme")
    assert (consumer.metadata, consumer.rate_limit) == ({"a": 1}, None)
    updated = update_consumer(
        ctx, "acme", ConsumerUpdate(metadata={"a": 2}, rate_limit=None, max_connections=5)
    )
    assert (updated.metadata, updated.rate_limit, updated.max_connections) == ({"a": 2}, None, 5)
    unchanged = update_consumer(ctx, "acme", ConsumerUpdate())
    assert unchanged == updated
    assert [e.action for e in list_events(ctx, AuditQuery()).events] == [
        "consumer.update",
        "consumer.create",
    ]


def test_duplicate_and_missing_consumers(ctx: Context) -> None:
    create_consumer(ctx, NewConsumer("acme"))
    with pytest.raises(AlreadyExists):
        create_consumer(ctx, NewConsumer("acme"))
    with pytest.raises(NotFound):
        get_consumer(ctx, "ghost")
    with pytest.raises(NotFound):
        delete_consumer(ctx, "ghost")
    assert len(list_events(ctx, AuditQuery()).events) == 1


def test_keys_created_and_rolled_through_the_service_work_at_the_gateway(
    ctx: Context, store: Store, clock: Clock
) -> None:
    create_consumer(ctx, NewConsumer("acme", scopes=("a", "b")))
    created = create_key(ctx, secret(), NewKey("acme", scopes=("a",)))
    gateway = ApiKeys(store, secret(), clock=clock, cache_ttl=0)
    assert gateway.authenticate(created.key).scopes == ("a",)
    rolled = roll_key(ctx, secret(), created.record.id, grace=0)
    assert rolled.old.replaced_by == rolled.new.record.id
    assert gateway.authenticate(rolled.new.key).consumer == "acme"
    clock.advance(1)
    with pytest.raises(InvalidApiKey):
        gateway.authenticate(created.key)
    event = list_events(ctx, AuditQuery(action="key.roll")).events[0]
    assert event.target == f"key:{created.record.id}"
    assert event.changes["new_key_id"] == rolled.new.record.id
    deleted = delete_consumer(ctx, "acme")
    assert deleted.api_keys_deleted == 2
    with pytest.raises(NotFound):
        list_keys(ctx, "acme")
