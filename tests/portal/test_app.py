"""The portal over HTTP, as a browser without JavaScript uses it: sign-in links, sessions, every
action through forms, and the attacks the issue names (ids of others, CSRF, script, links, redirects)."""

from __future__ import annotations

import re

import httpx

from keyswap.manage import Context
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.consumers import ConsumerUpdate, update_consumer
from keyswap.manage.keys import NewKey, create_key, list_keys
from keyswap.manage.members import add_member
from keyswap.manage.quotas import Counter, counters_for
from keyswap.portal.app import safe_next
from tests.portal.conftest import Portal, csrf_of, form_of, running_portal
from tests.support.gateway_state import Clock


def _new_key(html: str) -> str:
    found = re.search(r'<code id="new-key">([^<]+)</code>', html)
    assert found is not None, html
    return found.group(1)


def test_a_link_signs_in_once_and_shows_only_my_consumers(portal: Portal) -> None:
    with portal.browser() as browser:
        assert browser.get("/portal/").status_code == 303  # to the sign-in page
        path = portal.link("acme", "dev@example.com")
        page = browser.get(path)
        fields = form_of(page.text)
        signed = browser.post("/portal/signin/link", data=fields)
        assert signed.status_code == 303
        assert signed.headers["location"] == "/portal/"
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie
        assert "Path=/portal" in cookie
        assert "Secure" not in cookie  # plain http here
        home = browser.get("/portal/")
        assert home.status_code == 200
        assert "acme" in home.text
        assert "globex" not in home.text
    with portal.browser() as other:  # the same link again, from another browser
        other.get(path)
        again = other.post(
            "/portal/signin/link", data=fields | {"csrf": csrf_of(other.get(path).text)}
        )
        assert again.status_code == 400
        assert "not valid" in again.text


def test_an_expired_link_signs_nobody_in(tmp_path: object, portal: Portal) -> None:
    clock = Clock()
    with running_portal(portal.db_url, clock=clock) as late, late.browser() as browser:
        path = late.link("acme", "dev@example.com", expires_in=60)
        page = browser.get(path)
        clock.advance(61)
        refused = browser.post("/portal/signin/link", data=form_of(page.text))
        assert refused.status_code == 400
        assert browser.get("/portal/").status_code == 303


def test_the_session_rotates_at_sign_in_and_ends_at_sign_out(portal: Portal) -> None:
    with portal.browser() as browser:
        portal.sign_in(browser, "acme", "dev@example.com")
        first = browser.cookies["keyswap_portal"]
        portal.sign_in(browser, "acme", "dev@example.com")
        second = browser.cookies["keyswap_portal"]
        assert first != second
        with portal.browser() as stale:
            stale.cookies.set("keyswap_portal", first, path="/portal")
            assert stale.get("/portal/").status_code == 303  # the old session is gone
        home = browser.get("/portal/")
        out = browser.post("/portal/signout", data={"csrf": csrf_of(home.text)})
        assert out.status_code == 303
        with portal.browser() as replay:
            replay.cookies.set("keyswap_portal", second, path="/portal")
            assert replay.get("/portal/").status_code == 303


def test_sessions_expire_when_idle_and_in_any_case(portal: Portal) -> None:
    clock = Clock()
    with (
        running_portal(portal.db_url, clock=clock, idle_timeout=300, absolute_timeout=900) as timed,
        timed.browser() as browser,
    ):
        timed.sign_in(browser, "acme", "dev@example.com")
        clock.advance(299)
        assert browser.get("/portal/").status_code == 200
        clock.advance(299)
        assert browser.get("/portal/").status_code == 200  # each request refreshes the idle timer
        clock.advance(301)
        assert browser.get("/portal/").status_code == 303
        timed.sign_in(browser, "acme", "dev@example.com")
        for _ in range(4):
            clock.advance(250)
            browser.get("/portal/")
        assert browser.get("/portal/").status_code == 303  # 1000 s after sign-in > 900


