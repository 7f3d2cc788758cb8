"""``/docs``: Swagger UI served from the package under a strict Content-Security-Policy, working with no
internet access; checked over HTTP and in a real headless Chromium against a real ``keyswap admin``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from keyswap.admin import docs_page
from keyswap.admin.docs_page import CONTENT_SECURITY_POLICY
from keyswap.gateway.secret import ServerSecret
from keyswap.manage.actor import Actor
from keyswap.manage.context import Context
from keyswap.manage.tokens import NewAdminToken, create_admin_token
from keyswap.store import Store
from tests.support.admin_api import AdminApi
from tests.support.asgi_server import free_port
from tests.support.browser import browser_problems, requested_urls, wait_for
from tests.support.gateway_state import SECRET_TEXT
from tests.support.keyswap_process import running_keyswap

if TYPE_CHECKING:
    from selenium.webdriver import Chrome
    from selenium.webdriver.remote.webelement import WebElement

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "keyswap-docs.js": "text/javascript; charset=utf-8",
    "keyswap-docs.css": "text/css; charset=utf-8",
}


def _links(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)=['"]?([^'" >]+)""", page)


def test_the_page_loads_swagger_ui_from_this_server_only_with_no_inline_script(
    api: AdminApi,
) -> None:
    response = api.request("GET", "/docs", token=None)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    page = response.text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert [attrs.strip() for attrs, _ in scripts] == [
        "src='docs/assets/swagger-ui-bundle.js'",
        "src='docs/assets/keyswap-docs.js'",
    ]
    assert all(body == "" for _, body in scripts)
    assert "<style" not in page
    assert " style=" not in page
    links = _links(page)
    assert links
    for link in links:  # relative to /docs: this server, under any path prefix
        assert "//" not in link
        assert not link.startswith("/")
    # without JavaScript: the plain list of operations
    assert "<noscript>" in page
    assert "/v1/consumers" in page


def test_every_asset_is_served_with_its_type_and_a_validator(api: AdminApi) -> None:
    page = api.request("GET", "/docs", token=None).text
    linked = {link.removeprefix("docs/assets/") for link in _links(page) if "assets/" in link}
    assert linked == set(ASSETS)
    for name, media_type in ASSETS.items():
        response = api.request("GET", f"/docs/assets/{name}", token=None)
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert len(response.content) > 100
        etag = response.headers["etag"]
        again = api.request(
            "GET", f"/docs/assets/{name}", token=None, headers={"If-None-Match": etag}
        )
        assert again.status_code == 304
        assert again.content == b""
    bundle = api.request("GET", "/docs/assets/swagger-ui-bundle.js", token=None).text
    assert "SwaggerUIBundle" in bundle
    init = api.request("GET", "/docs/assets/keyswap-docs.js", token=None).text
    assert 'url: "openapi.json"' in init
    assert "validatorUrl: null" in init


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/index.html",
        "/docs/assets/swagger-ui-bundle.js.map",
        "/docs/assets/..%2Fapp.py",
        "/docs/assets/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/docs/assets/../../etc/passwd",
        "/docs/assets/static%2Fkeyswap-docs.js",
        "/docs/assets/",
    ],
)
def test_only_the_pages_own_files_are_served(api: AdminApi, path: str) -> None:
    response = httpx.get(api.url + path, timeout=10)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "root:" not in response.text


def test_without_the_swagger_ui_files_the_page_is_the_plain_list(
    api: AdminApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docs_page, "_swagger_ui_dir", lambda: None)
    page = api.request("GET", "/docs", token=None).text
    assert "<script" not in page
    assert "<noscript>" not in page
    assert "List consumers" in page
    assert _links(page) == ["docs/assets/keyswap-docs.css", "openapi.json"]


def test_an_html_summary_is_escaped_in_the_plain_list() -> None:
    spec = {
        "info": {"title": "<b>t</b>", "version": "1"},
        "paths": {"/x": {"get": {"summary": "<script>alert(1)</script>", "tags": ["<i>"]}}},
    }
    page = docs_page.render_docs(spec)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>t</b>" not in page


