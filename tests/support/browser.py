"""A real headless Chromium for tests: Debian's ``chromium`` and ``chromium-driver``, driven by Selenium.

The ``chromium_driver`` fixture (registered for every test by tests/conftest.py) gives a fresh
browser per test. It skips with the reason when the browser, its driver or Selenium is missing, and
fails instead when ``KEYSWAP_REQUIRE_SERVICES=1`` (CI installs them: see .ci/run).

The browser is kept off the network: every request to an address that is not loopback goes to a
proxy at a dead local port (and fails), background services (updates, safe browsing, sync) are off,
and :func:`requested_urls` lists every URL a page asked for, from the DevTools network log, so a
test can assert that nothing left 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.support.asgi_server import free_port
from tests.support.services import require_tool

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "browser_problems",
    "chromium_driver",
    "requested_urls",
    "wait_for",
]

CHROMIUM = os.environ.get("KEYSWAP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("KEYSWAP_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")

T = TypeVar("T")


def _missing() -> str | None:
    """Why the browser cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)) and shutil.which(path) is None:
            return f"{path} is missing (apt-get install -y {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the dev extra)"
    return None


def _options(proxy_port: int) -> Any:
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1600",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--metrics-recording-only",
        "--safebrowsing-disable-auto-update",
        # Everything but loopback goes to a proxy that is not there (Chromium bypasses the proxy
        # for loopback by default).
        f"--proxy-server=http://127.0.0.1:{proxy_port}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return options


@pytest.fixture
def chromium_driver() -> Iterator[Chrome]:
    """A fresh headless Chromium (Selenium WebDriver), quit after the test."""
    problem = _missing()
    if problem is not None:
        require_tool(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(options=_options(free_port()), service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: Chrome) -> list[str]:
    """Every URL the browser's pages requested since the last call (DevTools network log)."""
    urls = []
    entries: list[dict[str, Any]] = driver.get_log("performance")  # type: ignore[no-untyped-call]
    for entry in entries:
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(str(message["params"]["request"]["url"]))
    return urls


def browser_problems(driver: Chrome) -> list[str]:
    """Console messages of level SEVERE or WARNING since the last call (CSP violations among them)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [str(e["message"]) for e in entries if e.get("level") in ("SEVERE", "WARNING")]


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll ``condition`` until it returns something truthy (bounded; fails naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
