"""The gateway's signing keys and their lifecycle: next -> active -> retired -> pruned.

- **next**: published in the JWKS, not signing yet, so verifiers already have it when it starts signing.
- **active**: signs every minted token. Exactly one.
- **retired**: no longer signs; stays published until every token it signed has expired and verifier
  caches have moved on (``retired_at + token_ttl + cache_margin``), then :meth:`Keyring.prune` deletes it.

:meth:`Keyring.rotate` makes next active, retires the old active key and creates a new next key, in one
transaction. The first start creates an active and a next key (:meth:`Keyring.ensure`); two processes
starting at once cannot both do it (a partial unique index allows one active and one next key; the loser
re-reads). The ``kid`` is the RFC 7638 thumbprint of the public key. Private keys are stored AES-256-GCM
encrypted (:mod:`keyswap.gateway.keymaterial`).

The keyring serves from an in-memory snapshot: :meth:`Keyring.active` and :meth:`Keyring.public_jwks` do no
I/O. :meth:`Keyring.reload` re-reads the store; the gateway calls it when the store revision changes, so
a rotation made by another process (``keyswap signing-keys rotate``) takes effect within a poll interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from keyswap.errors import ConfigError, KeysUnavailable
from keyswap.gateway.keymaterial import (
    SIGNING_ALGORITHMS,
    PrivateKey,
    check_algorithm,
    decrypt_private_key,
    encrypt_private_key,
    generate_private_key,
    public_jwk,
    thumbprint,
)
from keyswap.gateway.secret import ServerSecret, check_secret
from keyswap.store.models import SigningKeyRecord
from keyswap.store.sql import Store

__all__ = [
    "DEFAULT_ALGORITHM",
    "DEFAULT_CACHE_MARGIN",
    "DEFAULT_TOKEN_TTL",
    "SIGNING_ALGORITHMS",
    "Keyring",
    "SigningKey",
    "sort_keys",
    "thumbprint",
]

DEFAULT_ALGORITHM = "RS256"
#: Lifetime of minted tokens the retirement window assumes (seconds).
DEFAULT_TOKEN_TTL = 300.0
#: How long verifiers may cache the JWKS, added to the retirement window (seconds).
DEFAULT_CACHE_MARGIN = 300.0

# Public JWK members per key type; nothing else from a stored JWK is ever published.
_PUBLIC_MEMBERS = {
    "RSA": ("kty", "n", "e"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}
_STATE_ORDER = {"active": 0, "next": 1, "retired": 2}

#: Wraps a change the keyring makes by itself: ``audit(action, changed_fields)`` returns a context
#: manager around the store write (e.g. :func:`keyswap.manage.signing.system_audit`).
SystemAudit = Callable[[str, dict[str, Any]], AbstractContextManager[object]]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The key that signs now: ``kid``, ``alg`` and the prepared private key."""

    kid: str
    alg: str
    private_key: PrivateKey


@dataclass(frozen=True, slots=True)
class _Snapshot:
    records: tuple[SigningKeyRecord, ...]
    active: SigningKey | None
    version: tuple[tuple[str, str, float | None], ...] | None


