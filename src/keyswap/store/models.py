"""Records the store returns, and validation of what management input may put into it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from keyswap.errors import InvalidInput

__all__ = [
    "LEAK_POLICIES",
    "MAX_METADATA_BYTES",
    "MAX_QUOTA",
    "MAX_RATE_REQUESTS",
    "MAX_RATE_WINDOW",
    "MAX_SCOPES",
    "MAX_SCOPE_LENGTH",
    "QUOTA_PERIODS",
    "SIGNING_KEY_STATES",
    "UNLIMITED",
    "AdminTokenRecord",
    "ApiKeyRecord",
    "AuditRecord",
    "Consumer",
    "KeyLeak",
    "MemberRecord",
    "PortalLinkRecord",
    "PortalSessionRecord",
    "SigningKeyRecord",
    "effective_scopes",
    "format_scopes",
    "parse_metadata",
    "parse_scopes",
    "serialize_metadata",
    "validate_consumer_name",
    "validate_credits",
    "validate_email",
    "validate_label",
    "validate_leak_policy",
    "validate_max_connections",
    "validate_member",
    "validate_metadata",
    "validate_quota",
    "validate_rate_limit",
    "validate_scopes",
    "validate_subject",
]

#: Largest consumer metadata, as compact UTF-8 JSON.
MAX_METADATA_BYTES = 1024

#: Lifecycle of a signing key: published first (``next``), then signing (``active``), then only
#: published until every token it signed has expired (``retired``).
SIGNING_KEY_STATES = ("next", "active", "retired")

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: A consumer's stored rate limit that exempts it from the gateway's default.
UNLIMITED = "unlimited"
#: Bounds of a rate limit: requests per window, and the window in whole seconds (one day).
MAX_RATE_REQUESTS = 1_000_000_000
MAX_RATE_WINDOW = 86_400
_RATE = re.compile(r"([1-9][0-9]{0,9})/([1-9][0-9]{0,5})s", re.ASCII)

#: Bounds of a scope list: characters per scope, and scopes per consumer or key.
MAX_SCOPE_LENGTH = 64
MAX_SCOPES = 32
# An RFC 6749 §3.3 scope-token (printable ASCII but space, '"' and '\\') without ',' (the CLI's
# separator), so the stored, space-separated form and the ``scope`` claim parse back unchanged.
_SCOPE = re.compile(r"[\x21\x23-\x2b\x2d-\x5b\x5d-\x7e]+", re.ASCII)


@dataclass(frozen=True, slots=True)
class Consumer:
    """An API consumer: a unique name, a small JSON metadata object, a creation time, its own rate
    limit (``None``: the gateway's default; ``"<requests>/<seconds>s"``; or ``"unlimited"``), the
    scopes its keys may be granted (empty: none) and its own cap on requests in flight to the upstream
    (``None``: the gateway's default)."""

    id: int
    name: str
    metadata: dict[str, Any]
    created_at: float
    rate_limit: str | None = None
    scopes: tuple[str, ...] = ()
    max_connections: int | None = None
    #: What happens when one of its keys is found in public (``None``: the deployment's policy).
    leak_policy: str | None = None
    #: Request quota per period: ``"<n>/day"`` or ``"<n>/month"`` (``None``: none).
    quota: str | None = None
    #: Credit balance granted at :attr:`credits_set_at` (``None``: no credits).
    credits: int | None = None
    #: What the balance is refilled to each period: ``"<n>/day"``/``"<n>/month"`` (``None``: never).
    credits_refill: str | None = None
    #: When the balance was last set (epoch seconds; it names the grant the gateway counts against).
    credits_set_at: float | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What the store keeps about an API key: never the key itself, only a public id and a hint."""

    id: str
    consumer_id: int
    consumer_name: str
    hint: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    replaced_by: str | None = None
    #: The key's own scopes; ``None``: it has its consumer's.
    scopes: tuple[str, ...] | None = None
    #: Its consumer's scopes now (what :attr:`effective_scopes` narrows the key's own to).
    consumer_scopes: tuple[str, ...] = ()
    #: A name its owner gave it (``None``: none).
    label: str | None = None

    @property
    def effective_scopes(self) -> tuple[str, ...]:
        """What tokens minted for this key carry: see :func:`effective_scopes`."""
        return effective_scopes(self.scopes, self.consumer_scopes)

    def usable_at(self, now: float) -> bool:
        """True if the key is neither revoked nor expired at ``now`` (epoch seconds)."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def status_at(self, now: float) -> str:
        """``"revoked"``, ``"expired"``, ``"rolled"`` (usable until its grace expiry) or ``"active"``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if self.replaced_by is not None:
            return "rolled"
        return "active"


#: How a member is named: an e-mail address (lower case) or an OIDC subject.
MEMBER_KINDS = ("email", "subject")
_EMAIL = re.compile(r"[^\s@<>()\[\]\\,;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_SUBJECT = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A person who may manage a consumer in the portal: ``kind`` ``email`` or ``subject`` (an OIDC
    ``sub``) and its ``value``."""

    id: int
    consumer_name: str
    kind: str
    value: str
    created_at: float


@dataclass(frozen=True, slots=True)
class PortalLinkRecord:
    """A single-use sign-in link of the portal (never its token: only a digest is stored)."""

    id: str
    consumer_name: str
    email: str
    created_at: float
    expires_at: float
    used_at: float | None


@dataclass(frozen=True, slots=True)
class PortalSessionRecord:
    """A signed-in portal session: who (``identity_kind`` ``email`` or ``subject``, ``identity``,
    and an e-mail address if known), when it began, was last used, and when it ends at the latest."""

    identity_kind: str
    identity: str
    email: str | None
    created_at: float
    last_seen_at: float
    expires_at: float


def validate_label(label: str | None) -> str | None:
    """Return a key's label without surrounding spaces (``None`` for none or an empty one) if it is at
    most 64 printable characters.

    Raises:
        InvalidInput: a longer label or one with control characters.
    """
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidInput("a key's name is text")
    text = label.strip()
    if len(text) > 64 or not text.isprintable():
        raise InvalidInput("a key's name is at most 64 printable characters")
    return text or None


def validate_email(address: str) -> str:
    """Return an e-mail address in lower case if it looks like ``local@domain`` (at most 254
    characters, no spaces or angle brackets).

    Raises:
        InvalidInput: anything else.
    """
    if (
        not isinstance(address, str)
        or len(address) > 254
        or _EMAIL.fullmatch(address) is None
        or not address.isascii()
    ):
        raise InvalidInput("an e-mail address is local@domain (ASCII, at most 254 characters)")
    return address.lower()


def validate_subject(subject: str) -> str:
    """Return an OIDC subject if it is 1-255 printable ASCII characters without spaces.

    Raises:
        InvalidInput: anything else.
    """
    if not isinstance(subject, str) or _SUBJECT.fullmatch(subject) is None:
        raise InvalidInput("an OIDC subject is 1-255 printable ASCII characters without spaces")
    return subject


def validate_member(kind: str, value: str) -> tuple[str, str]:
    """Return ``(kind, value)`` of a member, the value normalised (e-mail addresses in lower case).

    Raises:
        InvalidInput: an unknown kind or a bad value.
    """
    if kind == "email":
        return kind, validate_email(value)
    if kind == "subject":
        return kind, validate_subject(value)
    raise InvalidInput("a member is an e-mail address or an OIDC subject")


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A stored signing key: public JWK in clear, private key as an AES-GCM encrypted PKCS8 blob."""

    kid: str
    alg: str
    state: str
    public_jwk: dict[str, Any]
    private_blob: bytes
    created_at: float
    activated_at: float | None
    retired_at: float | None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit event: who (``actor_kind``: ``token``, ``oidc``, ``cli`` or ``system``, and
    ``actor_name``) did what (``action``, e.g. ``consumer.create``) to what (``target``), when (epoch
    seconds), from where (``request_id``, ``client``), and the changed fields (never a secret).
    ``id`` is 0 until stored; ids grow with time (a cursor for listing newest first)."""

    at: float
    actor_kind: str
    actor_name: str
    action: str
    target: str
    changes: dict[str, Any]
    request_id: str | None = None
    client: str | None = None
    id: int = 0


@dataclass(frozen=True, slots=True)
class AdminTokenRecord:
    """What the store keeps about an admin token: never the token, only an id, a hint and its scopes."""

    id: str
    name: str
    hint: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def usable_at(self, now: float) -> bool:
        """True if the token is neither revoked nor expired at ``now`` (epoch seconds)."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def status_at(self, now: float) -> str:
        """``"revoked"``, ``"expired"`` or ``"active"``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


def validate_consumer_name(name: str) -> str:
    """Return ``name`` if it is 1-64 characters of ``[A-Za-z0-9._-]``.

    Raises:
        InvalidInput: the name is empty, too long or has other characters.
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidInput(
            "consumer name must be 1-64 characters of letters, digits, '.', '_' or '-'"
        )
    return name


def validate_rate_limit(value: str | None) -> str | None:
    """Return a stored rate limit if it is ``None``, ``"unlimited"`` or canonical ``"<n>/<seconds>s"``
    (1 to 10^9 requests per 1 to 86400 whole seconds).

    Raises:
        InvalidInput: anything else.
    """
    if value is None or value == UNLIMITED:
        return value
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if (
        match is None
        or int(match.group(1)) > MAX_RATE_REQUESTS
        or int(match.group(2)) > MAX_RATE_WINDOW
    ):
        raise InvalidInput(
            "a rate limit is <requests>/<seconds>s (1-1000000000 requests per 1-86400 s) "
            "or 'unlimited'"
        )
    return value


#: Quota periods (calendar, UTC) and the bound of a quota or credit amount.
QUOTA_PERIODS = ("day", "month")
MAX_QUOTA = 1_000_000_000_000
_QUOTA = re.compile(r"([0-9]{1,13})/(day|month)", re.ASCII)


def validate_quota(value: str | None) -> str | None:
    """Return a stored quota (or credit refill) if it is ``None`` or canonical ``"<n>/day"`` or
    ``"<n>/month"`` (1 to 10^12, no leading zero).

    Raises:
        InvalidInput: anything else.
    """
    if value is None:
        return None
    match = _QUOTA.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(1).startswith("0") or not 1 <= int(match.group(1)) <= MAX_QUOTA:
        raise InvalidInput(
            "a quota is <requests>/day or <requests>/month (1-1000000000000 requests), or 'off'"
        )
    return value


def validate_credits(value: int | None) -> int | None:
    """Return a credit balance if it is ``None`` or a whole number 0-10^12.

    Raises:
        InvalidInput: anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA:
        raise InvalidInput("credits are a whole number 0-1000000000000, or 'off'")
    return value


#: Most requests in flight one consumer may be allowed (``keyswap consumers set-limit --connections``).
MAX_CONSUMER_CONNECTIONS = 10_000


#: What may happen to a key found in public: revoke it, roll it (revoke + a new key delivered by
#: webhook), or only tell the consumer.
LEAK_POLICIES = ("revoke", "roll", "notify")


def validate_leak_policy(value: str | None) -> str | None:
    """Return a leak policy if it is ``None`` (the deployment's) or one of :data:`LEAK_POLICIES`.

    Raises:
        InvalidInput: anything else.
    """
    if value is None:
        return None
    if not isinstance(value, str) or value not in LEAK_POLICIES:
        raise InvalidInput("a leak policy is one of revoke, roll, notify or 'default'")
    return value


@dataclass(frozen=True, slots=True)
class KeyLeak:
    """A report that a key was found in public: where (``url``), by whom (``source``), when, what the
    policy did (``revoke``, ``roll``, ``notify``, or ``none`` when the key was no longer live) and, for
    a roll, the replacement key's id."""

    id: int
    key_id: str
    consumer_id: int
    reported_at: float
    source: str
    url: str
    action: str
    new_key_id: str | None = None


def validate_max_connections(value: int | None) -> int | None:
    """Return a consumer's connection cap if it is ``None`` or a whole number 1-10000.

    Raises:
        InvalidInput: anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("a connection cap is a whole number 1-10000 or 'default'")
    if not 1 <= value <= MAX_CONSUMER_CONNECTIONS:
        raise InvalidInput("a connection cap is a whole number 1-10000 or 'default'")
    return value


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Return ``scopes`` without duplicates (first occurrence kept) if every one is a valid scope:
    1-64 printable ASCII characters other than space, ``"``, ``\\`` and ``,``; at most 32 of them.

    Raises:
        InvalidInput: a scope is not such a string, or there are too many.
    """
    if isinstance(scopes, str):
        raise InvalidInput("scopes must be a list of strings")
    result: list[str] = []
    for scope in scopes:
        if (
            not isinstance(scope, str)
            or len(scope) > MAX_SCOPE_LENGTH
            or _SCOPE.fullmatch(scope) is None
        ):
            shown = repr(scope) if isinstance(scope, str) else type(scope).__name__
            raise InvalidInput(
                f"invalid scope {shown[: MAX_SCOPE_LENGTH + 8]}: a scope is 1-{MAX_SCOPE_LENGTH} "
                "printable ASCII characters other than space, '\"', '\\' and ','"
            )
        if scope not in result:
            result.append(scope)
    if len(result) > MAX_SCOPES:
        raise InvalidInput(f"{len(result)} scopes given; the limit is {MAX_SCOPES}")
    return tuple(result)


def parse_scopes(text: str) -> tuple[str, ...]:
    """Scopes from CLI text: separated by commas and/or spaces (``"orders:read,orders:write"``);
    an empty (or blank) text gives no scopes.

    Raises:
        InvalidInput: see :func:`validate_scopes`.
    """
    if len(text) > 4 * MAX_SCOPES * (MAX_SCOPE_LENGTH + 1):
        raise InvalidInput(f"the scope list is too long (at most {MAX_SCOPES} scopes)")
    return validate_scopes(part for part in re.split(r"[,\s]+", text) if part)


def format_scopes(scopes: Iterable[str]) -> str:
    """The stored and ``scope``-claim form of ``scopes``: space-separated (RFC 8693 / RFC 9068)."""
    return " ".join(scopes)


def effective_scopes(
    own: tuple[str, ...] | None, consumer_scopes: tuple[str, ...]
) -> tuple[str, ...]:
    """A key's scopes now: its own scopes that its consumer still has (in the key's order), or the
    consumer's scopes when the key has none of its own (``own`` is ``None``).

    Narrowing a consumer's scopes thus narrows every key at once, and widening them again gives the key
    back no more than it was created with.
    """
    if own is None:
        return consumer_scopes
    granted = frozenset(consumer_scopes)
    return tuple(scope for scope in own if scope in granted)


def serialize_metadata(metadata: dict[str, Any]) -> str:
    """Compact JSON text of ``metadata`` (the form whose size is capped)."""
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def validate_metadata(metadata: Any) -> dict[str, Any]:
    """Return ``metadata`` if it is a JSON object of at most 1 KiB (compact UTF-8 JSON).

    Raises:
        InvalidInput: not an object, not JSON-serialisable (NaN, non-string keys, other types, lone
            surrogates), or too big.
    """
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be a JSON object")
    _check_json_value(metadata)
    try:
        size = len(serialize_metadata(metadata).encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): not storable as UTF-8
        raise InvalidInput("metadata must be valid Unicode text (no lone surrogates)") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(
            f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES} bytes"
        )
    return metadata


def parse_metadata(text: str) -> dict[str, Any]:
    """Parse JSON text into validated consumer metadata.

    Raises:
        InvalidInput: the text is not valid JSON, or not an acceptable metadata object.
    """
    if len(text.encode("utf-8", "surrogatepass")) > 4 * MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is too big; the limit is {MAX_METADATA_BYTES} bytes as JSON")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidInput(f"metadata is not valid JSON: {_json_error(exc)}") from None
    return validate_metadata(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _json_error(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)


def _check_json_value(value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise InvalidInput("metadata is nested too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput("metadata keys must be strings")
            _check_json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput("metadata numbers must be finite")
    elif value is not None and not isinstance(value, str | int | bool):
        raise InvalidInput(f"metadata cannot hold a {type(value).__name__}")