def _token(db_url: str, name: str) -> str:
    store = Store(db_url)
    try:
        created = create_admin_token(
            Context(store, Actor.cli("test")),
            ServerSecret(SECRET_TEXT),
            NewAdminToken(name, ("admin",)),
        )
    finally:
        store.close()
    return created.token


def _button(within: WebElement | Chrome, label: str) -> WebElement:
    from selenium.webdriver.common.by import By

    found = [b for b in within.find_elements(By.CSS_SELECTOR, "button") if b.text == label]
    assert found, f"no {label!r} button"
    return found[0]


def test_swagger_ui_in_chromium_renders_offline_and_try_it_out_sends_the_admin_token(
    chromium_driver: Chrome, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = chromium_driver
    db_url = f"sqlite:///{tmp_path / 'k.db'}"
    port = free_port()
    args = ["admin", "--port", str(port), "--db", db_url]
    with running_keyswap(
        args, port=port, ready_path="/healthz", env={"KEYSWAP_SECRET": SECRET_TEXT}
    ) as admin:
        token = _token(db_url, "docs-browser")
        driver.get(admin.url + "/docs")

        # the operations render, from the document this server serves
        ops = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".opblock"), "operations")
        paths = httpx.get(admin.url + "/openapi.json").json()["paths"]
        assert len(ops) == sum(len(item) for item in paths.values())
        listing = driver.find_element(By.ID, "operations-consumers-list_consumers_v1_consumers_get")
        assert "List consumers" in listing.text
        assert "keyswap admin API" in driver.find_element(By.CSS_SELECTOR, ".info .title").text

        # "Authorize" with the admin token, then "Try it out" on POST /v1/consumers
        driver.find_element(By.CSS_SELECTOR, ".auth-wrapper .authorize").click()
        modal = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".modal-ux"), "the dialog")[
            0
        ]
        modal.find_element(By.CSS_SELECTOR, "input").send_keys(token)
        _button(modal, "Authorize").click()
        wait_for(
            lambda: [
                b for b in modal.find_elements(By.CSS_SELECTOR, "button") if b.text == "Logout"
            ],
            "authorized",
        )
        _button(modal, "Close").click()
        op = driver.find_element(By.ID, "operations-consumers-create_consumer_v1_consumers_post")
        op.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
        wait_for(lambda: op.find_elements(By.CSS_SELECTOR, ".try-out__btn"), "Try it out")[
            0
        ].click()
        body = wait_for(
            lambda: op.find_elements(By.CSS_SELECTOR, "textarea.body-param__text"), "the body"
        )[0]
        body.clear()
        body.send_keys('{"name": "made-in-the-docs"}')
        op.find_element(By.CSS_SELECTOR, ".execute").click()
        status = wait_for(
            lambda: op.find_elements(
                By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"
            ),
            "the response",
        )[0]
        assert status.text.strip() == "201"

        # the consumer exists, made by the token's holder (so the bearer token was sent)
        headers = {"Authorization": f"Bearer {token}"}
        assert (
            httpx.get(admin.url + "/v1/consumers/made-in-the-docs", headers=headers).status_code
            == 200
        )
        events = httpx.get(
            admin.url + "/v1/audit-events", params={"action": "consumer.create"}, headers=headers
        ).json()["items"]
        assert [(e["actor"], e["target"]) for e in events] == [
            ("token:docs-browser", "consumer:made-in-the-docs")
        ]

        # nothing was asked of any other address, and the browser saw no error (no CSP violation)
        urls = requested_urls(driver)
        assert admin.url + "/docs/assets/swagger-ui-bundle.js" in urls
        assert admin.url + "/openapi.json" in urls
        assert admin.url + "/v1/consumers" in urls
        outside = [u for u in urls if not u.startswith((admin.url + "/", "data:"))]
        assert outside == []
        assert browser_problems(driver) == []
    assert token not in admin.log()
