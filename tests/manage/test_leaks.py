from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from keyswap.errors import InvalidApiKey, InvalidInput
from keyswap.gateway.apikeys import KEY_REGEX, ApiKeys, generate_key
from keyswap.gateway.secret import ServerSecret
from keyswap.manage import Actor, Context
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.consumers import NewConsumer, create_consumer, get_consumer
from keyswap.manage.keys import list_keys, revoke_key
from keyswap.manage.leaks import (
    Finding,
    assess,
    leak_fingerprint,
    parse_policy,
    report_leaks,
    set_leak_policy,
)
from keyswap.manage.webhooks import list_webhook_events, set_webhook
from keyswap.store import Store
from tests.support.gateway_state import Clock, secret

URL = "https://github.com/octo/repo/blob/abc/settings.py"


@dataclass
class Recorder:
    """Records the events it is asked to deliver (the consumer-webhook seam); ``webhook`` False
    answers as for a consumer without a webhook."""

    webhook: bool = True
    events: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def __call__(
        self,
        store: Any,
        *,
        consumer_id: str,
        event_type: str,
        data: dict[str, object],
        idempotency_key: str | None = None,
        seal: ServerSecret | None = None,
    ) -> str | None:
        if not self.webhook:
            return None
        if idempotency_key not in self.seen:
            self.seen.add(idempotency_key or "")
            self.events.append(
                {"consumer_id": consumer_id, "type": event_type, "data": data, "sealed": bool(seal)}
            )
        return "msg_1"

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]


@pytest.fixture
def github(store: Store, clock: Clock) -> Context:
    return Context(store, Actor.secret_scanning("github"), clock=clock)


def _key(ctx: Context, consumer: str = "acme") -> tuple[str, str]:
    if ctx.store.get_consumer(consumer) is None:
        create_consumer(ctx, NewConsumer(consumer))
    record, key = ApiKeys(ctx.store, secret(), clock=ctx.clock).create(consumer)
    return record.id, key


def _works(ctx: Context, key: str) -> bool:
    try:
        ApiKeys(ctx.store, secret(), cache_size=0, clock=ctx.clock).authenticate(key)
    except InvalidApiKey:
        return False
    return True


def _report(ctx: Context, tokens: list[str], notify: Recorder, **kw: Any) -> list[Any]:
    findings = [Finding(token, URL, "keyswap_api_key") for token in tokens]
    return report_leaks(ctx, secret(), findings, source="github", notify=notify, **kw)


def test_a_live_key_is_revoked_audited_with_the_url_and_the_consumer_told(
    github: Context,
) -> None:
    key_id, key = _key(github)
    notify = Recorder()
    (outcome,) = _report(github, [key], notify)
    assert (outcome.label, outcome.action, outcome.key_id) == ("true_positive", "revoke", key_id)
    assert not _works(github, key)
    (event,) = list_events(github, AuditQuery(action="key.leak")).events
    assert (event.actor_kind, event.actor_name, event.target) == (
        "secret-scanning",
        "github",
        f"key:{key_id}",
    )
    assert event.changes["url"] == URL
    assert event.changes["policy"] == "revoke"
    assert key not in json.dumps(event.changes)
    assert notify.types() == ["key.leaked", "key.revoked"]
    assert notify.events[0]["data"]["url"] == URL
    assert key not in json.dumps(notify.events)


def test_unknown_revoked_and_foreign_tokens_are_false_positives_and_change_nothing(
    github: Context,
) -> None:
    _, revoked = _key(github)
    revoke_key(github, list_keys(github)[0].id)
    revision = github.store.revision()
    unknown = generate_key()
    tokens = [revoked, unknown, "ghp_" + "a" * 36, unknown[:-1] + "x", "", "ks_short"]
    notify = Recorder()
    outcomes = _report(github, tokens, notify)
    assert [o.label for o in outcomes] == ["false_positive"] * len(tokens)
    assert [o.action for o in outcomes] == ["none"] * len(tokens)
    assert outcomes[0].status == "revoked"
    assert github.store.revision() == revision
    assert notify.events == []


