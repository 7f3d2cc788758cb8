"""The management service layer: the one place consumers, API keys, signing keys and admin tokens change.

The CLI (``keyswap consumers|keys|signing-keys|admin-tokens|tokens``), the coming admin HTTP API and the
portal are thin shells over it. Each operation here owns its rules: validation and defaults, what the
change notifies (the store's revision bump, PostgreSQL NOTIFY, the Redis publisher) and what it audits.

Every change takes a :class:`~keyswap.manage.context.Context` naming the store and the
:class:`~keyswap.manage.actor.Actor` (an admin token, an OIDC subject, ``cli`` with the OS user, or
``system``), and writes one audit event (:mod:`keyswap.manage.audit`) in the change's own transaction:
the change and its event commit together or not at all. Errors come from :mod:`keyswap.errors`
(``InvalidInput`` 400, ``NotFound`` 404, ``AlreadyExists``/``Conflict`` 409, ``InsufficientScope`` 403).

Modules: :mod:`.actor`, :mod:`.context`, :mod:`.audit`, :mod:`.consumers`, :mod:`.keys`, :mod:`.signing`,
:mod:`.tokens` (admin tokens), :mod:`.scopes` (management scopes), :mod:`.webhooks` (consumers'
webhooks, and :func:`~keyswap.manage.webhooks.enqueue`, which records an event for one).
"""

from __future__ import annotations

from keyswap.manage.actor import Actor
from keyswap.manage.context import Context

__all__ = ["Actor", "Context"]
