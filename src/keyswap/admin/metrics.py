"""``GET /metrics`` of ``keyswap admin``: Prometheus metrics on the admin API's own port.

The admin API is a private listener (loopback by default, behind TLS and a firewall otherwise), so its
metrics are served there, at ``/metrics``, without a token (as ``/healthz``): a scraper needs no admin
token, and the page holds counts only, never a consumer, a key or a token. (The gateway's metrics have
a listener of their own because the gateway's port is public.)

Metrics (prefix ``keyswap_admin_``):

- ``requests_total`` (counter; ``method``: GET/POST/PUT/PATCH/DELETE/other, ``status_class``),
- ``request_duration_seconds`` (histogram), the same buckets as the gateway's,
- ``auth_failures_total`` (counter): requests answered 401.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from keyswap.gateway.metrics import BUCKETS

__all__ = ["AdminMetrics", "render"]

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class AdminMetrics:
    """Counters of the admin API (bumped on the event loop by the middleware)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.duration = [0] * (len(BUCKETS) + 1)
        self.duration_sum = 0.0
        self.auth_failures = 0

    def observe(self, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        index = status // 100
        status_class = _CLASSES[index - 1] if 0 < index < 6 else "5xx"
        key = (method if method in _METHODS else "other", status_class)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.duration[bisect_left(BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        if status == 401:
            self.auth_failures += 1

    def collector(self) -> Any:
        """A ``prometheus_client`` collector exporting these counters."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        metrics = self

        class _Collector:
            def collect(self) -> list[Any]:
                requests = CounterMetricFamily(
                    "keyswap_admin_requests",
                    "Admin API requests answered",
                    labels=["method", "status_class"],
                )
                for (method, status_class), count in sorted(metrics.requests.items()):
                    requests.add_metric([method, status_class], count)
                running = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip((*BUCKETS, None), metrics.duration, strict=True):
                    running += count
                    buckets.append(("+Inf" if bound is None else repr(bound), running))
                duration = HistogramMetricFamily(
                    "keyswap_admin_request_duration_seconds",
                    "Admin API request duration",
                    buckets=buckets,
                    sum_value=metrics.duration_sum,
                )
                failures = CounterMetricFamily(
                    "keyswap_admin_auth_failures",
                    "Admin API requests answered 401",
                    value=metrics.auth_failures,
                )
                return [requests, duration, failures]

            def describe(self) -> list[Any]:
                return []

        return _Collector()


def render(metrics: AdminMetrics, accept: str) -> tuple[bytes, str]:
    """The exposition of ``metrics`` in the format ``accept`` asks for: ``(body, content type)``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry()
    registry.register(metrics.collector())
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
