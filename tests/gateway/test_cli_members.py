from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gateway.test_cli_manage import fails, ok


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "keyswap.db")
    ok("consumers", "create", "acme", "--db", path)
    return path


def test_members_add_list_remove(db: str) -> None:
    assert (
        "Added email dev@example.com"
        in ok(
            "consumers", "members", "add", "acme", "--email", "Dev@Example.com", "--db", db
        ).output
    )
    ok("consumers", "members", "add", "acme", "--subject", "auth0|7", "--db", db)
    listed = json.loads(ok("consumers", "members", "list", "acme", "--json", "--db", db).output)
    assert [(m["kind"], m["value"]) for m in listed] == [
        ("email", "dev@example.com"),
        ("subject", "auth0|7"),
    ]
    table = ok("consumers", "members", "list", "acme", "--db", db).output
    assert "auth0|7" in table
    ok("consumers", "members", "remove", "acme", "--email", "dev@example.com", "--db", db)
    listed = json.loads(ok("consumers", "members", "list", "acme", "--json", "--db", db).output)
    assert [m["value"] for m in listed] == ["auth0|7"]


def test_members_errors_are_one_line(db: str) -> None:
    ok("consumers", "members", "add", "acme", "--subject", "s", "--db", db)
    assert "already a member" in fails(
        "consumers", "members", "add", "acme", "--subject", "s", "--db", db
    )
    assert "unknown consumer" in fails(
        "consumers", "members", "add", "nobody", "--email", "a@b.c", "--db", db
    )
    assert "e-mail address" in fails(
        "consumers", "members", "add", "acme", "--email", "nope", "--db", db
    )
    assert "not a member" in fails(
        "consumers", "members", "remove", "acme", "--email", "x@example.com", "--db", db
    )
    fails("consumers", "members", "add", "acme", "--db", db, exit_code=2)


def test_portal_link_prints_a_single_use_link(db: str) -> None:
    url = ok(
        "portal",
        "link",
        "acme",
        "--email",
        "dev@example.com",
        "--public-url",
        "https://api.example.com",
        "--db",
        db,
    ).output.strip()
    assert url.startswith("https://api.example.com/portal/signin/link?token=kspl_")
    listed = json.loads(ok("consumers", "members", "list", "acme", "--json", "--db", db).output)
    assert [m["value"] for m in listed] == ["dev@example.com"]
    shown = json.loads(
        ok(
            "portal",
            "link",
            "acme",
            "--email",
            "dev@example.com",
            "--expires-in",
            "1h",
            "--json",
            "--db",
            db,
        ).output
    )
    assert shown["url"].startswith("http://127.0.0.1:8082/portal/signin/link?token=")
    assert "unknown consumer" in fails("portal", "link", "nobody", "--email", "a@b.c", "--db", db)
    fails(
        "portal", "link", "acme", "--email", "a@b.c", "--expires-in", "8d", "--db", db, exit_code=2
    )
