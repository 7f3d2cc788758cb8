"""PostgreSQL and Redis for tests: real servers, skipped with the reason when absent (required in CI)."""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit

import pytest

PG_URL = os.environ.get("KEYSWAP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KEYSWAP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRED = os.environ.get("KEYSWAP_REQUIRE_SERVICES") == "1"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1.0
        ):
            return True
    except OSError:
        return False


def require_postgres() -> str:
    """Return the test PostgreSQL URL, or skip (fail when KEYSWAP_REQUIRE_SERVICES=1)."""
    if not _reachable(PG_URL, 5432):
        reason = f"PostgreSQL not reachable at {urlsplit(PG_URL).netloc} (set KEYSWAP_TEST_PG_URL)"
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_URL


def require_redis() -> str:
    """Return the test Redis URL, or skip (fail when KEYSWAP_REQUIRE_SERVICES=1)."""
    if not _reachable(REDIS_URL, 6379):
        reason = f"Redis not reachable at {urlsplit(REDIS_URL).netloc} (set KEYSWAP_TEST_REDIS_URL)"
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    return REDIS_URL


def require_tool(reason: str) -> None:
    """Skip for a missing tool (Node, an npm package), or fail when KEYSWAP_REQUIRE_SERVICES=1."""
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


def unique_schema() -> str:
    return "t_" + uuid.uuid4().hex[:12]
