"""Server-side sessions and CSRF tokens.

A session is a random 256-bit value in a cookie (``HttpOnly``, ``SameSite=Lax``, ``Secure`` behind
https, path ``/portal``); the database keeps only its SHA-256 digest, with who signed in and when. A new
value is drawn at every sign-in (rotation: a value planted before sign-in is worthless after it). A
session ends after the idle timeout without a request and after the absolute timeout in any case;
signing out deletes it.

CSRF: every form carries a token bound to the session (HMAC-SHA-256 of the session value under a key
derived from the server secret); before sign-in, forms are bound the same way to a random pre-session
cookie. Tokens are compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from keyswap.store.models import PortalSessionRecord
from keyswap.store.sql import Store

__all__ = [
    "PRE_COOKIE",
    "SESSION_COOKIE",
    "Session",
    "SessionStore",
    "csrf_token",
    "new_value",
    "session_digest",
]

#: Cookie names: the session, and the pre-session value forms are bound to before sign-in.
SESSION_COOKIE = "keyswap_portal"
PRE_COOKIE = "keyswap_portal_pre"


def new_value() -> str:
    """A fresh random cookie value (256 bits)."""
    return secrets.token_urlsafe(32)


def session_digest(value: str) -> bytes:
    """What the database keeps of a session value."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def csrf_token(key: bytes, value: str) -> str:
    """The CSRF token of forms in the session (or pre-session) with cookie ``value``."""
    mac = hmac.new(key, b"csrf:" + value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Session:
    """A live session: its cookie value and who is signed in."""

    value: str
    record: PortalSessionRecord

    @property
    def person(self) -> str:
        """Who is signed in, as the audit log names them: e-mail address, else OIDC subject."""
        return self.record.email or self.record.identity

    def identities(self) -> list[tuple[str, str]]:
        """The ``(kind, value)`` pairs membership is looked up by."""
        found = [(self.record.identity_kind, self.record.identity)]
        if self.record.email and self.record.identity_kind != "email":
            found.append(("email", self.record.email))
        return found


class SessionStore:
    """Sessions in the store's ``portal_sessions`` table, with idle and absolute expiry."""

    def __init__(self, store: Store, *, idle: float, absolute: float) -> None:
        self.store = store
        self.idle = idle
        self.absolute = absolute

    def start(self, kind: str, identity: str, email: str | None, *, now: float) -> Session:
        """A new session (a new value: sessions rotate at sign-in)."""
        value = new_value()
        record = PortalSessionRecord(kind, identity, email, now, now, now + self.absolute)
        self.store.create_portal_session(session_digest(value), record, prune_before=now)
        return Session(value, record)

    def find(self, value: str | None, *, now: float) -> Session | None:
        """The live session with this cookie value; ``None`` if unknown or expired (an expired one
        is deleted). A request refreshes the idle timer (at most once a minute)."""
        if not value or len(value) > 128:
            return None
        digest = session_digest(value)
        record = self.store.get_portal_session(digest)
        if record is None:
            return None
        if now >= record.expires_at or now - record.last_seen_at >= self.idle:
            self.store.delete_portal_session(digest)
            return None
        if now - record.last_seen_at >= 60:
            self.store.touch_portal_session(digest, now)
        return Session(value, record)

    def end(self, value: str) -> None:
        """Sign out: delete the session."""
        self.store.delete_portal_session(session_digest(value))