def test_roll_revokes_now_and_delivers_a_working_new_key_only_through_the_webhook(
    github: Context,
) -> None:
    key_id, key = _key(github)
    set_leak_policy(github, "acme", "roll")
    notify = Recorder()
    (outcome,) = _report(github, [key], notify)
    assert outcome.action == "roll"
    assert not _works(github, key)
    assert notify.types() == ["key.leaked", "key.revoked", "key.rolled"]
    rolled = notify.events[2]["data"]
    assert notify.events[2]["sealed"]  # encrypted while it waits in the outbox
    assert not notify.events[0]["sealed"]
    new_key = str(rolled["new_key"])
    assert _works(github, new_key)
    assert rolled["new_key_id"] == outcome.new_key_id
    assert github.store.get_api_key(key_id).replaced_by == outcome.new_key_id  # type: ignore[union-attr]
    events = list_events(github, AuditQuery()).events
    assert new_key not in json.dumps([e.changes for e in events])
    assert [e.action for e in events if e.action.startswith("key.")] == ["key.leak"]


def test_roll_without_a_webhook_revokes_the_undeliverable_new_key_too(github: Context) -> None:
    _, key = _key(github)
    set_leak_policy(github, "acme", "roll")
    (outcome,) = _report(github, [key], Recorder(webhook=False))
    assert outcome.new_key_id is not None
    new = github.store.get_api_key(outcome.new_key_id)
    assert new is not None
    assert new.revoked_at is not None
    assert not _works(github, key)


def test_notify_changes_no_key_but_tells_the_consumer(github: Context) -> None:
    _, key = _key(github)
    notify = Recorder()
    (outcome,) = _report(github, [key], notify, default_policy="notify")
    assert (outcome.label, outcome.action) == ("true_positive", "notify")
    assert _works(github, key)
    assert notify.types() == ["key.leaked"]


def test_a_consumer_policy_overrides_the_deployment_default(github: Context) -> None:
    _, key = _key(github)
    set_leak_policy(github, "acme", "notify")
    (outcome,) = _report(github, [key], Recorder(), default_policy="revoke")
    assert outcome.action == "notify"
    set_leak_policy(github, "acme", None)
    assert get_consumer(github, "acme").leak_policy is None


def test_a_replayed_report_changes_nothing_and_sends_nothing_again(github: Context) -> None:
    _, key = _key(github)
    set_leak_policy(github, "acme", "roll")
    notify = Recorder()
    (first,) = _report(github, [key], notify)
    revision = github.store.revision()
    keys_before = len(list_keys(github))
    (again,) = _report(github, [key], notify)
    assert again.replay
    assert (again.label, again.action, again.new_key_id) == (
        "true_positive",
        "roll",
        first.new_key_id,
    )
    assert github.store.revision() == revision
    assert len(list_keys(github)) == keys_before
    assert notify.types() == ["key.leaked", "key.revoked", "key.rolled"]


def test_a_key_found_twice_in_one_report_is_rolled_once(github: Context) -> None:
    _, key = _key(github)
    set_leak_policy(github, "acme", "roll")
    findings = [Finding(key, URL + "#1"), Finding(key, URL + "#2")]
    notify = Recorder()
    outcomes = report_leaks(github, secret(), findings, source="github", notify=notify)
    assert [o.action for o in outcomes] == ["roll", "none"]
    assert len(list_keys(github)) == 2
    assert notify.types().count("key.rolled") == 1


def test_the_same_report_twice_in_one_batch_rolls_once(github: Context) -> None:
    _, key = _key(github)
    set_leak_policy(github, "acme", "roll")
    notify = Recorder()
    findings = [Finding(key, URL), Finding(key, URL)]
    outcomes = report_leaks(github, secret(), findings, source="github", notify=notify)
    assert [(o.action, o.replay) for o in outcomes] == [("roll", False), ("roll", True)]
    assert outcomes[0].new_key_id == outcomes[1].new_key_id
    assert len(list_keys(github)) == 2
    assert notify.types().count("key.rolled") == 1


