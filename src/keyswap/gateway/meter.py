"""The usage meter: every request counted per consumer and API key, per minute, in memory; written in
batches by a background task.

What is counted (one row per minute, consumer and key; :data:`keyswap.store.usage.COUNTS`): requests,
requests by status class, refusals by the gateway (401 without a usable key: counted for the
consumer and key when the key exists but is revoked or expired, else with no consumer and no key; 429
for a spent rate limit or connection cap, counted for the consumer), request and response body bytes relayed to and from the upstream, and the upstream latency
(to the response head: its sum and counts per bucket of at most 10 ms, 50 ms, 250 ms, 1 s, more). The
gateway's own documents (JWKS, discovery, health) are not counted.

Cost on the request path: one clock read, one dict lookup and a few list increments, on the event
loop; no lock, no await (every update happens on the loop's thread, as does the flush's snapshot).

Writing: every ``interval`` seconds (10 by default) the rows that changed since the last write are
written through a :class:`~keyswap.store.usage.UsageSink` (on a worker thread) with their *absolute*
counts for this node's minute, so a write that is retried (or whose outcome was unknown) never counts
twice. A finished minute is forgotten once it is written and unchanged. When the database is down the
rows stay in memory and are written when it is back. Bounds: at most ``max_rows`` rows (100,000,
about 70 MB) and nothing older than :data:`MAX_HOLD` (12 hours) is kept; past either the oldest
minutes are dropped, counted and logged (``usage rows dropped``). On shutdown (SIGTERM, after the
drain) everything is written; on a crash at most the last ``interval`` is lost.

The node id (:func:`node_id`: host name, process id, start time) tells the rows of each process apart
(each ``--workers`` process is a node of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Final

from keyswap.errors import ConfigError
from keyswap.store.usage import COUNTS, LATENCY_BOUNDS, UsageRow, UsageSink

__all__ = ["DEFAULT_INTERVAL", "MAX_HOLD", "Exchange", "Meter", "node_id"]

logger = logging.getLogger("keyswap.gateway")

#: Seconds between writes by default (``--usage-flush-interval``).
DEFAULT_INTERVAL = 10.0
#: Oldest minute kept in memory while the database is down, seconds (12 hours; the rollup leaves
#: minutes alone for at least a day, so a late write never races it).
MAX_HOLD = 12 * 3600.0

_N: Final = len(COUNTS)
_REQUESTS, _S2, _S3, _S4, _S5, _UNAUTHORIZED, _LIMITED, _IN, _OUT, _LAT = range(10)
_B10, _B50, _B250, _B1S, _SLOW = 10, 11, 12, 13, 14
_B10_S, _B50_S, _B250_S, _B1S_S = LATENCY_BOUNDS
_CLASS = {2: _S2, 3: _S3, 4: _S4, 5: _S5}

_Key = tuple[int, str, str]  # (minute start, consumer, key id)


def node_id() -> str:
    """This process's node id: ``<host>-<pid>-<start>`` (at most 64 characters)."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}-{os.getpid()}-{int(time.time() * 1000):x}"[:64]


class Exchange:
    """What the proxy measured of one request: body bytes each way, upstream latency (``None``: the
    upstream gave no answer)."""

    __slots__ = ("bytes_in", "bytes_out", "latency")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.latency: float | None = None


