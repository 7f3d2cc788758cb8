"""Signing in to the portal through a real OpenID provider (tests/oidc/portal_provider.mjs: panva's
oidc-provider, authorization code + PKCE, its development login pages) in headless Chromium, and the
callback's refusals (state, flow cookie, provider errors) over plain HTTP.

Skipped (failed with KEYSWAP_REQUIRE_SERVICES=1) without node, the npm packages or Chromium.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.consumers import NewConsumer, create_consumer, get_consumer
from keyswap.manage.members import add_member, list_members
from keyswap.portal.app import PortalState
from keyswap.portal.oidc import CALLBACK_PATH, OidcClient
from keyswap.portal.settings import OidcSettings, SignupPlan
from tests.portal.conftest import Portal, running_portal
from tests.portal.test_browser import wait
from tests.support.asgi_server import bound_socket
from tests.support.services import require_tool

HERE = Path(__file__).resolve().parents[1] / "oidc"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _provider_installed() -> None:
    if shutil.which("node") is None:
        require_tool("node is not installed")
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        require_tool("oidc-provider is not installed (npm ci --prefix tests/oidc)")


@pytest.fixture
def oidc_portal(tmp_path: Path) -> Iterator[Portal]:
    """A portal signing in through a fresh provider (self sign-up on, plan "starter")."""
    sock = bound_socket()
    public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    node = shutil.which("node")
    assert node is not None
    process = subprocess.Popen(
        [node, str(HERE / "portal_provider.mjs")],
        cwd=HERE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"PATH": "/usr/bin:/bin", "REDIRECT_URI": public_url + CALLBACK_PATH},
    )
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    try:
        assert first, "the OpenID provider did not start"
        issuer = str(json.loads(first[0])["issuer"])
        settings = OidcSettings(issuer, "portal")

        def client(state: PortalState) -> OidcClient:
            return OidcClient(settings, public_url, state.csrf_key)

        with running_portal(
            f"sqlite:///{tmp_path / 'keyswap.db'}",
            sock=sock,
            oidc=client,
            public_url=public_url,
            signup=SignupPlan({"plan": "starter"}, "50/60s"),
        ) as portal:
            create_consumer(portal.ctx(), NewConsumer("acme", {"plan": "pro"}))
            yield portal
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def _left(url: str) -> Any:
    """A wait condition: the browser is no longer at ``url``."""

    def moved(driver: Any) -> bool:
        return bool(driver.current_url != url)

    return moved


def _sign_in(driver: Any, portal: Portal, login: str) -> None:
    """Sign in through the provider's development pages (login, then consent) and back."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    home = portal.url + "/portal/"

    def settled(d: Any) -> Any:
        """The next thing to act on once a page has loaded: the portal's outcome or a submit."""
        try:
            if d.execute_script("return document.readyState") != "complete":
                return False
            if d.current_url.startswith(home):
                return d.find_elements(By.CSS_SELECTOR, ".who, .error") or False
            return d.find_elements(By.CSS_SELECTOR, "button[type=submit]") or False
        except StaleElementReferenceException:
            return False

    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.get(portal.url + "/portal/signin?next=/portal/")
    driver.find_element(By.LINK_TEXT, "Sign in with your account").click()
    for _ in range(6):
        found = WebDriverWait(driver, 10).until(settled)
        if driver.current_url.startswith(home):
            assert "who" in (found[0].get_attribute("class") or ""), found[0].text
            return
        fields = driver.find_elements(By.NAME, "login")
        if fields:
            fields[0].send_keys(login)
            driver.find_element(By.NAME, "password").send_keys("any")
        before = driver.current_url
        found[0].click()
        WebDriverWait(driver, 10).until(_left(before))
    raise AssertionError(
        f"not back at the portal: {driver.current_url}\n{driver.page_source[:2000]}"
    )


def test_a_member_signs_in_through_the_provider(chromium: Any, oidc_portal: Portal) -> None:
    from selenium.webdriver.common.by import By

    add_member(oidc_portal.ctx(), "acme", "subject", "alice")
    _sign_in(chromium, oidc_portal, "alice")
    assert chromium.current_url == oidc_portal.url + "/portal/"
    assert chromium.find_element(By.CSS_SELECTOR, ".who").text == "alice@example.com"
    chromium.find_element(By.LINK_TEXT, "acme").click()
    chromium.find_element(By.LINK_TEXT, "Keys").click()
    chromium.find_element(By.ID, "create-key").click()
    assert wait(chromium, "#new-key").text
    event = list_events(oidc_portal.ctx(), AuditQuery(action="key.create")).events[0]
    assert (event.actor_kind, event.actor_name) == ("portal", "alice@example.com")


def test_a_verified_email_member_sees_the_consumer(chromium: Any, oidc_portal: Portal) -> None:
    from selenium.webdriver.common.by import By

    add_member(oidc_portal.ctx(), "acme", "email", "bob@example.com")
    _sign_in(chromium, oidc_portal, "bob")
    assert chromium.find_element(By.LINK_TEXT, "acme")


def test_self_sign_up_creates_a_consumer_with_the_default_plan(
    chromium: Any, oidc_portal: Portal
) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(chromium, oidc_portal, "carol")
    source = chromium.page_source
    assert "not a member" in source, source[source.find("<main") :][:1500]
    chromium.find_element(By.ID, "name").send_keys("carols-shop")
    chromium.find_element(By.CSS_SELECTOR, "form[action='/portal/signup'] button").click()
    wait(chromium, ".notice")
    assert chromium.current_url.endswith("/portal/c/carols-shop/?done=created")
    consumer = get_consumer(oidc_portal.ctx(), "carols-shop")
    assert (consumer.metadata, consumer.rate_limit) == ({"plan": "starter"}, "50/60s")
    [member] = list_members(oidc_portal.ctx(), "carols-shop")
    assert (member.kind, member.value) == ("subject", "carol")


def test_the_callback_refuses_what_it_did_not_start(oidc_portal: Portal) -> None:
    with oidc_portal.browser() as browser:
        bare = browser.get(CALLBACK_PATH + "?code=abc&state=xyz")
        assert bare.status_code == 400  # no flow cookie
        started = browser.get("/portal/signin/oidc?next=https://evil.example/")
        assert started.status_code == 303
        assert "code_challenge_method=S256" in started.headers["location"]
        assert "nonce=" in started.headers["location"]
        wrong = browser.get(CALLBACK_PATH + "?code=abc&state=not-the-state")
        assert wrong.status_code == 400
        error = browser.get(CALLBACK_PATH + "?error=access_denied&state=x")
        assert error.status_code == 400
        browser.cookies.set("keyswap_portal_oidc", "forged.value", path="/portal")
        assert browser.get(CALLBACK_PATH + "?code=abc&state=x").status_code == 400
        assert browser.get("/portal/").status_code == 303  # nobody signed in
