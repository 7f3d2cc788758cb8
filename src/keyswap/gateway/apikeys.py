"""Consumers' API keys: format, creation, authentication, revocation, roll, last-used.

Format: ``<prefix>_<30 random base62><6 base62 CRC32 checksum>`` (default prefix ``ks``), e.g.
``ks_4fT0aQk2...``. The 30 characters come from :mod:`secrets` (about 178 bits); the checksum is the
CRC32 of the random part, base62 encoded to 6 characters (as GitHub's tokens do), so a malformed or
mistyped key is refused without a lookup and secret scanners can match keys with :data:`KEY_REGEX`.

The key is shown once, at creation. The store keeps only HMAC-SHA-256(subkey, key), the key's public id
(``key_`` + 12 base62, random, unrelated to the key), a hint (prefix and last 4 characters) and the key's
own scopes, if it has any (else it has its consumer's; a rolled key's replacement keeps them).

Authentication (:meth:`ApiKeys.authenticate`) refuses every bad key the same way:
``InvalidApiKey("Invalid API key")`` for malformed, unknown, revoked and expired alike. The HMAC is
computed for every key, malformed ones included. Lookups go through two bounded in-memory caches, one
for known keys and one for unknown ones (so that no flood of made-up keys pushes a known key out), each
trusted for ``cache_ttl`` seconds. On a store change the gateway calls :meth:`ApiKeys.changed` with
what the change log says changed (only those keys and consumers' keys stop being trusted, and are
re-read at once), or :meth:`ApiKeys.clear_cache` when the log cannot say (every known key re-read);
expiry and revocation are checked against the request time on every hit, so an expired key is refused
at once even when cached. A key filter (:mod:`keyswap.gateway.keyfilter`) holds every key in the store
in a few bits: :meth:`ApiKeys.absent` tells the gateway, without I/O, that a key does not exist.

When the store cannot be reached (a database restart, a network cut), a key this node confirmed within
the last ``outage_grace`` seconds (default 300) keeps working from memory, expiry and revocation as last
seen still applied (a revocation, roll or deletion this node was told about is never forgotten); any
other key gets :class:`~keyswap.errors.StoreUnavailable` (503, not 401: the key
may well be valid). After a failure the store is left alone for ``retry_interval`` seconds (known keys
are then answered without a thread or a query), then tried again; service recovers by itself.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from sqlalchemy.exc import SQLAlchemyError

from keyswap.errors import (
    AlreadyExists,
    ConfigError,
    InvalidApiKey,
    InvalidInput,
    NotFound,
    StoreUnavailable,
)
from keyswap.gateway.keyfilter import KeyFilter
from keyswap.gateway.secret import ServerSecret, check_secret
from keyswap.store.models import ApiKeyRecord, Consumer, validate_label
from keyswap.store.sql import QuickRevision, Store

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_OUTAGE_GRACE",
    "DEFAULT_PREFIX",
    "KEY_REGEX",
    "ApiKeys",
    "PreparedMac",
    "Principal",
    "generate_key",
    "generate_key_id",
    "is_well_formed",
    "key_regex",
    "mac_digest",
]

log = logging.getLogger("keyswap.gateway")

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DEFAULT_PREFIX = "ks"
#: How long a rolled key keeps working by default (24 h).
DEFAULT_GRACE = 86400.0
#: How long a key confirmed by the store keeps working while the store is unreachable (5 min).
DEFAULT_OUTAGE_GRACE = 300.0
RANDOM_LENGTH = 30
CHECKSUM_LENGTH = 6
KEY_ID_PREFIX = "key_"
KEY_ID_LENGTH = 12

_PREFIX = re.compile(r"[a-z][a-z0-9]{1,15}", re.ASCII)
_BODY = re.compile(rf"[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}", re.ASCII)
_REFUSAL = "Invalid API key"
_DIGIT62 = {digit: value for value, digit in enumerate(BASE62)}
_SHA256_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


_UNAVAILABLE = "the key store is unavailable"


def key_regex(prefix: str = DEFAULT_PREFIX) -> str:
    """The regular expression matching keys with ``prefix`` (for secret scanners)."""
    return rf"\b{re.escape(prefix)}_[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}\b"


#: Matches keyswap API keys with the default prefix: ``\bks_[0-9A-Za-z]{36}\b``.
KEY_REGEX = key_regex(DEFAULT_PREFIX)


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or _PREFIX.fullmatch(prefix) is None:
        raise ConfigError(
            "the API key prefix must be 2-16 lowercase letters or digits, starting with a letter"
        )
    return prefix


def generate_key(prefix: str = DEFAULT_PREFIX) -> str:
    """A new API key: ``<prefix>_`` + 30 random base62 characters + 6-character CRC32 checksum.

    Raises:
        ConfigError: the prefix is not 2-16 lowercase letters/digits starting with a letter.
    """
    random_part = _random_base62(RANDOM_LENGTH)
    return f"{_check_prefix(prefix)}_{random_part}{_checksum(random_part)}"


def generate_key_id() -> str:
    """A public key id: ``key_`` + 12 random base62 characters (never derived from the key)."""
    return KEY_ID_PREFIX + _random_base62(KEY_ID_LENGTH)


def is_well_formed(key: str, prefix: str = DEFAULT_PREFIX) -> bool:
    """True if ``key`` has the prefix, length, alphabet and a matching checksum. No I/O."""
    return isinstance(key, str) and _well_formed(_key_format(prefix), key)


@functools.lru_cache(maxsize=64)
def _key_format(prefix: str) -> re.Pattern[str]:
    """``<prefix>_`` + the random part (group 1) + the checksum (group 2)."""
    return re.compile(
        rf"{re.escape(prefix)}_([0-9A-Za-z]{{{RANDOM_LENGTH}}})([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})",
        re.ASCII,
    )


def _well_formed(key_format: re.Pattern[str], key: str) -> bool:
    """``key`` (a ``str``) matches ``key_format`` and its checksum matches its random part.

    The checksum is decoded and compared with the random part's CRC32 (rather than the CRC32
    encoded and compared as text): the same test, as 6 characters in base62 hold any CRC32 once
    (62**6 > 2**32, leading zeros included)."""
    match = key_format.fullmatch(key)
    if match is None:
        return False
    random_part, check = match.groups()
    digit = _DIGIT62
    value = digit[check[0]]
    value = value * 62 + digit[check[1]]
    value = value * 62 + digit[check[2]]
    value = value * 62 + digit[check[3]]
    value = value * 62 + digit[check[4]]
    value = value * 62 + digit[check[5]]
    return zlib.crc32(random_part.encode("ascii")) == value


def mac_digest(mac_key: bytes, key: str) -> bytes:
    """HMAC-SHA-256 of ``key`` under ``mac_key``: the only form of a key or token that is stored."""
    return hmac.new(mac_key, key.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


class PreparedMac:
    """HMAC-SHA-256 under one fixed key, with the key's inner and outer blocks hashed once (RFC 2104):
    each call then hashes only the message and the inner digest. Same output as :func:`mac_digest`
    (``PreparedMac(mac_key)(key.encode("utf-8", "surrogatepass")) == mac_digest(mac_key, key)``), at
    about half its cost; safe to call from several threads (the prepared hashes are only copied).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, mac_key: bytes) -> None:
        if len(mac_key) > _SHA256_BLOCK:
            mac_key = hashlib.sha256(mac_key).digest()
        block = bytes(mac_key).ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def __call__(self, message: bytes) -> bytes:
        """The HMAC-SHA-256 of ``message``."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid API key belongs to. ``metadata`` is read-only and shared: do not mutate it.

    ``rate_limit`` is the consumer's own limit as stored (``None``: the gateway's default), and
    ``max_connections`` its own cap on requests in flight (``None``: the gateway's default).
    ``scopes`` are the key's effective scopes (its own within its consumer's, or its consumer's; see
    :func:`keyswap.store.models.effective_scopes`): the ``scope`` claim of minted tokens.
    """

    key_id: str
    consumer: str
    consumer_id: int
    metadata: Mapping[str, Any]
    rate_limit: str | None = None
    scopes: tuple[str, ...] = ()
    max_connections: int | None = None
    #: The consumer's quota and credits as stored (:mod:`keyswap.manage.quotas`).
    quota: str | None = None
    credits: int | None = None
    credits_refill: str | None = None
    credits_set_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    record: ApiKeyRecord
    principal: Principal


