"""``Idempotency-Key`` on POST: a retried request with the same key never acts twice.

Each entry is keyed by the caller, the method and path and the key, and remembers a fingerprint of
the request body and the first successful (2xx) response. Concurrent requests with one key are
serialised: the first acts, the others wait and replay its response. The same key with another body
is refused (422). A refused request (4xx) is not remembered: fixing it and retrying with the same key
acts. Entries live in this process's memory for ``ttl`` seconds (default 24 h; at most
``max_entries``, the oldest dropped first).

A response that carried a secret (a new API key) is remembered without it: see
:func:`keyswap.admin.routes_keys`.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from keyswap.admin.problems import ApiProblem

__all__ = ["IdempotencyCache", "Remembered", "Slot", "check_key"]

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_key(value: str | None) -> str | None:
    """A well-formed ``Idempotency-Key`` (1-255 printable ASCII characters), or ``None`` if absent.

    Raises:
        ApiProblem: 400 for a malformed key.
    """
    if value is None:
        return None
    if not _KEY.match(value):
        raise ApiProblem(
            400,
            "Idempotency-Key must be 1-255 printable ASCII characters",
            kind="bad-idempotency-key",
        )
    return value


@dataclass(frozen=True, slots=True)
class Remembered:
    """A remembered response: status, JSON body bytes, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str]


@dataclass
class Slot:
    """One key's entry; hold :attr:`lock` while acting on it."""

    fingerprint: str
    created: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    response: Remembered | None = None


class IdempotencyCache:
    """In-memory idempotency entries (thread-safe)."""

    def __init__(
        self,
        *,
        ttl: float = 86400.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, ...], Slot] = {}

    @staticmethod
    def fingerprint(body: bytes) -> str:
        """The fingerprint of a request body."""
        return hashlib.sha256(body).hexdigest()

    def slot(self, scope: tuple[str, ...], fingerprint: str) -> Slot:
        """The entry for ``scope`` (caller, method, path, key), created if new or expired."""
        now = self._clock()
        with self._lock:
            slot = self._slots.get(scope)
            if slot is None or now - slot.created > self.ttl:
                slot = Slot(fingerprint, now)
                self._slots[scope] = slot
                while len(self._slots) > self._max:
                    del self._slots[next(iter(self._slots))]
            return slot
