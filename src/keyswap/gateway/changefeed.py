"""What changed in the store since this node last looked: the change log, read on every change.

The store writes, in the transaction that bumps its revision, one row per thing changed (an API key, a
consumer, the signing keys; :data:`keyswap.store.schema.changes`). On each revision change the gateway
reads the rows after the last revision it applied (:meth:`ChangeFeed.read`) and invalidates only what
they name: that key's cached lookup and minted token, that consumer's keys, the signing keys. When the
log cannot say (a revision without rows: pruned, written by an older keyswap, or the store failing),
:class:`Changes` is ``full`` and the node clears everything, as it did before the log existed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FULL", "ChangeFeed", "Changes"]

log = logging.getLogger("keyswap.gateway")


@dataclass(frozen=True, slots=True)
class Changes:
    """What to invalidate: everything (``full``), or these keys, consumers and/or the signing keys."""

    full: bool = False
    key_ids: frozenset[str] = frozenset()
    consumer_ids: frozenset[int] = frozenset()
    signing: bool = False


#: Clear everything.
FULL = Changes(full=True)


class _ChangeLog(Protocol):
    def revision(self) -> int: ...

    def changes_since(self, revision: int) -> tuple[int, list[tuple[str, str]] | None]: ...


def parse(rows: list[tuple[str, str]]) -> Changes:
    """:class:`Changes` from change-log rows ``(kind, ref)``; an unknown kind or bad ref means FULL."""
    key_ids: set[str] = set()
    consumer_ids: set[int] = set()
    signing = False
    for kind, ref in rows:
        if kind == "key":
            key_ids.add(ref)
        elif kind == "consumer" and ref.isdigit():
            consumer_ids.add(int(ref))
        elif kind == "signing":
            signing = True
        elif kind in ("admin_token", "webhook"):
            continue  # the admin API's credentials, consumers' webhooks: nothing a gateway caches
        else:
            return FULL
    return Changes(False, frozenset(key_ids), frozenset(consumer_ids), signing)


class ChangeFeed:
    """Reads the store's change log since the last revision this node applied (thread-safe)."""

    def __init__(self, store: _ChangeLog) -> None:
        self._store = store
        self._seen: int | None = None
        self._lock = threading.Lock()

    @property
    def revision(self) -> int | None:
        """The last revision applied (``None``: unknown, the next read is FULL)."""
        return self._seen

    def start(self) -> None:
        """Take the baseline revision (before the change watcher takes its own)."""
        try:
            self._seen = self._store.revision()
        except Exception as exc:
            log.debug("could not read the store revision (%s)", type(exc).__name__)
            self._seen = None

    def read(self) -> Changes:
        """What changed since the last read (FULL when the log cannot say or the store fails)."""
        with self._lock:
            seen = self._seen
            try:
                if seen is None:
                    self._seen = self._store.revision()
                    return FULL
                current, rows = self._store.changes_since(seen)
            except Exception as exc:
                log.debug("could not read the change log (%s)", type(exc).__name__)
                self._seen = None
                return FULL
            self._seen = max(current, seen)
            if rows is None:
                log.info("the change log has a gap after revision %d: clearing every cache", seen)
                return FULL
            return parse(rows)