@dataclass(frozen=True, slots=True)
class _Item:
    fresh_until: float  # monotonic: trusted without asking the store until then (same epoch)
    confirmed_at: float  # monotonic: when the store said so (outage fallback)
    epoch: int
    entry: _Entry


class _Lookup(NamedTuple):
    digest: bytes
    generation: int
    hit: bool  # a fresh answer (entry None: a known-unknown key)
    entry: _Entry | None
    fallback: _Entry | None  # a known key as last confirmed, usable while the store is down


class _LookupCache:
    """Two bounded LRUs: known keys (digest -> item) and unknown ones (digest -> fresh until).

    A known item answers for ``ttl`` seconds while the epoch is unchanged, and stays (as a
    fallback for store outages) for ``grace`` seconds after the store confirmed it. An unknown digest
    answers "no such key" for ``ttl`` seconds and is dropped on every :meth:`clear`. The two never
    share room: any number of unknown keys cannot push a known key out (``unknown_size`` bounds them).

    ``generation`` moves on every :meth:`clear` and :meth:`invalidate`; a lookup that started before
    either does not store its (possibly stale) answer. ``epoch`` moves on :meth:`clear` only: an item
    from an older epoch is no longer trusted. :meth:`invalidate` stops trusting only the items it names.
    """

    def __init__(
        self,
        size: int,
        ttl: float,
        grace: float,
        monotonic: Callable[[], float],
        unknown_size: int | None = None,
    ) -> None:
        self._size = size
        self._unknown_size = size if unknown_size is None else unknown_size
        self._ttl = ttl
        self._grace = grace
        self._monotonic = monotonic
        self._items: OrderedDict[bytes, _Item] = OrderedDict()
        self._unknown: OrderedDict[bytes, tuple[float, int]] = OrderedDict()
        self._by_id: dict[str, bytes] = {}  # key id -> digest of every known item
        self._lock = threading.Lock()
        self.generation = 0
        self.epoch = 0

    @property
    def capacity(self) -> int:
        """Most known keys held (0: the cache is off)."""
        return self._size if self._ttl > 0 else 0

    def peek(self, digest: bytes) -> _Entry | None:
        """The entry cached for ``digest``, fresh or not, without touching the cache's order."""
        with self._lock:
            item = self._items.get(digest)
            return None if item is None else item.entry

    def get(self, digest: bytes) -> tuple[bool, _Entry | None, _Entry | None]:
        """``(fresh hit, its entry, outage fallback)``."""
        with self._lock:
            now = self._monotonic()
            item = self._items.get(digest)
            if item is None:
                unknown = self._unknown.get(digest)
                if unknown is None:
                    return False, None, None
                fresh_until, epoch = unknown
                if epoch == self.epoch and now < fresh_until:
                    return True, None, None
                del self._unknown[digest]
                return False, None, None
            fallback = item.entry if now - item.confirmed_at < self._grace else None
            if item.epoch == self.epoch and now < item.fresh_until:
                self._items.move_to_end(digest)
                return True, item.entry, fallback
            if fallback is None:
                self._drop(digest)
            return False, None, fallback

    def _drop(self, digest: bytes) -> None:
        item = self._items.pop(digest, None)
        if item is not None:
            self._by_id.pop(item.entry.record.id, None)

    def put(self, digest: bytes, entry: _Entry | None, generation: int) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            if generation != self.generation:
                return
            now = self._monotonic()
            if entry is None:
                if digest in self._items:
                    self._drop(digest)
                    return
                if self._unknown_size <= 0:
                    return
                self._unknown[digest] = (now + self._ttl, self.epoch)
                self._unknown.move_to_end(digest)
                while len(self._unknown) > self._unknown_size:
                    self._unknown.popitem(last=False)
                return
            if self._size <= 0:
                return
            self._unknown.pop(digest, None)
            self._items[digest] = _Item(now + self._ttl, now, self.epoch, entry)
            self._items.move_to_end(digest)
            self._by_id[entry.record.id] = digest
            while len(self._items) > self._size:
                _, evicted = self._items.popitem(last=False)
                self._by_id.pop(evicted.entry.record.id, None)

    def clear(self) -> None:
        """Stop trusting every item (known keys stay as outage fallbacks, as last confirmed)."""
        with self._lock:
            self.generation += 1
            self.epoch += 1
            self._unknown.clear()
            if self._grace <= 0:
                self._items.clear()
                self._by_id.clear()

    def invalidate(self, key_ids: Iterable[str], consumer_ids: Iterable[int]) -> dict[str, bytes]:
        """Stop trusting the items of these keys and of every key of these consumers, and every
        unknown key (one of them may be a key just created); the others stay trusted. Returns key id
        -> digest of the items named that are still held as outage fallbacks (to re-read)."""
        with self._lock:
            self.generation += 1
            self._unknown.clear()
            digests = {kid: self._by_id[kid] for kid in key_ids if kid in self._by_id}
            owners = set(consumer_ids)
            if owners:
                for digest, item in self._items.items():
                    if item.entry.principal.consumer_id in owners:
                        digests[item.entry.record.id] = digest
            for digest in digests.values():
                item = self._items[digest]
                if self._grace <= 0:
                    self._drop(digest)
                else:  # no longer fresh; kept (as last confirmed) as an outage fallback
                    self._items[digest] = _Item(0.0, item.confirmed_at, item.epoch, item.entry)
            return {kid: digest for kid, digest in digests.items() if digest in self._items}

    def known(self) -> dict[str, bytes]:
        """Key id -> digest of every known key still usable as an outage fallback."""
        with self._lock:
            now = self._monotonic()
            return {
                item.entry.record.id: digest
                for digest, item in self._items.items()
                if now - item.confirmed_at < self._grace
            }

    def refresh(
        self, digests: Mapping[str, bytes], found: Mapping[str, _Entry], generation: int
    ) -> bool:
        """Replace the known keys ``digests`` names by what the store says now (``found``, by key
        id; a key not in it is gone and is dropped). False, storing nothing, if the generation moved
        since ``generation`` (a newer refresh follows)."""
        with self._lock:
            if generation != self.generation:
                return False
            now = self._monotonic()
            for key_id, digest in digests.items():
                entry = found.get(key_id)
                if entry is None:
                    self._drop(digest)
                elif digest in self._items:
                    self._items[digest] = _Item(now + self._ttl, now, self.epoch, entry)
            return True

    def __len__(self) -> int:
        return len(self._items) + len(self._unknown)

    @property
    def sizes(self) -> tuple[int, int]:
        """``(known keys, unknown keys)`` held now."""
        return len(self._items), len(self._unknown)


