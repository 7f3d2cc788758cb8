from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keyswap.gateway.apikeys import generate_key
from keyswap.gateway.secret import load_secret
from keyswap.gateway.secretscanning import (
    ALERTS_PATH,
    MAX_BODY,
    REPORT_PATH,
    GitHubKeys,
    SecretScanningSettings,
)
from keyswap.manage import Actor, Context
from keyswap.manage.leaks import set_leak_policy
from keyswap.manage.webhooks import set_webhook
from keyswap.verifier.fetch import JWKSFetcher
from keyswap.webhooks.dispatch import Dispatcher
from tests.support.gateway_state import Clock
from tests.support.github import GitHubStandIn, github_stand_in, hub_signature, report
from tests.support.running_gateway import Gateway, eventually, running_gateway
from tests.support.upstream import RecordingUpstream, recording_upstream
from tests.support.webhook_receiver import webhook_receiver

WEBHOOK_SECRET = b"webhook-secret-0123456789"


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    with github_stand_in() as stand_in:
        yield stand_in


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


@pytest.fixture
def gateway(
    tmp_path: Path, upstream: RecordingUpstream, github: GitHubStandIn
) -> Iterator[Gateway]:
    settings = SecretScanningSettings(
        keys_url=github.keys_url, cooldown=0, webhook_secret=WEBHOOK_SECRET
    )
    with running_gateway(
        tmp_path, upstream.url, real_clock=True, secret_scanning=settings
    ) as running:
        yield running


