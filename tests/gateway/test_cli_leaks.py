"""``keyswap keys scan`` and ``keyswap consumers set-leak-policy``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from keyswap.cli import main
from keyswap.gateway.apikeys import KEY_REGEX, generate_key
from keyswap.store import Store
from tests.gateway.test_cli_manage import ENV_NAMES


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "keyswap.db")


def run(*args: str, stdin: str | None = None) -> Result:
    env: dict[str, str | None] = dict.fromkeys(ENV_NAMES)
    env["KEYSWAP_LEAK_POLICY"] = None
    return CliRunner().invoke(main, list(args), env=env, input=stdin)


def ok(*args: str, stdin: str | None = None) -> Result:
    result = run(*args, stdin=stdin)
    assert result.exit_code == 0, result.output
    return result


def new_key(db: str, consumer: str = "acme") -> tuple[str, str]:
    if run("consumers", "create", consumer, "--db", db).exit_code not in (0, 1):
        pytest.fail("could not create the consumer")
    created = json.loads(ok("keys", "create", consumer, "--json", "--db", db).stdout)
    return created["id"], created["key"]


def status(db: str, key_id: str) -> str:
    keys = json.loads(ok("keys", "list", "--json", "--db", db).stdout)
    return str(next(k["status"] for k in keys if k["id"] == key_id))


def test_set_leak_policy_sets_shows_and_resets(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    shown = json.loads(
        ok("consumers", "set-leak-policy", "acme", "roll", "--json", "--db", db).stdout
    )
    assert shown["leak_policy"] == "roll"
    text = ok("consumers", "set-leak-policy", "acme", "default", "--db", db).output
    assert text == "Leak policy of consumer 'acme': default.\n"
    bad = run("consumers", "set-leak-policy", "acme", "explode", "--db", db)
    assert bad.exit_code == 2
    assert run("consumers", "set-leak-policy", "nobody", "roll", "--db", db).exit_code == 1


def test_scan_prints_what_it_would_do_without_a_key_and_changes_nothing(
    db: str, tmp_path: Path
) -> None:
    key_id, key = new_key(db)
    unknown = generate_key()
    leaked = tmp_path / "settings.py"
    leaked.write_text(f"# config\nAPI_KEY = '{key}'\nOTHER = '{unknown}'\n")
    result = ok("keys", "scan", str(leaked), "--db", db)
    assert re.search(KEY_REGEX, result.output) is None  # never a full key
    lines = result.output.splitlines()
    assert lines[0].split() == ["FOUND_AT", "CONSUMER", "KEY_ID", "HINT", "STATUS", "ACTION"]
    assert f"{leaked}:2" in lines[1]
    assert key_id in lines[1]
    assert "would revoke" in lines[1]
    assert "unknown" in lines[2]
    assert "none (not a live key)" in lines[2]
    assert lines[-1] == "Nothing was changed: run again with --apply to do it."
    assert status(db, key_id) == "active"


def test_scan_apply_revokes_audits_as_scan_and_is_idempotent(db: str) -> None:
    key_id, key = new_key(db)
    report = [{"RuleID": "keyswap", "Secret": key, "Link": "https://github.com/o/r/blob/c/f#L2"}]
    text = json.dumps(report)
    applied = json.loads(
        ok("keys", "scan", "-", "--apply", "--json", "--db", db, stdin=text).stdout
    )
    assert applied == [
        {
            "found_at": "https://github.com/o/r/blob/c/f#L2",
            "consumer": "acme",
            "key_id": key_id,
            "hint": f"ks_...{key[-4:]}",
            "status": "active",
            "label": "true_positive",
            "action": "revoke",
            "replay": False,
            "new_key_id": None,
            "applied": True,
        }
    ]
    assert status(db, key_id) == "revoked"
    store = Store(db)
    try:
        (event,) = [e for e in store.list_audit_events() if e.action == "key.leak"]
    finally:
        store.close()
    assert event.actor_kind == "scan"
    assert event.changes["url"] == "https://github.com/o/r/blob/c/f#L2"
    again = ok("keys", "scan", "-", "--apply", "--db", db, stdin=text).output
    assert "revoke (already done)" in again


def test_scan_applies_the_deployment_and_consumer_policies(db: str) -> None:
    _, notified = new_key(db, "acme")
    ok("consumers", "set-leak-policy", "acme", "notify", "--db", db)
    roll_id, rolled = new_key(db, "beta")
    text = f"{notified}\n{rolled}\n"
    result = ok(
        "keys", "scan", "-", "--apply", "--leak-policy", "roll", "--json", "--db", db, stdin=text
    )
    actions = [row["action"] for row in json.loads(result.stdout)]
    assert actions == ["notify", "roll"]
    assert status(db, roll_id) == "revoked"


def test_scan_of_nothing_says_so(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    assert (
        ok("keys", "scan", "-", "--db", db, stdin="no keys\n").output == "No keyswap keys found.\n"
    )


def test_gateway_secret_scanning_flags_are_checked_before_anything_starts(
    db: str, tmp_path: Path
) -> None:
    base = ["gateway", "--upstream", "http://127.0.0.1:9", "--port", "1", "--db", db]
    bad_url = run(*base, "--secret-scanning", "github", "--secret-scanning-keys-url", "ftp://x/k")
    assert bad_url.exit_code == 2
    assert "http" in bad_url.output
    missing = str(tmp_path / "nope")
    no_file = run(
        *base, "--secret-scanning", "github", "--secret-scanning-webhook-secret-file", missing
    )
    assert no_file.exit_code == 2
    assert "webhook secret file" in no_file.output
    short = tmp_path / "short"
    short.write_text("tiny\n")
    too_short = run(
        *base, "--secret-scanning", "github", "--secret-scanning-webhook-secret-file", str(short)
    )
    assert too_short.exit_code == 2
    assert "16 characters" in too_short.output
    assert not Path(db).exists()
