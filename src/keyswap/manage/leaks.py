"""Leaked keys: what happens when an API key is found in public.

A report (GitHub secret scanning, ``keyswap keys scan --apply``) names tokens and where each was
found. For every token that is a keyswap key -- the prefix and checksum first (no I/O), then one batch
lookup of the HMAC digests -- the consumer's leak policy applies (else the deployment's):

- ``revoke`` (default): the key is revoked at once; every node refuses it within a second (the
  revision bump and its push, as for any revocation);
- ``roll``: the key is revoked at once and a new key for the same consumer is created, delivered only
  through the consumer's webhook (``key.rolled``, ``data.new_key``; the event's data is sealed --
  encrypted under the server secret -- while it waits in the outbox, opened by the dispatcher just
  before sending: ``enqueue(seal=...)``);
  if the consumer has no webhook, or the event cannot be recorded, the new key is revoked too (nobody
  could ever learn it);
- ``notify``: nothing changes but the events.

Each report of a live key is recorded (``key_leaks``) with the action, in the action's transaction,
and audited as ``key.leak`` by the reporting actor with the URL where the key was found. A report is
identified by the key and the URL: a replayed report finds its earlier record and changes nothing
(no second roll, no second event). The consumer is told through its webhook
(:func:`keyswap.manage.webhooks.enqueue`): ``key.leaked`` for every new report, then ``key.revoked``
or ``key.rolled``. Never a key in a log, an error or an audit event: keys are named by id and hint.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from keyswap.errors import ConfigError, InvalidInput
from keyswap.gateway.apikeys import (
    DEFAULT_PREFIX,
    KEY_ID_PREFIX,
    generate_key,
    generate_key_id,
    is_well_formed,
    mac_digest,
)
from keyswap.gateway.secret import ServerSecret
from keyswap.manage.audit import audit_record, audit_retention
from keyswap.manage.consumers import ConsumerUpdate, update_consumer
from keyswap.manage.context import Context
from keyswap.manage.keys import revoke_key
from keyswap.store.models import (
    LEAK_POLICIES,
    ApiKeyRecord,
    Consumer,
    KeyLeak,
    validate_leak_policy,
)
from keyswap.store.sql import LeakWrite

__all__ = [
    "BATCH",
    "DEFAULT_LEAK_POLICY",
    "MAX_URL_LENGTH",
    "Finding",
    "LeakOutcome",
    "Notifier",
    "assess",
    "effective_policy",
    "leak_fingerprint",
    "parse_policy",
    "report_leaks",
    "set_leak_policy",
]

log = logging.getLogger("keyswap.leaks")

#: The policy of a deployment that sets none.
DEFAULT_LEAK_POLICY = "revoke"
#: Longest URL kept for a report (longer ones are cut).
MAX_URL_LENGTH = 2048

Label = Literal["true_positive", "false_positive"]


class Notifier(Protocol):
    """What tells a consumer (the signature of :func:`keyswap.manage.webhooks.enqueue`)."""

    def __call__(
        self,
        store: Any,
        *,
        consumer_id: str,
        event_type: str,
        data: dict[str, object],
        idempotency_key: str | None = None,
        seal: ServerSecret | None = None,
    ) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Finding:
    """A token found in public: the token (``repr`` hides it), where (``url``) and the scanner's
    name for its type (echoed in GitHub's feedback)."""

    token: str = field(repr=False)
    url: str = ""
    token_type: str = ""


@dataclass(frozen=True, slots=True)
class LeakOutcome:
    """What a finding is and what was (or would be) done.

    ``label``: ``true_positive`` for a key that was live when reported (a replay of such a report
    too), else ``false_positive`` (not a keyswap key, unknown, already revoked or expired).
    ``action``: ``revoke``, ``roll``, ``notify`` or ``none``. ``replay``: an earlier report of this
    key at this URL did it. ``key_id``/``hint``/``consumer``: the key, when it is one of ours.
    """

    finding: Finding
    label: Label
    action: str
    key_id: str | None = None
    hint: str | None = None
    consumer: str | None = None
    status: str | None = None
    replay: bool = False
    new_key_id: str | None = None


def parse_policy(value: str) -> str | None:
    """A leak policy from the CLI or the API: ``revoke``, ``roll``, ``notify``, or ``default``
    (``None``: the deployment's).

    Raises:
        InvalidInput: anything else.
    """
    text = value.strip().lower() if isinstance(value, str) else value
    if text == "default":
        return None
    return validate_leak_policy(text)


def effective_policy(consumer: Consumer, default: str = DEFAULT_LEAK_POLICY) -> str:
    """The consumer's own leak policy, else ``default`` (the deployment's)."""
    return consumer.leak_policy or default


def _check_default(default: str) -> str:
    if default not in LEAK_POLICIES:
        raise ConfigError(f"the leak policy must be one of {', '.join(LEAK_POLICIES)}")
    return default


def set_leak_policy(ctx: Context, name: str, policy: str | None) -> Consumer:
    """Set a consumer's leak policy (``None``: the deployment's); audited as ``consumer.update``.

    Raises:
        InvalidInput: not a policy.
        NotFound: no such consumer.
    """
    return update_consumer(ctx, name, ConsumerUpdate(leak_policy=validate_leak_policy(policy)))


def leak_fingerprint(key_id: str, url: str) -> str:
    """What identifies one report: SHA-256 of the key id and the URL (hex)."""
    return hashlib.sha256(f"{key_id}\n{url}".encode("utf-8", "surrogatepass")).hexdigest()


def _clean_url(url: object) -> str:
    text = url if isinstance(url, str) else ""
    return "".join(ch for ch in text if ch.isprintable())[:MAX_URL_LENGTH]


@dataclass(frozen=True, slots=True)
class _Found:
    finding: Finding
    record: ApiKeyRecord | None
    consumer: Consumer | None


def _lookup(
    ctx: Context, secret: ServerSecret, findings: Iterable[Finding], prefix: str
) -> list[_Found]:
    """Every finding with its key and consumer (one batch lookup of the well-formed ones)."""
    items = [
        Finding(f.token if isinstance(f.token, str) else "", _clean_url(f.url), f.token_type)
        for f in findings
    ]
    digests = {
        f.token: mac_digest(secret.api_key_mac_key, f.token)
        for f in items
        if is_well_formed(f.token, prefix)
    }
    found = ctx.store.find_api_keys(digests.values()) if digests else {}
    result = []
    for item in items:
        digest = digests.get(item.token)
        row = None if digest is None else found.get(digest)
        result.append(_Found(item, *(row if row else (None, None))))
    return result


def assess(
    ctx: Context,
    secret: ServerSecret,
    findings: Iterable[Finding],
    *,
    prefix: str = DEFAULT_PREFIX,
    default_policy: str = DEFAULT_LEAK_POLICY,
) -> list[LeakOutcome]:
    """What :func:`report_leaks` would do with these findings, changing nothing (a dry run)."""
    default_policy = _check_default(default_policy)
    now = ctx.now()
    found = _lookup(ctx, secret, findings, prefix)
    earlier = ctx.store.key_leaks(
        leak_fingerprint(item.record.id, item.finding.url) for item in found if item.record
    )
    outcomes = []
    for item in found:
        record, consumer = item.record, item.consumer
        if record is None or consumer is None:
            outcomes.append(LeakOutcome(item.finding, "false_positive", "none"))
            continue
        status = record.status_at(now)
        before = earlier.get(leak_fingerprint(record.id, item.finding.url))
        if before is not None:
            outcomes.append(_replayed(item, record, consumer, status, before))
        elif record.usable_at(now):
            policy = effective_policy(consumer, default_policy)
            outcomes.append(_outcome(item, record, consumer, status, "true_positive", policy))
        else:
            outcomes.append(_outcome(item, record, consumer, status, "false_positive", "none"))
    return outcomes


def _outcome(
    item: _Found,
    record: ApiKeyRecord,
    consumer: Consumer,
    status: str,
    label: Label,
    action: str,
    *,
    replay: bool = False,
    new_key_id: str | None = None,
) -> LeakOutcome:
    return LeakOutcome(
        item.finding,
        label,
        action,
        key_id=record.id,
        hint=record.hint,
        consumer=consumer.name,
        status=status,
        replay=replay,
        new_key_id=new_key_id,
    )


def _replayed(
    item: _Found, record: ApiKeyRecord, consumer: Consumer, status: str, before: KeyLeak
) -> LeakOutcome:
    label: Label = "true_positive" if before.action != "none" else "false_positive"
    return _outcome(
        item,
        record,
        consumer,
        status,
        label,
        before.action,
        replay=True,
        new_key_id=before.new_key_id,
    )


#: Live keys recorded per store transaction.
BATCH = 200


def report_leaks(
    ctx: Context,
    secret: ServerSecret,
    findings: Iterable[Finding],
    *,
    source: str,
    prefix: str = DEFAULT_PREFIX,
    default_policy: str = DEFAULT_LEAK_POLICY,
    notify: Notifier | None = None,
) -> list[LeakOutcome]:
    """Apply the leak policy to every live key among ``findings``; one outcome per finding, in order.

    ``source`` names the reporter in the records and events (``github``, ``scan``); ``ctx.actor``
    is who the audit log names. The live keys are recorded and acted on in one store transaction per
    :data:`BATCH` keys. ``notify`` tells consumers (default:
    :func:`keyswap.manage.webhooks.enqueue`). Blocking: run it on a thread from an event loop.

    Raises:
        ConfigError: a bad ``default_policy`` or prefix; the database belongs to another secret.
    """
    default_policy = _check_default(default_policy)
    tell = notify or _default_notifier()
    outcomes = assess(ctx, secret, findings, prefix=prefix, default_policy=default_policy)
    todo = [
        index
        for index, outcome in enumerate(outcomes)
        if outcome.label == "true_positive" and not outcome.replay and outcome.key_id is not None
    ]
    for start in range(0, len(todo), BATCH):
        chunk = todo[start : start + BATCH]
        applied = _apply(
            ctx, secret, [outcomes[i] for i in chunk], source=source, prefix=prefix, tell=tell
        )
        for index, outcome in zip(chunk, applied, strict=True):
            outcomes[index] = outcome
    return outcomes


def _apply(
    ctx: Context,
    secret: ServerSecret,
    planned: list[LeakOutcome],
    *,
    source: str,
    prefix: str,
    tell: Notifier | None,
) -> list[LeakOutcome]:
    """Record and act on live keys in one transaction, then tell their consumers."""
    now = ctx.now()
    writes: list[LeakWrite] = []
    secrets_by_fingerprint: dict[str, str] = {}
    for outcome in planned:
        key_id = outcome.key_id or ""
        url = outcome.finding.url
        fingerprint = leak_fingerprint(key_id, url)
        new_key: tuple[str, bytes, str] | None = None
        if outcome.action == "roll" and fingerprint not in secrets_by_fingerprint:
            new_secret = generate_key(prefix)
            secrets_by_fingerprint[fingerprint] = new_secret
            new_key = (
                KEY_ID_PREFIX + generate_key_id()[len(KEY_ID_PREFIX) :],
                mac_digest(secret.api_key_mac_key, new_secret),
                _hint(new_secret, prefix),
            )
        changes = {"source": source, "url": url, "policy": outcome.action}
        changes["consumer"] = outcome.consumer or ""
        audit = audit_record(ctx, "key.leak", f"key:{key_id}", changes)
        writes.append(LeakWrite(fingerprint, key_id, source, url, outcome.action, new_key, audit))
    recorded = ctx.store.record_key_leaks(writes, reported_at=now, retention=audit_retention(ctx))
    results = []
    for outcome, write, (leak, created) in zip(planned, writes, recorded, strict=True):
        if not created:
            results.append(
                _replace(outcome, replay=True, action=leak.action, new_key_id=leak.new_key_id)
            )
            continue
        result = _replace(outcome, action=leak.action, new_key_id=leak.new_key_id)
        results.append(result)
        if leak.action == "none":  # an earlier finding in this report already dealt with it
            continue
        log.warning(
            "leaked key %s of consumer %s reported by %s at %s: %s",
            leak.key_id,
            outcome.consumer,
            source,
            leak.url or "(no URL)",
            leak.action,
        )
        new_secret = secrets_by_fingerprint.get(write.fingerprint, "")
        _tell_consumer(ctx, secret, result, leak, new_secret, tell)
    return results


def _replace(outcome: LeakOutcome, **changes: Any) -> LeakOutcome:
    fields: dict[str, Any] = {
        name: getattr(outcome, name) for name in LeakOutcome.__dataclass_fields__
    }
    fields.update(changes)
    return LeakOutcome(**fields)


def _hint(key: str, prefix: str) -> str:
    return f"{prefix}_...{key[-4:]}"


def _tell_consumer(
    ctx: Context,
    secret: ServerSecret,
    outcome: LeakOutcome,
    leak: KeyLeak,
    new_secret: str,
    tell: Notifier | None,
) -> None:
    """The consumer's events; a roll whose new key cannot be delivered revokes the new key too."""
    consumer_id = str(leak.consumer_id)
    base = {
        "key_id": leak.key_id,
        "hint": outcome.hint,
        "consumer": outcome.consumer,
    }
    fingerprint = leak_fingerprint(leak.key_id, leak.url)
    events: list[tuple[str, dict[str, object]]] = [
        (
            "key.leaked",
            {
                **base,
                "url": leak.url,
                "source": leak.source,
                "reported_at": leak.reported_at,
                "action": leak.action,
            },
        )
    ]
    if leak.action in ("revoke", "roll"):
        events.append(("key.revoked", {**base, "revoked_at": leak.reported_at, "reason": "leaked"}))
    delivered = False
    if leak.action == "roll" and leak.new_key_id is not None:
        events.append(
            (
                "key.rolled",
                {
                    **base,
                    "new_key_id": leak.new_key_id,
                    "new_key_hint": _hint(new_secret, new_secret.split("_", 1)[0]),
                    "new_key": new_secret,  # sealed in the outbox: enqueue(seal=secret) below
                },
            )
        )
    for event_type, data in events:
        webhook_id = _enqueue(
            tell,
            ctx,
            consumer_id=consumer_id,
            event_type=event_type,
            data=data,
            idempotency_key=f"leak:{fingerprint}:{event_type}",
            seal=secret if event_type == "key.rolled" else None,
        )
        if event_type == "key.rolled":
            delivered = webhook_id is not None
    if leak.action == "roll" and leak.new_key_id is not None and not delivered:
        log.warning(
            "leaked key %s was rolled but consumer %s has no webhook to receive the new key %s: "
            "the new key is revoked too (create one with 'keyswap keys create')",
            leak.key_id,
            outcome.consumer,
            leak.new_key_id,
        )
        revoke_key(ctx, leak.new_key_id)


def _enqueue(
    tell: Notifier | None,
    ctx: Context,
    *,
    consumer_id: str,
    event_type: str,
    data: dict[str, object],
    idempotency_key: str,
    seal: ServerSecret | None,
) -> str | None:
    if tell is None:
        return None
    try:
        if seal is None:
            return tell(
                ctx.store,
                consumer_id=consumer_id,
                event_type=event_type,
                data=data,
                idempotency_key=idempotency_key,
            )
        return tell(
            ctx.store,
            consumer_id=consumer_id,
            event_type=event_type,
            data=data,
            idempotency_key=idempotency_key,
            seal=seal,
        )
    except (InvalidInput, ConfigError) as exc:
        log.error("could not record the %s event (%s)", event_type, exc.reason)
    except Exception as exc:
        log.error("could not record the %s event (%s)", event_type, type(exc).__name__)
    return None


def _default_notifier() -> Notifier:
    """:func:`keyswap.manage.webhooks.enqueue`, asking the store once per consumer (for one report)
    whether it has a webhook at all: a report of many keys of a consumer without one costs one read,
    not a transaction per event."""
    from keyswap.manage.webhooks import enqueue
    from keyswap.store.webhooks import get_endpoint

    has_webhook: dict[str, bool] = {}

    def tell(
        store: Any,
        *,
        consumer_id: str,
        event_type: str,
        data: dict[str, object],
        idempotency_key: str | None = None,
        seal: ServerSecret | None = None,
    ) -> str | None:
        if consumer_id not in has_webhook:
            has_webhook[consumer_id] = get_endpoint(store, int(consumer_id)) is not None
        if not has_webhook[consumer_id]:
            return None
        return enqueue(
            store,
            consumer_id=consumer_id,
            event_type=event_type,
            data=data,
            idempotency_key=idempotency_key,
            seal=seal,
        )

    return tell
