"""``keyswap consumers set-quota`` / ``set-credits`` and how ``consumers list`` shows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from keyswap.cli import main
from keyswap.manage import Actor, Context, audit
from keyswap.store import Store


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "keyswap.db")
    assert run("consumers", "create", "acme", "--db", path).exit_code == 0
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"KEYSWAP_DB": None})


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def test_set_quota_stores_a_canonical_quota_shown_by_list(db: str) -> None:
    assert (
        "may make 1000/day" in ok("consumers", "set-quota", "acme", "1000/day", "--db", db).stdout
    )
    shown = as_json(ok("consumers", "set-quota", "acme", "50000/Monthly", "--json", "--db", db))
    assert shown["quota"] == "50000/month"
    table = ok("consumers", "list", "--db", db).stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "CREATED", "RATE_LIMIT", "QUOTA", "CREDITS"]
    assert "50000/month" in table[1]
    [listed] = as_json(ok("consumers", "list", "--json", "--db", db))
    assert listed["quota"] == "50000/month"
    assert listed["credits"] is None
    assert "has no quota" in ok("consumers", "set-quota", "acme", "off", "--db", db).stdout
    assert as_json(ok("consumers", "list", "--json", "--db", db))[0]["quota"] is None


def test_set_credits_with_and_without_refill(db: str) -> None:
    shown = as_json(
        ok("consumers", "set-credits", "acme", "500", "--refill", "500/month", "--json", "--db", db)
    )
    assert (shown["credits"], shown["credits_refill"]) == (500, "500/month")
    assert shown["credits_set_at"] is not None
    assert "500;refill=500/month" in ok("consumers", "list", "--db", db).stdout
    text = ok("consumers", "set-credits", "acme", "20", "--db", db).stdout
    assert "20 credits (never refilled)" in text
    [listed] = as_json(ok("consumers", "list", "--json", "--db", db))
    assert (listed["credits"], listed["credits_refill"]) == (20, None)
    assert "no credits" in ok("consumers", "set-credits", "acme", "off", "--db", db).stdout


def test_changes_are_audited(db: str) -> None:
    ok("consumers", "set-quota", "acme", "10/day", "--db", db)
    ok("consumers", "set-credits", "acme", "5", "--refill", "5/day", "--db", db)
    store = Store(db)
    try:
        ctx = Context(store, Actor.cli("test"))
        events = audit.list_events(ctx, audit.AuditQuery(action="consumer")).events
    finally:
        store.close()
    changes = [event.changes for event in events if event.action == "consumer.update"]
    assert {"quota": "10/day"} in changes
    assert {"credits": 5, "credits_refill": "5/day"} in changes


@pytest.mark.parametrize(
    "args",
    [
        ["set-quota", "acme", "1000"],
        ["set-quota", "acme", "1000/week"],
        ["set-quota", "acme", "0/day"],
        ["set-quota", "acme", "-1/day"],
        ["set-quota", "acme", "99999999999999/day"],
        ["set-credits", "acme", "many"],
        ["set-credits", "acme", "-5"],
        ["set-credits", "acme", "5", "--refill", "5/hour"],
        ["set-credits", "acme", "off", "--refill", "5/day"],
    ],
)
def test_bad_values_are_usage_errors(db: str, args: list[str]) -> None:
    result = run("consumers", *args, "--db", db)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_unknown_consumer_is_a_one_line_error(db: str) -> None:
    result = run("consumers", "set-quota", "nobody", "10/day", "--db", db)
    assert result.exit_code == 1
    assert "unknown consumer 'nobody'" in result.stderr


def test_quota_shows_limit_used_and_remaining(db: str) -> None:
    assert "no quota and no credits" in ok("consumers", "quota", "acme", "--db", db).stdout
    ok("consumers", "set-quota", "acme", "10/day", "--db", db)
    ok("consumers", "set-credits", "acme", "5", "--refill", "5/month", "--db", db)
    table = ok("consumers", "quota", "acme", "--db", db).stdout.splitlines()
    assert table[0].split() == ["KIND", "PERIOD", "LIMIT", "USED", "REMAINING", "REFILLS_AT"]
    assert table[1].split()[:5] == ["quota", table[1].split()[1], "10", "0", "10"]
    [quota, credits] = as_json(ok("consumers", "quota", "acme", "--json", "--db", db))
    assert (quota["kind"], quota["limit"], quota["remaining"]) == ("quota", 10, 10)
    assert quota["refills_at"].endswith("T00:00:00Z")
    assert (credits["kind"], credits["limit"], credits["used"]) == ("credits", 5, 0)
    result = run("consumers", "quota", "nobody", "--db", db)
    assert result.exit_code == 1
