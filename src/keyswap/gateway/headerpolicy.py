"""Which inbound request headers the gateway forwards: fixed rules, identity families, operator lists.

Three layers decide whether a request header goes upstream (names compared lower-case):

1. **Fixed rules** (:data:`FIXED_NAMES`, :data:`FIXED_PREFIXES`, any name with ``_``): hop-by-hop and
   framing names, ``Authorization``, ``Host``, ``Expect``, the forwarding headers the gateway sets
   itself, keyswap's and common gateways' identity namespaces, method overrides. Never forwarded,
   whatever the options.
2. **Identity families** (:data:`IDENTITY_NAMES`, :data:`IDENTITY_PREFIXES`): client-IP claims
   (``X-Client-IP``, ``True-Client-IP``, ``CF-*``, ``Fastly-*``...), original-request claims
   (``X-Original-*``, ``X-Host``, ``X-Envoy-*``), user/group/email identity (``X-Remote-*``,
   ``X-User-*``, ``X-Webauth-*``, ``X-Email``...), TLS client certificates (``X-SSL-Client-*``,
   ``X-Client-Cert*``) and cloud auth front ends (``X-Amzn-Oidc-*``, ``X-Goog-Authenticated-*``,
   ``X-Goog-IAP-*``, ``X-MS-Client-Principal*``, ``X-MS-Token-*``). An origin behind an auth proxy may
   trust these; only the minted JWT speaks for the consumer, so they are dropped by default.
3. **Operator lists**: ``drop`` (``--drop-header``) adds names or shell-style patterns
   (``x-internal-*``) to drop; ``only`` (``--forward-headers-only``) switches to an allow-list: only the
   names (or patterns) listed are forwarded, plus the headers the gateway sets itself. A name the
   allow-list lists explicitly wins over the identity families (layer 2), never over the fixed rules
   (layer 1) nor over ``drop``.

The decision is precomputed once (:class:`HeaderPolicy`): a frozenset, a prefix tuple and at most one
compiled pattern per list, so the per-header cost on the hot path stays a few C-level checks.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from keyswap.errors import ConfigError

__all__ = [
    "DEFAULT_POLICY",
    "FIXED_NAMES",
    "FIXED_PREFIXES",
    "HOP_BY_HOP",
    "IDENTITY_NAMES",
    "IDENTITY_PREFIXES",
    "HeaderPolicy",
    "parse_header_list",
]

#: Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ``Proxy-Connection``), never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Never forwarded, whatever the options (layer 1).
FIXED_NAMES = HOP_BY_HOP | {
    b"authorization",
    b"host",
    b"expect",
    b"content-length",
    b"forwarded",
    b"x-real-ip",
    b"x-original-url",
    b"x-rewrite-url",
    b"x-user",
    b"x-remote-user",
    b"remote-user",
    b"x-api-key",
    # A Transaction Token is the gateway's to mint (--token-format txn-token), never the client's.
    b"txn-token",
    # Method overrides: the origin must run the method the gateway forwarded and logged.
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
}
#: Name prefixes never forwarded (layer 1).
FIXED_PREFIXES = (
    b"x-forwarded-",
    b"x-keyswap-",
    b"x-consumer-",
    b"x-authenticated-",
    b"x-auth-request-",
)
#: Identity-family names dropped by default (layer 2).
IDENTITY_NAMES = frozenset(
    {
        # client IP claims
        b"x-client-ip",
        b"true-client-ip",
        b"x-true-client-ip",
        b"client-ip",
        b"x-cluster-client-ip",
        b"x-forwarded",
        b"x-originating-ip",
        b"x-proxyuser-ip",
        # original-request claims
        b"x-host",
        # user / group / email identity
        b"x-auth-user",
        b"x-auth-email",
        b"x-auth-groups",
        b"x-userinfo",
        b"x-userid",
        b"x-username",
        b"x-email",
        b"x-groups",
        b"x-roles",
        b"x-credential-identifier",
        b"x-anonymous-consumer",
        # TLS client certificate claims
        b"x-client-verify",
        b"x-client-dn",
        b"x-arr-clientcert",
    }
)
#: Identity-family prefixes dropped by default (layer 2).
IDENTITY_PREFIXES = (
    b"cf-",
    b"fastly-",
    b"x-azure-",
    b"x-appengine-",
    b"x-original-",
    b"x-envoy-",
    b"x-remote-",
    b"x-user-",
    b"x-webauth-",
    b"x-ssl-client-",
    b"x-client-cert",
    b"x-amzn-oidc-",
    b"x-goog-authenticated-",
    b"x-goog-iap-",
    b"x-ms-client-principal",
    b"x-ms-token-",
)

_ENTRY = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z\[\]?]+")
_GLOB = frozenset("*?[")


def parse_header_list(values: Iterable[str]) -> tuple[str, ...]:
    """Header names or shell-style patterns from options (each may hold several, comma-separated).

    Returns them lower-case, stripped, without duplicates, in order.

    Raises:
        ConfigError: an entry is not a header name (an RFC 9110 token) nor a pattern over one.
    """
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            entry = part.strip().lower()
            if not entry:
                continue
            if not entry.isascii() or _ENTRY.fullmatch(entry) is None:
                raise ConfigError(f"not a header name or pattern: {part.strip()!r}")
            if entry not in out:
                out.append(entry)
    return tuple(out)


def _split(
    entries: Iterable[str],
) -> tuple[frozenset[bytes], tuple[bytes, ...], re.Pattern[bytes] | None]:
    """Exact names, plain ``prefix*`` prefixes, and one compiled pattern for the other globs."""
    names: set[bytes] = set()
    prefixes: list[bytes] = []
    globs: list[str] = []
    for entry in entries:
        if not _GLOB & set(entry):
            names.add(entry.encode("ascii"))
        elif entry.endswith("*") and not _GLOB & set(entry[:-1]):
            prefixes.append(entry[:-1].encode("ascii"))
        else:
            globs.append(fnmatch.translate(entry))
    pattern = re.compile("|".join(globs).encode("ascii")) if globs else None
    return frozenset(names), tuple(prefixes), pattern


class HeaderPolicy:
    """The precomputed forwarding decision for request header names (see the module docstring).

    Args:
        drop: extra names or shell-style patterns to drop (e.g. from :func:`parse_header_list`;
            compared lower-case).
        only: when given, the allow-list: only these names or patterns are forwarded.

    Attributes:
        names: exact names always dropped (fixed rules, operator's drops; identity families too
            without an allow-list).
        prefixes: name prefixes always dropped, likewise.
        pattern: the operator's other drop patterns, compiled (``None``: none).
        strict: an allow-list is in force: a name that passes the first check still needs
            :meth:`outside_allow` to be false.
        verdicts: :meth:`dropped` of each name seen so far (the hot path reads it first, and calls
            :meth:`verdict` for a name it does not hold).

    Raises:
        ConfigError: an entry is not a header name or pattern.
    """

    __slots__ = (
        "_allow",
        "_allow_pattern",
        "_allow_prefixes",
        "drop",
        "names",
        "only",
        "pattern",
        "prefixes",
        "strict",
        "verdicts",
    )

    def __init__(self, drop: Iterable[str] = (), only: Iterable[str] | None = None) -> None:
        self.drop = parse_header_list(drop)
        self.only = None if only is None else parse_header_list(only)
        names, prefixes, pattern = _split(self.drop)
        self.pattern = pattern
        self.strict = self.only is not None
        self.verdicts: dict[bytes, bool] = {}
        if self.only is None:
            self.names = FIXED_NAMES | IDENTITY_NAMES | names
            self.prefixes = FIXED_PREFIXES + IDENTITY_PREFIXES + prefixes
            self._allow: frozenset[bytes] = frozenset()
            self._allow_prefixes: tuple[bytes, ...] = ()
            self._allow_pattern: re.Pattern[bytes] | None = None
        else:
            self.names = FIXED_NAMES | names
            self.prefixes = FIXED_PREFIXES + prefixes
            self._allow, self._allow_prefixes, self._allow_pattern = _split(self.only)

    def outside_allow(self, name: bytes) -> bool:
        """With an allow-list: ``name`` is not on it, or is an identity name it does not list exactly."""
        if name in self._allow:
            return False
        if name in IDENTITY_NAMES or name.startswith(IDENTITY_PREFIXES):
            return True
        if self._allow_prefixes and name.startswith(self._allow_prefixes):
            return False
        pattern = self._allow_pattern
        return pattern is None or pattern.match(name) is None

    def dropped(self, name: bytes) -> bool:
        """True when the lower-case header ``name`` must not be forwarded."""
        if name in self.names or name.startswith(self.prefixes) or _UNDERSCORE in name:
            return True
        if self.pattern is not None and self.pattern.match(name) is not None:
            return True
        return self.strict and self.outside_allow(name)

    def verdict(self, name: bytes) -> bool:
        """:meth:`dropped`, remembered per name (the names a gateway sees are a small set: one dict
        lookup instead of the set, the prefixes, the pattern; at most :data:`VERDICTS_KEPT` names
        of at most :data:`VERDICT_NAME_LENGTH` bytes are remembered, so made-up names cannot grow
        it)."""
        known = self.verdicts.get(name)
        if known is not None:
            return known
        dropped = self.dropped(name)
        if len(self.verdicts) < VERDICTS_KEPT and len(name) <= VERDICT_NAME_LENGTH:
            self.verdicts[name] = dropped
        return dropped

    def __repr__(self) -> str:
        return f"HeaderPolicy(drop={self.drop!r}, only={self.only!r})"


# ``int in bytes`` is a memchr; ``b"_" in name`` would first try b"_" as an int (a dropped TypeError).
_UNDERSCORE = ord("_")
#: Most header names whose :meth:`HeaderPolicy.verdict` is remembered, and their longest.
VERDICTS_KEPT = 4096
VERDICT_NAME_LENGTH = 64

#: The policy without operator lists.
DEFAULT_POLICY = HeaderPolicy()
