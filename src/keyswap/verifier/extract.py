"""Bearer token extraction from ASGI request headers (RFC 6750 §2.1).

Rules:

- no ``Authorization`` header, or a header with another scheme (``Basic ...``): :class:`MissingToken`
  (the request carries no bearer credentials; a 401 without an ``error`` attribute);
- the scheme is matched case-insensitively (``Bearer``, ``bearer``, ``BEARER``) and must be followed
  by exactly one space and a ``b64token`` running to the end of the value;
- anything else is :class:`MalformedToken`: two ``Authorization`` headers, ``Bearer`` with no token,
  two spaces, leading or trailing whitespace or junk, characters outside ``b64token``, a value longer
  than the size cap (checked before any other work).

Header values are bytes; they are only ever decoded as latin-1 (which cannot fail) or ASCII after a
byte-level match, so no input can raise anything but the two errors above.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NoReturn

from keyswap.errors import MalformedToken, MissingToken

__all__ = ["DEFAULT_MAX_TOKEN_SIZE", "TXN_TOKEN_HEADER", "bearer_token", "txn_token"]

#: Tokens longer than this are rejected before they are looked at (matches the verifier's default).
DEFAULT_MAX_TOKEN_SIZE = 8192

_AUTHORIZATION = b"authorization"
#: The header a Transaction Token travels in (draft-ietf-oauth-transaction-tokens-10 §7.1).
TXN_TOKEN_HEADER = b"txn-token"
_PREFIX = b"bearer "
_PREFIX_LEN = len(_PREFIX)
# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token, b64token = 1*( ALPHA / DIGIT / "-" / "." /
# "_" / "~" / "+" / "/" ) *"="; keyswap allows exactly one SP.
_B64TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
_BLANKS = b" \t"
# RFC 9110 token characters, for telling "another scheme" apart from junk.
_SCHEME = re.compile(rb"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")


def bearer_token(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    max_size: int = DEFAULT_MAX_TOKEN_SIZE,
    check_characters: bool = True,
) -> str:
    """Return the bearer token from ASGI ``headers`` (a list of ``(name, value)`` byte pairs).

    Header names are compared case-insensitively (ASGI servers already send them lower-case).

    ``check_characters=False`` skips only the scan of the token for characters outside
    ``b64token`` (the rest is still checked; the result is still ASCII). It is for a caller whose
    verifier accepts a strict subset of ``b64token`` anyway (keyswap's own ``Verifier`` accepts
    only base64url and dots), and which calls again with the check on when verification fails, to
    report the precise reason. The scan is the costliest step of an extraction.

    Raises:
        MissingToken: no ``Authorization`` header, or one with a scheme other than ``Bearer``.
        MalformedToken: the header is present but unusable (duplicate, empty token, extra
            whitespace, characters outside ``b64token``, longer than ``max_size``).
    """
    value: bytes | None = None
    for name, raw in headers:
        if name == _AUTHORIZATION or (len(name) == 13 and name.lower() == _AUTHORIZATION):
            if value is not None:
                raise MalformedToken("more than one Authorization header")
            value = raw
    if value is None:
        raise MissingToken("no Authorization header")
    if len(value) > max_size + _PREFIX_LEN:
        raise MalformedToken(f"token longer than {max_size} bytes")
    if value[:_PREFIX_LEN].lower() == _PREFIX:
        token = value[_PREFIX_LEN:]
        if not check_characters:
            # Only what the caller's verifier cannot tell: present, ASCII (the decoding checks it,
            # a separate isascii() would scan the token twice), no surrounding blanks.
            if token and token[0] not in _BLANKS and token[-1] not in _BLANKS:
                try:
                    return token.decode("ascii")
                except UnicodeDecodeError:
                    pass
            return _classify(value)
        body = token.rstrip(b"=")
        # translate() deletes every allowed byte at C speed: anything left is outside b64token.
        if body and not body.translate(None, _B64TOKEN_CHARS):
            return token.decode("ascii")
    return _classify(value)


def _classify(value: bytes) -> NoReturn:
    """Explain why ``value`` is not ``Bearer <b64token>``; always raises."""
    scheme = _SCHEME.match(value)
    if scheme is None:
        raise MalformedToken("Authorization header does not start with an auth scheme")
    if scheme.group().lower() != b"bearer":
        raise MissingToken("Authorization header uses another scheme than Bearer")
    rest = value[scheme.end() :]
    if not rest.strip(b" \t"):
        raise MalformedToken("Bearer scheme without a token")
    if not rest.startswith(b" "):
        raise MalformedToken("Bearer scheme not followed by a single space")
    if rest.startswith(b"  ") or rest[1:2] == b"\t":
        raise MalformedToken("more than one space after Bearer")
    if rest.rstrip(b" \t") != rest:
        raise MalformedToken("trailing whitespace after the token")
    raise MalformedToken("token contains characters outside the b64token set")


def txn_token(
    headers: Iterable[tuple[bytes, bytes]], *, max_size: int = DEFAULT_MAX_TOKEN_SIZE
) -> str:
    """Return the JWT of the ``Txn-Token`` header (the whole value, no scheme).

    Raises:
        MissingToken: no ``Txn-Token`` header.
        MalformedToken: two of them, an empty or over-long value, characters outside base64url and
            dots.
    """
    value: bytes | None = None
    for name, raw in headers:
        if name.lower() == TXN_TOKEN_HEADER:
            if value is not None:
                raise MalformedToken("more than one Txn-Token header")
            value = raw
    if value is None:
        raise MissingToken("no Txn-Token header")
    if len(value) > max_size:
        raise MalformedToken(f"token longer than {max_size} bytes")
    if not value or value.translate(None, _B64TOKEN_CHARS):
        raise MalformedToken("Txn-Token is not a compact JWT")
    return value.decode("ascii")
