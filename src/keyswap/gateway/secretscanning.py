"""GitHub secret scanning: leak reports for keyswap keys, answered on the gateway's public listener.

Two endpoints, both off unless ``keyswap gateway --secret-scanning github`` is given:

``POST /__keyswap/secret-scanning/github`` -- the partner program. GitHub posts a JSON array of
``{"token", "type", "url", "source"}``, signed with ECDSA P-256 / SHA-256 over the raw body: the base64
DER signature in ``Github-Public-Key-Signature``, the key named by ``Github-Public-Key-Identifier``
and taken from GitHub's published keys (:class:`GitHubKeys`). A missing or bad signature, or an
identifier GitHub does not publish, changes nothing and is answered ``401`` (logged with the
identifier, never the body). Every token that is a keyswap key is handled by
:func:`keyswap.manage.leaks.report_leaks` (the leak policy, audited with actor
``secret-scanning:github``); the answer is GitHub's feedback array
(``[{"token_raw", "token_type", "label"}]``, ``true_positive`` for a live keyswap key).

``POST /__keyswap/secret-scanning/github/alerts`` -- GitHub's ``secret_scanning_alert`` webhook, for
organisations that define keyswap's pattern as a custom pattern; only with a webhook secret
(``--secret-scanning-webhook-secret-file``), verified as ``X-Hub-Signature-256`` (HMAC-SHA-256 of the
raw body). A ``created``, ``reopened`` or ``publicly_leaked`` alert whose ``secret`` is a keyswap key is
handled as a report found at the alert's ``html_url``; anything else is acknowledged and ignored.

Bodies are bounded (:data:`MAX_BODY`, checked before reading past it); a request other than ``POST``
gets 405, a bad body 400, a store failure 503. Nothing here logs or returns a key but GitHub's own
``token_raw`` echo (GitHub sent it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keyswap.errors import ConfigError, JWKSFetchError, KeyswapError
from keyswap.gateway.proxy import Message, Receive, Scope, Send
from keyswap.gateway.secret import ServerSecret
from keyswap.manage.actor import Actor
from keyswap.manage.context import Context, audit_retention_from_env
from keyswap.manage.leaks import DEFAULT_LEAK_POLICY, Finding, LeakOutcome, Notifier, report_leaks
from keyswap.store.models import LEAK_POLICIES
from keyswap.store.sql import Store
from keyswap.verifier.fetch import JWKSFetcher, check_jwks_url, redact_url

__all__ = [
    "ALERTS_PATH",
    "GITHUB_KEYS_URL",
    "MAX_BODY",
    "MAX_TOKENS",
    "REPORT_PATH",
    "GitHubKeys",
    "SecretScanning",
    "SecretScanningSettings",
    "verify_github_signature",
    "verify_hub_signature",
]

log = logging.getLogger("keyswap.secret_scanning")

#: GitHub's published secret-scanning public keys (the partner program's documented URL).
GITHUB_KEYS_URL = "https://api.github.com/meta/public_keys/secret_scanning"
#: The partner program endpoint, under the public URL.
REPORT_PATH = "/__keyswap/secret-scanning/github"
#: The ``secret_scanning_alert`` webhook endpoint (custom patterns).
ALERTS_PATH = "/__keyswap/secret-scanning/github/alerts"
#: Largest request body accepted (bytes): a batch of a few thousand matches.
MAX_BODY = 4 << 20
#: Most matches one report may carry.
MAX_TOKENS = 10_000
_MAX_SIGNATURE = 256  # a DER P-256 signature is at most 72 bytes; its base64 under 100
_MAX_IDENTIFIER = 256
_ALERT_ACTIONS = frozenset({"created", "reopened", "publicly_leaked"})
_SOURCE = "github"


@dataclass(frozen=True, slots=True)
class SecretScanningSettings:
    """What ``--secret-scanning github`` configures.

    Attributes:
        keys_url: where GitHub publishes its secret-scanning public keys.
        policy: the deployment's leak policy (``revoke``, ``roll`` or ``notify``).
        webhook_secret: the ``secret_scanning_alert`` webhook's secret (``None``: that endpoint is off).
        cooldown: least seconds between two fetches of the keys for an unknown identifier.
        keys_ttl: seconds the keys are used before they are fetched again.
    """

    keys_url: str = GITHUB_KEYS_URL
    policy: str = DEFAULT_LEAK_POLICY
    webhook_secret: bytes | None = field(default=None, repr=False)
    cooldown: float = 60.0
    keys_ttl: float = 3600.0

    def __post_init__(self) -> None:
        check_jwks_url(self.keys_url)
        if self.policy not in LEAK_POLICIES:
            raise ConfigError(f"the leak policy must be one of {', '.join(LEAK_POLICIES)}")
        if self.webhook_secret is not None and len(self.webhook_secret) < 16:
            raise ConfigError("the secret scanning webhook secret must be 16 characters at least")
        if not (self.cooldown >= 0 and self.keys_ttl > 0):
            raise ConfigError("the key cooldown must not be negative and the TTL must be positive")


class GitHubKeys:
    """GitHub's secret-scanning public keys, by identifier.

    Cache policy: the keys are fetched on first use and used for ``ttl`` seconds, then fetched again
    on the next lookup; an identifier not in the set triggers a fetch at most once per ``cooldown``
    seconds (a flood of made-up identifiers costs GitHub one request per cooldown); a failed fetch
    keeps the last good keys (and counts for the cooldown). Fetches are single-flight (one at a time;
    a lookup waiting for one then reads its result). Only EC P-256 keys are kept; a document that is
    not GitHub's shape changes nothing.

    Blocking: call :meth:`get` on a thread.
    """

    def __init__(
        self,
        url: str = GITHUB_KEYS_URL,
        *,
        fetcher: JWKSFetcher | None = None,
        cooldown: float = 60.0,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_jwks_url(url)
        self.url = url
        self._fetcher = fetcher or JWKSFetcher()
        self._own_fetcher = fetcher is None
        self._cooldown = cooldown
        self._ttl = ttl
        self._clock = clock
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()
        #: Fetches made (successful or not).
        self.fetches = 0

    @property
    def identifiers(self) -> frozenset[str]:
        """The identifiers known now (no I/O)."""
        return frozenset(self._keys)

    def get(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        """The key named ``identifier``, fetching the keys when stale or when it is unknown and the
        cooldown allows; ``None`` if GitHub does not publish it (or cannot be reached)."""
        now = self._clock()
        if self._fresh(now):
            key = self._keys.get(identifier)
            if key is not None or not self._may_fetch(now):
                return key
        with self._lock:  # single-flight: a waiting lookup reads the fetch it waited for
            now = self._clock()
            if self._fresh(now) or self._tried_at is not None:
                key = self._keys.get(identifier) if self._fresh(now) else None
                if key is not None:
                    return key
                if not self._may_fetch(now):  # cooldown: the last good keys (stale or not)
                    return self._keys.get(identifier)
            self._refresh()
            return self._keys.get(identifier)

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self._ttl

    def _may_fetch(self, now: float) -> bool:
        return self._tried_at is None or now - self._tried_at >= self._cooldown

    def _refresh(self) -> None:
        self._tried_at = self._clock()
        self.fetches += 1
        try:
            document = self._fetcher.fetch_document(
                self.url, accept="application/json", what="GitHub public keys"
            ).document
            keys = _parse_keys(document)
        except (JWKSFetchError, ConfigError) as exc:
            log.warning("could not fetch GitHub's secret scanning keys: %s", exc.reason)
            return
        if not keys:
            log.warning(
                "GitHub's secret scanning keys at %s hold no usable key", redact_url(self.url)
            )
            return
        self._keys = keys
        self._fetched_at = self._tried_at

    def close(self) -> None:
        """Close the fetcher (if this object made it)."""
        if self._own_fetcher:
            self._fetcher.close()


def _parse_keys(document: Any) -> dict[str, ec.EllipticCurvePublicKey]:
    """``{"public_keys": [{"key_identifier", "key": PEM, "is_current"}]}`` -> P-256 keys by id."""
    if not isinstance(document, dict) or not isinstance(document.get("public_keys"), list):
        raise ConfigError("not GitHub's public keys document (no public_keys array)")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in document["public_keys"]:
        if not isinstance(entry, dict):
            continue
        identifier, pem = entry.get("key_identifier"), entry.get("key")
        if not isinstance(identifier, str) or not isinstance(pem, str) or not identifier:
            continue
        try:
            key = serialization.load_pem_public_key(pem.encode("ascii"))
        except (ValueError, TypeError, UnicodeEncodeError):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            keys[identifier] = key
    return keys


def verify_github_signature(key: ec.EllipticCurvePublicKey, body: bytes, signature: str) -> bool:
    """True if ``signature`` (base64 of a DER ECDSA signature) signs ``body`` with ``key`` (SHA-256)."""
    try:
        der = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(der, body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_hub_signature(secret: bytes, body: bytes, header: str) -> bool:
    """True if ``header`` is ``sha256=<hex HMAC-SHA-256 of body under secret>`` (GitHub webhooks)."""
    scheme, _, value = header.strip().partition("=")
    if scheme != "sha256" or len(value) != 64:
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, value.lower())


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _response(status: int, body: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
    ]
    return status, headers, data


def _error(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return _response(status, {"error": message})


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    found = None
    for key, value in headers:
        if key.lower() == name:
            if found is not None:
                raise _Refused(400, f"more than one {name.decode()} header")
            found = value
    if found is None:
        return None
    try:
        return found.decode("ascii")
    except UnicodeDecodeError:
        raise _Refused(400, f"the {name.decode()} header is not ASCII") from None


class SecretScanning:
    """The two endpoints as an ASGI sub-handler of the gateway (:meth:`handles`, :meth:`__call__`).

    Args:
        settings: what ``--secret-scanning`` configured.
        store: the gateway's store (reports are recorded and applied there).
        secret: the server secret (the API keys' HMAC subkey).
        prefix: the deployment's API key prefix.
        keys: GitHub's keys (default: fetched from ``settings.keys_url``).
        notify: tells consumers (default :func:`keyswap.manage.webhooks.enqueue`).
        clock: wall-clock seconds (report times, key expiry).
    """

    def __init__(
        self,
        settings: SecretScanningSettings,
        *,
        store: Store,
        secret: ServerSecret,
        prefix: str = "ks",
        keys: GitHubKeys | None = None,
        notify: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.keys = keys or GitHubKeys(
            settings.keys_url, cooldown=settings.cooldown, ttl=settings.keys_ttl
        )
        self._store = store
        self._secret = secret
        self._prefix = prefix
        self._notify = notify
        self._clock = clock
        self._retention = audit_retention_from_env()

    @staticmethod
    def handles(path: str) -> bool:
        """True for the paths served here."""
        return path in (REPORT_PATH, ALERTS_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer one request; returns the status sent."""
        path: str = scope["path"]
        try:
            if scope["method"] != "POST":
                status, headers, body = _error(405, "use POST")
                headers.append((b"allow", b"POST"))
                return await _send(send, (status, headers, body))
            if path == ALERTS_PATH and self.settings.webhook_secret is None:
                return await _send(send, _error(404, "not found"))
            raw = await _read_body(scope, receive)
            if path == REPORT_PATH:
                response = await self._report(scope, raw)
            else:
                response = await self._alert(scope, raw)
        except _Refused as refused:
            response = _error(refused.status, refused.message)
        return await _send(send, response)

    # -- the partner program --------------------------------------------------------------------

    async def _report(
        self, scope: Scope, raw: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = scope["headers"]
        identifier = _header(headers, b"github-public-key-identifier")
        signature = _header(headers, b"github-public-key-signature")
        client = _client(scope)
        if not identifier or not signature:
            log.warning("secret scanning report from %s refused: no signature", client)
            raise _Refused(401, "missing signature")
        if len(identifier) > _MAX_IDENTIFIER or len(signature) > _MAX_SIGNATURE:
            log.warning("secret scanning report from %s refused: oversized signature", client)
            raise _Refused(401, "bad signature")
        key = await asyncio.to_thread(self.keys.get, identifier)
        if key is None:
            log.warning(
                "secret scanning report from %s refused: unknown key identifier %.80s",
                client,
                identifier,
            )
            raise _Refused(401, "unknown key identifier")
        if not verify_github_signature(key, raw, signature):
            log.warning(
                "secret scanning report from %s refused: bad signature (key %.80s)",
                client,
                identifier,
            )
            raise _Refused(401, "bad signature")
        findings = _parse_report(raw)
        outcomes = await self._apply(findings, Actor.secret_scanning(_SOURCE, client=client))
        feedback = [
            {
                "token_raw": outcome.finding.token,
                "token_type": outcome.finding.token_type,
                "label": outcome.label,
            }
            for outcome in outcomes
        ]
        return _response(200, feedback)

    # -- the secret_scanning_alert webhook --------------------------------------------------------

    async def _alert(
        self, scope: Scope, raw: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        secret = self.settings.webhook_secret
        assert secret is not None
        headers = scope["headers"]
        client = _client(scope)
        signature = _header(headers, b"x-hub-signature-256")
        if not signature or not verify_hub_signature(secret, raw, signature):
            log.warning("secret scanning alert from %s refused: bad or missing signature", client)
            raise _Refused(401, "bad signature")
        event = _header(headers, b"x-github-event") or ""
        if event == "ping":
            return _response(200, {"ok": True})
        if event != "secret_scanning_alert":
            return _response(202, {"ignored": "not a secret_scanning_alert event"})
        payload = _json(raw)
        if not isinstance(payload, dict) or not isinstance(payload.get("alert"), dict):
            raise _Refused(400, "not a secret_scanning_alert payload")
        alert: dict[str, Any] = payload["alert"]
        if payload.get("action") not in _ALERT_ACTIONS:
            return _response(202, {"ignored": "action"})
        token = alert.get("secret")
        if not isinstance(token, str) or not token:
            return _response(202, {"ignored": "the alert carries no secret"})
        url = alert.get("html_url")
        finding = Finding(
            token,
            url if isinstance(url, str) else "",
            str(alert.get("secret_type") or ""),
        )
        outcomes = await self._apply([finding], Actor.secret_scanning(_SOURCE, client=client))
        outcome = outcomes[0]
        return _response(
            200,
            {"label": outcome.label, "action": outcome.action, "key_id": outcome.key_id},
        )

    async def _apply(self, findings: list[Finding], actor: Actor) -> list[LeakOutcome]:
        ctx = Context(self._store, actor, self._clock, self._retention)

        def run() -> list[LeakOutcome]:
            return report_leaks(
                ctx,
                self._secret,
                findings,
                source=_SOURCE,
                prefix=self._prefix,
                default_policy=self.settings.policy,
                notify=self._notify,
            )

        try:
            return await asyncio.to_thread(run)
        except KeyswapError as exc:
            log.error("secret scanning report could not be applied: %s", exc.reason)
            raise _Refused(503, "the key store is unavailable") from None
        except Exception as exc:  # a store failure: GitHub retries
            log.error("secret scanning report could not be applied (%s)", type(exc).__name__)
            raise _Refused(503, "the key store is unavailable") from None

    def close(self) -> None:
        """Release the key fetcher."""
        self.keys.close()


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"


async def _send(send: Send, response: tuple[int, list[tuple[bytes, bytes]], bytes]) -> int:
    status, headers, body = response
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return status


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The request body, at most :data:`MAX_BODY` bytes (413 past it, before reading it all)."""
    length = _header(scope["headers"], b"content-length")
    if length is not None:
        if not length.isdigit():
            raise _Refused(400, "bad Content-Length")
        if int(length) > MAX_BODY:
            raise _Refused(413, "body too large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "client gone")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refused(413, "body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Refused(400, "the body is not JSON") from None


def _parse_report(raw: bytes) -> list[Finding]:
    """GitHub's report: a JSON array of ``{"token", "type", "url", "source"}`` objects.

    Raises:
        _Refused: 400 for another shape; 413 for more than :data:`MAX_TOKENS` matches.
    """
    document = _json(raw)
    if not isinstance(document, list):
        raise _Refused(400, "the body must be a JSON array of matches")
    if len(document) > MAX_TOKENS:
        raise _Refused(413, f"at most {MAX_TOKENS} matches per report")
    findings = []
    for item in document:
        if not isinstance(item, dict):
            raise _Refused(400, "every match must be an object")
        token, kind, url = item.get("token"), item.get("type", ""), item.get("url", "")
        if not isinstance(token, str) or not isinstance(kind, str) or not isinstance(url, str):
            raise _Refused(400, "a match needs a string token (and string type and url)")
        findings.append(Finding(token, url, kind))
    return findings


def load_webhook_secret(path: str | None, env: Mapping[str, str]) -> bytes | None:
    """The ``secret_scanning_alert`` webhook secret from a file (``path``) or
    ``$KEYSWAP_SECRET_SCANNING_WEBHOOK_SECRET``; ``None`` if neither is set.

    Raises:
        ConfigError: the file cannot be read, or the secret is empty.
    """
    text: str | None = None
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the webhook secret file {path}: {exc.strerror}"
            ) from None
    elif env.get("KEYSWAP_SECRET_SCANNING_WEBHOOK_SECRET"):
        text = env["KEYSWAP_SECRET_SCANNING_WEBHOOK_SECRET"].strip()
    if text is None:
        return None
    if not text:
        raise ConfigError("the secret scanning webhook secret is empty")
    return text.encode("utf-8")