class Keyring:
    """Signing keys over a :class:`~keyswap.store.Store` and the server secret.

    Args:
        store: where keys live.
        secret: the server secret (its encryption subkey protects private keys).
        token_ttl: lifetime of minted tokens (seconds).
        cache_margin: how long verifiers may cache the JWKS (seconds); a retired key stays published
            for ``token_ttl + cache_margin`` after retirement.
        clock: wall-clock seconds.
        audit: records the changes the keyring makes by itself (the first start's keys, pruning) in
            the audit log; the gateway passes :func:`keyswap.manage.signing.system_audit`.

    Raises:
        ConfigError: negative durations, or the database belongs to another server secret.
    """

    def __init__(
        self,
        store: Store,
        secret: ServerSecret,
        *,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        cache_margin: float = DEFAULT_CACHE_MARGIN,
        clock: Callable[[], float] = time.time,
        audit: SystemAudit | None = None,
    ) -> None:
        if not (token_ttl >= 0 and cache_margin >= 0):
            raise ConfigError("token_ttl and cache_margin must not be negative")
        self._store = store
        self._key = secret.signing_key_encryption_key
        self.token_ttl = float(token_ttl)
        self.cache_margin = float(cache_margin)
        self._clock = clock
        self._audit = audit
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._snapshot = _Snapshot(records=(), active=None, version=None)
        self._private: dict[str, PrivateKey] = {}
        check_secret(store, secret)

    # -- reading (no I/O) ---------------------------------------------------------------------------

    def active(self) -> SigningKey:
        """The key to sign with now.

        Raises:
            KeysUnavailable: no active key is loaded (call :meth:`ensure` or :meth:`reload` first).
        """
        active = self._snapshot.active
        if active is None:
            raise KeysUnavailable("no active signing key is loaded")
        return active

    def records(self) -> list[SigningKeyRecord]:
        """Every stored key as of the last reload, in :func:`sort_keys` order."""
        return sort_keys(self._snapshot.records)

    def published_until(self, record: SigningKeyRecord) -> float | None:
        """When a retired key leaves the JWKS (``None`` for next and active keys)."""
        if record.state != "retired" or record.retired_at is None:
            return None
        return record.retired_at + self.token_ttl + self.cache_margin

    def public_jwks(self, now: float | None = None) -> dict[str, Any]:
        """The JWKS to publish: active, next and not-yet-expired retired keys; public members only."""
        now = self._clock() if now is None else now
        keys = []
        for record in self.records():
            until = self.published_until(record)
            if until is None or now < until:
                keys.append(_public(record))
        return {"keys": keys}

    # -- changing -----------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the keys from the store; True if anything changed since the last read.

        Raises:
            ConfigError: the active key does not decrypt (wrong secret or a damaged row).
        """
        # One reload at a time (the change watcher, the prune task and the rotation scheduler all
        # reload): a read that started earlier must not install its rows after a later one did.
        with self._reload_lock:
            records = tuple(self._store.list_signing_keys())
            version = tuple((r.kid, r.state, r.retired_at) for r in records)
            with self._lock:
                if version == self._snapshot.version:
                    return False
                active = None
                for record in records:
                    if record.state == "active":
                        active = SigningKey(record.kid, record.alg, self._decrypt(record))
                kids = {r.kid for r in records}
                self._private = {kid: key for kid, key in self._private.items() if kid in kids}
                self._snapshot = _Snapshot(records=records, active=active, version=version)
            return True

    def ensure(self, alg: str = DEFAULT_ALGORITHM) -> None:
        """Create an active and a next key (with ``alg``) where they are missing; no-op otherwise.

        Safe when several processes start at once: one insert wins, the others re-read.

        Raises:
            ConfigError: unsupported ``alg``, or the keys could not be created.
        """
        check_algorithm(alg)
        for _ in range(3):
            self.reload()
            states = {record.state for record in self._snapshot.records}
            missing = [state for state in ("active", "next") if state not in states]
            if not missing:
                return
            now = self._clock()
            created = [self._new_record(alg, state, now) for state in missing]
            with self._audited("signing_key.create", {"alg": alg}):
                inserted = self._store.insert_signing_keys(created)
            if inserted:
                self.reload()
                return
        raise ConfigError("could not create the signing keys: the database kept changing")

    def rotate(self, now: float | None = None, alg: str | None = None) -> None:
        """Next becomes active, active is retired, and a new next key is created (``alg``, or the
        algorithm of the key becoming active). With no keys yet, this just creates them (:meth:`ensure`).

        Raises:
            ConfigError: unsupported ``alg``, or another process rotated at the same moment (nothing
                changed here; the keyring shows the other rotation).
        """
        if alg is not None:
            check_algorithm(alg)
        self.reload()
        current = {
            record.state: record for record in self._snapshot.records if record.state != "retired"
        }
        if "active" not in current or "next" not in current:
            self.ensure(alg or DEFAULT_ALGORITHM)
            return
        now = self._clock() if now is None else now
        new_next = self._new_record(alg or current["next"].alg, "next", now)
        rotated = self._store.rotate_signing_keys(
            active_kid=current["active"].kid,
            next_kid=current["next"].kid,
            new_next=new_next,
            now=now,
        )
        self.reload()
        if not rotated:
            raise ConfigError(
                "another process rotated the signing keys at the same moment; nothing was changed here"
            )

    def rotation_due_in(self, every: float, now: float | None = None) -> float | None:
        """Seconds until the active key is ``every`` seconds old (<= 0: due); ``None`` without keys.

        Decided from the active key's ``activated_at`` in the snapshot (no I/O), so a restarted
        gateway keeps the schedule instead of starting it again.
        """
        now = self._clock() if now is None else now
        active = next((r for r in self._snapshot.records if r.state == "active"), None)
        if active is None:
            return None
        return (active.activated_at or active.created_at) + every - now

    def rotate_if_due(self, every: float, min_next_age: float, now: float | None = None) -> bool:
        """Rotate if the active key has signed for ``every`` seconds and the next key has been
        published for at least ``min_next_age`` seconds (so verifiers already have it); True if this
        call rotated.

        Safe against other processes doing the same: the rotation is conditional on the very keys
        this call looked at (re-read first), so one rotation happens per due key, never two.
        """
        now = self._clock() if now is None else now
        self.reload()
        current = {r.state: r for r in self._snapshot.records if r.state != "retired"}
        active, upcoming = current.get("active"), current.get("next")
        if active is None or upcoming is None:
            return False
        if (active.activated_at or active.created_at) + every > now:
            return False
        if upcoming.created_at + min_next_age > now:
            return False  # the next key is too new to sign: verifiers may not have it yet
        rotated = self._store.rotate_signing_keys(
            active_kid=active.kid,
            next_kid=upcoming.kid,
            new_next=self._new_record(upcoming.alg, "next", now),
            now=now,
        )
        self.reload()
        return rotated

    def prune(
        self, now: float | None = None, token_ttl: float | None = None, margin: float | None = None
    ) -> list[str]:
        """Delete retired keys whose publication window has passed; returns their kids.

        ``token_ttl`` and ``margin`` override the keyring's own for this call (the window is
        ``retired_at + token_ttl + margin``).
        """
        now = self._clock() if now is None else now
        window = (self.token_ttl if token_ttl is None else token_ttl) + (
            self.cache_margin if margin is None else margin
        )
        self.reload()
        expired = [
            record.kid
            for record in self._snapshot.records
            if record.state == "retired"
            and record.retired_at is not None
            and record.retired_at + window <= now
        ]
        if expired:
            with self._audited("signing_key.prune", {}):
                self._store.delete_signing_keys(expired)
            self.reload()
        return expired

    # -- helpers ------------------------------------------------------------------------------------

    def _audited(self, action: str, changes: dict[str, Any]) -> AbstractContextManager[object]:
        """The audit of a change the keyring makes by itself (first start, pruning), when the
        process that owns it gave a hook (the gateway does: actor ``system``); else nothing."""
        return nullcontext() if self._audit is None else self._audit(action, changes)

    def _decrypt(self, record: SigningKeyRecord) -> PrivateKey:
        private = self._private.get(record.kid)
        if private is None:
            private = decrypt_private_key(self._key, record.kid, record.private_blob)
            self._private[record.kid] = private
        return private

    def _new_record(self, alg: str, state: str, now: float) -> SigningKeyRecord:
        private = generate_private_key(alg)
        jwk = public_jwk(private, alg)
        kid = jwk["kid"]
        return SigningKeyRecord(
            kid=kid,
            alg=alg,
            state=state,
            public_jwk=jwk,
            private_blob=encrypt_private_key(self._key, kid, private),
            created_at=now,
            activated_at=now if state == "active" else None,
            retired_at=None,
        )


def sort_keys(records: Iterable[SigningKeyRecord]) -> list[SigningKeyRecord]:
    """Active first, then next, then retired keys (most recently retired first)."""
    return sorted(
        records, key=lambda r: (_STATE_ORDER.get(r.state, 3), -(r.retired_at or 0.0), r.kid)
    )


def _public(record: SigningKeyRecord) -> dict[str, Any]:
    stored = record.public_jwk
    members = _PUBLIC_MEMBERS.get(str(stored.get("kty")), ())
    jwk: dict[str, Any] = {name: stored[name] for name in members if name in stored}
    jwk.update(kid=record.kid, alg=record.alg, use="sig")
    return jwk