class Meter:
    """Counts requests per minute, consumer and key; writes them through ``sink`` in the background.

    Args:
        sink: where rows go (:class:`~keyswap.store.usage.SqlUsageSink`); its ``write`` runs on a
            worker thread and raises on failure.
        interval: seconds between writes.
        clock: wall-clock seconds (the minute a request counts in).
        max_rows: most rows kept in memory (oldest minutes dropped past it).
        node: this node's id (default :func:`node_id`, taken when the meter starts, i.e. after a
            ``--workers`` fork).
        maintenance: called on a worker thread with the time, every ``maintenance_interval`` seconds
            (the gateway runs the usage rollup there); its errors are logged.
    """

    def __init__(
        self,
        sink: UsageSink,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
        max_rows: int = 100_000,
        node: str | None = None,
        maintenance: Callable[[float], object] | None = None,
        maintenance_interval: float = 3600.0,
    ) -> None:
        if not interval > 0 or not max_rows > 0:
            raise ConfigError("the usage flush interval and row bound must be positive")
        self.sink = sink
        self.interval = interval
        self.max_rows = max_rows
        self.node = node
        self._clock = clock
        self._rows: dict[_Key, list[float]] = {}
        self._written: dict[_Key, tuple[float, ...]] = {}
        self._maintenance = maintenance
        self._maintenance_interval = maintenance_interval
        self._next_maintenance = 0.0
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._flushing: asyncio.Lock | None = None
        #: Rows written, write failures, requests dropped (bounds exceeded): for tests and logs.
        self.rows_written = 0
        self.failures = 0
        self.dropped_requests = 0

    # -- the request path ----------------------------------------------------------------------

    def record(
        self, consumer: str | None, key_id: str | None, status: int, exchange: Exchange | None
    ) -> None:
        """Count one request (on the event loop). ``exchange``: what the proxy measured (``None``:
        the gateway answered itself; a 401 or 429 is then a refusal)."""
        minute = int(self._clock()) // 60 * 60
        key = (minute, consumer or "", key_id or "")
        counts = self._rows.get(key)
        if counts is None:
            counts = self._rows[key] = [0] * _N
        counts[_REQUESTS] += 1
        index = _CLASS.get(status // 100)
        if index is not None:
            counts[index] += 1
        if exchange is None:
            if status == 401:
                counts[_UNAUTHORIZED] += 1
            elif status == 429:
                counts[_LIMITED] += 1
            return
        counts[_IN] += exchange.bytes_in
        counts[_OUT] += exchange.bytes_out
        latency = exchange.latency
        if latency is not None:
            counts[_LAT] += latency
            if latency <= _B10_S:
                counts[_B10] += 1
            elif latency <= _B50_S:
                counts[_B50] += 1
            elif latency <= _B250_S:
                counts[_B250] += 1
            elif latency <= _B1S_S:
                counts[_B1S] += 1
            else:
                counts[_SLOW] += 1

    # -- writing -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows in memory (written or not)."""
        return len(self._rows)

    def start(self) -> None:
        """Start the background writer (on the running loop); takes the node id if none was given."""
        if self.node is None:
            self.node = node_id()
        self._flushing = asyncio.Lock()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="keyswap-usage-meter")

    async def close(self) -> None:
        """Stop the writer and write everything still pending (a failure is logged: those counts
        are lost)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not await self.flush() and self._rows:
            logger.warning(
                "usage of %d request(s) could not be written at shutdown (database unavailable)",
                sum(int(c[_REQUESTS]) for k, c in self._rows.items() if self._dirty(k, c)),
            )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()
            now = self._clock()
            if self._maintenance is not None and now >= self._next_maintenance:
                self._next_maintenance = now + self._maintenance_interval
                try:
                    await asyncio.to_thread(self._maintenance, now)
                except Exception as exc:
                    logger.warning("usage rollup failed (%s)", type(exc).__name__)

    def _dirty(self, key: _Key, counts: list[float]) -> bool:
        return self._written.get(key) != tuple(counts)

    async def flush(self) -> bool:
        """Write every row changed since its last write; True if that succeeded (or nothing was
        due). Finished minutes written and unchanged are forgotten; on failure everything stays."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            now = self._clock()
            self._enforce_bounds(now)
            batch = {key: tuple(c) for key, c in self._rows.items() if self._dirty(key, c)}
            current = int(now) // 60 * 60
            if batch:
                node = self.node or node_id()
                self.node = node
                rows = [
                    UsageRow(node, key[0], key[1], key[2], counts) for key, counts in batch.items()
                ]
                try:
                    await asyncio.to_thread(self.sink.write, rows)
                except Exception as exc:
                    self.failures += 1
                    if not self._failing:
                        logger.warning(
                            "usage could not be written (%s); %d row(s) kept in memory, retrying",
                            type(exc).__name__,
                            len(self._rows),
                        )
                    self._failing = True
                    return False
                if self._failing:
                    logger.info("usage written again after an outage (%d row(s))", len(rows))
                    self._failing = False
                self.rows_written += len(rows)
                self._written.update(batch)
            for key in [k for k in self._rows if k[0] < current]:
                if not self._dirty(key, self._rows[key]):  # finished, written, unchanged
                    del self._rows[key]
                    self._written.pop(key, None)
            return True

    def _enforce_bounds(self, now: float) -> None:
        oldest = now - MAX_HOLD
        excess = len(self._rows) - self.max_rows
        if excess <= 0 and all(key[0] >= oldest for key in self._rows):
            return
        dropped = 0
        for key in sorted(self._rows):  # oldest minute first
            if key[0] >= oldest and excess <= 0:
                break
            counts = self._rows.pop(key)
            written = self._written.pop(key, None)
            dropped += int(counts[_REQUESTS] - (written[_REQUESTS] if written else 0))
            excess -= 1
        if dropped:
            self.dropped_requests += dropped
            logger.warning(
                "usage rows dropped: %d request(s) not counted (database unavailable too long)",
                dropped,
            )
