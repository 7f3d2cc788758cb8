"""The portal's Starlette app: pages under ``/portal/``, every action a plain HTML form.

Who may see what: a signed-in person sees the consumers they are a member of
(:mod:`keyswap.manage.members`) and nothing else; a consumer name or key id that is not theirs is
answered exactly like one that does not exist (404), so ids in URLs and forms reveal nothing.

Every POST carries a CSRF token (:mod:`keyswap.portal.sessions`); every response carries a strict
Content-Security-Policy (``default-src 'self'``), ``X-Frame-Options: DENY``, ``nosniff`` and
``Referrer-Policy: no-referrer``; pages are ``Cache-Control: no-store`` (a new key is on one).
Redirects go only to paths inside ``/portal/``. Link uses and OIDC callbacks are rate-limited per
client address (:class:`~keyswap.portal.throttle.AttemptLimiter`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyswap.errors import InvalidInput, KeyswapError, NotFound
from keyswap.gateway.apikeys import DEFAULT_PREFIX
from keyswap.gateway.secret import ServerSecret
from keyswap.manage import Actor, Context
from keyswap.manage import consumers as manage_consumers
from keyswap.manage import keys as manage_keys
from keyswap.manage import members as manage_members
from keyswap.manage import quotas as manage_quotas
from keyswap.manage.portal import redeem_link
from keyswap.portal import charts
from keyswap.portal.sessions import (
    PRE_COOKIE,
    SESSION_COOKIE,
    Session,
    SessionStore,
    csrf_token,
    new_value,
)
from keyswap.portal.settings import PortalSettings
from keyswap.portal.throttle import AttemptLimiter
from keyswap.store.models import ApiKeyRecord, AuditRecord, Consumer
from keyswap.store.sql import Store

__all__ = ["PortalState", "build_portal_app", "safe_next"]

log = logging.getLogger("keyswap.portal")

#: Largest form body accepted (bytes).
MAX_FORM = 16 * 1024
_STATIC = {"portal.css": "text/css; charset=utf-8", "portal.js": "text/javascript; charset=utf-8"}
_DONE = {
    "revoked": "The key was revoked. Gateways refuse it within a second.",
    "expiry": "The key's expiry was changed.",
    "signedout": "You are signed out.",
    "created": "The consumer was created.",
}
_EXPIRY_CHOICES = (
    (86400, "1 day"),
    (7 * 86400, "7 days"),
    (30 * 86400, "30 days"),
    (90 * 86400, "90 days"),
    (365 * 86400, "1 year"),
)


class Forbidden(Exception):
    """A request refused with 403 (bad CSRF token)."""


class TooMany(Exception):
    """A request refused with 429 (sign-in attempts)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many sign-in attempts")
        self.retry_after = retry_after


def safe_next(target: str | None) -> str:
    """``target`` if it is a path inside the portal, else ``/portal/`` (no open redirect)."""
    if not target or len(target) > 512:
        return "/portal/"
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/portal/")
        or "\\" in target
        or target.startswith("//")
        or any(ord(ch) < 0x21 for ch in target)
    ):
        return "/portal/"
    return target


@dataclass
class PortalState:
    """What every page works with."""

    store: Store
    secret: ServerSecret
    settings: PortalSettings
    key_prefix: str = DEFAULT_PREFIX
    oidc: Any = None  # keyswap.portal.oidc.OidcClient when configured
    limiter: AttemptLimiter = field(init=False)
    sessions: SessionStore = field(init=False)
    csrf_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.limiter = AttemptLimiter(s.signin_attempts_per_minute, 60.0, clock=s.clock)
        self.sessions = SessionStore(self.store, idle=s.idle_timeout, absolute=s.absolute_timeout)
        self.csrf_key = hmac.new(
            self.secret.api_key_mac_key, b"keyswap/portal-csrf", hashlib.sha256
        ).digest()


