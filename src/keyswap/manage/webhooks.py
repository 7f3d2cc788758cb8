"""Consumer webhooks: set, show, clear, rotate the secret, list events and deliveries, redeliver; and
:func:`enqueue`, which records an event for delivery.

A consumer has at most one endpoint: an ``https://`` URL (``http://`` only to a loopback address, and
only when explicitly allowed: local development and tests) and a ``whsec_`` secret, generated here and
shown once (:class:`NewSecret`), kept only encrypted under the server secret
(:mod:`keyswap.webhooks.secrets`). Changes are audited (``webhook.set``, ``webhook.clear``,
``webhook.rotate_secret``, ``webhook.redeliver``), never with the secret.

SSRF: the dispatcher makes requests to URLs that management callers choose. Here a URL is refused
when it carries credentials, or names a loopback, private, link-local or otherwise non-public IP
address literal (``http://169.254.169.254/``, ``https://10.0.0.1/``) or ``localhost``, unless
``allow_http_loopback`` is given and the host is a loopback address. Host names are resolved again by
the dispatcher before each delivery, which refuses non-public addresses the same way
(:mod:`keyswap.webhooks.dispatch`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from keyswap.errors import InvalidInput, NotFound
from keyswap.gateway.secret import ServerSecret, check_secret
from keyswap.manage.audit import recording
from keyswap.manage.context import Context
from keyswap.store import webhooks as wstore
from keyswap.store.models import Consumer
from keyswap.store.sql import Store
from keyswap.store.webhooks import Attempt, WebhookEndpoint, WebhookEvent
from keyswap.webhooks.secrets import encrypt_secret, generate_secret, seal_data

__all__ = [
    "EVENT_TYPES",
    "MAX_DATA_BYTES",
    "MAX_PAGE",
    "MAX_URL_LENGTH",
    "DeliveryPage",
    "NewSecret",
    "WebhookInfo",
    "clear_webhook",
    "enqueue",
    "get_webhook",
    "get_webhook_event",
    "host_address",
    "host_is_loopback",
    "list_deliveries",
    "list_webhook_events",
    "new_event_id",
    "redeliver",
    "rotate_secret",
    "set_webhook",
    "shown_payload",
    "unsafe_address",
    "validate_url",
]

#: The event types keyswap emits (others of the same shape are accepted by :func:`enqueue`).
EVENT_TYPES = ("key.leaked", "key.revoked", "key.rolled", "quota.threshold")
#: Longest webhook URL.
MAX_URL_LENGTH = 2048
#: Largest event data, as compact UTF-8 JSON.
MAX_DATA_BYTES = 64 * 1024
#: Most deliveries (or events) one page lists.
MAX_PAGE = 1000

_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+", re.ASCII)
_EVENT_ID = re.compile(r"msg_[0-9a-f]{32}", re.ASCII)


@dataclass(frozen=True, slots=True)
class WebhookInfo:
    """A consumer's webhook as shown: never the secret."""

    consumer: str
    url: str
    allow_http_loopback: bool
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookInfo:
        """From the store's record."""
        return cls(
            endpoint.consumer_name,
            endpoint.url,
            endpoint.allow_http_loopback,
            endpoint.created_at,
            endpoint.updated_at,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form (CLI ``--json``, admin API)."""
        return {
            "consumer": self.consumer,
            "url": self.url,
            "allow_http_loopback": self.allow_http_loopback,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class NewSecret:
    """A webhook with a newly generated secret (shown once; ``repr`` hides it). ``secret`` is
    ``None`` when the change kept the existing one."""

    webhook: WebhookInfo
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """One page of delivery attempts, newest first; ``next_before`` is the cursor of the next page
    (``None``: this was the last)."""

    attempts: list[Attempt]
    next_before: int | None


# -- URLs ---------------------------------------------------------------------------------------------


_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+", re.ASCII)


def host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``host`` names literally, or ``None`` for a host name: IP literals, and the
    numeric IPv4 forms the C library also accepts (``2852039166``, ``127.1``, ``0x7f.0.0.1``,
    ``0177.0.0.1``), which a resolver turns into addresses without asking DNS."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    text = host.rstrip(".")
    if text and _NUMERIC_HOST.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def host_is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP address literals (numeric forms too)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    address = host_address(host)
    return address is not None and address.is_loopback


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV6_REFUSED = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.IPv6Network("fec0::/10"),  # site-local (deprecated, still routed in some networks)
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated)
)


def unsafe_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address a webhook may not reach: anything but a public unicast address.

    IPv6 addresses that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
    ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``) are judged by the IPv4 address; the
    local-use NAT64 prefix, site-local and IPv4-compatible (``::a.b.c.d``) addresses are refused.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address.sixtofour is not None:
            if unsafe_address(address.sixtofour):
                return True
        elif any(address in network for network in _IPV6_REFUSED):
            return True
    return not address.is_global or address.is_multicast


def validate_url(url: str, *, allow_http_loopback: bool = False) -> str:
    """Check a webhook URL (see the module docstring); returns it unchanged.

    Raises:
        InvalidInput: not an absolute https URL (or http to loopback, when allowed), carries
            credentials or a fragment, names a non-public address, or is too long.
    """
    if not isinstance(url, str) or not url:
        raise InvalidInput("the webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url) or not url.isascii():
        raise InvalidInput("the webhook URL contains spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise InvalidInput("the webhook URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise InvalidInput("the webhook URL must start with https://")
    if not host:
        raise InvalidInput("the webhook URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("the webhook URL may not carry credentials (user:password@)")
    if parts.fragment:
        raise InvalidInput("the webhook URL may not have a #fragment")
    loopback = host_is_loopback(host)
    if loopback and not allow_http_loopback:
        raise InvalidInput(
            "the webhook URL points at this machine (loopback): allowed only with "
            "--allow-http-loopback (allow_http_loopback), for local development"
        )
    if scheme == "http" and not loopback:
        raise InvalidInput(
            "the webhook URL must start with https:// (http:// only to a loopback address, "
            "with --allow-http-loopback)"
        )
    if not loopback:
        address = host_address(host)
        if address is not None and unsafe_address(address):
            raise InvalidInput(
                f"the webhook URL names a non-public address ({host}): use a public host name"
            )
    return url


# -- endpoints ---------------------------------------------------------------------------------------


def _consumer(ctx: Context, name: str) -> Consumer:
    consumer = ctx.store.get_consumer(name)
    if consumer is None:
        raise NotFound(f"unknown consumer '{name}'")
    return consumer


def _target(name: str) -> str:
    return f"consumer:{name}"


def set_webhook(
    ctx: Context,
    secret: ServerSecret,
    name: str,
    url: str,
    *,
    allow_http_loopback: bool = False,
) -> NewSecret:
    """Set the consumer's webhook URL (audited as ``webhook.set``). A consumer without a webhook gets
    a new secret, returned once in :attr:`NewSecret.secret`; one with a webhook keeps its secret
    (``secret`` is ``None``; see :func:`rotate_secret`).

    Raises:
        InvalidInput: a bad URL (see :func:`validate_url`).
        NotFound: no such consumer.
        ConfigError: the database was set up with another server secret.
    """
    validate_url(url, allow_http_loopback=allow_http_loopback)
    consumer = _consumer(ctx, name)
    check_secret(ctx.store, secret)
    # Drawn every time, used only if the webhook is new (decided in the store's transaction).
    new_secret = generate_secret()
    blob = encrypt_secret(secret.webhook_secret_encryption_key, consumer.id, new_secret)
    changes = {"url": url, "allow_http_loopback": allow_http_loopback}
    with recording(ctx, "webhook.set", _target(name), changes):
        endpoint, created = wstore.put_endpoint(
            ctx.store,
            consumer.id,
            url=url,
            secret_blob=blob,
            allow_http_loopback=allow_http_loopback,
            replace_secret=False,
            now=ctx.now(),
        )
    return NewSecret(WebhookInfo.of(endpoint), new_secret if created else None)


def rotate_secret(ctx: Context, secret: ServerSecret, name: str) -> NewSecret:
    """Give the consumer's webhook a new secret (returned once; audited as
    ``webhook.rotate_secret``). The old one stops signing at once.

    Raises:
        NotFound: no such consumer, or it has no webhook.
        ConfigError: the database was set up with another server secret.
    """
    consumer = _consumer(ctx, name)
    check_secret(ctx.store, secret)
    new_secret = generate_secret()
    blob = encrypt_secret(secret.webhook_secret_encryption_key, consumer.id, new_secret)
    try:
        with recording(ctx, "webhook.rotate_secret", _target(name)):
            endpoint, _ = wstore.put_endpoint(
                ctx.store, consumer.id, secret_blob=blob, now=ctx.now()
            )
    except NotFound:
        raise NotFound(f"consumer '{name}' has no webhook") from None
    return NewSecret(WebhookInfo.of(endpoint), new_secret)


def get_webhook(ctx: Context, name: str) -> WebhookInfo:
    """The consumer's webhook (never its secret).

    Raises:
        NotFound: no such consumer, or it has no webhook.
    """
    endpoint = wstore.get_endpoint(ctx.store, _consumer(ctx, name).id)
    if endpoint is None:
        raise NotFound(f"consumer '{name}' has no webhook")
    return WebhookInfo.of(endpoint)


def clear_webhook(ctx: Context, name: str) -> None:
    """Remove the consumer's webhook (audited as ``webhook.clear``); its undelivered events fail at
    their next attempt, and :func:`enqueue` records nothing for it any more.

    Raises:
        NotFound: no such consumer, or it has no webhook.
    """
    consumer = _consumer(ctx, name)
    with recording(ctx, "webhook.clear", _target(name)):
        removed = wstore.delete_endpoint(ctx.store, consumer.id)
    if not removed:
        raise NotFound(f"consumer '{name}' has no webhook")


# -- events and deliveries ---------------------------------------------------------------------------


def list_webhook_events(
    ctx: Context, name: str | None = None, *, state: str | None = None, limit: int = 100
) -> list[WebhookEvent]:
    """Events, newest first: of the consumer ``name`` (``None``: every consumer).

    Raises:
        InvalidInput: a limit outside 1-1000 or an unknown state.
        NotFound: no such consumer.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"the limit must be 1-{MAX_PAGE}")
    if state is not None and state not in wstore.EVENT_STATES:
        raise InvalidInput(f"the state must be one of {', '.join(wstore.EVENT_STATES)}")
    consumer_id = None if name is None else _consumer(ctx, name).id
    return wstore.list_events(ctx.store, consumer_id=consumer_id, state=state, limit=limit)


