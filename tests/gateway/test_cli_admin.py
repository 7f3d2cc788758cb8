from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from keyswap.cli import main
from keyswap.errors import InvalidInput
from keyswap.gateway.cli_admin import parse_since
from keyswap.manage import Actor, Context
from keyswap.manage.tokens import authenticate_admin_token
from keyswap.store import Store
from tests.support.gateway_state import SECRET_TEXT, secret


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "keyswap.db")


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    environment: dict[str, str | None] = {
        "KEYSWAP_DB": None,
        "KEYSWAP_SECRET_FILE": None,
        "KEYSWAP_AUDIT_RETENTION": None,
        "KEYSWAP_SECRET": SECRET_TEXT,
    }
    environment.update(env or {})
    return CliRunner().invoke(main, list(args), env=environment)


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def fails(*args: str, exit_code: int = 1) -> str:
    result = run(*args)
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.stderr
    return lines[-1]


def test_admin_tokens_create_list_revoke(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    created = ok_json(
        "admin-tokens", "create", "deploy", "--scopes", "consumers:write,keys:write", "--db", db
    )
    token = created["token"]
    assert token.startswith("ksadm_")
    assert created["scopes"] == ["consumers:write", "keys:write"]
    assert created["status"] == "active"
    assert created["expires_at"] is None
    store = Store(db)
    try:
        principal = authenticate_admin_token(Context(store, Actor.cli("t")), secret(), token)
    finally:
        store.close()
    assert principal.name == "deploy"
    text = ok("admin-tokens", "create", "ci", "--scopes", "admin", "--expires-in", "1d", "--db", db)
    assert "shown only once" in text.stdout
    assert "ksadm_" in text.stdout
    listed = ok_json("admin-tokens", "list", "--db", db)
    assert [t["name"] for t in listed] == ["deploy", "ci"]
    assert token not in json.dumps(listed)
    assert "ksadm_..." in ok("admin-tokens", "list", "--db", db).stdout
    revoked = ok_json("admin-tokens", "revoke", created["id"], "--db", db)
    assert revoked["status"] == "revoked"
    assert (
        f"Revoked admin token {created['id']} 'deploy'."
        in ok("admin-tokens", "revoke", created["id"], "--db", db).stdout
    )


def test_admin_token_input_errors_are_one_line(db: str) -> None:
    ok("db", "upgrade", "--db", db)
    assert "unknown admin scope 'orders:read'" in fails(
        "admin-tokens", "create", "x", "--scopes", "orders:read", "--db", db, exit_code=2
    )
    assert "--scopes" in fails("admin-tokens", "create", "x", "--db", db, exit_code=2)
    assert "admin token name" in fails(
        "admin-tokens", "create", "bad name", "--scopes", "admin", "--db", db
    )
    assert "unknown admin token id 'adm_x'" in fails("admin-tokens", "revoke", "adm_x", "--db", db)
    assert "No admin tokens." in ok("admin-tokens", "list", "--db", db).stdout


def test_cli_changes_are_audited_as_the_os_user_and_listed(db: str) -> None:
    ok("consumers", "create", "acme", "--scopes", "a,b", "--db", db)
    key = ok_json("keys", "create", "acme", "--db", db)
    ok("keys", "revoke", key["id"], "--db", db)
    ok("consumers", "set-limit", "acme", "--rate", "5/s", "--connections", "2", "--db", db)
    ok("consumers", "delete", "acme", "--yes", "--db", db)
    page = ok_json("audit", "list", "--db", db)
    user = Actor.cli().name
    assert user == getpass.getuser()
    assert [(e["actor"], e["action"], e["target"]) for e in page["events"]] == [
        (f"cli:{user}", "consumer.delete", "consumer:acme"),
        (f"cli:{user}", "consumer.update", "consumer:acme"),
        (f"cli:{user}", "key.revoke", f"key:{key['id']}"),
        (f"cli:{user}", "key.create", f"key:{key['id']}"),
        (f"cli:{user}", "consumer.create", "consumer:acme"),
    ]
    assert page["events"][1]["changes"] == {"rate_limit": "5/1s", "max_connections": 2}
    assert page["next_before"] is None
    text = ok("audit", "list", "--db", db).stdout
    assert key["key"] not in text
    assert key["key"] not in json.dumps(page)
    assert text.splitlines()[0].split() == [
        "ID",
        "AT",
        "ACTOR",
        "ACTION",
        "TARGET",
        "CLIENT",
        "CHANGES",
    ]
    keys_only = ok_json("audit", "list", "--action", "key", "--db", db)
    assert [e["action"] for e in keys_only["events"]] == ["key.revoke", "key.create"]
    first = ok_json("audit", "list", "--limit", "2", "--db", db)
    assert first["next_before"] == first["events"][-1]["id"]
    assert "More: --before" in ok("audit", "list", "--limit", "2", "--db", db).stdout
    rest = ok_json("audit", "list", "--before", str(first["next_before"]), "--db", db)
    assert len(rest["events"]) == 3
    by_target = ok_json("audit", "list", "--target", f"key:{key['id']}", "--db", db)
    assert len(by_target["events"]) == 2
    assert ok_json("audit", "list", "--since", "1h", "--db", db)["events"]
    assert not ok_json("audit", "list", "--since", "2999-01-01", "--db", db)["events"]
    assert not ok_json("audit", "list", "--actor", "token", "--db", db)["events"]


def test_audit_list_input_errors(db: str) -> None:
    assert "no database" in fails("audit", "list", "--db", db)
    ok("db", "upgrade", "--db", db)
    assert "No audit events." in ok("audit", "list", "--db", db).stdout
    assert "--since" in fails("audit", "list", "--since", "yesterday", "--db", db, exit_code=2)
    assert "--limit" in fails("audit", "list", "--limit", "0", "--db", db, exit_code=2)
    assert "unknown actor kind 'robot'" in fails("audit", "list", "--actor", "robot", "--db", db)


def test_a_refused_rotation_is_not_audited_and_a_mint_is(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    ok("signing-keys", "rotate", "--db", db)
    assert "pass --force" in fails("signing-keys", "rotate", "--db", db)
    token = ok(
        "tokens",
        "mint",
        "acme",
        "--issuer",
        "https://gw/iss",
        "--audience",
        "https://api",
        "--db",
        db,
    ).stdout.strip()
    events = ok_json("audit", "list", "--db", db)["events"]
    assert [e["action"] for e in events] == ["token.mint", "signing_key.create", "consumer.create"]
    mint = events[0]
    assert mint["target"] == "consumer:acme"
    assert mint["changes"]["audience"] == "https://api"
    assert token not in json.dumps(events)


def test_a_bad_audit_retention_is_a_usage_error_before_anything_is_created(db: str) -> None:
    result = run("consumers", "create", "acme", "--db", db, env={"KEYSWAP_AUDIT_RETENTION": "soon"})
    assert result.exit_code == 2, result.output
    assert "$KEYSWAP_AUDIT_RETENTION: invalid duration 'soon'" in result.stderr
    assert not Path(db).exists()


def test_the_audit_retention_from_the_environment_prunes_on_write(db: str) -> None:
    ok("consumers", "create", "old", "--db", db)
    store = Store(db)
    try:
        with store.engine.begin() as conn:  # make the first event 2 days old
            conn.execute(sa.text("UPDATE audit_events SET at = at - 2 * 86400"))
    finally:
        store.close()
    assert len(ok_json("audit", "list", "--db", db)["events"]) == 1
    result = run("consumers", "create", "new", "--db", db, env={"KEYSWAP_AUDIT_RETENTION": "1d"})
    assert result.exit_code == 0, result.output
    events = ok_json("audit", "list", "--db", db)["events"]
    assert [e["target"] for e in events] == ["consumer:new"]


def test_parse_since_takes_durations_and_iso_dates() -> None:
    assert parse_since("1h", now=10_000.0) == 6400.0
    assert parse_since("1970-01-02") == 86400.0
    assert parse_since("1970-01-01T01:00:00Z") == 3600.0
    assert parse_since("1970-01-01T02:00:00+01:00") == 3600.0
    with pytest.raises(InvalidInput):
        parse_since("last week")
