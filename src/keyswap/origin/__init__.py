"""``keyswap origin``: a runnable protected API that answers every request with its verified claims.

:func:`create_app` builds the ASGI app (reusable in-process, e.g. by the gateway demo); the click
command lives in :mod:`keyswap.origin.cli` and serves it with uvicorn, or with granian through the
factory in :mod:`keyswap.origin.server_granian`.
"""

from __future__ import annotations

from keyswap.origin.app import ManagedVerifier, create_app

__all__ = ["ManagedVerifier", "create_app"]
