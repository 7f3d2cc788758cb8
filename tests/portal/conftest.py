"""A real portal (uvicorn on 127.0.0.1) over a real SQLite file, in front of which tests act as a
browser: with httpx (cookies kept) or with headless Chromium (tests/portal/test_browser.py)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyswap.gateway.secret import load_secret
from keyswap.manage import Actor, Context
from keyswap.manage.consumers import NewConsumer, create_consumer
from keyswap.manage.portal import create_link
from keyswap.portal.app import PortalState, build_portal_app
from keyswap.portal.settings import PortalSettings
from keyswap.store import Store
from tests.support.asgi_server import ServerThread, bound_socket


@dataclass
class Portal:
    """A running portal over ``store`` (and its database file)."""

    server: ServerThread
    store: Store
    state: PortalState
    db_url: str

    @property
    def url(self) -> str:
        return self.server.url

    def ctx(self) -> Context:
        return Context(self.store, Actor.cli("test"), clock=self.state.settings.clock)

    def link(self, consumer: str, email: str, **kw: Any) -> str:
        """A sign-in link's path and query."""
        return create_link(self.ctx(), consumer, email, **kw).path()

    def browser(self) -> httpx.Client:
        """An HTTP client that keeps cookies, as a browser would."""
        return httpx.Client(base_url=self.url, timeout=10, follow_redirects=False)

    def sign_in(self, client: httpx.Client, consumer: str, email: str) -> None:
        """Sign ``client`` in with a fresh link for ``email`` (a member of ``consumer`` from now)."""
        page = client.get(self.link(consumer, email))
        assert page.status_code == 200, page.text
        done = client.post("/portal/signin/link", data=form_of(page.text))
        assert done.status_code == 303, done.text


def form_of(html: str, index: int = 0) -> dict[str, str]:
    """The hidden fields (and the first select's first option) of the ``index``-th form on a page
    (the sign-out form in the header not counted)."""
    forms = [
        f for f in re.findall(r"<form.*?</form>", html, re.S) if 'action="/portal/signout"' not in f
    ]
    form = forms[index]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
    for name, first in re.findall(
        r'<select[^>]*name="([^"]+)"[^>]*>\s*<option value="([^"]*)"', form
    ):
        fields.setdefault(name, first)
    return {k: v.replace("&amp;", "&") for k, v in fields.items()}


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


@contextmanager
def running_portal(
    db_url: str,
    *,
    clock: Callable[[], float] = time.time,
    sock: socket.socket | None = None,
    oidc: Callable[[PortalState], Any] | None = None,
    **settings: Any,
) -> Iterator[Portal]:
    """A portal over ``db_url``; ``oidc(state)`` builds its OIDC client, if any."""
    store = Store(db_url)
    try:
        state = PortalState(
            store, load_secret(db_url, env={}), PortalSettings(clock=clock, **settings)
        )
        if oidc is not None:
            state.oidc = oidc(state)
        server = ServerThread(
            build_portal_app(state), sock=sock or bound_socket(), lifespan="off"
        ).start()
        try:
            yield Portal(server, store, state, db_url)
        finally:
            server.stop()
            if state.oidc is not None:
                state.oidc.close()
    finally:
        store.close()


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[Portal]:
    """A portal with consumers ``acme`` and ``globex`` (no members yet)."""
    db_url = f"sqlite:///{tmp_path / 'keyswap.db'}"
    with running_portal(db_url, grace_choices=(0.0, 2.0, 3600.0)) as running:
        create_consumer(running.ctx(), NewConsumer("acme", {"plan": "pro"}))
        create_consumer(running.ctx(), NewConsumer("globex"))
        yield running


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Headless Chromium through chromedriver (Debian's ``chromium`` and ``chromium-driver``).

    Skipped when they are missing; a failure with KEYSWAP_REQUIRE_SERVICES=1 (CI installs them).
    """
    import shutil

    from tests.support.services import require_tool

    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(binary).exists() and Path(driver_path).exists()):
        require_tool(
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
