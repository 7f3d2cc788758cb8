"""Counters for the verifier (and the gateway), readable from Python and exportable to Prometheus.

Names in use (labels in brackets):

- ``jwks_fetches`` [``issuer``]: successful JWKS fetches
- ``jwks_fetch_failures`` [``issuer``, ``reason``]
- ``jwks_keys_skipped`` [``reason``]
- ``kid_misses`` [``issuer``]: tokens whose kid was not in the cached key set
- ``rejections`` [``reason``]: tokens rejected, by error label (``expired``, ``signature``, ...)
- ``verifications``: tokens accepted
- ``token_cache_hits`` / ``token_cache_misses``
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

__all__ = ["Metrics", "register_prometheus"]

LabelKey = tuple[tuple[str, str], ...]


class Metrics:
    """Thread-safe monotonic counters keyed by name and labels.

    ``inc`` is cheap (one lock, one dict update) so it can sit on the request path.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to counter ``name`` with ``labels``."""
        key: LabelKey = tuple(sorted(labels.items())) if labels else ()
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def get(self, name: str, **labels: str) -> float:
        """Current value of one series; with no labels given, the sum over all label sets."""
        with self._lock:
            series = self._counters.get(name, {})
            if not labels:
                return sum(series.values())
            want = set(labels.items())
            return sum(v for k, v in series.items() if want <= set(k))

    def snapshot(self) -> dict[str, dict[LabelKey, float]]:
        """A copy of every counter: ``{name: {((label, value), ...): count}}``."""
        with self._lock:
            return {name: dict(series) for name, series in self._counters.items()}


def register_prometheus(
    metrics: Metrics, registry: object | None = None, prefix: str = "keyswap"
) -> object:
    """Expose ``metrics`` through ``prometheus_client`` (the ``[prometheus]`` extra).

    Returns the collector, registered with ``registry`` (default: the global registry).
    """
    from prometheus_client.core import REGISTRY, CounterMetricFamily

    class _Collector:
        def collect(self) -> list[CounterMetricFamily]:
            families = []
            for name, series in sorted(metrics.snapshot().items()):
                label_names = sorted({k for key in series for k, _ in key})
                family = CounterMetricFamily(
                    f"{prefix}_{name}", f"keyswap {name}", labels=label_names
                )
                for key, value in series.items():
                    values: Mapping[str, str] = dict(key)
                    family.add_metric([values.get(n, "") for n in label_names], value)
                families.append(family)
            return families

        def describe(self) -> list[CounterMetricFamily]:
            return []

    collector = _Collector()
    target = registry if registry is not None else REGISTRY
    target.register(collector)  # type: ignore[attr-defined]
    return collector