@dataclass
class Page:
    """One request as a page handler sees it."""

    request: Request
    state: PortalState
    form: dict[str, str]
    session: Session | None
    pre: str | None
    now: float
    set_pre: bool = False

    @property
    def client(self) -> str:
        return self.request.client.host if self.request.client else "unknown"

    def ctx(self) -> Context:
        """The service-layer context, the signed-in person as the actor."""
        assert self.session is not None
        actor = Actor.portal(
            self.session.person,
            request_id=self.request.headers.get("x-request-id"),
            client=self.client,
        )
        return Context(self.state.store, actor, self.state.settings.clock)

    def csrf(self) -> str:
        if self.session is not None:
            return csrf_token(self.state.csrf_key, self.session.value)
        if self.pre is None:
            self.pre = new_value()
            self.set_pre = True
        return csrf_token(self.state.csrf_key, self.pre)

    def consumers(self) -> list[Consumer]:
        assert self.session is not None
        return manage_members.consumers_of(self.ctx(), self.session.identities())

    def consumer(self, name: str) -> Consumer:
        """The signed-in person's consumer ``name``; 404 for any other (existing or not)."""
        for consumer in self.consumers():
            if consumer.name == name:
                return consumer
        raise NotFound("no such consumer")

    def key(self, consumer: Consumer, key_id: str) -> ApiKeyRecord:
        """A key of ``consumer``; 404 for any other."""
        record = self.state.store.get_api_key(key_id) if len(key_id) <= 64 else None
        if record is None or record.consumer_id != consumer.id:
            raise NotFound("no such key")
        return record


# -- rendering ---------------------------------------------------------------------------------------

