"""``/docs``: a self-contained HTML page listing the operations of ``/openapi.json`` (no CDN, no
script from elsewhere: it works with no internet access)."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["render_docs"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.op{margin:.8em 0;padding:.5em .8em;border-left:4px solid #888;background:#f7f7f7}
.m{font-weight:bold;font-family:monospace;display:inline-block;min-width:5em}
.GET{border-color:#2a7}.POST{border-color:#27c}.PATCH{border-color:#c80}.DELETE{border-color:#c33}
code{background:#eee;padding:0 .2em}small{color:#555}
"""


def render_docs(spec: dict[str, Any]) -> str:
    """The HTML page for an OpenAPI document."""
    info = spec.get("info", {})
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>{html.escape(str(info.get('title', 'API')))}</title><style>{_STYLE}</style>",
        f"<h1>{html.escape(str(info.get('title', 'API')))} "
        f"<small>{html.escape(str(info.get('version', '')))}</small></h1>",
        "<p>Authenticate with <code>Authorization: Bearer ksadm_...</code>. Errors are "
        "<code>application/problem+json</code>. The machine-readable document: "
        "<a href='/openapi.json'>/openapi.json</a>.</p>",
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
                f"<div class='op {verb}'><span class=m>{verb}</span> <code>{html.escape(path)}</code>"
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
    return "\n".join(parts) + "\n"
