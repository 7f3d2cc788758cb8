from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.admin_api import AdminApi, running_admin


@pytest.fixture
def api(tmp_path: Path) -> Iterator[AdminApi]:
    """The admin API over SQLite."""
    with running_admin(tmp_path) as admin:
        yield admin


@pytest.fixture(params=["sqlite", "postgres"])
def any_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AdminApi]:
    """The admin API over SQLite, then over PostgreSQL."""
    with running_admin(tmp_path, request.param) as admin:
        yield admin
