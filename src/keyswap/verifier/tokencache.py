"""The verified-token cache: a token verified once is not verified again until it expires.

- bounded: least-recently-used entries are evicted beyond ``max_size`` (default 10 000);
- keyed by a hash of the token, never the token itself: Python's ``hash()`` of the token string
  (SipHash-1-3 under a key drawn at interpreter start), and an entry also keeps the token's last
  :data:`CHECK_LENGTH` characters (a piece of its signature), which a lookup must match too. See
  :func:`token_key` for why this is safe and why it is not SHA-256;
- an entry holds the claims and the validity window computed by the claims check (``nbf``/``iat`` and
  ``exp``, leeway included); a lookup outside the window misses and drops the entry;
- an entry remembers the issuer and ``kid`` that verified it, so :meth:`TokenCache.purge` can drop every
  token signed with a key that left the issuer's JWKS.

Thread-safe without a lock: each step is one atomic ``OrderedDict`` operation, and a step that loses a
race with another thread (an entry evicted in between) is simply skipped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Hashable
from typing import Any, NamedTuple

__all__ = ["CHECK_LENGTH", "DEFAULT_TOKEN_CACHE_SIZE", "CachedToken", "TokenCache", "token_key"]

#: Default number of verified tokens kept.
DEFAULT_TOKEN_CACHE_SIZE = 10_000

#: How many trailing characters of the token an entry keeps and a lookup compares.
CHECK_LENGTH = 16


def token_key(token: str) -> int:
    """The cache key of ``token``: ``hash(token)``, Python's SipHash-1-3 of the string.

    Why this is safe: a hit skips the signature check, so what matters is whether a string that was
    not verified can hit the entry of one that was. A lookup must match the 64-bit keyed hash *and*
    the token's last :data:`CHECK_LENGTH` characters (96 bits of its signature); without the
    interpreter's hash key (random per process) and the cached token, neither can be aimed at, and a
    blind hit needs about 2**64 / max_size guesses. With a fixed ``PYTHONHASHSEED`` the hash key is
    known, but computing a colliding string still needs the cached token itself, and a collision
    only ever stands in for that token (its claims, its window, purged with its kid): whoever holds
    the token gains nothing by it. Two distinct real tokens share an entry only if both values
    collide (about 2**-160).

    Why not SHA-256: it cost 0.55 µs per 650-byte token here (a third of a warm request through the
    middleware, OpenSSL's fixed set-up included), ``hash()`` 0.12 µs, and it is cached in the string.
    """
    return hash(token)


class CachedToken(NamedTuple):
    """One verified token: its claims, validity window and the (issuer, kid) that verified it."""

    claims: dict[str, Any]
    not_before: float
    expires: float
    issuer: Hashable
    kid: str
    #: Names of claims whose values are JSON objects or arrays: copied on every hit, so an app that
    #: mutates the claims it was given never changes what later requests see.
    nested: tuple[str, ...] = ()
    #: The token's last :data:`CHECK_LENGTH` characters, compared on every lookup (set by ``put``).
    check: str = ""


class TokenCache:
    """Bounded LRU of :class:`CachedToken` by token (see the module docstring).

    ``max_size=0`` disables caching.
    """

    def __init__(self, max_size: int = DEFAULT_TOKEN_CACHE_SIZE) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        self.max_size = max_size
        self._entries: OrderedDict[int, CachedToken] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> CachedToken | None:
        """The entry of ``token`` if it is valid at ``now``; an entry outside its window is dropped."""
        key = hash(token)  # = token_key(token), inlined: this runs on every request
        entry = self._entries.get(key)
        if entry is None or entry.check != token[-CHECK_LENGTH:]:
            return None
        if entry.not_before <= now < entry.expires:
            try:  # noqa: SIM105 - contextlib.suppress costs more than the lookup on this hot path
                self._entries.move_to_end(key)
            except KeyError:  # evicted or purged by another thread meanwhile
                pass
            return entry
        self._entries.pop(key, None)
        return None

    def put(self, token: str, entry: CachedToken) -> None:
        """Store ``entry`` for ``token``, evicting the least recently used beyond ``max_size``.

        ``entry.check`` must be ``token[-CHECK_LENGTH:]`` (the verifier builds it so); an entry built
        without it is completed here.
        """
        if not self.max_size:
            return
        if entry.check != token[-CHECK_LENGTH:]:
            entry = entry._replace(check=token[-CHECK_LENGTH:])
        entries = self._entries
        entries[hash(token)] = entry
        while len(entries) > self.max_size:
            try:
                entries.popitem(last=False)
            except KeyError:  # pragma: no cover - emptied by another thread meanwhile
                break

    def discard(self, token: str) -> None:
        """Drop the entry of ``token`` if present."""
        key = hash(token)
        entry = self._entries.get(key)
        if entry is not None and entry.check == token[-CHECK_LENGTH:]:
            self._entries.pop(key, None)

    def purge(self, issuer: Hashable, kids: Collection[str]) -> int:
        """Drop every entry of ``issuer`` verified with one of ``kids``; return how many were dropped.

        O(size): meant for key-set changes, which are rare.
        """
        if not kids:
            return 0
        doomed = [
            key
            for key, entry in list(self._entries.items())
            if entry.kid in kids and entry.issuer == issuer
        ]
        for key in doomed:
            self._entries.pop(key, None)
        return len(doomed)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
