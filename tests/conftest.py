from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.jwks_server import JWKSServer

# The chromium_driver fixture (headless Chromium through Selenium) for any test that asks for it.
pytest_plugins = ["tests.support.browser"]


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    """A real JWKS server on 127.0.0.1 (see tests/support/jwks_server.py)."""
    server = JWKSServer().start()
    try:
        yield server
    finally:
        server.stop()
