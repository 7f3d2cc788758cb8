from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from keyswap.cli import main
from keyswap.manage.webhooks import enqueue
from keyswap.store import Store
from tests.support.webhook_receiver import WebhookReceiver

ENV_NAMES = (
    "KEYSWAP_DB",
    "KEYSWAP_SECRET",
    "KEYSWAP_SECRET_FILE",
    "KEYSWAP_DATA_DIR",
    "XDG_DATA_HOME",
    "KEYSWAP_REDIS_URL",
)


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "keyswap.db")
    ok("consumers", "create", "acme", "--db", path)
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=dict.fromkeys(ENV_NAMES))


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def fails(*args: str, exit_code: int = 1) -> str:
    result = run(*args)
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def test_set_webhook_prints_the_secret_once_and_show_never_does(db: str) -> None:
    out = ok("consumers", "set-webhook", "acme", "https://hooks.example.com/in", "--db", db).output
    (secret,) = [w for w in out.split() if w.startswith("whsec_")]
    shown = ok("consumers", "webhook", "acme", "--db", db).output
    assert "https://hooks.example.com/in" in shown
    assert secret not in shown
    shown_json = as_json(ok("consumers", "webhook", "acme", "--json", "--db", db))
    assert shown_json["url"] == "https://hooks.example.com/in"
    assert "secret" not in shown_json
    again = as_json(
        ok("consumers", "set-webhook", "acme", "https://b.example.com/", "--json", "--db", db)
    )
    assert "secret" not in again
    assert again["url"] == "https://b.example.com/"
    rotated = as_json(ok("consumers", "rotate-webhook-secret", "acme", "--json", "--db", db))
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != secret
    audit = ok("audit", "list", "--json", "--db", db).output
    assert secret not in audit
    assert rotated["secret"] not in audit
    assert "webhook.rotate_secret" in audit
    ok("consumers", "clear-webhook", "acme", "--db", db)
    assert "has no webhook" in fails("consumers", "webhook", "acme", "--db", db)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/",
        "https://127.0.0.1/",
        "https://169.254.169.254/",
        "https://u:p@hooks.example.com/",
        "javascript:alert(1)",
    ],
)
def test_bad_urls_are_one_line_errors(db: str, url: str) -> None:
    fails("consumers", "set-webhook", "acme", url, "--db", db)


def test_unknown_consumer_and_event_are_one_line_errors(db: str) -> None:
    assert "unknown consumer" in fails(
        "consumers", "set-webhook", "nobody", "https://a.example.com/", "--db", db
    )
    assert "unknown webhook event" in fails("webhooks", "redeliver", "msg_nope", "--db", db)
    fails("webhooks", "deliveries", "--limit", "0", "--db", db, exit_code=2)


def test_dispatch_once_delivers_and_deliveries_lists_the_attempts(
    db: str, receiver: WebhookReceiver
) -> None:
    created = as_json(
        ok(
            "consumers",
            "set-webhook",
            "acme",
            receiver.url,
            "--allow-http-loopback",
            "--json",
            "--db",
            db,
        )
    )
    receiver.secret = created["secret"]
    store = Store(db)
    try:
        consumer = store.get_consumer("acme")
        assert consumer is not None
        event_id = enqueue(
            store, consumer_id=str(consumer.id), event_type="key.revoked", data={"key_id": "k"}
        )
    finally:
        store.close()
    assert event_id is not None
    assert as_json(ok("webhooks", "dispatch", "--once", "--json", "--db", db)) == {"attempts": 1}
    (got,) = receiver.received
    assert got.verified
    page = as_json(ok("webhooks", "deliveries", "acme", "--json", "--db", db))
    (attempt,) = page["attempts"]
    assert (attempt["event_id"], attempt["status_code"], attempt["type"]) == (
        event_id,
        204,
        "key.revoked",
    )
    table = ok("webhooks", "deliveries", "--db", db).output
    assert event_id in table
    assert "204" in table
    events = as_json(ok("webhooks", "events", "acme", "--json", "--db", db))
    assert [e["state"] for e in events] == ["delivered"]
    assert event_id in ok("webhooks", "redeliver", str(event_id), "--db", db).output
    ok("webhooks", "dispatch", "--once", "--db", db)
    assert len(receiver.received) == 2
    assert receiver.received[1].headers["webhook-id"] == event_id
