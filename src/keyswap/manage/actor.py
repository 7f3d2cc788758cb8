"""Who makes a change: the actor every audit event names."""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass

__all__ = ["ACTOR_KINDS", "Actor"]

#: ``token``: an admin token (by name); ``oidc``: a subject from the identity provider; ``cli``: the
#: command line (the OS user); ``system``: an automatic action (scheduled signing-key rotation);
#: ``secret-scanning``: a leak report from a secret scanning service (``secret-scanning:github``);
#: ``scan``: ``keyswap keys scan --apply`` (the OS user).
ACTOR_KINDS = ("token", "oidc", "cli", "system", "secret-scanning", "scan", "portal")
#: ``portal``: a person signed in to the developer portal (their e-mail address, else their OIDC subject).

_PRINTABLE = re.compile(r"[^\x21-\x7e]")


def _clean(value: str | None, limit: int) -> str | None:
    """Printable ASCII without spaces, at most ``limit`` characters (what goes into the audit log)."""
    if value is None:
        return None
    cleaned = _PRINTABLE.sub("?", value)[:limit]
    return cleaned or None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts (``kind``, one of :data:`ACTOR_KINDS`, and ``name``), with the request id and client
    address of the request that carried the change, where there is one.

    Build one with :meth:`cli`, :meth:`system`, :meth:`admin_token`, :meth:`oidc`,
    :meth:`secret_scanning`, :meth:`scan` or :meth:`portal`.
    """

    kind: str
    name: str
    request_id: str | None = None
    client: str | None = None

    @classmethod
    def cli(cls, user: str | None = None) -> Actor:
        """The command line, as the OS user running it (``getpass.getuser()``, else ``unknown``)."""
        if user is None:
            try:
                user = getpass.getuser()
            except Exception:  # no user name in the environment or the password database
                user = "unknown"
        return cls("cli", _clean(user, 255) or "unknown")

    @classmethod
    def system(cls, what: str = "") -> Actor:
        """An automatic action (``what``: which one, e.g. ``rotation``)."""
        return cls("system", _clean(what, 255) or "")

    @classmethod
    def admin_token(
        cls, name: str, *, request_id: str | None = None, client: str | None = None
    ) -> Actor:
        """A request authenticated with the admin token called ``name``."""
        return cls("token", _clean(name, 255) or "", _clean(request_id, 128), _clean(client, 64))

    @classmethod
    def oidc(
        cls, subject: str, *, request_id: str | None = None, client: str | None = None
    ) -> Actor:
        """A request authenticated with an OIDC token of ``subject``."""
        return cls("oidc", _clean(subject, 255) or "", _clean(request_id, 128), _clean(client, 64))

    @classmethod
    def secret_scanning(
        cls, service: str, *, request_id: str | None = None, client: str | None = None
    ) -> Actor:
        """A leak report from a secret scanning ``service`` (``github``), verified by its signature."""
        return cls(
            "secret-scanning",
            _clean(service, 255) or "",
            _clean(request_id, 128),
            _clean(client, 64),
        )

    @classmethod
    def scan(cls, user: str | None = None) -> Actor:
        """``keyswap keys scan --apply`` run by the OS user ``user`` (default: the current one)."""
        return cls("scan", cls.cli(user).name)

    @classmethod
    def portal(
        cls, person: str, *, request_id: str | None = None, client: str | None = None
    ) -> Actor:
        """A person signed in to the developer portal (``person``: e-mail address or OIDC subject)."""
        return cls("portal", _clean(person, 255) or "", _clean(request_id, 128), _clean(client, 64))

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind
