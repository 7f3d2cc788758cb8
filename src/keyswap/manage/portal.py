"""Sign-in links of the developer portal: single use, short-lived, stored only as a SHA-256 digest.

:func:`create_link` makes one for a consumer and an e-mail address (which becomes a member of the
consumer if it is not one); :func:`redeem_link` uses it up and says who signed in. No mail server is
involved: whoever makes the link hands it to the person.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote

from keyswap.errors import InvalidInput
from keyswap.manage.audit import recording
from keyswap.manage.context import Context
from keyswap.store.models import PortalLinkRecord, validate_email

__all__ = [
    "DEFAULT_LINK_LIFETIME",
    "LINK_PATH",
    "LINK_PREFIX",
    "MAX_LINK_LIFETIME",
    "CreatedLink",
    "create_link",
    "link_digest",
    "redeem_link",
]

#: How long a sign-in link works by default (15 minutes), and at most (7 days).
DEFAULT_LINK_LIFETIME = 15 * 60.0
MAX_LINK_LIFETIME = 7 * 86400.0
#: Every link token starts with this.
LINK_PREFIX = "kspl_"
#: Where the portal takes link tokens (``?token=...``).
LINK_PATH = "/portal/signin/link"


@dataclass(frozen=True, slots=True)
class CreatedLink:
    """A new link's record and its token (shown once; ``repr`` hides it)."""

    record: PortalLinkRecord
    token: str = field(repr=False)

    def path(self) -> str:
        """The link's path and query (append it to the portal's public URL)."""
        return f"{LINK_PATH}?token={quote(self.token, safe='')}"

    def url(self, public_url: str) -> str:
        """The whole link, given the portal's public URL (``https://api.example.com``)."""
        return public_url.rstrip("/") + self.path()


def link_digest(token: str) -> bytes:
    """What the store keeps of a link token: its SHA-256 digest (the token has 256 random bits)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def create_link(
    ctx: Context, consumer: str, email: str, *, expires_in: float = DEFAULT_LINK_LIFETIME
) -> CreatedLink:
    """A single-use sign-in link for ``email`` to the portal, valid ``expires_in`` seconds; the
    address becomes a member of ``consumer`` if it is not one. Audited as ``portal.link`` (never the
    token).

    Raises:
        InvalidInput: a bad address, or a lifetime outside 1 s - 7 days.
        NotFound: no such consumer.
    """
    address = validate_email(email)
    if not (math.isfinite(expires_in) and 1 <= expires_in <= MAX_LINK_LIFETIME):
        raise InvalidInput("a sign-in link lasts 1 second to 7 days")
    now = ctx.now()
    token = LINK_PREFIX + secrets.token_urlsafe(32)
    link_id = "lnk_" + secrets.token_hex(12)
    changes = {"email": address, "expires_at": now + expires_in}
    with recording(ctx, "portal.link", f"consumer:{consumer}", changes):
        record = ctx.store.insert_portal_link(
            link_id=link_id,
            digest=link_digest(token),
            consumer_name=consumer,
            email=address,
            created_at=now,
            expires_at=now + expires_in,
        )
    return CreatedLink(record, token)


def redeem_link(ctx: Context, token: str) -> PortalLinkRecord | None:
    """Use up a sign-in link: its record if the token names an unused, unexpired link, else ``None``
    (unknown, expired and used links are told apart by nobody)."""
    if not isinstance(token, str) or not token.startswith(LINK_PREFIX) or len(token) > 128:
        return None
    return ctx.store.use_portal_link(link_digest(token), now=ctx.now())
