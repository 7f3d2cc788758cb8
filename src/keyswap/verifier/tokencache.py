"""The verified-token cache: a token verified once is not verified again until it expires.

- bounded: least-recently-used entries are evicted beyond ``max_size`` (default 10 000);
- keyed by the SHA-256 digest of the token, never the token itself;
- an entry holds the claims and the validity window computed by the claims check (``nbf``/``iat`` and
  ``exp``, leeway included); a lookup outside the window misses and drops the entry;
- an entry remembers the issuer and ``kid`` that verified it, so :meth:`TokenCache.purge` can drop every
  token signed with a key that left the issuer's JWKS.

Thread-safe without a lock: each step is one atomic ``OrderedDict`` operation, and a step that loses a
race with another thread (an entry evicted in between) is simply skipped.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Collection, Hashable
from typing import Any, NamedTuple

__all__ = ["DEFAULT_TOKEN_CACHE_SIZE", "CachedToken", "TokenCache", "token_digest"]

#: Default number of verified tokens kept.
DEFAULT_TOKEN_CACHE_SIZE = 10_000

_sha256 = hashlib.sha256


def token_digest(token: str) -> bytes:
    """The cache key of ``token`` (SHA-256 of its ASCII bytes)."""
    return _sha256(token.encode("ascii")).digest()


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


class TokenCache:
    """Bounded LRU of :class:`CachedToken` by token digest (see the module docstring).

    ``max_size=0`` disables caching.
    """

    def __init__(self, max_size: int = DEFAULT_TOKEN_CACHE_SIZE) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        self.max_size = max_size
        self._entries: OrderedDict[bytes, CachedToken] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float) -> CachedToken | None:
        """The entry for ``digest`` if it is valid at ``now``; an entry outside its window is dropped."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.not_before <= now < entry.expires:
            try:  # noqa: SIM105 - contextlib.suppress costs more than the lookup on this hot path
                self._entries.move_to_end(digest)
            except KeyError:  # evicted or purged by another thread meanwhile
                pass
            return entry
        self.discard(digest)
        return None

    def put(self, digest: bytes, entry: CachedToken) -> None:
        """Store ``entry``, evicting the least recently used entries beyond ``max_size``."""
        if not self.max_size:
            return
        entries = self._entries
        entries[digest] = entry
        while len(entries) > self.max_size:
            try:
                entries.popitem(last=False)
            except KeyError:  # pragma: no cover - emptied by another thread meanwhile
                break

    def discard(self, digest: bytes) -> None:
        """Drop one entry if present."""
        self._entries.pop(digest, None)

    def purge(self, issuer: Hashable, kids: Collection[str]) -> int:
        """Drop every entry of ``issuer`` verified with one of ``kids``; return how many were dropped.

        O(size): meant for key-set changes, which are rare.
        """
        if not kids:
            return 0
        doomed = [
            digest
            for digest, entry in list(self._entries.items())
            if entry.kid in kids and entry.issuer == issuer
        ]
        for digest in doomed:
            self._entries.pop(digest, None)
        return len(doomed)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
