from __future__ import annotations

import threading

from keyswap.verifier.metrics import Metrics


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
