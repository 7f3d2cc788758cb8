from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from keyswap.errors import InsufficientScope, InvalidApiKey, InvalidInput, NotFound
from keyswap.gateway.apikeys import is_well_formed
from keyswap.gateway.secret import ServerSecret
from keyswap.manage import Context
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.scopes import has_scope, require_scope
from keyswap.manage.tokens import (
    ADMIN_TOKEN_REGEX,
    AdminPrincipal,
    NewAdminToken,
    authenticate_admin_token,
    create_admin_token,
    get_admin_token,
    list_admin_tokens,
    revoke_admin_token,
)
from keyswap.store import Store
from tests.support.gateway_state import Clock, secret


def test_a_new_token_authenticates_with_its_name_and_scopes(ctx: Context) -> None:
    created = create_admin_token(
        ctx, secret(), NewAdminToken("deploy", ("consumers:write", "keys:write", "keys:write"))
    )
    assert created.token.startswith("ksadm_")
    assert len(created.token) == 6 + 36
    assert is_well_formed(created.token, "ksadm")
    assert re.fullmatch(ADMIN_TOKEN_REGEX, created.token)
    assert created.record.id.startswith("adm_")
    assert created.record.hint == "ksadm_..." + created.token[-4:]
    assert created.token not in repr(created)
    principal = authenticate_admin_token(ctx, secret(), created.token)
    assert principal == AdminPrincipal(
        created.record.id, "deploy", ("consumers:write", "keys:write")
    )
    assert get_admin_token(ctx, created.record.id) == created.record
    with pytest.raises(NotFound, match="unknown admin token id"):
        get_admin_token(ctx, "adm_missing")


def test_only_an_hmac_of_the_token_is_stored(ctx: Context, store: Store) -> None:
    created = create_admin_token(ctx, secret(), NewAdminToken("deploy", ("admin",)))
    with store.engine.connect() as conn:
        rows = repr(conn.execute(sa.text("SELECT * FROM admin_tokens")).all())
        rows += repr(conn.execute(sa.text("SELECT * FROM audit_events")).all())
    assert created.token not in rows
    assert created.token[6:36] not in rows


def test_every_bad_token_is_refused_the_same_way(ctx: Context, clock: Clock) -> None:
    short = create_admin_token(ctx, secret(), NewAdminToken("short", ("admin",), expires_in=60))
    revoked = create_admin_token(ctx, secret(), NewAdminToken("gone", ("admin",)))
    revoke_admin_token(ctx, revoked.record.id)
    typo = short.token[:-1] + ("A" if short.token[-1] != "A" else "B")
    api_key_shaped = "ks_" + short.token[6:]
    other_secret = ServerSecret("another-secret-0123456789-abcdefghijklmnop")
    clock.advance(61)
    for bad in (short.token, revoked.token, typo, api_key_shaped, "", "ksadm_x"):
        with pytest.raises(InvalidApiKey, match=r"^Invalid admin token$"):
            authenticate_admin_token(ctx, secret(), bad)
    fresh = create_admin_token(ctx, secret(), NewAdminToken("fresh", ("admin",)))
    with pytest.raises(InvalidApiKey):
        authenticate_admin_token(ctx, other_secret, fresh.token)


def test_scopes_and_names_are_validated(ctx: Context) -> None:
    with pytest.raises(InvalidInput, match="unknown admin scope 'orders:read'"):
        create_admin_token(ctx, secret(), NewAdminToken("x", ("orders:read",)))
    with pytest.raises(InvalidInput, match="at least one scope"):
        create_admin_token(ctx, secret(), NewAdminToken("x", ()))
    with pytest.raises(InvalidInput, match="admin token name"):
        create_admin_token(ctx, secret(), NewAdminToken("bad name", ("admin",)))
    with pytest.raises(InvalidInput, match="positive"):
        create_admin_token(ctx, secret(), NewAdminToken("x", ("admin",), expires_in=0))
    assert list_admin_tokens(ctx) == []
    assert list_events(ctx, AuditQuery()).events == []


def test_create_and_revoke_are_audited(ctx: Context) -> None:
    created = create_admin_token(ctx, secret(), NewAdminToken("deploy", ("keys:read",)))
    revoked = revoke_admin_token(ctx, created.record.id)
    assert revoked.revoked_at == ctx.now()
    assert revoke_admin_token(ctx, created.record.id).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound, match="unknown admin token id 'adm_nope'"):
        revoke_admin_token(ctx, "adm_nope")
    page = list_events(ctx, AuditQuery(target=f"admin_token:{created.record.id}"))
    assert [e.action for e in page.events] == [
        "admin_token.revoke",
        "admin_token.revoke",
        "admin_token.create",
    ]
    assert page.events[-1].changes == {
        "name": "deploy",
        "scopes": ["keys:read"],
        "expires_at": None,
    }


def test_admin_grants_every_scope_and_write_does_not_imply_read() -> None:
    assert has_scope(("admin",), "audit:read")
    assert not has_scope(("keys:write",), "keys:read")
    with pytest.raises(InsufficientScope, match="keys:read") as raised:
        require_scope(("keys:write",), "keys:read")
    assert raised.value.scope == "keys:read"
    assert raised.value.status == 403