def test_keys_are_created_rolled_expired_and_revoked_through_forms(portal: Portal) -> None:
    with portal.browser() as browser:
        portal.sign_in(browser, "acme", "dev@example.com")
        keys = browser.get("/portal/c/acme/keys")
        assert keys.status_code == 200
        created = browser.post(
            "/portal/c/acme/keys", data={"csrf": csrf_of(keys.text), "label": " ci <x> "}
        )
        assert created.status_code == 201
        key = _new_key(created.text)
        assert "will not be shown again" in created.text
        assert created.headers["cache-control"] == "no-store"
        assert key not in browser.get("/portal/c/acme/keys").text  # shown once
        [record] = list_keys(portal.ctx(), "acme")
        assert record.label == "ci <x>"
        assert "ci &lt;x&gt;" in browser.get("/portal/c/acme/keys").text
        base = f"/portal/c/acme/keys/{record.id}"
        expiry = browser.post(
            base + "/expiry", data={"csrf": csrf_of(keys.text), "expires_in": "86400"}
        )
        assert expiry.status_code == 303
        assert list_keys(portal.ctx(), "acme")[0].expires_at is not None
        cleared = browser.post(base + "/expiry", data={"csrf": csrf_of(keys.text), "clear": "1"})
        assert cleared.status_code == 303
        assert list_keys(portal.ctx(), "acme")[0].expires_at is None
        confirm = browser.get(base + "/roll")
        assert "grace" in confirm.text
        rolled = browser.post(base + "/roll", data=form_of(confirm.text) | {"grace": "3600.0"})
        assert rolled.status_code == 201
        assert _new_key(rolled.text) != key
        revoke = browser.get(base + "/revoke")
        assert "cannot be undone" in revoke.text
        assert browser.post(base + "/revoke", data=form_of(revoke.text)).status_code == 303
        states = {k.id: k.revoked_at for k in list_keys(portal.ctx(), "acme")}
        assert states[record.id] is not None
        events = list_events(portal.ctx(), AuditQuery(actor="portal:dev@example.com")).events
        assert [e.action for e in events] == [
            "key.revoke",
            "key.roll",
            "key.expiry",
            "key.expiry",
            "key.create",
        ]
        activity = browser.get("/portal/c/acme/activity")
        assert activity.text.count("portal:dev@example.com") == 5


def test_other_consumers_are_not_found_by_url_or_form(portal: Portal) -> None:
    theirs = create_key(portal.ctx(), portal.state.secret, NewKey("globex")).record
    with portal.browser() as browser:
        portal.sign_in(browser, "acme", "dev@example.com")
        csrf = csrf_of(browser.get("/portal/").text)
        for path in (
            "/portal/c/globex/",
            "/portal/c/globex/keys",
            "/portal/c/globex/usage",
            "/portal/c/globex/activity",
            "/portal/c/nobody/keys",
            f"/portal/c/acme/keys/{theirs.id}/roll",
            f"/portal/c/acme/keys/{theirs.id}/revoke",
            f"/portal/c/globex/keys/{theirs.id}/revoke",
        ):
            assert browser.get(path).status_code == 404, path
        for path, data in (
            ("/portal/c/globex/keys", {}),
            (f"/portal/c/acme/keys/{theirs.id}/revoke", {}),
            (f"/portal/c/globex/keys/{theirs.id}/revoke", {}),
            (f"/portal/c/acme/keys/{theirs.id}/roll", {"grace": "0.0"}),
            (f"/portal/c/acme/keys/{theirs.id}/expiry", {"clear": "1"}),
        ):
            assert browser.post(path, data={"csrf": csrf, **data}).status_code == 404, path
    [untouched] = list_keys(portal.ctx(), "globex")
    assert untouched == theirs
    assert len(list_keys(portal.ctx(), "globex")) == 1


def test_forms_without_the_right_csrf_token_are_refused(portal: Portal) -> None:
    with portal.browser() as browser, portal.browser() as attacker:
        portal.sign_in(browser, "acme", "dev@example.com")
        portal.sign_in(attacker, "globex", "evil@example.com")
        foreign = csrf_of(attacker.get("/portal/").text)
        for data in ({}, {"csrf": ""}, {"csrf": "x" * 43}, {"csrf": foreign}):
            refused = browser.post("/portal/c/acme/keys", data=data)
            assert refused.status_code == 403, data
        assert list_keys(portal.ctx(), "acme") == []
        link = browser.get(portal.link("acme", "dev@example.com"))
        assert (
            browser.post(
                "/portal/signin/link", data=form_of(link.text) | {"csrf": "no"}
            ).status_code
            == 403
        )


def test_a_link_form_needs_the_pre_session_cookie(portal: Portal) -> None:
    """Login CSRF: another site cannot post a link of its own into a victim's browser."""
    with portal.browser() as attacker:
        fields = form_of(attacker.get(portal.link("globex", "evil@example.com")).text)
    with portal.browser() as victim:
        assert victim.post("/portal/signin/link", data=fields).status_code == 403


def test_script_in_names_and_metadata_is_inert(portal: Portal) -> None:
    update_consumer(
        portal.ctx(),
        "acme",
        ConsumerUpdate(
            metadata={"plan": "<script>alert(1)</script>", "x": '"><img src=x onerror=alert(1)>'}
        ),
    )
    with portal.browser() as browser:
        portal.sign_in(browser, "acme", "dev@example.com")
        for path in ("/portal/", "/portal/c/acme/"):
            page = browser.get(path)
            assert "<script>alert" not in page.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            policy = page.headers["content-security-policy"]
            assert "default-src 'self'" in policy
            assert "frame-ancestors 'none'" in policy
            assert page.headers["x-frame-options"] == "DENY"
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["referrer-policy"] == "no-referrer"