def test_assess_is_a_dry_run(github: Context) -> None:
    _, key = _key(github)
    revision = github.store.revision()
    (outcome,) = assess(github, secret(), [Finding(key, URL)])
    assert (outcome.label, outcome.action, outcome.consumer) == ("true_positive", "revoke", "acme")
    assert github.store.revision() == revision
    assert _works(github, key)


def test_a_report_is_identified_by_key_and_url(github: Context) -> None:
    key_id, key = _key(github)
    _report(github, [key], Recorder(), default_policy="notify")
    (leak,) = github.store.leaks_of_key(key_id)
    assert leak.url == URL
    assert github.store.key_leaks([leak_fingerprint(key_id, URL)])
    assert leak_fingerprint(key_id, URL) != leak_fingerprint(key_id, URL + "x")


def test_policies_parse_and_bad_ones_are_refused(github: Context) -> None:
    assert parse_policy("ROLL") == "roll"
    assert parse_policy("default") is None
    with pytest.raises(InvalidInput):
        parse_policy("delete")
    create_consumer(github, NewConsumer("acme"))
    with pytest.raises(InvalidInput):
        set_leak_policy(github, "acme", "explode")
    consumer = set_leak_policy(github, "acme", "roll")
    assert consumer.leak_policy == "roll"
    (event,) = list_events(github, AuditQuery(action="consumer.update")).events
    assert event.changes == {"leak_policy": "roll"}


def test_a_rolled_key_waits_in_the_webhook_outbox_sealed_never_in_clear(github: Context) -> None:
    _, key = _key(github)
    set_leak_policy(github, "acme", "roll")
    set_webhook(github, secret(), "acme", "https://hooks.example.com/keyswap")
    report_leaks(github, secret(), [Finding(key, URL)], source="github")
    events = {e.type: e for e in list_webhook_events(github, "acme")}
    assert set(events) == {"key.leaked", "key.revoked", "key.rolled"}
    stored = json.dumps([e.payload for e in events.values()])
    assert re.search(KEY_REGEX, stored) is None  # no key, old or new, in clear
    assert "data" not in events["key.rolled"].payload
    assert events["key.leaked"].payload["data"]["url"] == URL


def test_a_report_larger_than_a_batch_is_applied_in_several_transactions(
    github: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyswap.manage.leaks as leaks

    monkeypatch.setattr(leaks, "BATCH", 3)
    keys = [_key(github)[1] for _ in range(7)]
    revision = github.store.revision()
    outcomes = _report(github, [*keys, generate_key()], Recorder())
    assert [o.action for o in outcomes] == ["revoke"] * 7 + ["none"]
    assert github.store.revision() == revision + 3
    assert not any(_works(github, key) for key in keys)
    events = list_events(github, AuditQuery(action="key.leak")).events
    assert sorted(e.target for e in events) == sorted(f"key:{o.key_id}" for o in outcomes[:7])


def test_two_nodes_applying_the_same_report_at_once_roll_the_key_once(store: Store) -> None:
    other = Store(store.url)
    try:
        ctx = Context(store, Actor.secret_scanning("github"))
        _, key = _key(ctx)
        set_leak_policy(ctx, "acme", "roll")
        barrier = threading.Barrier(2)
        results: list[Any] = []

        def node(opened: Store) -> None:
            node_ctx = Context(opened, Actor.secret_scanning("github"))
            barrier.wait()
            results.extend(_report(node_ctx, [key], Recorder()))

        threads = [threading.Thread(target=node, args=(s,)) for s in (store, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(o.replay for o in results) == [False, True]
        assert len({o.new_key_id for o in results}) == 1
        assert len(list_keys(ctx)) == 2
    finally:
        other.close()
