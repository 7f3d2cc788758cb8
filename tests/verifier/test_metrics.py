from __future__ import annotations

import threading

from keyswap.verifier.metrics import Metrics, register_prometheus


def test_counter_increments_are_visible_through_get_and_snapshot() -> None:
    metrics = Metrics()
    bump = metrics.counter("hits")
    for _ in range(5):
        bump()
    assert metrics.get("hits") == 5
    assert metrics.get("hits") == 5  # reading does not count
    assert metrics.snapshot()["hits"] == {(): 5.0}


def test_counter_adds_to_inc_on_the_same_name() -> None:
    metrics = Metrics()
    bump = metrics.counter("verifications")
    bump()
    metrics.inc("verifications")
    metrics.inc("verifications", reason="x")
    assert metrics.get("verifications") == 3
    assert metrics.get("verifications", reason="x") == 1
    assert metrics.snapshot()["verifications"] == {(): 2.0, (("reason", "x"),): 1.0}


def test_counter_returns_the_same_incrementer_for_a_name() -> None:
    metrics = Metrics()
    metrics.counter("a")()
    metrics.counter("a")()
    assert metrics.get("a") == 2


def test_counter_loses_no_increments_across_threads() -> None:
    metrics = Metrics()
    bump = metrics.counter("n")

    def work() -> None:
        for _ in range(10_000):
            bump()
        metrics.get("n")  # reads interleaved with writes

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.get("n") == 40_000


def test_counters_are_exported_to_prometheus_with_their_labels() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    metrics = Metrics()
    metrics.inc("rejections", reason="expired")
    metrics.inc("rejections", reason="expired")
    metrics.inc("rejections", reason="signature")
    bump = metrics.counter("token_cache_hits")
    bump()
    registry = CollectorRegistry()
    register_prometheus(metrics, registry)

    text = generate_latest(registry).decode()
    assert 'keyswap_rejections_total{reason="expired"} 2.0' in text
    assert 'keyswap_rejections_total{reason="signature"} 1.0' in text
    assert "keyswap_token_cache_hits_total 1.0" in text
    metrics.inc("rejections", reason="expired")  # the export is live, not a copy
    assert 'keyswap_rejections_total{reason="expired"} 3.0' in generate_latest(registry).decode()
