"""The developer portal: an API's consumers manage their own keys in a web page.

``keyswap portal`` serves it (its own process and port, meant to face the consumers; the admin API
stays private). Pages live under ``/portal/``; they are rendered on the server (Jinja2, autoescaped),
every action is a plain HTML form (no JavaScript needed; a small served script adds copy buttons), and
every change goes through :mod:`keyswap.manage` with the signed-in person as the audit actor.

Modules: :mod:`.settings` (what the portal is configured with), :mod:`.sessions` (server-side
sessions and CSRF tokens), :mod:`.throttle` (sign-in rate limits), :mod:`.oidc` (OpenID Connect sign-in),
:mod:`.charts` (SVG usage charts), :mod:`.app` (the Starlette app), :mod:`.cli` (``keyswap portal``).
"""

from __future__ import annotations

from keyswap.portal.app import build_portal_app
from keyswap.portal.settings import PortalSettings

__all__ = ["PortalSettings", "build_portal_app"]