def get_webhook_event(ctx: Context, event_id: str) -> WebhookEvent:
    """The event with this id (``msg_...``).

    Raises:
        NotFound: no such event.
    """
    found = wstore.get_event(ctx.store, event_id) if _EVENT_ID.fullmatch(event_id) else None
    if found is None:
        raise NotFound(f"unknown webhook event '{event_id[:64]}'")
    return found


def list_deliveries(
    ctx: Context,
    name: str | None = None,
    *,
    event_id: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> DeliveryPage:
    """Delivery attempts, newest first: of the consumer ``name`` (``None``: every consumer), of one
    event, before the cursor ``before``.

    Raises:
        InvalidInput: a limit outside 1-1000 or a cursor below 1.
        NotFound: no such consumer.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"the limit must be 1-{MAX_PAGE}")
    if before is not None and before < 1:
        raise InvalidInput("the cursor must be a positive attempt id")
    consumer_id = None if name is None else _consumer(ctx, name).id
    found = wstore.list_attempts(
        ctx.store, consumer_id=consumer_id, event_id=event_id, before=before, limit=limit + 1
    )
    more = len(found) > limit
    found = found[:limit]
    return DeliveryPage(found, found[-1].id if more and found else None)


def redeliver(ctx: Context, event_id: str) -> WebhookEvent:
    """Deliver an event again, now, whatever its state (audited as ``webhook.redeliver``); the same
    ``webhook-id``, so a receiver that deduplicates sees it once.

    Raises:
        NotFound: no such event.
    """
    event = get_webhook_event(ctx, event_id)
    with recording(ctx, "webhook.redeliver", _target(event.consumer_name), {"event": event.id}):
        return wstore.requeue_event(ctx.store, event.id, now=ctx.now())


def shown_payload(event: WebhookEvent) -> dict[str, Any]:
    """An event's payload as listings show it: sealed data (``enqueue(seal=...)``) as
    ``"data": null, "sealed": true``."""
    if "sealed" not in event.payload:
        return event.payload
    return {
        "type": event.payload.get("type"),
        "timestamp": event.payload.get("timestamp"),
        "data": None,
        "sealed": True,
    }


def new_event_id() -> str:
    """A fresh event id, the ``webhook-id`` header: ``msg_`` + 32 hex digits."""
    return "msg_" + secrets.token_hex(16)


def _consumer_id(value: object) -> int:
    if isinstance(value, bool):
        raise InvalidInput("consumer_id must be a consumer's id")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    raise InvalidInput(
        "consumer_id must be a consumer's numeric id (str(Consumer.id)), not its name"
    )


def enqueue(
    store: Store,
    *,
    consumer_id: str,
    event_type: str,
    data: dict[str, object],
    idempotency_key: str | None = None,
    now: float | None = None,
    seal: ServerSecret | None = None,
) -> str | None:
    """Record one event for the consumer's webhook, if it has one; returns the event id (the
    ``webhook-id`` header), else ``None``. A dispatcher delivers it (:mod:`keyswap.webhooks.dispatch`).

    ``consumer_id`` is the consumer's database id (``str(consumer.id)``; an ``int`` is accepted too).
    ``event_type``: dotted lower-case words (``key.leaked``, ``quota.threshold``). ``data``: a JSON
    object (at most :data:`MAX_DATA_BYTES`), sent as the body's ``data`` member. The same
    ``idempotency_key`` (per consumer, at most 255 characters) twice records one event and returns its
    id both times. Blocking (one store transaction); safe from any thread. ``now``: the event time
    (default: the clock).

    ``seal``: for data that holds a secret (a rolled key's new API key), the server secret: ``data``
    is then stored only encrypted under a key derived from it (AES-256-GCM, bound to the event id),
    decrypted by the dispatcher just before sending, and listed as ``"data": null, "sealed": true``.

    The body sent is ``{"type": event_type, "timestamp": "<RFC 3339 UTC>", "data": data}``.

    Raises:
        InvalidInput: a bad consumer id, event type, data or idempotency key.
    """
    cid = _consumer_id(consumer_id)
    if (
        not isinstance(event_type, str)
        or len(event_type) > 64
        or not _EVENT_TYPE.fullmatch(event_type)
    ):
        raise InvalidInput(f"bad webhook event type {str(event_type)[:64]!r}")
    if not isinstance(data, Mapping):
        raise InvalidInput("webhook event data must be a JSON object")
    try:
        encoded = json.dumps(dict(data), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"webhook event data is not JSON: {exc}") from None
    if len(encoded.encode("utf-8")) > MAX_DATA_BYTES:
        raise InvalidInput(f"webhook event data is larger than {MAX_DATA_BYTES} bytes")
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 255
    ):
        raise InvalidInput("an idempotency key must be 1-255 characters")
    at = time.time() if now is None else now
    event_id = new_event_id()
    payload: dict[str, Any] = {
        "type": event_type,
        "timestamp": datetime.fromtimestamp(at, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }
    if seal is None:
        payload["data"] = json.loads(encoded)
    else:
        key = seal.webhook_secret_encryption_key
        payload["sealed"] = seal_data(key, event_id, encoded.encode("utf-8"))
    return wstore.insert_event(
        store,
        event_id=event_id,
        consumer_id=cid,
        event_type=event_type,
        payload=payload,
        idempotency_key=idempotency_key,
        now=at,
    )
