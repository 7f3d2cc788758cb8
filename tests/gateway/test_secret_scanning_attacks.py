"""More hostile reports to the GitHub secret scanning endpoint of a real gateway: odd signatures,
odd tokens, too many matches. Every one is a clear 4xx (or a 200 that changes nothing), never a 500,
and the live key stays usable unless a valid report names it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx

from keyswap.gateway.secretscanning import MAX_TOKENS, REPORT_PATH
from tests.gateway.test_secret_scanning import gateway, github, post, upstream
from tests.support.github import GitHubStandIn, report
from tests.support.running_gateway import Gateway

__all__ = ["gateway", "github", "upstream"]  # the fixtures, shared


def _still_live(gateway: Gateway) -> None:
    assert gateway.get("/x").status_code == 200


def test_odd_signatures_are_refused_and_change_nothing(
    gateway: Gateway, github: GitHubStandIn
) -> None:
    body = report([gateway.key])
    good = github.sign(body)
    der = base64.b64decode(good["Github-Public-Key-Signature"])
    other = github.sign(report([gateway.key], url="https://elsewhere.example/"))
    for signature in (
        "",
        "====",
        base64.urlsafe_b64encode(der).decode().replace("=", ""),
        base64.b64encode(der + b"\x00").decode(),
        base64.b64encode(b"\x30\x00").decode(),
        other["Github-Public-Key-Signature"],  # signs a different body
        "A" * 10_000,
    ):
        headers = {**good, "Github-Public-Key-Signature": signature}
        response = post(gateway, body, headers)
        assert response.status_code in (400, 401), (signature[:20], response.text)
    for identifier in ("", "x" * 10_000, "../../etc/passwd"):
        headers = {**good, "Github-Public-Key-Identifier": identifier}
        assert post(gateway, body, headers).status_code in (400, 401), identifier[:20]
    raw = [
        (b"content-type", b"application/json"),
        (b"github-public-key-identifier", "kéy".encode()),
        (b"github-public-key-signature", good["Github-Public-Key-Signature"].encode()),
    ]
    response = httpx.post(gateway.url + REPORT_PATH, content=body, headers=raw, timeout=10)
    assert response.status_code == 400
    _still_live(gateway)


def test_odd_tokens_are_false_positives_not_errors(gateway: Gateway, github: GitHubStandIn) -> None:
    tokens = [
        "",
        "ks_" + "é" * 36,
        "ks_" + "\ud800" * 36,
        "ＫＳ_" + gateway.key[3:],  # full-width prefix
        gateway.key.upper(),
        gateway.key + "\n",
        " " + gateway.key,
        gateway.key[:-1],
        "ks_" + "A" * 100_000,
        "\x00" * 40,
    ]
    matches = [
        {"token": t, "type": "x", "url": "https://x.test/", "source": "content"} for t in tokens
    ]
    body = json.dumps(matches).encode()
    response = post(gateway, body, github.sign(body))
    assert response.status_code == 200, response.text
    assert [item["label"] for item in response.json()] == ["false_positive"] * len(tokens)
    _still_live(gateway)


def test_more_than_the_most_matches_is_413_and_changes_nothing(
    gateway: Gateway, github: GitHubStandIn
) -> None:
    body = report([gateway.key] + ["x"] * MAX_TOKENS)
    response = post(gateway, body, github.sign(body))
    assert response.status_code == 413
    _still_live(gateway)


def test_non_string_fields_and_odd_json_are_400(gateway: Gateway, github: GitHubStandIn) -> None:
    for body in (
        b'[{"token": "' + gateway.key.encode() + b'", "url": null}]',
        b'[{"token": "' + gateway.key.encode() + b'", "type": ["x"]}]',
        b'[{"token": {"$ne": null}}]',
        b'"' + gateway.key.encode() + b'"',
        b"null",
        b"[NaN]",
        b'[{"token": "a"}] [1]',
        b"\xef\xbb\xbf[]",
        b'[{"token": "' + gateway.key.encode() + b'", "token": "x"}]',
    ):
        response = post(gateway, body, github.sign(body))
        assert response.status_code in (200, 400), (body[:30], response.text)
        if response.status_code == 200:
            assert all(item["label"] == "false_positive" for item in response.json())
    _still_live(gateway)


def test_a_chunked_body_past_the_cap_is_413(gateway: Gateway, github: GitHubStandIn) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(5):
            yield b" " * (1 << 20)
        yield b"]"

    response = httpx.post(
        gateway.url + REPORT_PATH, content=chunks(), headers=github.sign(b"[]"), timeout=10
    )
    assert response.status_code == 413
    _still_live(gateway)
