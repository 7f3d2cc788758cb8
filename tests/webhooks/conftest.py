from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyswap.manage import Actor, Context
from keyswap.store import Store
from tests.support.cluster import postgres_schema
from tests.support.gateway_state import Clock, db_url
from tests.support.webhook_receiver import WebhookReceiver, webhook_receiver


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store on a real SQLite file and on a real PostgreSQL schema."""
    if request.param == "sqlite":
        opened = Store(db_url(tmp_path), schema="upgrade")
        try:
            yield opened
        finally:
            opened.close()
    else:
        with postgres_schema() as url:
            opened = Store(url, schema="upgrade")
            try:
                yield opened
            finally:
                opened.close()


@pytest.fixture
def clock() -> Clock:
    """Wall-clock time now, moved by hand (receivers check the signature's timestamp)."""
    import time

    return Clock(float(int(time.time())))


@pytest.fixture
def ctx(store: Store, clock: Clock) -> Context:
    return Context(store, Actor.cli("alice"), clock=clock)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as running:
        yield running
