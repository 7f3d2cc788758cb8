"""``keyswap demo``: the gateway and ``keyswap origin`` in one process, with a demo consumer and key.

- state lives in ``./.keyswap-data/`` (the current directory; ``--data-dir`` to change it): the SQLite
  file ``keyswap.db`` and its secret ``keyswap.db.secret`` (mode 0600);
- the gateway listens on ``127.0.0.1:8080`` and forwards to the origin on ``127.0.0.1:7878``, which
  verifies the gateway's JWTs against its JWKS (issuer and audience configured to match) and answers
  with the verified claims;
- consumer ``demo`` (metadata ``{"plan": "free"}``) is created on the first run and reused afterwards;
  every run creates and prints a fresh demo key, with the ``curl`` to try, and leaves the older demo
  keys working (another demo on the same data, or a script, may be using them; revoke them with
  ``keyswap keys revoke``);
- the admin API (``keyswap admin``) listens on ``127.0.0.1:8081`` (the gateway's port + 1 unless
  ``--admin-port``); every run prints its URL and a fresh admin token (scope ``admin``, name
  ``demo``; older ones keep working until ``keyswap admin-tokens revoke``);
- every request is metered (written every :data:`DEMO_USAGE_INTERVAL` seconds): the banner prints
  ``keyswap usage demo`` (and ``GET /v1/usage?consumer=demo`` on the admin API) to read it;
- the developer portal (``keyswap portal``) listens on ``127.0.0.1:8082`` (the gateway's port + 2 unless
  ``--portal-port``); every run prints a fresh single-use sign-in link (one hour) for
  ``demo@example.com``, a member of consumer ``demo`` (without the ``portal`` extra the demo runs
  without it and says so);
- every port is bound before the data is touched: a port in use is one error and changes nothing;
- Ctrl-C (SIGINT) or SIGTERM stops both servers cleanly.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from keyswap.gateway.mint import SIGNING_ALGORITHMS

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEMO_CONSUMER",
    "DEMO_MEMBER",
    "DEMO_METADATA",
    "DEMO_USAGE_INTERVAL",
    "DemoInfo",
    "prepare_demo",
    "run_demo",
]

DEFAULT_DATA_DIR = ".keyswap-data"
DEMO_CONSUMER = "demo"
DEMO_METADATA: dict[str, Any] = {"plan": "free"}
#: Seconds between the demo gateway's usage writes (short, so ``keyswap usage demo`` shows requests
#: made a moment ago).
DEMO_USAGE_INTERVAL = 2.0
_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class DemoInfo:
    """What the demo prints: where things are and the key to try."""

    gateway_url: str
    origin_url: str
    jwks_url: str
    db_path: Path
    key: str
    key_id: str
    #: Older demo keys that still work (never revoked by the demo).
    older_keys: int
    #: The admin API and a fresh admin token for it (scope ``admin``), when it runs.
    admin_url: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    #: The developer portal and a fresh sign-in link to it, when it runs.
    portal_url: str | None = None
    portal_link: str | None = field(default=None, repr=False)

    @property
    def curl(self) -> str:
        """The command to try (the key is quoted for a POSIX shell)."""
        header = shlex.quote(f"Authorization: Bearer {self.key}")
        return f"curl -H {header} {self.gateway_url}/hello"


def _demo_key(db_url: str) -> tuple[str, str, int]:
    """Create consumer ``demo`` if missing and a new key for it; count its other usable keys.

    Older keys are left alone: another demo on the same data, or a script, may be using them.
    """
    from keyswap.gateway.apikeys import ApiKeys
    from keyswap.gateway.secret import load_secret
    from keyswap.store import Store

    store = Store(db_url)
    try:
        api_keys = ApiKeys(store, load_secret(db_url, env={}), cache_size=0)
        if store.get_consumer(DEMO_CONSUMER) is None:
            store.create_consumer(DEMO_CONSUMER, DEMO_METADATA)
        now = time.time()
        older = sum(1 for record in store.list_api_keys(DEMO_CONSUMER) if record.usable_at(now))
        record, key = api_keys.create(DEMO_CONSUMER)
        return key, record.id, older
    finally:
        store.close()


def prepare_demo(
    data_dir: Path, *, port: int = 8080, origin_port: int = 7878, alg: str = "RS256"
) -> tuple[Any, Any, DemoInfo]:
    """Build the gateway app, the origin app and the demo key (blocking; creates ``data_dir``).

    Returns ``(gateway_app, origin_app, info)``.

    Raises:
        ConfigError: bad ports or algorithm, or a data dir set up with another secret.
        OSError: the data dir cannot be created.
    """
    from keyswap.gateway.app import GatewaySettings, build_gateway
    from keyswap.gateway.wellknown import JWKS_PATH
    from keyswap.origin.app import create_app
    from keyswap.store.urls import DATABASE_FILE_NAME, normalize_database_url
    from keyswap.verifier.verify import IssuerConfig, Verifier

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    db_path = (data_dir / DATABASE_FILE_NAME).resolve()
    db_url = normalize_database_url(str(db_path))
    gateway_url = f"http://{_HOST}:{port}"
    origin_url = f"http://{_HOST}:{origin_port}"
    settings = GatewaySettings(upstream=origin_url, public_url=gateway_url, alg=alg)
    gateway_app = build_gateway(settings, db_url=db_url, env={}, usage_interval=DEMO_USAGE_INTERVAL)
    gateway_app.prepare()
    key, key_id, older_keys = _demo_key(db_url)
    jwks_url = gateway_url + JWKS_PATH
    verifier = Verifier(
        IssuerConfig(
            issuer=settings.issuer,
            jwks_url=jwks_url,
            audience=settings.audience,
            algorithms=SIGNING_ALGORITHMS,
        )
    )
    origin_app = create_app(verifier)
    info = DemoInfo(gateway_url, origin_url, jwks_url, db_path, key, key_id, older_keys)
    return gateway_app, origin_app, info


def _program(argv0: str | None = None, path: str | None = None) -> str:
    """How the user can run keyswap again: ``keyswap`` when that name on PATH is this program, else the
    path this one was started by (``.venv/bin/keyswap`` under scripts/demo, with no venv activated)."""
    invoked = sys.argv[0] if argv0 is None else argv0
    if os.path.basename(invoked) != "keyswap" or os.sep not in invoked:
        return "keyswap"
    found = shutil.which("keyswap", path=path)
    try:
        if found is not None and os.path.samefile(found, invoked):
            return "keyswap"
    except OSError:
        pass
    return shlex.quote(invoked)


def _admin_lines(info: DemoInfo) -> list[str]:
    if info.admin_url is None or info.admin_token is None:
        return []
    header = shlex.quote(f"Authorization: Bearer {info.admin_token}")
    return [
        f"Or over HTTP: the admin API on {info.admin_url} (docs: {info.admin_url}/docs):",
        f"  curl -H {header} {info.admin_url}/v1/consumers",
        f"  curl -H {header} '{info.admin_url}/v1/usage?consumer={DEMO_CONSUMER}&by=minute'",
    ]


def _demo_admin(db_url: str) -> tuple[Any, str, Callable[[], None]]:
    """The admin API app over the demo database and a fresh ``admin`` token for it; returns
    ``(app, token, close)``."""
    from keyswap.admin.app import build_admin_app
    from keyswap.admin.state import AdminState
    from keyswap.gateway.keyring import Keyring
    from keyswap.gateway.secret import load_secret
    from keyswap.manage.actor import Actor
    from keyswap.manage.context import Context
    from keyswap.manage.tokens import NewAdminToken, create_admin_token
    from keyswap.store import Store

    store = Store(db_url)
    try:
        secret = load_secret(db_url, env={})
        created = create_admin_token(
            Context(store, Actor.system("demo")), secret, NewAdminToken("demo", ("admin",))
        )
        app = build_admin_app(AdminState(store, secret, Keyring(store, secret)))
    except BaseException:
        store.close()
        raise
    return app, created.token, store.close


#: Who the demo's portal sign-in links are for.
DEMO_MEMBER = "demo@example.com"


def _demo_portal(
    db_url: str, portal_url: str, gateway_url: str
) -> tuple[Any, str, Callable[[], None]] | None:
    """The portal app over the demo database and a fresh sign-in link for :data:`DEMO_MEMBER`;
    returns ``(app, link, close)``, or ``None`` without the ``portal`` extra."""
    try:
        from keyswap.portal.app import PortalState, build_portal_app
        from keyswap.portal.settings import PortalSettings
    except ImportError:
        return None
    from keyswap.gateway.secret import load_secret
    from keyswap.manage.actor import Actor
    from keyswap.manage.context import Context
    from keyswap.manage.portal import create_link
    from keyswap.store import Store

    store = Store(db_url)
    try:
        secret = load_secret(db_url, env={})
        settings = PortalSettings(
            public_url=portal_url, gateway_url=gateway_url, provider_name="keyswap demo"
        )
        link = create_link(
            Context(store, Actor.system("demo")), DEMO_CONSUMER, DEMO_MEMBER, expires_in=3600
        )
        app = build_portal_app(PortalState(store, secret, settings))
    except BaseException:
        store.close()
        raise
    return app, link.url(portal_url), store.close


def _portal_lines(info: DemoInfo) -> list[str]:
    if info.portal_link is None:
        return ["(The developer portal needs the 'portal' extra: pip install 'keyswap[portal]'.)"]
    return [
        f"The developer portal on {info.portal_url}/portal/: sign in once with this link (1 hour):",
        f"  {info.portal_link}",
    ]


def _instructions(info: DemoInfo) -> str:
    metadata = json.dumps(DEMO_METADATA)
    older = f"; {info.older_keys} older demo key(s) still work" if info.older_keys else ""
    return "\n".join(
        [
            "",
            f"keyswap demo: gateway {info.gateway_url} -> origin {info.origin_url}",
            f"  data:  {info.db_path} (consumer '{DEMO_CONSUMER}' {metadata}, "
            f"key {info.key_id}{older})",
            f"  JWKS:  {info.jwks_url}",
            "",
            "Try it (the origin answers with the JWT claims it verified):",
            "",
            f"  {info.curl}",
            "",
            f"Manage it: {_program()} keys list --db {shlex.quote(str(info.db_path))}",
            f"Its usage (written every {DEMO_USAGE_INTERVAL:g} s): {_program()} usage "
            f"{DEMO_CONSUMER} --since 1h --by minute --db {shlex.quote(str(info.db_path))}",
            *_admin_lines(info),
            *_portal_lines(info),
            "Press Ctrl-C to stop.",
            "",
        ]
    )


def run_demo(
    data_dir: Path,
    *,
    port: int = 8080,
    origin_port: int = 7878,
    admin_port: int | None = None,
    portal_port: int | None = None,
    alg: str = "RS256",
    echo: Callable[[str], None] | None = None,
) -> int:
    """Prepare the demo, serve gateway, origin, the admin API (on ``admin_port``, default
    ``port + 1``) and the developer portal (on ``portal_port``, default ``port + 2``) until
    SIGINT/SIGTERM; returns the exit status.

    Raises:
        ConfigError: a port is in use (``cannot listen on 127.0.0.1:8080: address already in use``;
            checked before the data is touched), or see :func:`prepare_demo`.
    """
    from keyswap.errors import ConfigError
    from keyswap.gateway.serve import configure_logging, run_until_signal, server_config
    from keyswap.ports import bind_listeners
    from keyswap.store.urls import normalize_database_url

    admin = port + 1 if admin_port is None else admin_port
    portal = port + 2 if portal_port is None else portal_port
    if len({port, origin_port, admin, portal}) < 4:
        raise ConfigError("--port, --origin-port, --admin-port and --portal-port must differ")
    # Every port first: a demo that cannot serve must not create keys (nor touch the data at all).
    sockets: list[list[Any]] = []
    close_admin: Callable[[], None] = lambda: None  # noqa: E731
    close_portal: Callable[[], None] = lambda: None  # noqa: E731
    portal_app: Any = None
    try:
        for each in (port, origin_port, admin, portal):
            sockets.append(bind_listeners(_HOST, each))
        configure_logging("info")
        gateway_app, origin_app, info = prepare_demo(
            data_dir, port=port, origin_port=origin_port, alg=alg
        )
        admin_app, token, close_admin = _demo_admin(normalize_database_url(str(info.db_path)))
        info = replace(info, admin_url=f"http://{_HOST}:{admin}", admin_token=token)
        portal_url = f"http://{_HOST}:{portal}"
        made = _demo_portal(normalize_database_url(str(info.db_path)), portal_url, info.gateway_url)
        if made is not None:
            portal_app, link, close_portal = made
            info = replace(info, portal_url=portal_url, portal_link=link)
    except BaseException:
        for sock in (s for group in sockets for s in group):
            sock.close()
        close_admin()
        close_portal()
        raise

    def ready() -> None:
        text = _instructions(info)
        if echo is not None:
            echo(text)
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    servers = [
        server_config(gateway_app, _HOST, port),
        server_config(origin_app, _HOST, origin_port, log_level="warning"),
        server_config(admin_app, _HOST, admin, log_level="warning"),
    ]
    if portal_app is not None:
        servers.append(server_config(portal_app, _HOST, portal, log_level="warning"))
    else:
        for sock in sockets.pop():
            sock.close()
    try:
        return run_until_signal(servers, on_ready=ready, sockets=sockets)
    finally:
        close_admin()
        close_portal()