class ApiKeys:
    """API keys over a :class:`~keyswap.store.Store` and the server secret.

    Args:
        store: where digests live.
        secret: the server secret (its API-key HMAC subkey is used).
        prefix: key prefix (``ks``); keys with another prefix are malformed.
        cache_size: most cached known keys (also the outage fallbacks); 0 disables the cache.
        unknown_cache_size: most cached unknown keys, in a cache of their own so that no flood of
            made-up keys pushes a known key out (default: ``cache_size``).
        cache_ttl: seconds a cached lookup is trusted without a revision change (default 1 s: a change
            made by another process shows within a second even without a ChangeWatcher).
        last_used_interval: :meth:`flush_last_used` writes at most this often unless forced.
        outage_grace: while the store is unreachable, a key the store confirmed within this many
            seconds keeps working from memory (0: refuse every key with 503 during an outage).
        retry_interval: after a store failure, seconds before the store is asked again (known keys
            are answered from memory meanwhile; unknown ones get 503 at once).
        clock: wall-clock seconds (expiry, revocation, last used).
        monotonic: monotonic seconds (cache ages, flush interval, outage bookkeeping).

    Raises:
        ConfigError: bad prefix, or the database belongs to another server secret.
    """

    def __init__(
        self,
        store: Store,
        secret: ServerSecret,
        *,
        prefix: str = DEFAULT_PREFIX,
        cache_size: int = 10_000,
        unknown_cache_size: int | None = None,
        cache_ttl: float = 1.0,
        last_used_interval: float = 10.0,
        outage_grace: float = DEFAULT_OUTAGE_GRACE,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (outage_grace >= 0 and retry_interval >= 0):
            raise ConfigError("outage_grace and retry_interval must not be negative")
        self._store = store
        self._mac_key = secret.api_key_mac_key
        self._mac = PreparedMac(self._mac_key)
        self._memo: tuple[str | None, bytes] = (None, b"")  # (key, digest): see digest()
        self.prefix = _check_prefix(prefix)
        self._format = _key_format(self.prefix)
        self._clock = clock
        self._monotonic = monotonic
        self._cache = _LookupCache(
            cache_size, cache_ttl, outage_grace, monotonic, unknown_size=unknown_cache_size
        )
        self._retry_interval = retry_interval
        self._down_until: float | None = None  # monotonic; set while the store is failing
        #: Store lookups that failed, and keys answered from memory because of it (for metrics).
        self.store_failures = 0
        self.fallbacks = 0
        self._last_used_interval = last_used_interval
        self._last_used: dict[str, float] = {}
        self._last_used_lock = threading.Lock()
        self._last_flush = monotonic()
        #: Every key in the store, a few bits each (:mod:`keyswap.gateway.keyfilter`).
        self.filter = KeyFilter()
        self._filter_lock = threading.Lock()
        #: One filter load at a time (the warm start's and a reload's): two at once would share the
        #: filter's list of digests added meanwhile, and the older could replace the newer's table.
        self._load_lock = threading.Lock()
        self._filter_again = False
        self._filter_loading = False
        check_secret(store, secret)

    # -- management ---------------------------------------------------------------------------------

    def create(
        self,
        consumer: str,
        *,
        expires_in: float | None = None,
        scopes: Iterable[str] | None = None,
        now: float | None = None,
        label: str | None = None,
    ) -> tuple[ApiKeyRecord, str]:
        """Create a key for ``consumer``; returns the record and the key (shown once, never stored).
        ``label``: a name for it (at most 64 printable characters; ``None``: none).

        ``scopes``: the key's own scopes, each one its consumer's (``None``: the key has whatever scopes
        its consumer has, now and later).

        Raises:
            NotFound: no such consumer.
            InvalidInput: ``expires_in`` is not a positive number of seconds; a bad scope, or one the
                consumer does not have.
        """
        now = self._clock() if now is None else now
        if expires_in is not None and not (math.isfinite(expires_in) and expires_in > 0):
            raise InvalidInput("the expiry must be a positive duration")
        label = validate_label(label)
        owner = self._consumer(consumer)
        expires_at = None if expires_in is None else now + expires_in
        for _ in range(5):
            key, key_id = generate_key(self.prefix), generate_key_id()
            try:
                record = self._store.insert_api_key(
                    consumer_id=owner.id,
                    key_id=key_id,
                    digest=self.digest(key),
                    hint=self._hint(key),
                    created_at=now,
                    expires_at=expires_at,
                    scopes=None if scopes is None else tuple(scopes),
                    label=label,
                )
            except AlreadyExists:  # pragma: no cover - a 71-bit id collision
                continue
            return record, key
        raise ConfigError("could not draw a unique key id")  # pragma: no cover

    def revoke(self, key_id: str, now: float | None = None) -> ApiKeyRecord:
        """Revoke a key at once (idempotent).

        Raises:
            NotFound: no such key id.
        """
        record = self._store.revoke_api_key(key_id, now=self._clock() if now is None else now)
        self.invalidate([key_id])
        return record

    def roll(
        self, key_id: str, grace: float = DEFAULT_GRACE, now: float | None = None
    ) -> tuple[ApiKeyRecord, str]:
        """Replace a key: a new key for the same consumer; the old one stops working after ``grace``.

        The new key inherits the old key's expiry if it had one; the old key's expiry becomes
        ``min(its expiry, now + grace)``. A key can be rolled once (roll its replacement next time).

        Raises:
            NotFound: no such key id.
            InvalidInput: bad grace, or the key is revoked, expired or already rolled.
        """
        now = self._clock() if now is None else now
        if not (math.isfinite(grace) and grace >= 0):
            raise InvalidInput("the grace period must be zero or a positive duration")
        old = self._store.get_api_key(key_id)
        if old is None:
            raise NotFound(f"unknown key id '{key_id}'")
        if not old.usable_at(now) or old.replaced_by is not None:
            suffix = f"; roll '{old.replaced_by}' instead" if old.replaced_by else ""
            raise InvalidInput(
                f"key '{key_id}' is {old.status_at(now)} and cannot be rolled{suffix}"
            )
        old_expires_at = now + grace if old.expires_at is None else min(old.expires_at, now + grace)
        for _ in range(5):
            key, new_id = generate_key(self.prefix), generate_key_id()
            try:
                _, record = self._store.roll_api_key(
                    key_id,
                    old_expires_at=old_expires_at,
                    new_key_id=new_id,
                    new_digest=self.digest(key),
                    new_hint=self._hint(key),
                    created_at=now,
                    new_expires_at=old.expires_at,
                )
            except AlreadyExists:  # pragma: no cover - a 71-bit id collision
                continue
            self.invalidate([key_id, new_id])
            return record, key
        raise ConfigError("could not draw a unique key id")  # pragma: no cover

    # -- the request path ---------------------------------------------------------------------------

    def digest(self, key: str) -> bytes:
        """HMAC-SHA-256 of ``key`` under the API-key subkey (what the store keeps).

        The last key's digest is kept: one request asks for its key's digest up to four times
        (cache, key filter before and after the revision read, refused-key owner), always with
        the same string object, so an identity check saves the HMAC (one tuple, replaced whole:
        safe across threads)."""
        memo = self._memo
        if memo[0] is key:
            return memo[1]
        digest = self._mac(key.encode("utf-8", "surrogatepass"))
        self._memo = (key, digest)
        return digest

    def authenticate(self, key: str, now: float | None = None) -> Principal:
        """The principal for a valid key. May query the store (on a cache miss): run it off the loop.

        Raises:
            InvalidApiKey: ``"Invalid API key"`` for every cause (malformed, unknown, revoked, expired).
            StoreUnavailable: the store cannot be reached and this node does not know the key (503).
        """
        found = self._lookup(key)
        entry = found.entry
        if not found.hit:
            if self.store_down:
                entry = self._fallback(found)
            else:
                try:
                    row = self._store.find_api_key(found.digest)
                except SQLAlchemyError:
                    self.store_failures += 1
                    self._down_until = self._monotonic() + self._retry_interval
                    entry = self._fallback(found)
                else:
                    self._down_until = None
                    entry = None if row is None else _entry(*row)
                    self._cache.put(found.digest, entry, found.generation)
        return self._accept(entry, self._clock() if now is None else now)

    def lookup_cached(self, key: str, now: float | None = None) -> Principal | None:
        """Like :meth:`authenticate` but without I/O: ``None`` on a cache miss.

        While the store is failing (see ``retry_interval``), a known key is answered from memory and an
        unknown one raises :class:`~keyswap.errors.StoreUnavailable`, still without I/O.

        Raises:
            InvalidApiKey: the key is malformed, or the cache knows it is unknown, revoked or expired.
            StoreUnavailable: the store is failing and the key is not known here.
        """
        hit, entry, fallback = self._cache.get(self._checked_digest(key))
        if hit:
            return self._accept(entry, self._clock() if now is None else now)
        if self.store_down:
            if fallback is None:
                raise StoreUnavailable(_UNAVAILABLE)
            self.fallbacks += 1
            return self._accept(fallback, self._clock() if now is None else now)
        return None

    def refused_owner(self, key: str, now: float | None = None) -> tuple[str, str] | None:
        """``(consumer, key id)`` of a key this node knows (from its cache, no I/O) to be revoked or
        expired; ``None`` for any other key. For the usage meter, after the refusal was answered: the
        answer itself never depends on it (every refusal is the same 401)."""
        if not isinstance(key, str) or not is_well_formed(key, self.prefix):
            return None
        entry = self._cache.peek(self.digest(key))
        if entry is None or entry.record.usable_at(self._clock() if now is None else now):
            return None
        return entry.principal.consumer, entry.record.id

    @property
    def store(self) -> Store:
        """The store the keys live in."""
        return self._store

    @property
    def cache_sizes(self) -> tuple[int, int]:
        """``(known keys, unknown keys)`` cached now."""
        return self._cache.sizes

    @property
    def store_down(self) -> bool:
        """True while the last store lookup failed less than ``retry_interval`` seconds ago."""
        down_until = self._down_until
        return down_until is not None and self._monotonic() < down_until

    def store_timed_out(self, key: str, now: float | None = None) -> Principal:
        """The store did not answer a lookup of ``key`` in time: treat it as failing (for
        ``retry_interval``) and answer from memory, as :meth:`authenticate` does during an outage.

        Raises:
            InvalidApiKey: as for :meth:`authenticate` (e.g. a key this node knows is revoked).
            StoreUnavailable: this node does not know the key (503).
        """
        if not self.store_down:
            log.warning(
                "the key store did not answer in time; known keys are answered from memory "
                "for %g s, then it is tried again",
                self._retry_interval,
            )
        self._down_until = self._monotonic() + self._retry_interval
        found = self._lookup(key)
        entry = found.entry if found.hit else self._fallback(found)
        return self._accept(entry, self._clock() if now is None else now)

    def _fallback(self, found: _Lookup) -> _Entry:
        if found.fallback is None:
            raise StoreUnavailable(_UNAVAILABLE)
        self.fallbacks += 1
        return found.fallback

    def clear_cache(self) -> None:
        """Stop trusting cached lookups (call it when the store revision changes), then re-read the
        known keys from the store at once: what changed (a revocation, a roll's new expiry, a deleted
        key, new metadata) is learned now, so the outage fallback never serves a key as it was before
        the change this node was told about. If the store cannot be read, known keys stay as last
        confirmed (the outage fallback) and the next change or lookup tries again.
        """
        self._cache.clear()
        self.refresh_known()

    def invalidate(self, key_ids: Iterable[str] = (), consumer_ids: Iterable[int] = ()) -> bool:
        """Stop trusting what the cache holds for these keys and these consumers' keys (and every
        cached unknown key), then re-read those keys from the store at once; other cached keys stay
        trusted. What a node does for a change the store's change log describes.

        Returns True if the cache now holds what the store says; False if the store failed (the keys
        stay as last confirmed, as outage fallbacks) or another change came first.
        """
        digests = self._cache.invalidate(key_ids, consumer_ids)
        generation = self._cache.generation
        if not digests or self.store_down:
            return not digests
        try:
            rows = self._store.find_api_keys_by_id(list(digests))
        except SQLAlchemyError as exc:
            self._down_until = self._monotonic() + self._retry_interval
            log.warning("could not re-read API keys after a change (%s)", type(exc).__name__)
            return False
        found = {key_id: _entry(*row) for key_id, row in rows.items()}
        return self._cache.refresh(digests, found, generation)

    # -- the key filter and warm start --------------------------------------------------------------

    def absent(self, key: str) -> int | None:
        """The revision as of which ``key`` surely did not exist (the key filter does not hold it),
        or ``None`` if it may exist (or the filter is not loaded). No I/O."""
        revision = self.filter.revision
        if revision is None or self.filter.may_hold(self.digest(key)):
            return None
        return revision

    def store_revision(self) -> int:
        """The store's revision now (one query)."""
        return self._store.revision()

    def quick_revision(self) -> QuickRevision | None:
        """A reader of the store's revision cheap enough for the event loop (a SQLite file), or
        ``None`` (:meth:`keyswap.store.sql.Store.quick_revision`)."""
        return self._store.quick_revision()

    def load_filter(self) -> bool:
        """Load the key filter from the store (every key's digest, one read). False on a store
        error (the filter keeps answering "maybe": every unknown key is looked up)."""
        with self._load_lock:
            self.filter.begin_load()
            try:
                revision, count, digests = self._store.all_api_key_digests()
            except SQLAlchemyError as exc:
                self.filter.cancel_load()
                log.warning("could not load the API key filter (%s)", type(exc).__name__)
                return False
            self.filter.load(digests, count, revision)
            return True

    def reload_filter_soon(self) -> None:
        """Stop trusting the key filter and reload it on a thread of its own (after a change the log
        could not describe, or once it holds more keys than it was sized for)."""
        self.filter.reset()
        with self._filter_lock:
            if self._filter_loading:
                self._filter_again = True
                return
            self._filter_loading = True
        threading.Thread(target=self._reload_filter, name="keyswap-key-filter", daemon=True).start()

    def _reload_filter(self) -> None:
        while True:
            self.load_filter()
            with self._filter_lock:
                if not self._filter_again:
                    self._filter_loading = False
                    return
                self._filter_again = False

    def changed(self, key_ids: Iterable[str], consumer_ids: Iterable[int], revision: int) -> None:
        """Apply what the change log says changed up to ``revision``: invalidate those keys and
        consumers (:meth:`invalidate`), add the changed keys to the key filter, advance it."""
        key_ids = list(key_ids)
        self.invalidate(key_ids, consumer_ids)
        # While a load runs, its read may predate these keys: add them (the load keeps them), or a
        # later advance would cover them without their digests.
        if not (self.filter.ready or self.filter.loading):
            return
        if key_ids:
            try:
                digests = self._store.api_key_digests(key_ids)
            except SQLAlchemyError:
                self.reload_filter_soon()  # it would miss these keys: stop trusting it
                return
            for digest in digests:
                self.filter.add(digest)
        if self.filter.ready and self.filter.crowded:
            self.reload_filter_soon()
            return
        self.filter.advance(revision)  # during a load: the revision the load will cover

    def warm(self, since: float, limit: int, *, fill: bool = True) -> list[Principal]:
        """Put the keys last used at or after ``since`` (up to ``limit``, most recent first) into the
        lookup cache, as a lookup would, and, with ``fill``, the other usable keys (neither revoked nor
        expired), newest first, in the room left (up to ``limit`` and the cache's size for known
        keys). Returns the principals of the usable keys cached, the recently used first: the
        gateway mints their tokens before it reports ready, so that a key's first request after a
        start costs neither a store lookup nor a signature. Nothing on a store error.
        """
        generation = self._cache.generation
        try:
            rows = self._store.recent_api_keys(since, limit)
            room = min(limit, self._cache.capacity) - len(rows)
            now = self._clock()
            idle = self._store.idle_api_keys(since, now, room) if fill and room > 0 else []
        except SQLAlchemyError as exc:
            log.warning("could not warm the API key cache (%s)", type(exc).__name__)
            return []
        # Least recently used first: the idle keys (oldest first), then the recent ones.
        usable: list[Principal] = []
        for digest, record, consumer in reversed(idle):
            entry = _entry(record, consumer)
            self._cache.put(digest, entry, generation)
            usable.append(entry.principal)
        for digest, record, consumer in reversed(rows):
            entry = _entry(record, consumer)
            self._cache.put(digest, entry, generation)
            if record.usable_at(now):
                usable.append(entry.principal)
        usable.reverse()  # the most recently used first, then the newest idle keys
        return usable

    def refresh_known(self) -> bool:
        """Re-read every known key (those usable as outage fallbacks) from the store, in batches.

        Returns True if the cache now holds what the store says; False if the store failed (it is then
        left alone for ``retry_interval``) or another change came first. Skipped while the store is
        failing.
        """
        if self.store_down:
            return False
        generation = self._cache.generation
        digests = self._cache.known()
        if not digests:
            return True
        try:
            rows = self._store.find_api_keys_by_id(list(digests))
        except SQLAlchemyError as exc:
            self._down_until = self._monotonic() + self._retry_interval
            log.warning("could not re-read known API keys after a change (%s)", type(exc).__name__)
            return False
        found = {key_id: _entry(*row) for key_id, row in rows.items()}
        return self._cache.refresh(digests, found, generation)

    def flush_last_used(self, force: bool = False) -> int:
        """Write pending last-used times in one batch, at most every ``last_used_interval`` unless forced.

        Returns how many keys were written. On a store error the times are kept for the next flush.
        """
        if not force and self._monotonic() - self._last_flush < self._last_used_interval:
            return 0
        with self._last_used_lock:
            pending, self._last_used = self._last_used, {}
        self._last_flush = self._monotonic()
        if not pending:
            return 0
        try:
            self._store.touch_api_keys(pending)
        except Exception:
            with self._last_used_lock:
                for key_id, at in pending.items():
                    self._last_used[key_id] = max(at, self._last_used.get(key_id, at))
            raise
        return len(pending)

    def _checked_digest(self, key: str) -> bytes:
        """The key's digest, if the key is well-formed.

        Raises:
            InvalidApiKey: the key is malformed (after its HMAC: the same work before any refusal).
        """
        text = key if isinstance(key, str) else ""
        digest = self.digest(text)
        if not _well_formed(self._format, text):
            raise InvalidApiKey(_REFUSAL)
        return digest

    def _lookup(self, key: str) -> _Lookup:
        digest = self._checked_digest(key)
        generation = self._cache.generation
        hit, entry, fallback = self._cache.get(digest)
        return _Lookup(digest, generation, hit, entry, fallback)

    def _accept(self, entry: _Entry | None, now: float) -> Principal:
        if entry is None or not entry.record.usable_at(now):
            raise InvalidApiKey(_REFUSAL)
        with self._last_used_lock:
            self._last_used[entry.record.id] = now
        return entry.principal

    def _consumer(self, name: str) -> Consumer:
        consumer = self._store.get_consumer(name)
        if consumer is None:
            raise NotFound(f"unknown consumer '{name}'")
        return consumer

    def _hint(self, key: str) -> str:
        return f"{self.prefix}_...{key[-4:]}"


def _entry(record: ApiKeyRecord, consumer: Consumer) -> _Entry:
    principal = Principal(
        key_id=record.id,
        consumer=consumer.name,
        consumer_id=consumer.id,
        metadata=MappingProxyType(dict(consumer.metadata)),
        rate_limit=consumer.rate_limit,
        scopes=record.effective_scopes,
        max_connections=consumer.max_connections,
        quota=consumer.quota,
        credits=consumer.credits,
        credits_refill=consumer.credits_refill,
        credits_set_at=consumer.credits_set_at,
    )
    return _Entry(record, principal)
