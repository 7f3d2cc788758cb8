"""Signing keys: list, rotate (with the safety rule), prune; and the audit of the changes a gateway
makes by itself (scheduled rotations, the first start's keys, pruning)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from keyswap.errors import Conflict
from keyswap.gateway.keyring import Keyring, sort_keys
from keyswap.manage.actor import Actor
from keyswap.manage.audit import recording
from keyswap.manage.context import DEFAULT_AUDIT_RETENTION, Context
from keyswap.store.models import SigningKeyRecord
from keyswap.store.sql import Store

__all__ = [
    "Rotation",
    "list_signing_keys",
    "prune_signing_keys",
    "rotate_signing_keys",
    "scheduled_rotation",
    "system_audit",
]

_TARGET = "signing_keys"


@dataclass(frozen=True, slots=True)
class Rotation:
    """The result of :func:`rotate_signing_keys`: whether keys existed before (else they were
    created), and the keys now (oldest first by state order, never private material)."""

    had_keys: bool
    records: list[SigningKeyRecord]


def list_signing_keys(ctx: Context) -> list[SigningKeyRecord]:
    """Every signing key: next, active, then retired ones."""
    return sort_keys(ctx.store.list_signing_keys())


def rotate_signing_keys(
    ctx: Context, keyring: Keyring, *, alg: str | None = None, force: bool = False
) -> Rotation:
    """Rotate: next signs, active retires, a new next is published (with no keys yet: create them).
    Audited as ``signing_key.rotate`` (or ``signing_key.create`` for the first keys).

    The next key must have been published for at least the keyring's cache margin, so verifiers
    caching the JWKS already know it; ``force`` rotates anyway (an emergency).

    Raises:
        Conflict: the next key is too new and ``force`` is not set.
        ConfigError: unsupported ``alg``; another process rotated at the same moment.
    """
    keyring.reload()
    had_keys = bool(keyring.records())
    upcoming = [r for r in keyring.records() if r.state == "next"]
    if upcoming and not force:
        age = ctx.now() - upcoming[0].created_at
        if age < keyring.cache_margin:
            raise Conflict(
                f"the next key {upcoming[0].kid} has been published for only {age:.0f} s; "
                f"verifiers caching the JWKS for up to {keyring.cache_margin:.0f} s may not know "
                "it yet. Wait, or pass --force (an emergency rotation)"
            )
    action = "signing_key.rotate" if had_keys else "signing_key.create"
    with recording(ctx, action, _TARGET, {"alg": alg, "force": force}):
        keyring.rotate(alg=alg)
    return Rotation(had_keys, keyring.records())


def prune_signing_keys(ctx: Context, keyring: Keyring) -> list[str]:
    """Delete retired keys whose tokens have all expired; returns their kids (audited as
    ``signing_key.prune`` when any went)."""
    with recording(ctx, "signing_key.prune", _TARGET):
        return keyring.prune(now=ctx.now())


@contextmanager
def scheduled_rotation(
    store: Store,
    every: float,
    *,
    clock: Callable[[], float] = time.time,
    retention: float = DEFAULT_AUDIT_RETENTION,
) -> Iterator[None]:
    """The audit of a rotation the gateway makes on its schedule (actor ``system:rotation``): wrap
    the rotation with it; nothing is recorded if the block changes nothing."""
    system = Context(store, Actor.system("rotation"), clock, retention)
    with recording(system, "signing_key.rotate", _TARGET, {"scheduled": True, "every": every}):
        yield


def system_audit(
    store: Store,
    *,
    clock: Callable[[], float] = time.time,
    retention: float = DEFAULT_AUDIT_RETENTION,
) -> Callable[[str, dict[str, Any]], AbstractContextManager[object]]:
    """The audit hook of a gateway's keyring (:class:`~keyswap.gateway.keyring.Keyring`'s
    ``audit``): the keys a first start creates (actor ``system:startup``) and the retired keys the
    prune loop deletes (actor ``system:prune``) are recorded like any other change."""

    def audit(action: str, changes: dict[str, Any]) -> AbstractContextManager[object]:
        what = "prune" if action == "signing_key.prune" else "startup"
        ctx = Context(store, Actor.system(what), clock, retention)
        return recording(ctx, action, _TARGET, changes)

    return audit