def test_redirects_stay_inside_the_portal(portal: Portal) -> None:
    for target in (
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "/portal/../../x",
        "javascript:alert(1)",
        "/other",
        "/portal/\nSet-Cookie: x",
    ):
        assert safe_next(target) in ("/portal/", target)
        assert not safe_next(target).startswith("//")
        assert "evil" not in safe_next(target)
    with portal.browser() as browser:
        page = browser.get(portal.link("acme", "dev@example.com") + "&next=https://evil.example/")
        done = browser.post("/portal/signin/link", data=form_of(page.text))
        assert done.headers["location"] == "/portal/"
        page = browser.get(portal.link("acme", "dev@example.com") + "&next=/portal/c/acme/keys")
        done = browser.post("/portal/signin/link", data=form_of(page.text))
        assert done.headers["location"] == "/portal/c/acme/keys"


def test_link_use_is_rate_limited(portal: Portal) -> None:
    with portal.browser() as browser:
        page = browser.get("/portal/signin/link?token=kspl_guess")
        fields = form_of(page.text)
        statuses = [
            browser.post("/portal/signin/link", data=fields).status_code
            for _ in range(portal.state.settings.signin_attempts_per_minute + 1)
        ]
        assert statuses[:-1] == [400] * (len(statuses) - 1)
        assert statuses[-1] == 429


def test_hostile_requests_are_4xx(portal: Portal) -> None:
    with portal.browser() as browser:
        portal.sign_in(browser, "acme", "dev@example.com")
        csrf = csrf_of(browser.get("/portal/").text)
        assert (
            browser.post(
                "/portal/c/acme/keys",
                content=b"\xff\xfe",
                headers={"content-type": "application/x-www-form-urlencoded"},
            ).status_code
            == 400
        )
        assert browser.post("/portal/c/acme/keys", json={"csrf": csrf}).status_code == 400
        assert (
            browser.post("/portal/c/acme/keys", data={"csrf": csrf, "x": "y" * 20000}).status_code
            == 400
        )
        assert browser.get("/portal/c/" + "a" * 300 + "/keys").status_code == 404
        assert browser.get("/portal/static/../app.py").status_code == 404
        big = browser.post("/portal/c/acme/keys/key_x/roll", data={"csrf": csrf, "grace": "1e999"})
        assert big.status_code == 404
        [] = list_keys(portal.ctx(), "acme")


def test_usage_without_records_says_so(portal: Portal) -> None:
    with portal.browser() as browser:
        portal.sign_in(browser, "acme", "dev@example.com")
        page = browser.get("/portal/c/acme/usage")
        assert page.status_code == 200
        assert "<svg" in page.text
        assert page.text.count("<tr>") >= 54


def test_a_subject_member_and_an_email_member_see_their_consumers(portal: Portal) -> None:
    add_member(portal.ctx(), "globex", "email", "dev@example.com")
    with portal.browser() as browser:
        portal.sign_in(browser, "acme", "dev@example.com")
        home = browser.get("/portal/").text
        assert "acme" in home
        assert "globex" in home


def test_static_assets_come_from_the_package(portal: Portal) -> None:
    css = httpx.get(portal.url + "/portal/static/portal.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    js = httpx.get(portal.url + "/portal/static/portal.js")
    assert "clipboard" in js.text
    theme = httpx.get(portal.url + "/portal/theme.css")
    assert "--accent: #4f46e5" in theme.text


def test_the_overview_shows_quota_and_credits_remaining(portal: Portal) -> None:
    with portal.browser() as browser:
        portal.sign_in(browser, "acme", "dev@example.com")
        assert 'class="quota"' not in browser.get("/portal/c/acme/").text  # none set
        update_consumer(
            portal.ctx(),
            "acme",
            ConsumerUpdate(quota="1000/day", credits=500, credits_refill="500/month"),
        )
        ctx = portal.ctx()
        consumer = portal.store.get_consumer("acme")
        assert consumer is not None
        spent = {(consumer.id, s.name): 30 for s in counters_of(ctx, "acme")}  # what gateways wrote
        portal.store.add_quota_usage(spent, now=ctx.now())
        page = browser.get("/portal/c/acme/").text
        quota, credits = re.findall(r'<dd class="quota">(.*?)</dd>', page, re.S)
        assert quota.startswith("970 of 1000 requests left in ")
        assert "refilled <time" in quota
        assert credits.startswith("470 of 500 requests left, refilled <time")


def counters_of(ctx: Context, name: str) -> tuple[Counter, ...]:
    """The quota counters of consumer ``name`` now (as the gateway names them)."""
    consumer = ctx.store.get_consumer(name)
    assert consumer is not None
    return counters_for(
        quota=consumer.quota,
        credits=consumer.credits,
        credits_refill=consumer.credits_refill,
        credits_set_at=consumer.credits_set_at,
        now=ctx.now(),
    )
