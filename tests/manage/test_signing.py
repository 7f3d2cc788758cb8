from __future__ import annotations

from keyswap.gateway.keyring import Keyring
from keyswap.gateway.rotation import RotationScheduler
from keyswap.manage import Context
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.signing import (
    list_signing_keys,
    prune_signing_keys,
    rotate_signing_keys,
    scheduled_rotation,
    system_audit,
)
from keyswap.store import Store
from tests.support.gateway_state import Clock, secret


def test_forced_rotation_and_prune_are_audited_with_the_kids(
    ctx: Context, store: Store, clock: Clock
) -> None:
    keyring = Keyring(store, secret(), clock=clock, token_ttl=60, cache_margin=60)
    first = rotate_signing_keys(ctx, keyring)
    assert not first.had_keys
    before = {r.state: r.kid for r in list_signing_keys(ctx)}
    second = rotate_signing_keys(ctx, keyring, force=True)
    assert second.had_keys
    clock.advance(121)
    assert prune_signing_keys(ctx, keyring) == [before["active"]]
    assert prune_signing_keys(ctx, keyring) == []  # nothing to prune: no event
    page = list_events(ctx, AuditQuery(action="signing_key")).events
    assert [e.action for e in page] == [
        "signing_key.prune",
        "signing_key.rotate",
        "signing_key.create",
    ]
    assert page[0].changes["pruned"] == [before["active"]]
    assert page[1].changes["retired"] == before["active"]
    assert page[1].changes["active"] == before["next"]
    assert page[1].changes["force"] is True
    assert set(page[2].changes["created"].values()) == {"active", "next"}


def test_a_scheduled_rotation_is_audited_as_the_system(
    ctx: Context, store: Store, clock: Clock
) -> None:
    keyring = Keyring(store, secret(), clock=clock)
    keyring.ensure()
    scheduler = RotationScheduler(
        keyring,
        store,
        every=3600,
        min_next_age=0,
        clock=clock,
        audit=lambda: scheduled_rotation(store, 3600, clock=clock),
    )
    assert not scheduler.run_once()  # not due: nothing written, nothing recorded
    assert list_events(ctx, AuditQuery()).events == []
    clock.advance(3601)
    assert scheduler.run_once()
    (event,) = list_events(ctx, AuditQuery()).events
    assert (event.actor_kind, event.actor_name, event.action) == (
        "system",
        "rotation",
        "signing_key.rotate",
    )
    assert event.changes["scheduled"] is True
    assert event.changes["every"] == 3600


def test_a_gateway_keyring_audits_its_first_keys_and_its_pruning_as_the_system(
    ctx: Context, store: Store, clock: Clock
) -> None:
    keyring = Keyring(
        store,
        secret(),
        clock=clock,
        token_ttl=60,
        cache_margin=60,
        audit=system_audit(store, clock=clock),
    )
    keyring.ensure()
    keyring.ensure()  # keys exist: nothing written, nothing recorded
    (created,) = list_events(ctx, AuditQuery()).events
    assert (created.actor_kind, created.actor_name, created.action) == (
        "system",
        "startup",
        "signing_key.create",
    )
    assert set(created.changes["created"].values()) == {"active", "next"}
    assert created.changes["alg"] == "RS256"
    old_active = keyring.active().kid
    keyring.rotate()
    clock.advance(121)
    assert keyring.prune() == [old_active]
    assert keyring.prune() == []
    events = list_events(ctx, AuditQuery(action="signing_key.prune")).events
    assert [(e.actor_kind, e.actor_name, e.changes["pruned"]) for e in events] == [
        ("system", "prune", [old_active])
    ]
