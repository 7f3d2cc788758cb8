"""`keyswap consumers create|set-scopes --scopes`, `keyswap keys create --scopes`, and their listings."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.secret import load_secret
from keyswap.store import Store
from tests.gateway.test_cli_manage import as_json, fails, ok


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "keyswap.db")


def scopes_of_key(db: str, key: str) -> tuple[str, ...]:
    """What the gateway would put in the `scope` claim for ``key``."""
    store = Store(db)
    try:
        return ApiKeys(store, load_secret(store.url, env={})).authenticate(key).scopes
    finally:
        store.close()


def test_consumers_get_scopes_at_creation_and_list_them(db: str) -> None:
    created = as_json(
        ok(
            "consumers",
            "create",
            "acme",
            "--scopes",
            "orders:read,orders:write",
            "--json",
            "--db",
            db,
        )
    )
    assert created["scopes"] == ["orders:read", "orders:write"]
    ok("consumers", "create", "beta", "--db", db)
    table = ok("consumers", "list", "--db", db).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "CREATED",
        "RATE_LIMIT",
        "QUOTA",
        "CREDITS",
        "SCOPES",
        "METADATA",
    ]
    assert table[1].split()[5] == "orders:read,orders:write"
    assert table[2].split()[5] == "-"
    listed = as_json(ok("consumers", "list", "--json", "--db", db))
    assert [c["scopes"] for c in listed] == [["orders:read", "orders:write"], []]


def test_set_scopes_replaces_and_an_empty_list_clears(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    said = ok("consumers", "set-scopes", "acme", "orders:read, orders:write", "--db", db).stdout
    assert said.strip() == "Consumer 'acme' now has the scopes orders:read,orders:write."
    changed = as_json(ok("consumers", "set-scopes", "acme", "orders:read", "--json", "--db", db))
    assert changed["scopes"] == ["orders:read"]
    cleared = ok("consumers", "set-scopes", "acme", "", "--db", db).stdout
    assert cleared.strip() == "Consumer 'acme' now has no scopes."
    assert as_json(ok("consumers", "list", "--json", "--db", db))[0]["scopes"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("consumers", "create", "acme", "--scopes", 'say"hi'), "invalid scope 'say\"hi'"),
        (("consumers", "create", "acme", "--scopes", "a\\b"), "invalid scope"),
        (("consumers", "create", "acme", "--scopes", "é"), "invalid scope"),
        (("consumers", "create", "acme", "--scopes", "x" * 65), "a scope is 1-64 printable"),
        (
            ("consumers", "create", "acme", "--scopes", ",".join(f"s{i}" for i in range(33))),
            "33 scopes given; the limit is 32",
        ),
        (("consumers", "set-scopes", "nobody", "a"), "unknown consumer 'nobody'"),
        (("consumers", "set-scopes", "acme", "a\tb\x01"), "invalid scope"),
        (("keys", "create", "acme", "--scopes", "admin"), "does not have the scope(s) admin"),
        (("keys", "create", "acme", "--scopes", "a b\x7f"), "invalid scope"),
    ],
)
def test_bad_scopes_are_one_error_line(db: str, args: tuple[str, ...], message: str) -> None:
    """A malformed scope is a bad command line (exit 2); a refused one is exit 1."""
    if args[0] == "keys" or args[1] == "set-scopes":
        ok("consumers", "create", "acme", "--scopes", "orders:read", "--db", db)
    refused = "unknown consumer" in message or "does not have" in message
    line = fails(*args, "--db", db, exit_code=1 if refused else 2)
    assert message in line
    if args[:2] == ("consumers", "create"):
        assert not Path(db).exists()  # refused before anything was created


def test_keys_get_their_own_scopes_or_their_consumers(db: str) -> None:
    ok("consumers", "create", "acme", "--scopes", "orders:read,orders:write", "--db", db)
    narrow = as_json(ok("keys", "create", "acme", "--scopes", "orders:read", "--json", "--db", db))
    assert (narrow["scopes"], narrow["effective_scopes"]) == (["orders:read"], ["orders:read"])
    inherits = as_json(ok("keys", "create", "acme", "--json", "--db", db))
    assert inherits["scopes"] is None
    assert inherits["effective_scopes"] == ["orders:read", "orders:write"]
    none = as_json(ok("keys", "create", "acme", "--scopes", "", "--json", "--db", db))
    assert (none["scopes"], none["effective_scopes"]) == ([], [])
    human = ok("keys", "create", "acme", "--db", db).stdout
    assert "Scopes:  orders:read,orders:write (its consumer's)" in human

    assert scopes_of_key(db, narrow["key"]) == ("orders:read",)
    assert scopes_of_key(db, inherits["key"]) == ("orders:read", "orders:write")
    assert scopes_of_key(db, none["key"]) == ()

    # The consumer's scopes shrink: every key is narrowed at once; its own scopes stay as created.
    ok("consumers", "set-scopes", "acme", "orders:write", "--db", db)
    rows = {r["id"]: r for r in as_json(ok("keys", "list", "--json", "--db", db))}
    assert rows[narrow["id"]]["scopes"] == ["orders:read"]
    assert rows[narrow["id"]]["effective_scopes"] == []
    assert rows[inherits["id"]]["effective_scopes"] == ["orders:write"]
    assert scopes_of_key(db, narrow["key"]) == ()
    assert scopes_of_key(db, inherits["key"]) == ("orders:write",)

    table = ok("keys", "list", "acme", "--db", db).stdout.splitlines()
    assert table[0].split()[-1] == "SCOPES"
    by_id = {line.split()[0]: line for line in table[1:]}
    assert by_id[narrow["id"]].endswith("- (own)")
    assert by_id[inherits["id"]].endswith("orders:write")


def test_a_rolled_key_keeps_its_own_scopes(db: str) -> None:
    ok("consumers", "create", "acme", "--scopes", "orders:read,orders:write", "--db", db)
    old = as_json(ok("keys", "create", "acme", "--scopes", "orders:read", "--json", "--db", db))
    new = as_json(ok("keys", "roll", old["id"], "--json", "--db", db))
    assert new["scopes"] == ["orders:read"]
    assert scopes_of_key(db, new["key"]) == ("orders:read",)
