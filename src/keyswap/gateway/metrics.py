"""The gateway's Prometheus metrics: plain integers on the request path, exported at scrape time.

On the request path the app only adds to plain ``int`` attributes and lists of this module's
:class:`GatewayMetrics` (the event loop is one thread; a few nanoseconds each): no ``prometheus_client``
object is touched per request. A custom collector (:func:`collector`) turns a :meth:`snapshot` into
metric families when ``/metrics`` is scraped, on the metrics server's own listener
(:mod:`keyswap.gateway.metricsserver`), never on the public port.

Metrics (prefix ``keyswap_gateway_``; no per-consumer or per-key label: usage metering is for that):

==================================  =========  ================  ====================================
name                                type       labels            what
==================================  =========  ================  ====================================
``requests_total``                  counter    ``status_class``  requests answered (1xx..5xx; 499:
                                                                 the client left)
``request_duration_seconds``        histogram                    whole request, first byte in to last
                                                                 byte out (refusals included)
``upstream_duration_seconds``       histogram                    the upstream call: request sent to
                                                                 response relayed
``upstream_errors_total``           counter    ``kind``          ``timeout`` (504), ``connect``,
                                                                 ``protocol`` (502)
``key_cache_hits_total``            counter                      API keys answered from memory
``key_cache_misses_total``          counter                      API keys looked up in the store
``store_errors_total``              counter                      failed or timed-out store lookups
``store_fallbacks_total``           counter                      keys answered from memory because
                                                                 the store failed (outage grace)
``tokens_minted_total``             counter                      JWTs signed (cache hits not counted)
``refusals_total``                  counter    ``reason``        ``rate_limit``, ``quota``,
                                                                 ``concurrency`` (all 429)
``signing_key_age_seconds``         gauge                        age of the active signing key
``connections_open``                gauge                        client connections open
``upstream_requests_in_flight``     gauge                        requests being forwarded now
==================================  =========  ================  ====================================

Several workers (``--workers N``): each worker writes its :meth:`snapshot` to a file of a directory
the supervisor made (every second, and at shutdown); the supervisor serves ``/metrics`` and sums the
files (:class:`SnapshotDirectory`). Counters of a worker that exited are kept (folded into a total),
so a counter never goes backwards; its gauges are dropped. The figures are therefore up to one second
old with workers, current with one process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "BUCKETS",
    "REFUSAL_REASONS",
    "GatewayMetrics",
    "SnapshotDirectory",
    "SnapshotWriter",
    "collector",
    "merge",
]

logger = logging.getLogger("keyswap.gateway")

#: Histogram bucket upper bounds, seconds (``+Inf`` is implied).
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: The ``reason`` label values of ``refusals_total`` (all present from the start, at 0).
REFUSAL_REASONS = ("rate_limit", "quota", "concurrency")
#: The ``kind`` label values of ``upstream_errors_total``.
UPSTREAM_ERROR_KINDS = ("timeout", "connect", "protocol")
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

Snapshot = dict[str, Any]


class GatewayMetrics:
    """The gateway's counters, as plain attributes (cheap to bump on the event loop).

    Bump them from the event loop's thread (the request path); other threads should use
    :meth:`add` style helpers only where the loss of an increment in a race is acceptable. Values a
    component already keeps (cache sizes, store failures, the signing key) are read at scrape time
    through the ``*_source`` callables instead of being counted twice.

    Quota refusals (``refusals_total{reason="quota"}``): call ``metrics.refuse("quota")`` where a
    request is refused for a spent quota.
    """

    def __init__(self) -> None:
        self.status = [0, 0, 0, 0, 0, 0]  # index: status // 100 (0 unused)
        self.duration = [0] * (len(BUCKETS) + 1)  # per bucket (not cumulative), last: +Inf
        self.duration_sum = 0.0
        self.upstream = [0] * (len(BUCKETS) + 1)
        self.upstream_sum = 0.0
        self.upstream_errors = dict.fromkeys(UPSTREAM_ERROR_KINDS, 0)
        self.key_cache_hits = 0
        self.key_cache_misses = 0
        self.store_errors = 0
        self.store_fallbacks = 0
        self.refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        #: Extra counts read at scrape time (name -> callable), added to the counters above:
        #: ``store_errors``, ``store_fallbacks``, ``tokens_minted``.
        self.sources: dict[str, Callable[[], int]] = {}
        #: Gauges read at scrape time: ``signing_key_age``, ``connections_open``,
        #: ``upstream_requests_in_flight``.
        self.gauges: dict[str, Callable[[], float | None]] = {}

    def observe(self, status: int, seconds: float) -> None:
        """Count one answered request (any status) that took ``seconds``."""
        index = status // 100
        if 0 < index < 6:
            self.status[index] += 1
        self.duration[bisect_left(BUCKETS, seconds)] += 1
        self.duration_sum += seconds

    def observe_upstream(self, seconds: float) -> None:
        """Count one upstream call that took ``seconds``."""
        self.upstream[bisect_left(BUCKETS, seconds)] += 1
        self.upstream_sum += seconds

    def refuse(self, reason: str) -> None:
        """Count one request refused for ``reason`` (one of :data:`REFUSAL_REASONS`)."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def snapshot(self) -> Snapshot:
        """Every value now, as a JSON-able dict (the shape :func:`merge` and :func:`collector` take)."""
        counters = {
            "key_cache_hits": self.key_cache_hits,
            "key_cache_misses": self.key_cache_misses,
            "store_errors": self.store_errors,
            "store_fallbacks": self.store_fallbacks,
            "tokens_minted": 0,
        }
        for name, source in list(self.sources.items()):
            try:
                counters[name] = counters.get(name, 0) + int(source())
            except Exception:  # a broken source must not break the scrape
                logger.debug("metrics source %s failed", name, exc_info=True)
        gauges: dict[str, float] = {}
        for name, gauge in list(self.gauges.items()):
            try:
                value = gauge()
            except Exception:
                logger.debug("metrics gauge %s failed", name, exc_info=True)
                continue
            if value is not None:
                gauges[name] = float(value)
        return {
            "requests": dict(zip(_STATUS_CLASSES, self.status[1:], strict=True)),
            "duration": [list(self.duration), self.duration_sum],
            "upstream_duration": [list(self.upstream), self.upstream_sum],
            "upstream_errors": dict(self.upstream_errors),
            "refusals": dict(self.refusals),
            "counters": counters,
            "gauges": gauges,
        }


