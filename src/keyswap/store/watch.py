"""Notice changes another process made to the store: poll ``Store.revision()`` on a small thread, and
take pushed revisions (PostgreSQL LISTEN/NOTIFY, Redis pub/sub) through :meth:`ChangeWatcher.observe`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["ChangeWatcher"]

log = logging.getLogger("keyswap.store")


class _HasRevision(Protocol):
    def revision(self) -> int: ...


class ChangeWatcher:
    """Poll ``store.revision()`` every ``interval`` seconds; call ``on_change()`` when it moved.

    Runs on its own daemon thread, so a synchronous database query never blocks an event loop. The
    revision seen at :meth:`start` is the baseline (no call for it). ``on_tick`` (optional) runs after
    every poll, changed or not, and once more on :meth:`stop`: the place for periodic chores such as
    ``ApiKeys.flush_last_used``. Errors from the store or a callback are logged and the loop goes on:
    a database that is briefly unavailable delays change detection, it does not stop it (the first
    failure is logged as a warning, the recovery once; the ones in between at debug level).

    Push channels call :meth:`observe` with the revision a change produced (any thread): a revision
    newer than the last one seen calls ``on_change`` at once, so polling is only the fallback. A
    channel that reconnects calls :meth:`poll_once` to catch up on what it missed. ``on_change`` calls
    never overlap.

    Args:
        store: anything with ``revision() -> int`` (a :class:`keyswap.store.Store`).
        interval: seconds between polls (> 0).
        on_change: called on the watcher thread after the revision changed; must be thread-safe.
        on_tick: called on the watcher thread after every poll.

    Raises:
        ValueError: ``interval`` is not positive.
    """

    def __init__(
        self,
        store: _HasRevision,
        interval: float = 1.0,
        on_change: Callable[[], None] = lambda: None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self._store = store
        self._interval = float(interval)
        self._on_change = on_change
        self._on_tick = on_tick
        self._seen: int | None = None
        self._failing = False
        self._lock = threading.Lock()  # guards _seen
        self._change_lock = threading.Lock()  # one on_change at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def revision(self) -> int | None:
        """The last revision seen (``None`` before the first successful poll)."""
        return self._seen

    def start(self) -> None:
        """Take the baseline revision and start polling (idempotent)."""
        if self._thread is not None:
            return
        self._seen = self._read()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="keyswap-change-watcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling, wait for the thread, and run ``on_tick`` one last time."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        self._call(self._on_tick)

    def __enter__(self) -> ChangeWatcher:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def poll_once(self) -> bool:
        """Poll now, on the caller's thread; True (after calling ``on_change``) if the revision moved."""
        current = self._read()
        with self._lock:
            # A baseline we could not read counts as a change: flushing caches once is the safe side.
            changed = current is not None and current != self._seen
            if current is not None:
                self._seen = current
        if changed:
            self._changed()
        self._call(self._on_tick)
        return changed

    def observe(self, revision: int) -> bool:
        """A revision pushed by a notification: call ``on_change`` if it is newer than the last seen.

        Thread-safe; returns True if ``on_change`` ran. Older or repeated revisions (the poller or
        another channel got there first) are ignored.
        """
        with self._lock:
            if self._seen is not None and revision <= self._seen:
                return False
            self._seen = revision
        self._changed()
        return True

    def _changed(self) -> None:
        with self._change_lock:
            self._call(self._on_change)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll_once()

    def _read(self) -> int | None:
        try:
            revision = self._store.revision()
        except Exception as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "could not read the store revision (%s); will keep trying", _describe(exc)
                )
            else:
                log.debug("the store is still unavailable (%s)", _describe(exc))
            return None
        if self._failing:
            self._failing = False
            log.warning("the store is reachable again")
        return revision

    @staticmethod
    def _call(callback: Callable[[], None] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("change watcher callback failed")


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
