"""Automatic signing-key rotation on a schedule (``keyswap gateway --rotate-every 30d``).

Every gateway runs a :class:`RotationScheduler`; at most one of them rotates a given key:

- **When**: once the active key has been active for ``every`` seconds, decided from its
  ``activated_at`` in the database, so a restarted gateway keeps the schedule (it does not rotate
  early, nor wait another full period).
- **Next before it signs**: the next key must have been published for at least ``min_next_age``
  seconds (the JWKS cache max-age) before it becomes active; otherwise the rotation waits.
- **Exactly one node**: on PostgreSQL the check-and-rotate runs under an advisory lock
  (:meth:`keyswap.store.Store.exclusive`), so other nodes skip while one works. On SQLite (and as the
  last word everywhere) the rotation itself is conditional on the keys that were read
  (:meth:`keyswap.gateway.keyring.Keyring.rotate_if_due`): of two nodes that decide at once, one
  rotates and the other changes nothing.
- **How often it looks**: every ``check_interval`` seconds (default ``min(60, every / 100)``, at least
  1 s); the other nodes pick the rotation up through change notifications, like any rotation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from keyswap.errors import ConfigError

__all__ = ["LOCK_NAME", "RotationScheduler"]

log = logging.getLogger("keyswap.gateway")

#: The cluster-wide lock rotating nodes take.
LOCK_NAME = "signing-key-rotation"


class _Keyring(Protocol):
    def rotate_if_due(
        self, every: float, min_next_age: float, now: float | None = None
    ) -> bool: ...

    def rotation_due_in(self, every: float, now: float | None = None) -> float | None: ...


class _Locks(Protocol):
    def exclusive(self, name: str) -> AbstractContextManager[bool]: ...


class RotationScheduler:
    """Rotate the signing keys every ``every`` seconds, from one node at a time.

    Args:
        keyring: the gateway's :class:`~keyswap.gateway.keyring.Keyring`.
        store: the :class:`~keyswap.store.Store` (its :meth:`exclusive` lock).
        every: rotation period, seconds (> 0).
        min_next_age: how long the next key must have been published before it signs, seconds.
        check_interval: seconds between checks (default ``min(60, every / 100)``, at least 1).
        clock: wall-clock seconds.
        audit: wraps each check-and-rotate (e.g. :func:`keyswap.manage.signing.scheduled_rotation`,
            which records a rotation in the audit log as actor ``system:rotation``).

    Raises:
        ConfigError: non-positive period or interval, negative ``min_next_age``.
    """

    def __init__(
        self,
        keyring: _Keyring,
        store: _Locks,
        *,
        every: float,
        min_next_age: float,
        check_interval: float | None = None,
        clock: Callable[[], float] = time.time,
        audit: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        if not every > 0 or min_next_age < 0:
            raise ConfigError("the rotation period must be positive")
        interval = max(1.0, min(60.0, every / 100)) if check_interval is None else check_interval
        if not interval > 0:
            raise ConfigError("the rotation check interval must be positive")
        self._keyring = keyring
        self._store = store
        self.every = float(every)
        self.min_next_age = float(min_next_age)
        self.check_interval = float(interval)
        self._clock = clock
        self._audit = audit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: float | None = None) -> bool:
        """Check now (on the caller's thread); True if this node rotated.

        Errors (database unavailable, ...) are logged and give False; the next check tries again.
        """
        now = self._clock() if now is None else now
        due_in = self._keyring.rotation_due_in(self.every, now)
        if due_in is not None and due_in > 0:
            return False  # not due by this node's snapshot: no lock, no query
        try:
            with self._store.exclusive(LOCK_NAME) as mine:
                if not mine:
                    return False  # another node is rotating right now
                with self._audit() if self._audit is not None else nullcontext():
                    rotated = self._keyring.rotate_if_due(self.every, self.min_next_age, now)
        except Exception as exc:
            log.error("scheduled signing-key rotation failed (%s); will retry", type(exc).__name__)
            return False
        if rotated:
            log.info("rotated the signing keys (scheduled every %gs)", self.every)
        return rotated

    def start(self) -> None:
        """Check every ``check_interval`` seconds on a daemon thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="keyswap-key-rotation", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop checking and wait for the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            if self._stop.wait(self.check_interval):
                return
