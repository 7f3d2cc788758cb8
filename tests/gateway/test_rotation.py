"""Scheduled signing-key rotation: when, by whom (one node), and never with an unpublished key."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from keyswap.errors import ConfigError
from keyswap.gateway.keyring import Keyring
from keyswap.gateway.rotation import LOCK_NAME, RotationScheduler
from keyswap.store import Store
from tests.support.cluster import postgres_schema
from tests.support.gateway_state import Clock, db_url, secret
from tests.support.running_gateway import eventually

DAY = 86400.0
EVERY = 30 * DAY
MARGIN = 300.0


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield db_url(tmp_path)
        return
    with postgres_schema() as pg_url:
        Store(pg_url, schema="upgrade").close()
        yield pg_url


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Node:
    """One gateway's view: its own Store, Keyring and scheduler on the shared database."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.store = Store(url)
        self.keyring = Keyring(self.store, secret(), cache_margin=MARGIN, clock=clock)
        self.scheduler = RotationScheduler(
            self.keyring, self.store, every=EVERY, min_next_age=MARGIN, clock=clock
        )

    def close(self) -> None:
        self.scheduler.stop()
        self.store.close()


@pytest.fixture
def nodes(url: str, clock: Clock) -> Iterator[list[Node]]:
    made = [Node(url, clock) for _ in range(3)]
    made[0].keyring.ensure("ES256")
    for node in made:
        node.keyring.reload()
    yield made
    for node in made:
        node.close()


def _active(node: Node) -> str:
    node.keyring.reload()
    return node.keyring.active().kid


def test_nothing_rotates_before_the_active_key_is_due(nodes: list[Node], clock: Clock) -> None:
    first = _active(nodes[0])
    clock.advance(EVERY - 1)
    assert not any(node.scheduler.run_once() for node in nodes)
    assert _active(nodes[0]) == first
    assert nodes[0].keyring.rotation_due_in(EVERY) == 1


def test_one_node_rotates_once_when_the_key_is_due(nodes: list[Node], clock: Clock) -> None:
    before = {r.state: r.kid for r in nodes[0].keyring.records()}
    clock.advance(EVERY)
    results = [node.scheduler.run_once() for node in nodes]
    assert results.count(True) == 1
    states = {r.state: r.kid for r in nodes[1].store.list_signing_keys() if r.state != "retired"}
    assert states["active"] == before["next"]  # the published next key signs now
    assert states["next"] not in before.values()
    assert len(nodes[0].store.list_signing_keys()) == 3


def test_nodes_deciding_at_the_same_moment_rotate_once(nodes: list[Node], clock: Clock) -> None:
    clock.advance(EVERY)
    barrier = threading.Barrier(len(nodes))
    results: list[bool] = []

    def decide(node: Node) -> None:
        barrier.wait()
        results.append(node.scheduler.run_once())

    threads = [threading.Thread(target=decide, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert [r.state for r in nodes[0].store.list_signing_keys()].count("retired") == 1


def test_a_node_with_a_stale_view_does_not_rotate_a_second_time(
    nodes: list[Node], clock: Clock
) -> None:
    clock.advance(EVERY)
    assert nodes[0].scheduler.run_once()
    # nodes[1] has not reloaded: by its snapshot the old key is still due.
    assert nodes[1].keyring.rotation_due_in(EVERY) == 0
    assert not nodes[1].scheduler.run_once()
    assert [r.state for r in nodes[1].store.list_signing_keys()].count("retired") == 1


def test_a_restarted_node_keeps_the_schedule(url: str, nodes: list[Node], clock: Clock) -> None:
    clock.advance(EVERY)
    assert nodes[0].scheduler.run_once()
    clock.advance(DAY)
    restarted = Node(url, clock)  # a fresh process: schedule from activated_at, not from now
    try:
        restarted.keyring.reload()
        assert restarted.keyring.rotation_due_in(EVERY) == EVERY - DAY
        assert not restarted.scheduler.run_once()
        clock.advance(EVERY - DAY)
        assert restarted.scheduler.run_once()
    finally:
        restarted.close()


def test_scheduled_rotation_waits_for_the_next_key_to_be_published_long_enough(
    nodes: list[Node], clock: Clock
) -> None:
    clock.advance(EVERY)
    nodes[0].keyring.rotate(now=clock())  # a manual rotation: the new next key is brand new
    active = _active(nodes[0])
    # The active key (activated just now) would be due at once with a tiny period, but its
    # successor has been published for less than the JWKS cache margin.
    impatient = RotationScheduler(
        nodes[1].keyring, nodes[1].store, every=60, min_next_age=MARGIN, clock=clock
    )
    clock.advance(MARGIN - 1)
    assert not impatient.run_once()
    assert _active(nodes[0]) == active
    clock.advance(1)
    assert impatient.run_once()
    assert _active(nodes[0]) != active


def test_a_node_skips_while_another_holds_the_rotation_lock(clock: Clock) -> None:
    with postgres_schema() as pg_url:
        Store(pg_url, schema="upgrade").close()
        first, second = Node(pg_url, clock), Node(pg_url, clock)
        try:
            first.keyring.ensure("ES256")
            second.keyring.reload()
            clock.advance(EVERY)
            with first.store.exclusive(LOCK_NAME) as held:
                assert held
                assert not second.scheduler.run_once()
            assert second.scheduler.run_once()
        finally:
            first.close()
            second.close()


def test_the_scheduler_thread_rotates_and_stops(nodes: list[Node], clock: Clock) -> None:
    clock.advance(EVERY)
    scheduler = RotationScheduler(
        nodes[0].keyring,
        nodes[0].store,
        every=EVERY,
        min_next_age=MARGIN,
        check_interval=0.01,
        clock=clock,
    )
    scheduler.start()
    try:
        eventually(
            lambda: [r.state for r in nodes[1].store.list_signing_keys()].count("retired") == 1
        )
    finally:
        scheduler.stop()


def test_a_failing_database_is_logged_and_retried(
    nodes: list[Node], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    clock.advance(EVERY)

    class Broken:
        """Failure injection: the database cannot be reached."""

        def exclusive(self, name: str) -> AbstractContextManager[bool]:
            raise OSError("database unreachable")

    scheduler = RotationScheduler(
        nodes[0].keyring,
        Broken(),
        every=EVERY,
        min_next_age=MARGIN,
        clock=clock,
    )
    assert not scheduler.run_once()
    assert "scheduled signing-key rotation failed (OSError)" in caplog.text


@pytest.mark.parametrize(("every", "margin"), [(0, 0), (-1, 0), (60, -1)])
def test_nonsense_periods_are_refused(every: float, margin: float) -> None:
    with pytest.raises(ConfigError):
        RotationScheduler(object(), object(), every=every, min_next_age=margin)  # type: ignore[arg-type]