_env = Environment(
    loader=PackageLoader("keyswap.portal", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(value: float | None) -> str:
    if value is None:
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "none (at once)"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds:g} seconds"


_env.filters["when"] = _when
_env.filters["iso"] = _iso
_env.filters["duration"] = _duration


def render(page: Page, template: str, http_status: int = 200, **values: Any) -> HTMLResponse:
    """A page from ``template`` with the common values (settings, session, CSRF token)."""
    s = page.state.settings
    html = _env.get_template(template).render(
        settings=s,
        session=page.session,
        csrf=page.csrf(),
        now=page.now,
        done=_DONE.get(page.request.query_params.get("done", "")),
        **values,
    )
    return HTMLResponse(html, status_code=http_status)


# -- the request wrapper -----------------------------------------------------------------------------

Handler = Callable[[Page], Response]


async def _read_form(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not kind and request.headers.get("content-length", "0") == "0":
        return {}  # an empty POST: no fields (and so no CSRF token)
    if kind != "application/x-www-form-urlencoded":
        raise InvalidInput("forms are sent as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise InvalidInput("the form is too big")
    try:
        text = body.decode("ascii")
        parsed = parse_qs(text, keep_blank_values=True, max_num_fields=50, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the form could not be read") from None
    return {name: values[0] for name, values in parsed.items()}


def _prepare(request: Request, state: PortalState, form: dict[str, str]) -> Page:
    now = state.settings.clock()
    session = state.sessions.find(request.cookies.get(SESSION_COOKIE), now=now)
    pre = request.cookies.get(PRE_COOKIE)
    if pre is not None and (len(pre) > 64 or not pre.isascii()):
        pre = None
    page = Page(request, state, form, session, pre, now)
    if request.method == "POST":
        expected = (
            csrf_token(state.csrf_key, session.value)
            if session is not None
            else (csrf_token(state.csrf_key, pre) if pre else None)
        )
        given = form.get("csrf", "")
        if expected is None or not hmac.compare_digest(expected.encode(), given.encode()):
            raise Forbidden("the form's security token is missing or wrong; reload the page")
    return page


def _cookie(
    response: Response,
    name: str,
    value: str,
    settings: PortalSettings,
    *,
    max_age: int | None = None,
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/portal",
        secure=settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )


def endpoint(
    handler: Handler, *, signed_in: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running ``handler`` in a thread, with errors turned into pages."""

    async def run(request: Request) -> Response:
        state: PortalState = request.app.state.portal
        try:
            form = await _read_form(request) if request.method == "POST" else {}
        except InvalidInput as exc:
            return PlainTextResponse(exc.reason, status_code=400)
        return await run_in_threadpool(_run, handler, request, state, form, signed_in)

    return run


def _run(
    handler: Handler, request: Request, state: PortalState, form: dict[str, str], signed_in: bool
) -> Response:
    page: Page | None = None
    try:
        page = _prepare(request, state, form)
        if signed_in and page.session is None:
            target = quote(safe_next(request.url.path), safe="/")
            return RedirectResponse(f"/portal/signin?next={target}", status_code=303)
        response = handler(page)
    except Forbidden as exc:
        response = _error(request, state, page, 403, str(exc))
    except TooMany as exc:
        response = _error(request, state, page, 429, "Too many sign-in attempts; wait a minute.")
        response.headers["Retry-After"] = str(exc.retry_after)
    except NotFound:
        response = _error(request, state, page, 404, "Not found.")
    except InvalidInput as exc:
        response = _error(request, state, page, 400, exc.reason)
    except KeyswapError as exc:
        log.warning("portal request failed: %s", exc.reason)
        response = _error(request, state, page, 503, "Something went wrong; try again.")
    if page is not None and page.set_pre and page.pre:
        _cookie(response, PRE_COOKIE, page.pre, state.settings, max_age=3600)
    return response


def _error(
    request: Request, state: PortalState, page: Page | None, status: int, message: str
) -> Response:
    if page is None:
        page = Page(
            request, state, {}, None, request.cookies.get(PRE_COOKIE), state.settings.clock()
        )
    return render(page, "error.html", status, status=status, message=message)


# -- sign-in and out ---------------------------------------------------------------------------------


def _signed_in(page: Page, kind: str, identity: str, email: str | None, target: str) -> Response:
    """Start a session (a new value: rotation) and leave the old one, if any."""
    if page.session is not None:
        page.state.sessions.end(page.session.value)
    session = page.state.sessions.start(kind, identity, email, now=page.now)
    response = RedirectResponse(safe_next(target), status_code=303)
    _cookie(response, SESSION_COOKIE, session.value, page.state.settings)
    response.delete_cookie(PRE_COOKIE, path="/portal")
    return response


def _throttle(page: Page) -> None:
    if not page.state.limiter.allow(page.client):
        raise TooMany(page.state.limiter.retry_after(page.client))


def signin(page: Page) -> Response:
    return render(
        page,
        "signin.html",
        next=safe_next(page.request.query_params.get("next")),
        oidc=page.state.oidc is not None,
    )


def link_form(page: Page) -> Response:
    token = page.request.query_params.get("token", "")
    return render(
        page,
        "link.html",
        token=token[:128],
        next=safe_next(page.request.query_params.get("next")),
    )


def link_use(page: Page) -> Response:
    _throttle(page)
    record = redeem_link(
        Context(page.state.store, Actor.system("portal"), page.state.settings.clock),
        page.form.get("token", ""),
    )
    if record is None:
        return render(
            page,
            "error.html",
            400,
            status=400,
            message="This sign-in link is not valid: it was already used, it has expired, or it "
            "was copied wrongly. Ask for a new one.",
        )
    return _signed_in(page, "email", record.email, record.email, page.form.get("next", ""))


def signout(page: Page) -> Response:
    if page.session is not None:
        page.state.sessions.end(page.session.value)
    response = RedirectResponse("/portal/signin?done=signedout", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/portal")
    return response


def oidc_start(page: Page) -> Response:
    if page.state.oidc is None:
        raise NotFound("OIDC sign-in is not configured")
    _throttle(page)
    url, cookie = page.state.oidc.begin(safe_next(page.request.query_params.get("next")), page.now)
    response = RedirectResponse(url, status_code=303)
    _cookie(response, "keyswap_portal_oidc", cookie, page.state.settings, max_age=600)
    return response


def oidc_callback(page: Page) -> Response:
    if page.state.oidc is None:
        raise NotFound("OIDC sign-in is not configured")
    _throttle(page)
    params = page.request.query_params
    person = page.state.oidc.finish(
        params.get("code"),
        params.get("state"),
        params.get("error"),
        page.request.cookies.get("keyswap_portal_oidc"),
        page.now,
    )
    response = _signed_in(page, "subject", person.subject, person.email, person.next)
    response.delete_cookie("keyswap_portal_oidc", path="/portal")
    return response


# -- consumers ---------------------------------------------------------------------------------------


def home(page: Page) -> Response:
    mine = page.consumers()
    signup = (
        page.state.settings.signup is not None
        and page.session is not None
        and (page.session.record.identity_kind == "subject")
    )
    return render(page, "consumers.html", consumers=mine, signup=signup and not mine)


def signup(page: Page) -> Response:
    plan = page.state.settings.signup
    assert page.session is not None
    if plan is None or page.session.record.identity_kind != "subject" or page.consumers():
        raise NotFound("self sign-up is not available")
    ctx = page.ctx()
    name = page.form.get("name", "").strip()
    consumer = manage_consumers.create_consumer(
        ctx, manage_consumers.NewConsumer(name, dict(plan.metadata))
    )
    if plan.rate_limit is not None:
        manage_consumers.update_consumer(
            ctx, consumer.name, manage_consumers.ConsumerUpdate(rate_limit=plan.rate_limit)
        )
    manage_members.add_member(ctx, consumer.name, "subject", page.session.record.identity)
    return RedirectResponse(f"/portal/c/{consumer.name}/?done=created", status_code=303)


def _name(page: Page) -> str:
    return str(page.request.path_params["name"])


def overview(page: Page) -> Response:
    consumer = page.consumer(_name(page))
    keys = manage_keys.list_keys(page.ctx(), consumer.name)
    usable = [k for k in keys if k.usable_at(page.now)]
    return render(
        page,
        "overview.html",
        consumer=consumer,
        tab="overview",
        plan=consumer.metadata.get("plan"),
        usable=len(usable),
        quotas=manage_quotas.quota_status(page.ctx(), consumer.name),
    )


def _key_rows(page: Page, consumer: Consumer) -> list[tuple[ApiKeyRecord, str]]:
    keys = manage_keys.list_keys(page.ctx(), consumer.name)
    return [(k, k.status_at(page.now)) for k in reversed(keys)]


def keys_page(
    page: Page,
    *,
    new: Any = None,
    status: int = 200,
    error: str | None = None,
    headline: str | None = None,
) -> Response:
    consumer = page.consumer(_name(page))
    return render(
        page,
        "keys.html",
        status,
        consumer=consumer,
        tab="keys",
        rows=_key_rows(page, consumer),
        new=new,
        headline=headline,
        error=error,
        expiry_choices=_EXPIRY_CHOICES,
    )


def keys_view(page: Page) -> Response:
    return keys_page(page)


def key_create(page: Page) -> Response:
    consumer = page.consumer(_name(page))
    created = manage_keys.create_key(
        page.ctx(),
        page.state.secret,
        manage_keys.NewKey(consumer.name, label=page.form.get("label") or None),
        prefix=page.state.key_prefix,
    )
    return keys_page(page, new=created, status=201, headline="Your new key")


def _grace(page: Page, text: str) -> float:
    try:
        grace = float(text)
    except ValueError:
        raise InvalidInput("choose a grace period") from None
    if not math.isfinite(grace) or grace not in page.state.settings.grace_choices:
        raise InvalidInput("choose one of the grace periods offered")
    return grace


def key_roll_form(page: Page) -> Response:
    consumer = page.consumer(_name(page))
    record = page.key(consumer, str(page.request.path_params["key_id"]))
    return render(
        page,
        "confirm.html",
        consumer=consumer,
        tab="keys",
        record=record,
        action="roll",
        graces=page.state.settings.grace_choices,
    )


def key_roll(page: Page) -> Response:
    consumer = page.consumer(_name(page))
    record = page.key(consumer, str(page.request.path_params["key_id"]))
    grace = _grace(page, page.form.get("grace", ""))
    rolled = manage_keys.roll_key(
        page.ctx(), page.state.secret, record.id, grace=grace, prefix=page.state.key_prefix
    )
    return keys_page(
        page,
        new=rolled.new,
        status=201,
        headline=f"Key {record.hint} was rolled; its replacement",
    )


def key_revoke_form(page: Page) -> Response:
    consumer = page.consumer(_name(page))
    record = page.key(consumer, str(page.request.path_params["key_id"]))
    return render(
        page, "confirm.html", consumer=consumer, tab="keys", record=record, action="revoke"
    )


def key_revoke(page: Page) -> Response:
    consumer = page.consumer(_name(page))
    record = page.key(consumer, str(page.request.path_params["key_id"]))
    manage_keys.revoke_key(page.ctx(), record.id)
    return RedirectResponse(f"/portal/c/{consumer.name}/keys?done=revoked", status_code=303)


def key_expiry(page: Page) -> Response:
    consumer = page.consumer(_name(page))
    record = page.key(consumer, str(page.request.path_params["key_id"]))
    if page.form.get("clear"):
        expires_at = None
    else:
        try:
            seconds = int(page.form.get("expires_in", ""))
        except ValueError:
            raise InvalidInput("choose when the key expires") from None
        if seconds not in {s for s, _ in _EXPIRY_CHOICES}:
            raise InvalidInput("choose one of the expiry times offered")
        expires_at = page.now + seconds
    manage_keys.set_key_expiry(page.ctx(), record.id, expires_at)
    return RedirectResponse(f"/portal/c/{consumer.name}/keys?done=expiry", status_code=303)


# -- usage and activity ------------------------------------------------------------------------------


def _buckets(store: Store, consumer: str, since: float, until: float, by: str) -> list[Any]:
    from keyswap.manage import usage

    if by not in ("hour", "day"):
        raise InvalidInput("usage is shown by hour or by day")
    return list(usage.query(store, consumer_id=consumer, since=since, until=until, by=by))  # type: ignore[arg-type]


def _rows(buckets: list[Any], start: float, step: int, count: int, fmt: str) -> list[charts.Row]:
    by_start = {int(b.start): b for b in buckets}
    rows = []
    for index in range(count):
        at = int(start) + index * step
        b = by_start.get(at)
        counts = (
            (0, 0, 0, 0) if b is None else (b.status_2xx, b.status_3xx, b.status_4xx, b.status_5xx)
        )
        rows.append(charts.Row(datetime.fromtimestamp(at, UTC).strftime(fmt), counts))
    return rows


def usage_page(page: Page) -> Response:
    consumer = page.consumer(_name(page))
    now = int(page.now)
    hour_start = now - now % 3600 - 23 * 3600
    day_start = now - now % 86400 - 29 * 86400
    store = page.state.store
    hourly = _rows(
        _buckets(store, consumer.name, hour_start, now + 1, "hour"), hour_start, 3600, 24, "%H:00"
    )
    daily = _rows(
        _buckets(store, consumer.name, day_start, now + 1, "day"), day_start, 86400, 30, "%m-%d"
    )
    total = sum(r.total for r in hourly) + sum(r.total for r in daily)
    return render(
        page,
        "usage.html",
        consumer=consumer,
        tab="usage",
        hourly=charts.bar_chart(hourly, title="Requests per hour, last 24 hours", label_every=3),
        daily=charts.bar_chart(daily, title="Requests per day, last 30 days", label_every=5),
        hourly_rows=hourly,
        daily_rows=daily,
        classes=charts.CLASSES,
        any_usage=total > 0,
    )


def activity_page(page: Page) -> Response:
    consumer = page.consumer(_name(page))
    keys = manage_keys.list_keys(page.ctx(), consumer.name)
    targets = [f"consumer:{consumer.name}", *(f"key:{k.id}" for k in keys)]
    events: list[AuditRecord] = page.state.store.list_audit_events(limit=100, targets=targets)
    return render(page, "activity.html", consumer=consumer, tab="activity", events=events)


# -- static files and headers ------------------------------------------------------------------------


async def static(request: Request) -> Response:
    name = request.path_params["file"]
    if name not in _STATIC:
        return PlainTextResponse("Not found.", status_code=404)
    body = resources.files("keyswap.portal").joinpath("static", name).read_bytes()
    return Response(
        body, media_type=_STATIC[name], headers={"Cache-Control": "public, max-age=3600"}
    )


async def theme(request: Request) -> Response:
    state: PortalState = request.app.state.portal
    accent = state.settings.accent  # validated: #rrggbb
    return Response(
        f":root {{ --accent: {accent}; }}\n",
        media_type="text/css; charset=utf-8",
        headers={"Cache-Control": "public, max-age=300"},
    )


async def root(request: Request) -> Response:
    return RedirectResponse("/portal/", status_code=307)


class SecurityHeaders:
    """Pure ASGI middleware: the security headers on every HTTP response."""

    def __init__(self, app: ASGIApp, settings: PortalSettings) -> None:
        self.app = app
        images = "'self'"
        if settings.logo_url:
            logo = urlsplit(settings.logo_url)
            images += f" {logo.scheme}://{logo.netloc}"
        policy = (
            f"default-src 'self'; img-src {images}; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'; object-src 'none'"
        )
        headers = [
            (b"content-security-policy", policy.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        if settings.secure_cookies:
            headers.append((b"strict-transport-security", b"max-age=31536000"))
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name for name, _ in headers}
                headers.extend(h for h in self.headers if h[0] not in names)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


def build_portal_app(state: PortalState) -> Starlette:
    """The portal over ``state``."""
    c = "/portal/c/{name}"
    k = c + "/keys/{key_id}"
    routes = [
        Route("/", root),
        Route("/portal", root),
        Route("/portal/static/{file}", static),
        Route("/portal/theme.css", theme),
        Route("/portal/", endpoint(home)),
        Route("/portal/signin", endpoint(signin, signed_in=False)),
        Route("/portal/signin/link", endpoint(link_form, signed_in=False), methods=["GET"]),
        Route("/portal/signin/link", endpoint(link_use, signed_in=False), methods=["POST"]),
        Route("/portal/signin/oidc", endpoint(oidc_start, signed_in=False)),
        Route("/portal/signin/oidc/callback", endpoint(oidc_callback, signed_in=False)),
        Route("/portal/signout", endpoint(signout, signed_in=False), methods=["POST"]),
        Route("/portal/signup", endpoint(signup), methods=["POST"]),
        Route(c + "/", endpoint(overview)),
        Route(c + "/keys", endpoint(keys_view), methods=["GET"]),
        Route(c + "/keys", endpoint(key_create), methods=["POST"]),
        Route(k + "/roll", endpoint(key_roll_form), methods=["GET"]),
        Route(k + "/roll", endpoint(key_roll), methods=["POST"]),
        Route(k + "/revoke", endpoint(key_revoke_form), methods=["GET"]),
        Route(k + "/revoke", endpoint(key_revoke), methods=["POST"]),
        Route(k + "/expiry", endpoint(key_expiry), methods=["POST"]),
        Route(c + "/usage", endpoint(usage_page)),
        Route(c + "/activity", endpoint(activity_page)),
    ]
    app = Starlette(routes=routes)
    app.state.portal = state
    app.add_middleware(SecurityHeaders, settings=state.settings)
    return app