def post(gateway: Gateway, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(gateway.url + REPORT_PATH, content=body, headers=headers, timeout=10)


def signed(gateway: Gateway, github: GitHubStandIn, tokens: list[str]) -> httpx.Response:
    body = report(tokens)
    return post(gateway, body, github.sign(body))


def test_a_valid_report_labels_every_token_and_the_live_key_is_refused_within_a_second(
    gateway: Gateway, github: GitHubStandIn
) -> None:
    assert gateway.get("/x").status_code == 200  # cached by the gateway now
    _, revoked = gateway.admin.create("acme")
    gateway.admin.revoke(gateway.admin_store.list_api_keys("acme")[-1].id)
    unknown, foreign = generate_key(), "ghp_" + "A" * 36
    response = signed(gateway, github, [gateway.key, revoked, unknown, foreign])
    reported = time.monotonic()
    assert response.status_code == 200
    assert response.json() == [
        {"token_raw": token, "token_type": "keyswap_api_key", "label": label}
        for token, label in [
            (gateway.key, "true_positive"),
            (revoked, "false_positive"),
            (unknown, "false_positive"),
            (foreign, "false_positive"),
        ]
    ]
    eventually(lambda: gateway.get("/x").status_code == 401, timeout=1.0)
    assert time.monotonic() - reported < 1.0
    (event,) = [e for e in gateway.admin_store.list_audit_events() if e.action == "key.leak"]
    assert (event.actor_kind, event.actor_name) == ("secret-scanning", "github")
    assert event.changes["url"] == "https://github.com/octo/repo/blob/abc/config.py"


def test_a_tampered_body_changes_nothing(gateway: Gateway, github: GitHubStandIn) -> None:
    body = report([gateway.key])
    headers = github.sign(body)
    tampered = body.replace(b"config.py", b"config.pz")
    assert post(gateway, tampered, headers).status_code == 401
    assert gateway.get("/x").status_code == 200
    assert gateway.admin_store.key_leaks(["x"]) == {}


def test_a_missing_or_malformed_signature_is_refused(
    gateway: Gateway, github: GitHubStandIn
) -> None:
    body = report([gateway.key])
    headers = github.sign(body)
    no_signature = {k: v for k, v in headers.items() if k != "Github-Public-Key-Signature"}
    assert post(gateway, body, no_signature).status_code == 401
    garbage = {**headers, "Github-Public-Key-Signature": "not base64!"}
    assert post(gateway, body, garbage).status_code == 401
    huge = {**headers, "Github-Public-Key-Signature": "A" * 10_000}
    assert post(gateway, body, huge).status_code == 401
    assert gateway.get("/x").status_code == 200


def test_a_key_identifier_github_does_not_publish_is_refused(
    gateway: Gateway, github: GitHubStandIn
) -> None:
    body = report([gateway.key])
    headers = {**github.sign(body), "Github-Public-Key-Identifier": "f" * 64}
    response = post(gateway, body, headers)
    assert response.status_code == 401
    assert response.json() == {"error": "unknown key identifier"}
    assert gateway.get("/x").status_code == 200


def test_a_report_signed_with_a_rotated_github_key_is_accepted_after_one_fetch(
    gateway: Gateway, github: GitHubStandIn
) -> None:
    _, other = gateway.admin.create("acme")
    assert signed(gateway, github, [other]).status_code == 200
    fetches = github.fetches
    github.rotate(keep_old=False)
    response = signed(gateway, github, [gateway.key])
    assert response.status_code == 200
    assert response.json()[0]["label"] == "true_positive"
    assert github.fetches == fetches + 1


def test_a_replayed_report_does_not_roll_twice(gateway: Gateway, github: GitHubStandIn) -> None:
    gateway.admin_store.update_consumer("acme", leak_policy="roll")
    body = report([gateway.key])
    headers = github.sign(body)
    first = post(gateway, body, headers)
    keys_after_first = len(gateway.admin_store.list_api_keys("acme"))
    again = post(gateway, body, headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.json()[0]["label"] == "true_positive"
    assert len(gateway.admin_store.list_api_keys("acme")) == keys_after_first == 2


def test_a_batch_of_a_thousand_tokens_is_answered_with_one_label_each(
    gateway: Gateway, github: GitHubStandIn
) -> None:
    live = [gateway.admin.create("acme")[1] for _ in range(10)]
    tokens = live + [generate_key() for _ in range(990)]
    response = signed(gateway, github, tokens)
    assert response.status_code == 200
    labels = [item["label"] for item in response.json()]
    assert labels == ["true_positive"] * 10 + ["false_positive"] * 990
    # the timing goal (under 2 s) is measured by bench/secret_scanning.py


def test_bad_requests_are_refused_without_a_500(gateway: Gateway, github: GitHubStandIn) -> None:
    assert httpx.get(gateway.url + REPORT_PATH, timeout=5).status_code == 405
    too_big = httpx.post(
        gateway.url + REPORT_PATH,
        content=b"[" + b" " * MAX_BODY + b"]",
        headers=github.sign(b"[]"),
        timeout=10,
    )
    assert too_big.status_code == 413
    for body in (b"{}", b"not json", b"[1]", b'[{"token": 5}]', b"\xff"):
        assert post(gateway, body, github.sign(body)).status_code == 400, body
    body = report([gateway.key])
    headers = list(github.sign(body).items())
    twice = [*headers, ("Github-Public-Key-Signature", "AAAA")]
    assert httpx.post(gateway.url + REPORT_PATH, content=body, headers=twice).status_code == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    assert post(gateway, deep, github.sign(deep)).status_code == 400
    assert gateway.get("/x").status_code == 200


def test_refusals_are_logged_without_the_body(
    gateway: Gateway, github: GitHubStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    body = report([gateway.key])
    headers = github.sign(body + b" ")
    with caplog.at_level(logging.DEBUG):
        assert post(gateway, body, headers).status_code == 401
    assert "bad signature" in caplog.text
    assert gateway.key not in caplog.text


def test_the_endpoint_is_off_by_default(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with running_gateway(tmp_path, upstream.url) as plain:
        response = httpx.post(plain.url + REPORT_PATH, content=b"[]", timeout=5)
        assert response.status_code == 404


def test_a_custom_pattern_alert_webhook_revokes_the_key(gateway: Gateway) -> None:
    payload = {
        "action": "created",
        "alert": {
            "number": 7,
            "secret_type": "custom_keyswap",
            "secret": gateway.key,
            "html_url": "https://github.com/acme/app/security/secret-scanning/7",
        },
    }
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": "secret_scanning_alert",
        "X-Hub-Signature-256": hub_signature(WEBHOOK_SECRET, body),
    }
    forged = {**headers, "X-Hub-Signature-256": hub_signature(b"wrong-secret-0123456", body)}
    assert httpx.post(gateway.url + ALERTS_PATH, content=body, headers=forged).status_code == 401
    assert gateway.get("/x").status_code == 200
    response = httpx.post(gateway.url + ALERTS_PATH, content=body, headers=headers, timeout=10)
    assert response.status_code == 200
    assert response.json()["label"] == "true_positive"
    eventually(lambda: gateway.get("/x").status_code == 401, timeout=1.0)
    (leak,) = gateway.admin_store.leaks_of_key(gateway.key_id)
    assert leak.url == "https://github.com/acme/app/security/secret-scanning/7"
    ping = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": hub_signature(WEBHOOK_SECRET, b"{}")}
    assert httpx.post(gateway.url + ALERTS_PATH, content=b"{}", headers=ping).status_code == 200


def test_a_rolled_key_reaches_the_consumer_webhook_signed_and_works_at_the_gateway(
    gateway: Gateway, github: GitHubStandIn
) -> None:
    server_secret = load_secret(gateway.db_url, env={})
    ctx = Context(gateway.admin_store, Actor.cli("ops"))
    with webhook_receiver() as receiver:
        created = set_webhook(ctx, server_secret, "acme", receiver.url, allow_http_loopback=True)
        receiver.secret = created.secret
        set_leak_policy(ctx, "acme", "roll")
        assert signed(gateway, github, [gateway.key]).json()[0]["label"] == "true_positive"
        dispatcher = Dispatcher(gateway.admin_store, server_secret, timeout=2.0)
        try:
            dispatcher.drain()
        finally:
            dispatcher.close()
        # verified by the standardwebhooks library (and by hand) in the receiver
        assert [r.verified and r.hand_verified for r in receiver.received] == [True] * 3
        events = {r.parsed["type"]: r.parsed["data"] for r in receiver.received}
    assert set(events) == {"key.leaked", "key.revoked", "key.rolled"}
    assert events["key.leaked"]["url"] == "https://github.com/octo/repo/blob/abc/config.py"
    new_key = events["key.rolled"]["new_key"]
    assert gateway.get("/x", key=new_key).status_code == 200
    assert gateway.get("/x").status_code == 401


# -- GitHub's keys: the cache policy -------------------------------------------------------------


def test_an_unknown_identifier_refetches_at_most_once_per_cooldown(github: GitHubStandIn) -> None:
    clock = Clock(0.0)
    keys = GitHubKeys(github.keys_url, fetcher=JWKSFetcher(), cooldown=60, clock=clock)
    assert keys.get(github.current.identifier) is not None
    assert github.fetches == 1
    for _ in range(5):
        assert keys.get("made-up") is None
    assert github.fetches == 1
    clock.advance(61)
    assert keys.get("made-up") is None
    assert github.fetches == 2


def test_a_rotated_key_is_found_by_a_refetch_once_the_cooldown_allows(
    github: GitHubStandIn,
) -> None:
    clock = Clock(0.0)
    keys = GitHubKeys(github.keys_url, fetcher=JWKSFetcher(), cooldown=60, clock=clock)
    old = github.current.identifier
    assert keys.get(old) is not None
    github.rotate(keep_old=False)
    clock.advance(61)
    assert keys.get(github.current.identifier) is not None
    assert keys.identifiers == {github.current.identifier}


def test_a_failed_fetch_keeps_the_last_good_keys(github: GitHubStandIn) -> None:
    clock = Clock(0.0)
    keys = GitHubKeys(github.keys_url, fetcher=JWKSFetcher(), cooldown=1, ttl=10, clock=clock)
    identifier = github.current.identifier
    assert keys.get(identifier) is not None
    github.server.serve({"public_keys": []}, status=500)
    clock.advance(11)  # stale: fetched again, fails, the last good keys stay
    assert keys.get(identifier) is not None
    github.server.serve({"not": "github"})
    clock.advance(11)
    assert keys.get(identifier) is not None
    assert github.fetches == 3


def test_settings_are_validated() -> None:
    from keyswap.errors import ConfigError

    with pytest.raises(ConfigError):
        SecretScanningSettings(keys_url="ftp://example.com/keys")
    with pytest.raises(ConfigError):
        SecretScanningSettings(policy="delete")
    with pytest.raises(ConfigError):
        SecretScanningSettings(webhook_secret=b"short")
