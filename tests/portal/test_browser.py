"""The portal in a real headless Chromium: the whole journey against a running gateway.

Sign in with a link -> create a key -> call the gateway with it (200, the origin sees the consumer's
claims) -> the request shows in usage -> roll with a 2 s grace (the old key works during it, not after)
-> revoke (refused within 1 s). Script planted in metadata stays inert. With KEYSWAP_SCREENSHOTS=DIR
the run saves each page at desktop and phone widths into DIR (docs/portal holds the current ones).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyswap.manage.consumers import ConsumerUpdate, update_consumer
from keyswap.verifier.jws import b64url_decode
from tests.portal.conftest import Portal, running_portal
from tests.support.running_gateway import Gateway, eventually, running_gateway, token_seen_by
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.slow

SHOTS = os.environ.get("KEYSWAP_SCREENSHOTS", "").strip()
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Gateway, Portal, RecordingUpstream]]:
    upstream = RecordingUpstream().start()
    try:
        with (
            running_gateway(tmp_path, upstream.url, real_clock=True, usage_interval=0.2) as gw,
            running_portal(
                gw.db_url,
                gateway_url=gw.url,
                provider_name="Acme Weather API",
                grace_choices=(0.0, 2.0, 3600.0, 86400.0),
            ) as portal,
        ):
            update_consumer(
                portal.ctx(), "acme", ConsumerUpdate(metadata={"plan": "pro"}, rate_limit="100/60s")
            )
            yield gw, portal, upstream
    finally:
        upstream.stop()


def shoot(driver: Any, name: str) -> None:
    """Save the page at every width (only with KEYSWAP_SCREENSHOTS)."""
    if not SHOTS:
        return
    folder = Path(SHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    for size, (width, height) in SIZES.items():
        driver.set_window_size(width, height)
        full = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(max(height, int(full) + 120), 2400))
        driver.save_screenshot(str(folder / f"{name}-{size}.png"))
    driver.set_window_size(*SIZES["desktop"])


def wait(driver: Any, css: str) -> Any:
    """The element ``css`` once the page shows it (after a form's navigation)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 10).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def call(gw: Gateway, key: str) -> int:
    return httpx.get(
        gw.url + "/hello", headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).status_code


def test_the_whole_journey_through_a_sign_in_link(
    chromium: Any, stack: tuple[Gateway, Portal, RecordingUpstream]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    gw, portal, upstream = stack
    driver = chromium
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.get(portal.url + portal.link("acme", "dev@example.com"))
    shoot(driver, "signin")
    driver.find_element(By.ID, "signin").click()
    wait(driver, ".who")
    assert driver.current_url == portal.url + "/portal/"
    assert driver.find_element(By.CSS_SELECTOR, ".who").text == "dev@example.com"
    shoot(driver, "consumers")
    driver.find_element(By.LINK_TEXT, "acme").click()
    assert "pro" in driver.find_element(By.CSS_SELECTOR, ".facts").text
    assert gw.url in driver.find_element(By.ID, "curl").text
    shoot(driver, "overview")

    # create a key: shown once, with the warning
    driver.find_element(By.LINK_TEXT, "Keys").click()
    driver.find_element(By.ID, "label").send_keys("production <b>")
    driver.find_element(By.ID, "create-key").click()
    key = wait(driver, "#new-key").text
    assert "will not be shown again" in driver.page_source
    shoot(driver, "key-created")
    assert call(gw, key) == 200
    claims = json.loads(b64url_decode(token_seen_by(upstream).split(".")[1]))
    assert claims["sub"] == "acme" or "acme" in json.dumps(claims)

    # the request shows in usage (the gateway's meter writes every 0.2 s here)
    def counted() -> bool:
        driver.get(portal.url + "/portal/c/acme/usage")
        return not driver.find_elements(By.ID, "no-usage")

    eventually(counted, timeout=10)
    assert driver.find_elements(By.CSS_SELECTOR, "figure.chart svg rect")
    shoot(driver, "usage")

    # roll with a 2 s grace: the old key works during it and not after
    driver.get(portal.url + "/portal/c/acme/keys")
    driver.find_element(By.LINK_TEXT, "Roll").click()
    shoot(driver, "roll")
    Select(driver.find_element(By.ID, "grace")).select_by_value("2.0")
    rolled_at = time.time()
    driver.find_element(By.ID, "confirm").click()
    new_key = wait(driver, "#new-key").text
    assert new_key != key
    assert call(gw, new_key) == 200
    if time.time() - rolled_at < 1.5:
        assert call(gw, key) == 200
    eventually(lambda: call(gw, key) == 401, timeout=5)
    assert time.time() - rolled_at >= 2.0

    # revoke (with a confirmation page): refused within a second
    driver.get(portal.url + "/portal/c/acme/keys")
    driver.find_element(By.CSS_SELECTOR, "tr td.actions a.danger").click()
    shoot(driver, "revoke")
    driver.find_element(By.ID, "confirm").click()
    revoked = time.monotonic()
    took = eventually(lambda: call(gw, new_key) == 401, timeout=1.0)
    assert took < 1.0, took
    assert time.monotonic() - revoked < 1.5
    assert "revoked" in wait(driver, ".notice").text
    shoot(driver, "keys")

    driver.find_element(By.LINK_TEXT, "Activity").click()
    rows = driver.find_elements(By.CSS_SELECTOR, "tbody tr")
    actions = [row.find_elements(By.TAG_NAME, "td")[2].text for row in rows]
    assert actions[:3] == ["key.revoke", "key.roll", "key.create"]
    assert "portal:dev@example.com" in rows[0].text
    shoot(driver, "activity")


def test_script_in_metadata_stays_inert_in_the_browser(
    chromium: Any, stack: tuple[Gateway, Portal, RecordingUpstream]
) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    _, portal, _ = stack
    update_consumer(
        portal.ctx(),
        "acme",
        ConsumerUpdate(metadata={"plan": "<script>alert(1)</script><img src=x onerror=alert(2)>"}),
    )
    driver = chromium
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.get(portal.url + portal.link("acme", "dev@example.com"))
    driver.find_element(By.ID, "signin").click()
    wait(driver, ".who")
    driver.get(portal.url + "/portal/c/acme/")
    assert "<script>alert(1)</script>" in driver.find_element(By.CSS_SELECTOR, ".facts").text
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - raises when no alert opened


def test_a_used_link_does_not_sign_in_again_in_the_browser(
    chromium: Any, stack: tuple[Gateway, Portal, RecordingUpstream]
) -> None:
    from selenium.webdriver.common.by import By

    _, portal, _ = stack
    driver = chromium
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    link = portal.url + portal.link("acme", "dev@example.com")
    driver.get(link)
    driver.find_element(By.ID, "signin").click()
    wait(driver, ".who")  # signed in
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.get(link)
    driver.find_element(By.ID, "signin").click()
    assert "not valid" in wait(driver, ".error").text
    driver.get(portal.url + "/portal/c/acme/keys")
    assert "/portal/signin" in driver.current_url
