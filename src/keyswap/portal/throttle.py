"""A fixed-window limit on sign-in attempts per client address (link uses, OIDC callbacks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["AttemptLimiter"]


class AttemptLimiter:
    """At most ``limit`` attempts per address in each ``window`` seconds; in memory, per process.

    :meth:`allow` counts an attempt and says whether it may go ahead. At most ``max_addresses`` are
    tracked (the oldest windows are dropped first), so a flood of addresses cannot fill memory.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max = max_addresses
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, address: str) -> bool:
        """Count an attempt from ``address``; False if it is over the limit."""
        now = self._clock()
        with self._lock:
            start, count = self._seen.get(address, (now, 0))
            if now - start >= self.window:
                start, count = now, 0
            count += 1
            self._seen.pop(address, None)
            self._seen[address] = (start, count)
            while len(self._seen) > self._max:
                self._seen.pop(next(iter(self._seen)))
            return count <= self.limit

    def retry_after(self, address: str) -> int:
        """Whole seconds until ``address`` may try again (at least 1)."""
        with self._lock:
            start, _ = self._seen.get(address, (self._clock(), 0))
        return max(1, int(self.window - (self._clock() - start)) + 1)