def empty_snapshot() -> Snapshot:
    """A snapshot with every value at zero and no gauges."""
    snap = GatewayMetrics().snapshot()
    snap["gauges"] = {}
    return snap


def merge(snapshots: Iterable[Snapshot], *, gauges: bool = True) -> Snapshot:
    """The sum of several workers' snapshots (gauges: summed, but the signing-key age: the oldest).

    ``gauges=False`` keeps counters only (for workers that have exited).
    """
    total = empty_snapshot()
    for snap in snapshots:
        for family in ("requests", "upstream_errors", "refusals", "counters"):
            into = total[family]
            for name, value in snap.get(family, {}).items():
                into[name] = into.get(name, 0) + value
        for family in ("duration", "upstream_duration"):
            buckets, seconds = snap.get(family, [[], 0.0])
            into_buckets = total[family][0]
            for i, value in enumerate(buckets[: len(into_buckets)]):
                into_buckets[i] += value
            total[family][1] += seconds
        if gauges:
            for name, value in snap.get("gauges", {}).items():
                known = total["gauges"].get(name)
                if name == "signing_key_age":
                    total["gauges"][name] = value if known is None else max(known, value)
                else:
                    total["gauges"][name] = (known or 0.0) + value
    return total


def collector(source: Callable[[], Snapshot], prefix: str = "keyswap_gateway") -> Any:
    """A ``prometheus_client`` collector exporting ``source()`` (called at each scrape)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    def histogram(name: str, doc: str, data: list[Any]) -> HistogramMetricFamily:
        buckets, total = data
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*BUCKETS, float("inf")), buckets, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily(f"{prefix}_{name}", doc, buckets=cumulative, sum_value=total)

    class _Collector:
        def collect(self) -> list[Any]:
            snap = source()
            families: list[Any] = []
            requests = CounterMetricFamily(
                f"{prefix}_requests", "Requests answered, by status class", labels=["status_class"]
            )
            for status_class, count in snap["requests"].items():
                requests.add_metric([status_class], count)
            families.append(requests)
            families.append(
                histogram(
                    "request_duration_seconds",
                    "Whole request: first byte in to last byte out",
                    snap["duration"],
                )
            )
            families.append(
                histogram(
                    "upstream_duration_seconds",
                    "Upstream call: request sent to response relayed",
                    snap["upstream_duration"],
                )
            )
            errors = CounterMetricFamily(
                f"{prefix}_upstream_errors", "Upstream failures, by kind", labels=["kind"]
            )
            for kind, count in snap["upstream_errors"].items():
                errors.add_metric([kind], count)
            families.append(errors)
            refusals = CounterMetricFamily(
                f"{prefix}_refusals",
                "Requests refused with 429, by reason",
                labels=["reason"],
            )
            for reason, count in snap["refusals"].items():
                refusals.add_metric([reason], count)
            families.append(refusals)
            docs = {
                "key_cache_hits": "API keys answered from memory",
                "key_cache_misses": "API keys looked up in the store",
                "store_errors": "Store lookups that failed or timed out",
                "store_fallbacks": "Keys answered from memory because the store failed",
                "tokens_minted": "JWTs signed (reused tokens not counted)",
            }
            for name, doc in docs.items():
                families.append(
                    CounterMetricFamily(
                        f"{prefix}_{name}", doc, value=snap["counters"].get(name, 0)
                    )
                )
            gauge_docs = {
                "signing_key_age": ("signing_key_age_seconds", "Age of the active signing key"),
                "connections_open": ("connections_open", "Client connections open"),
                "upstream_requests_in_flight": (
                    "upstream_requests_in_flight",
                    "Requests being forwarded to the upstream now",
                ),
            }
            for key, (name, doc) in gauge_docs.items():
                value = snap["gauges"].get(key)
                if value is not None:
                    families.append(GaugeMetricFamily(f"{prefix}_{name}", doc, value=value))
            return families

        def describe(self) -> list[Any]:
            return []

    return _Collector()


class SnapshotWriter:
    """In a worker: write ``metrics.snapshot()`` to ``<directory>/<pid>.json`` every ``interval``
    seconds (a daemon thread) and once more at :meth:`stop`. Each write replaces the file atomically."""

    def __init__(self, metrics: GatewayMetrics, directory: str, interval: float = 1.0) -> None:
        self._metrics = metrics
        self._path = Path(directory) / f"{os.getpid()}.json"
        self._interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._path = self._path.with_name(f"{os.getpid()}.json")  # the worker's pid, after a fork
        self.write()
        self._thread = threading.Thread(
            target=self._run, name="keyswap-metrics-snapshot", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5.0)
        self.write()

    def write(self) -> None:
        try:
            data = json.dumps(self._metrics.snapshot()).encode()
            fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".snapshot-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, self._path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            logger.warning("writing the metrics snapshot failed (%s)", type(exc).__name__)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self.write()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child that exited but is not reaped yet still answers; its file is final by then anyway.
    return True


class SnapshotDirectory:
    """In the supervisor: a private temporary directory the workers write their snapshots to, and
    the sum of them (:meth:`read`). Files of workers that are gone are folded into a running total
    (counters only) and removed."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="keyswap-metrics-")
        self._retired = empty_snapshot()
        self._lock = threading.Lock()

    def read(self) -> Snapshot:
        with self._lock:
            live: list[Snapshot] = []
            for entry in sorted(Path(self.path).glob("*.json")):
                try:
                    pid = int(entry.stem)
                    snap = json.loads(entry.read_bytes())
                except (ValueError, OSError):
                    continue
                if _alive(pid):
                    live.append(snap)
                else:
                    self._retired = merge([self._retired, snap], gauges=False)
                    with contextlib.suppress(OSError):
                        entry.unlink()
            return merge([self._retired, *live])

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


def now_age(created: float | None, clock: Callable[[], float] = time.time) -> float | None:
    """Seconds since ``created`` (``None`` stays ``None``)."""
    return None if created is None else max(0.0, clock() - created)
