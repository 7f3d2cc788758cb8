"""``/docs``: interactive documentation of ``/openapi.json`` that works with no internet access.

The page is Swagger UI (the dist files that the ``swagger-ui-bundle-v2`` package ships) started by a
small script of ours; ``keyswap admin`` serves every file under ``/docs/assets/`` from the installed
packages: no CDN, no font or validator from elsewhere, no inline script. The page's
:data:`CONTENT_SECURITY_POLICY` lets the browser load and call this server only. "Try it out" sends the
admin token given under "Authorize" as ``Authorization: Bearer ...`` (the ``adminToken`` scheme); it
stays in the page, never in the browser's storage.

Without JavaScript (or where the Swagger UI files are missing) the page lists the operations as plain
HTML.
"""

from __future__ import annotations

import functools
import hashlib
import html
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

__all__ = [
    "ASSET_PREFIX",
    "CONTENT_SECURITY_POLICY",
    "Asset",
    "asset",
    "interactive",
    "render_docs",
]

#: Where the page's files are served (the page is ``/docs``; its links are relative to it).
ASSET_PREFIX = "/docs/assets/"

#: The page may load scripts, styles, images and data from this server only; nothing inline but the
#: ``data:`` images of Swagger UI's stylesheet; no frames, forms, plugins or base URL changes.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"
#: name under /docs/assets/ -> (package, path inside it, media type). Nothing else is served.
_FILES: dict[str, tuple[str, str, str]] = {
    "swagger-ui-bundle.js": ("swagger_ui_bundle", "swagger-ui-bundle.js", _JS),
    "swagger-ui.css": ("swagger_ui_bundle", "swagger-ui.css", _CSS),
    "favicon-32x32.png": ("swagger_ui_bundle", "favicon-32x32.png", "image/png"),
    "keyswap-docs.js": ("keyswap.admin", "static/keyswap-docs.js", _JS),
    "keyswap-docs.css": ("keyswap.admin", "static/keyswap-docs.css", _CSS),
}


@dataclass(frozen=True)
class Asset:
    """One file of the page, read once."""

    body: bytes
    media_type: str
    #: A strong validator of ``body`` (quoted).
    etag: str


def _swagger_ui_dir() -> Traversable | None:
    """The Swagger UI dist folder of the installed ``swagger-ui-bundle-v2``, or None."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    folder: Traversable = swagger_ui_path
    return folder if folder.joinpath("swagger-ui-bundle.js").is_file() else None


def _root(package: str) -> Traversable | None:
    if package == "swagger_ui_bundle":
        return _swagger_ui_dir()
    return resources.files(package)


@functools.cache
def _load(name: str) -> Asset | None:
    package, path, media_type = _FILES[name]
    root = _root(package)
    if root is None:
        return None
    body = root.joinpath(path).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, media_type, etag)


def asset(name: str) -> Asset | None:
    """The file served as ``/docs/assets/<name>``, or None (not one of the page's files)."""
    if name not in _FILES:
        return None
    return _load(name)


def interactive() -> bool:
    """Whether the Swagger UI files are installed (else ``/docs`` is the plain list)."""
    return _swagger_ui_dir() is not None


def render_docs(spec: dict[str, Any]) -> str:
    """The ``/docs`` page for an OpenAPI document: Swagger UI, with the plain list as its fallback."""
    info = spec.get("info", {})
    title = html.escape(str(info.get("title", "API")))
    version = html.escape(str(info.get("version", "")))
    assets = ASSET_PREFIX.lstrip("/")  # relative to /docs: works under a path prefix too
    live = interactive()
    head = [
        "<!doctype html>",
        "<html lang=en>",
        "<head>",
        "<meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{title} {version}</title>",
    ]
    if live:
        head.append(f"<link rel=stylesheet href='{assets}swagger-ui.css'>")
        head.append(f"<link rel=icon type=image/png href='{assets}favicon-32x32.png'>")
    head.append(f"<link rel=stylesheet href='{assets}keyswap-docs.css'>")
    head.append("</head>")
    plain = _plain_list(spec, title, version)
    if not live:
        return "\n".join([*head, "<body>", plain, "</body>", "</html>"]) + "\n"
    body = [
        "<body>",
        "<div id=swagger-ui></div>",
        f"<noscript>{plain}</noscript>",
        f"<script src='{assets}swagger-ui-bundle.js'></script>",
        f"<script src='{assets}keyswap-docs.js'></script>",
        "</body>",
        "</html>",
    ]
    return "\n".join([*head, *body]) + "\n"


def _plain_list(spec: dict[str, Any], title: str, version: str) -> str:
    """The operations as plain HTML (for a browser without JavaScript)."""
    parts = [
        "<div class=ks-plain>",
        f"<h1>{title} <small>{version}</small></h1>",
        "<p>Authenticate with <code>Authorization: Bearer ksadm_...</code>. Errors are "
        "<code>application/problem+json</code>. The machine-readable document: "
        "<a href='openapi.json'>/openapi.json</a>.</p>",
    ]
    by_tag: dict[str, list[str]] = {}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            verb = method.upper()
            scopes = [s for req in op.get("security", []) for v in req.values() for s in v]
            statuses = ", ".join(sorted(op.get("responses", {})))
            entry = (
                f"<div class='ks-op ks-{html.escape(verb)}'>"
                f"<span class=ks-verb>{html.escape(verb)}</span> <code>{html.escape(path)}</code>"
                f" &mdash; {html.escape(str(op.get('summary', '')))}"
                f"<br><small>{html.escape(str(op.get('description', '')).strip())}</small>"
                f"<br><small>scope: {html.escape(', '.join(scopes) or 'none')}; "
                f"responses: {html.escape(statuses)}</small></div>"
            )
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(str(tag), []).append(entry)
    for tag, entries in by_tag.items():
        parts.append(f"<h2>{html.escape(tag)}</h2>")
        parts.extend(entries)
    parts.append("</div>")
    return "\n".join(parts)
