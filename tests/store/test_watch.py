from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from keyswap.errors import InvalidApiKey
from keyswap.gateway.apikeys import ApiKeys
from keyswap.store import ChangeWatcher, Store
from tests.support.gateway_state import db_url, secret


class Revisions:
    """A revision source tests drive by hand; ``fail`` injects store errors."""

    def __init__(self) -> None:
        self.value = 0
        self.fail = False

    def revision(self) -> int:
        if self.fail:
            raise RuntimeError("database is locked")
        return self.value


def test_poll_once_reports_a_change_only_when_the_revision_moved() -> None:
    source, changes = Revisions(), []
    watcher = ChangeWatcher(source, interval=60, on_change=lambda: changes.append(source.value))
    watcher.start()
    try:
        assert not watcher.poll_once()
        source.value = 3
        assert watcher.poll_once()
        assert not watcher.poll_once()
        assert changes == [3]
        assert watcher.revision == 3
    finally:
        watcher.stop()


def test_on_tick_runs_after_every_poll_and_once_more_on_stop() -> None:
    ticks: list[int] = []
    watcher = ChangeWatcher(Revisions(), interval=60, on_tick=lambda: ticks.append(1))
    watcher.start()
    watcher.poll_once()
    watcher.poll_once()
    watcher.stop()
    assert len(ticks) == 3


def test_store_errors_are_logged_and_polling_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    source, changes = Revisions(), []
    watcher = ChangeWatcher(source, interval=60, on_change=lambda: changes.append(1))
    watcher.start()
    try:
        source.fail = True
        with caplog.at_level(logging.WARNING, logger="keyswap.store"):
            assert not watcher.poll_once()
        assert "could not read the store revision" in caplog.text
        source.fail, source.value = False, 1
        assert watcher.poll_once()
        assert changes == [1]
    finally:
        watcher.stop()


def test_an_unreadable_baseline_counts_as_a_change_once_the_store_answers() -> None:
    source, changes = Revisions(), []
    source.fail = True
    watcher = ChangeWatcher(source, interval=60, on_change=lambda: changes.append(1))
    watcher.start()
    try:
        source.fail = False
        assert watcher.poll_once()
        assert changes == [1]
    finally:
        watcher.stop()


def test_a_failing_callback_does_not_stop_the_watcher(caplog: pytest.LogCaptureFixture) -> None:
    source = Revisions()
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        raise ValueError("boom")

    watcher = ChangeWatcher(source, interval=60, on_change=flaky)
    watcher.start()
    try:
        with caplog.at_level(logging.ERROR, logger="keyswap.store"):
            source.value = 1
            watcher.poll_once()
            source.value = 2
            watcher.poll_once()
        assert len(calls) == 2
        assert "callback failed" in caplog.text
    finally:
        watcher.stop()


@pytest.mark.parametrize("interval", [0, -1.0])
def test_the_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        ChangeWatcher(Revisions(), interval=interval)


def test_the_watcher_thread_notices_a_change_made_by_another_store(tmp_path: Path) -> None:
    gateway_store, cli_store = Store(db_url(tmp_path)), Store(db_url(tmp_path))
    changed = threading.Event()
    watcher = ChangeWatcher(gateway_store, interval=0.02, on_change=changed.set)
    watcher.start()
    try:
        cli_store.create_consumer("acme")
        assert changed.wait(5)
    finally:
        watcher.stop()
        gateway_store.close()
        cli_store.close()


def test_a_revoke_by_another_process_reaches_a_running_gateway_through_the_watcher(
    tmp_path: Path,
) -> None:
    gateway_store, cli_store = Store(db_url(tmp_path)), Store(db_url(tmp_path))
    # A long cache TTL: only the watcher's cache flush can make the revocation visible.
    api_keys = ApiKeys(gateway_store, secret(), cache_ttl=3600)
    cli_store.create_consumer("acme")
    record, key = ApiKeys(cli_store, secret()).create("acme")
    assert api_keys.authenticate(key).consumer == "acme"

    flushed = threading.Event()

    def on_change() -> None:
        api_keys.clear_cache()
        flushed.set()

    watcher = ChangeWatcher(gateway_store, interval=0.02, on_change=on_change)
    watcher.start()
    try:
        assert api_keys.lookup_cached(key) is not None
        cli_store.revoke_api_key(record.id, now=time.time())
        assert flushed.wait(5)
        with pytest.raises(InvalidApiKey):
            api_keys.authenticate(key)
    finally:
        watcher.stop()
        gateway_store.close()
        cli_store.close()


def test_the_watcher_stops_cleanly_and_can_be_used_as_a_context_manager() -> None:
    source = Revisions()
    with ChangeWatcher(source, interval=0.01) as watcher:
        assert watcher.revision == 0
    watcher.stop()  # a second stop is harmless
