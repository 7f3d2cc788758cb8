"""Every API key in the store, in a few bits each: refuse an unknown key without a lookup.

A Bloom filter of the digests of all keys (32 bits and 4 probes per key: about 1 false "maybe" in
5,000; 4 MB for a million keys). It is loaded from the store in one read (the digests and the
revision they were read at), and the gateway adds the digest of every key the change log says was
created or changed, then advances :attr:`KeyFilter.revision`: the filter holds every key that existed
at that revision. A key is never removed (a revoked or deleted key only makes a "maybe": a lookup).

A digest the filter does not hold is a key that did not exist at :attr:`KeyFilter.revision`; the
gateway refuses it once the store's revision, read after the request arrived, is no newer (a key
created elsewhere a moment ago is therefore never refused: its revision is newer, and the request is
looked up as before).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["KeyFilter"]

_BITS_PER_KEY = 32
_PROBES = 4
_MIN_BITS = 1 << 16


def _size(keys: int) -> int:
    bits = _MIN_BITS
    while bits < keys * _BITS_PER_KEY * 2:  # room to grow to twice the keys loaded
        bits <<= 1
    return bits


class KeyFilter:
    """A Bloom filter of API key digests with the store revision it covers (thread-safe)."""

    def __init__(self) -> None:
        #: The bits and the mask of their positions, replaced together (a reader never pairs a new
        #: table with an old mask).
        self._table: tuple[bytearray, int] = (bytearray(_MIN_BITS // 8), _MIN_BITS - 1)
        self._count = 0
        self._lock = threading.Lock()
        self._loading: list[bytes] | None = None  # digests added while a load runs
        #: While a load runs: the newest revision :meth:`advance` named meanwhile (its keys were
        #: added; 0: none yet), which the load then covers too, so that the filter is not left behind
        #: the store until the next change. ``None`` outside a load, and once :meth:`reset` ran
        #: during it: a change after a reset may name revisions past one whose keys were not added
        #: (a failed digest read, a gap), so that load covers only its own read.
        self._advance_to: int | None = None
        #: Holds every key that existed at this revision (``None``: not loaded, answers "maybe").
        self.revision: int | None = None

    @property
    def ready(self) -> bool:
        """True once loaded (and not reset since)."""
        return self.revision is not None

    @property
    def loading(self) -> bool:
        """True between :meth:`begin_load` and :meth:`load` (what is added meanwhile is kept)."""
        return self._loading is not None

    @property
    def crowded(self) -> bool:
        """True when it holds more keys than it was sized for (more false "maybe"s): reload it."""
        return self._count * _BITS_PER_KEY > len(self._table[0]) * 8

    @property
    def nbytes(self) -> int:
        """Its size in bytes."""
        return len(self._table[0])

    def may_hold(self, digest: bytes) -> bool:
        """False only for a digest that was not added (always True before the first load)."""
        if self.revision is None:
            return True
        bits, mask = self._table
        # The _PROBES (4) positions of _positions, unrolled: this runs for every unknown key.
        position = int.from_bytes(digest[:8], "little")
        step = int.from_bytes(digest[8:16], "little") | 1
        at = position & mask
        if not bits[at >> 3] & (1 << (at & 7)):
            return False
        position += step
        at = position & mask
        if not bits[at >> 3] & (1 << (at & 7)):
            return False
        position += step
        at = position & mask
        if not bits[at >> 3] & (1 << (at & 7)):
            return False
        at = (position + step) & mask
        return bool(bits[at >> 3] & (1 << (at & 7)))

    def add(self, digest: bytes) -> None:
        """Hold ``digest`` from now on (also across a load running now)."""
        with self._lock:
            self._set(*self._table, digest)
            self._count += 1
            if self._loading is not None:
                self._loading.append(digest)

    def begin_load(self) -> None:
        """Start collecting the digests added while the store is read (call before reading)."""
        with self._lock:
            self._loading = []
            self._advance_to = 0

    def cancel_load(self) -> None:
        """The read for a load failed: stop collecting (the filter stays as it was)."""
        with self._lock:
            self._loading = None
            self._advance_to = None

    def load(self, digests: Iterable[bytes], count: int, revision: int) -> None:
        """Replace the contents by ``digests`` (``count`` of them, read at ``revision``) and the
        digests added since :meth:`begin_load`."""
        size = _size(count)
        bits, mask = bytearray(size // 8), size - 1
        for digest in digests:
            self._set(bits, mask, digest)
        with self._lock:
            added = self._loading or []
            self._loading = None
            for digest in added:
                self._set(bits, mask, digest)
            self._table, self._count = (bits, mask), count + len(added)
            if self._advance_to is not None and self._advance_to > revision:
                revision = self._advance_to  # every key up to it was added meanwhile
            self._advance_to = None
            if self.revision is None or revision > self.revision:
                self.revision = revision

    def advance(self, revision: int) -> None:
        """Every key created up to ``revision`` has been added (after applying the change log).
        While a load runs on a filter that is not loaded, the load will cover ``revision`` too."""
        with self._lock:
            if self.revision is not None:
                if revision > self.revision:
                    self.revision = revision
            elif self._advance_to is not None and revision > self._advance_to:
                self._advance_to = revision

    def reset(self) -> None:
        """Answer "maybe" for everything until the next :meth:`load` (the log had a gap)."""
        with self._lock:
            self.revision = None
            self._advance_to = None

    def _set(self, bits: bytearray, mask: int, digest: bytes) -> None:
        for position in _positions(digest, mask):
            bits[position >> 3] |= 1 << (position & 7)


def _positions(digest: bytes, mask: int) -> list[int]:
    """The bit positions of ``digest``: double hashing over its first 16 bytes."""
    first = int.from_bytes(digest[:8], "little")
    step = int.from_bytes(digest[8:16], "little") | 1
    return [(first + i * step) & mask for i in range(_PROBES)]
