"""Compact JWS: strict base64url, strict JSON, header rules, signature verification per algorithm.

Everything here is pure (no I/O, no clock) and raises only :class:`~keyswap.errors.InvalidToken`
subclasses for bad input. The rules (see docs/verifier.md, "Token rules"):

- compact serialisation only (three dot-separated segments); a JWE (five segments) is refused, never
  decrypted; the size cap is checked before anything else is looked at;
- base64url is strict: alphabet ``[A-Za-z0-9_-]``, no padding, no whitespace, length mod 4 != 1 and the
  unused bits of the last character are zero (one canonical encoding per byte string);
- header and payload are UTF-8 JSON *objects* without duplicate member names, without ``NaN`` /
  ``Infinity``, without absurd nesting or integers;
- ``alg`` must be in the caller's allow-list (exact, case-sensitive); ``kid`` is a non-empty string;
  ``crit``, ``b64``, ``zip``, ``enc`` and the key-carrying parameters ``jwk``, ``jku``, ``x5u``, ``x5c``
  are refused (keys only ever come from the configured JWKS).
"""

from __future__ import annotations

import binascii
import json
import json.scanner
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from keyswap.errors import BadSignature, MalformedToken, UnsupportedAlgorithm

if TYPE_CHECKING:
    from keyswap.verifier.jwk import VerificationKey

__all__ = [
    "DEFAULT_MAX_TOKEN_SIZE",
    "FORBIDDEN_HEADER_PARAMETERS",
    "SUPPORTED_ALGORITHMS",
    "ParsedToken",
    "b64url_decode",
    "b64url_encode",
    "decode_header",
    "parse_ascii",
    "parse_compact",
    "parse_json_object",
    "split_compact",
    "verify_signature",
]

#: Every algorithm keyswap can verify. A verifier allows a configured subset (default ``RS256``).
SUPPORTED_ALGORITHMS = frozenset({"RS256", "PS256", "ES256", "EdDSA"})

#: Default cap on the token length in characters, checked before any decoding.
DEFAULT_MAX_TOKEN_SIZE = 8192

#: Header parameters whose presence rejects the token (see the module docstring).
FORBIDDEN_HEADER_PARAMETERS = ("crit", "b64", "zip", "enc", "jwk", "jku", "x5u", "x5c")

# Single bytes as ints: ``int in bytes`` is a memchr, while ``bytes in bytes`` first tries the
# argument as an int and builds (then drops) a formatted TypeError, about four times the cost.
_PLUS, _SLASH, _EQUALS, _OPEN_BRACKET = b"+/=["
_TO_STD = bytes.maketrans(b"-_", b"+/")
_FROM_STD = bytes.maketrans(b"+/", b"-_")
_PAD = (b"", b"", b"==", b"=")
# The last character of a segment whose length is 2 or 3 mod 4 carries 4 or 2 unused bits, which
# must be zero: only these characters are canonical there.
_CANONICAL_LAST = (
    "",
    "",
    "AQgw",  # len % 4 == 2: value % 16 == 0
    "AEIMQUYcgkosw048",  # len % 4 == 3: value % 4 == 0
)


class ParsedToken(NamedTuple):
    """A compact JWS whose structure, header and payload passed the strict checks (not yet verified).

    (A named tuple rather than a frozen dataclass: it is built once per token on the hot path.)
    """

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    alg: str
    kid: str
    #: The payload may hold nested objects or arrays (a cheap byte test: can be a false positive).
    nested: bool = False


def b64url_encode(data: bytes) -> str:
    """Encode ``data`` as unpadded base64url (RFC 7515 §2)."""
    return (
        binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_FROM_STD).decode("ascii")
    )


_CANONICAL_LAST_BYTES = tuple(chars.encode("ascii") for chars in _CANONICAL_LAST)


def _has_foreign_characters(text: str) -> bool:
    # The standard-alphabet characters and padding survive the -_ -> +/ translation, so they are
    # refused up front; a2b_base64(strict_mode=True) refuses everything else outside the alphabet.
    return not text.isascii() or "+" in text or "/" in text or "=" in text


def _decode_segment(segment: bytes) -> bytes:
    """Decode an ASCII segment free of ``+``, ``/`` and ``=`` (see :func:`_has_foreign_characters`)."""
    rem = len(segment) & 3
    if rem:
        if rem == 1:
            raise MalformedToken("invalid base64url length")
        if segment[-1] not in _CANONICAL_LAST_BYTES[rem]:
            raise MalformedToken("non-canonical base64url")
    try:
        return binascii.a2b_base64(segment.translate(_TO_STD) + _PAD[rem], strict_mode=True)
    except binascii.Error:
        raise MalformedToken("invalid base64url") from None


def b64url_decode(segment: str) -> bytes:
    """Decode strict, unpadded, canonical base64url.

    Raises:
        MalformedToken: characters outside ``[A-Za-z0-9_-]`` (padding, ``+``, ``/``, whitespace...),
            a length of 1 mod 4, or non-zero unused bits in the last character.
    """
    if not isinstance(segment, str) or _has_foreign_characters(segment):
        raise MalformedToken("invalid base64url")
    return _decode_segment(segment.encode("ascii"))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
# The C scanner parses one value without JSONDecoder.decode's Python-level wrapping (about half the
# cost for a small header); trailing data and leading whitespace are handled below. (Typed through
# ``Any``: typeshed declares make_scanner's argument as its own type.)
_make_scanner: Any = json.scanner.make_scanner
_scan_once: Callable[[str, int], tuple[Any, int]] = _make_scanner(_decoder)
_JSON_WHITESPACE = " \t\n\r"


def _loads(text: str) -> Any:
    try:
        obj, end = _scan_once(text, 0)
    except StopIteration:  # empty, or leading whitespace: let the full decoder decide
        return _decoder.decode(text)
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        raise ValueError("extra data after the JSON value")
    return obj


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse ``raw`` as a strict UTF-8 JSON object (``what`` names it in error reasons).

    Raises:
        MalformedToken: not UTF-8, a BOM, not JSON, not an object, duplicate member names,
            ``NaN``/``Infinity``, nesting too deep, or an integer too long to convert.
    """
    try:
        obj = _loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MalformedToken(f"{what} is not valid JSON") from None
    if type(obj) is not dict:
        raise MalformedToken(f"{what} is not a JSON object")
    return obj


def split_compact(token: str, *, max_size: int = DEFAULT_MAX_TOKEN_SIZE) -> tuple[str, str, str]:
    """Check size, structure and the characters used; return the three base64url segments.

    The segments are not decoded yet (:func:`b64url_decode` finishes the alphabet check).

    Raises:
        MalformedToken: too long, not a string, not three segments (a five-segment JWE included),
            or characters that are never base64url (non-ASCII, ``+``, ``/``, ``=``).
    """
    parts = token.split(".") if type(token) is str and len(token) <= max_size else []
    if len(parts) != 3 or _has_foreign_characters(token):
        raise _structure_error(token, max_size)
    return parts[0], parts[1], parts[2]


def _structure_error(token: object, max_size: int) -> MalformedToken:
    """Why :func:`split_compact` refused ``token`` (the size cap is checked before splitting)."""
    if type(token) is not str:
        return MalformedToken("token is not a string")
    if len(token) > max_size:
        return MalformedToken("token too large")
    return _segments_error(token.count(".") + 1)


def _segments_error(count: int) -> MalformedToken:
    """Why a token of the right type and size, split into ``count`` segments, was refused."""
    if count == 5:
        return MalformedToken("JWE is not accepted, expected a compact JWS")
    if count != 3:
        return MalformedToken("expected a compact JWS with three segments")
    return MalformedToken("invalid base64url")


def decode_header(segment: str, *, algorithms: frozenset[str]) -> tuple[dict[str, Any], str, str]:
    """Decode and check a protected header; return ``(header, alg, kid)``.

    Raises:
        MalformedToken: bad base64url/JSON, a forbidden parameter, ``kid`` missing or not a string.
        UnsupportedAlgorithm: ``alg`` missing or not in ``algorithms``.
    """
    header = parse_json_object(b64url_decode(segment), "header")
    return header, *_check_header(header, algorithms)


def _check_header(header: dict[str, Any], algorithms: frozenset[str]) -> tuple[str, str]:
    alg = header.get("alg")
    if type(alg) is not str or alg not in algorithms:
        raise UnsupportedAlgorithm("algorithm not allowed")
    for name in FORBIDDEN_HEADER_PARAMETERS:
        if name in header:
            raise MalformedToken(f"header parameter {name!r} is not accepted")
    kid = header.get("kid")
    if type(kid) is not str or not kid:
        raise MalformedToken("kid missing or not a string")
    return alg, kid


# Tokens of one issuer and key share their header segment, so checked headers are memoised as
# ``(header, alg, kid)`` (the parse and every check but the allow-list are pure functions of the
# segment). Bounded: cleared when full, short segments only, headers that passed every check only.
_header_cache: dict[bytes, tuple[dict[str, Any], str, str]] = {}
_HEADER_CACHE_SIZE = 256
_HEADER_CACHE_MAX_SEGMENT = 512

# Flat payloads (no array, a single object: most JWTs) are first parsed without the duplicate-
# rejecting hook, which makes the C scanner build a list of pairs per object (about a third of the
# JSON decoding); duplicates are then ruled out by counting. A flat object of n members has exactly n - 1
# structural commas, and commas can otherwise only appear inside strings, so
# ``count(",") == len(result) - 1`` proves the n members have n distinct names. When it does not
# hold (a comma inside a string, or a real duplicate) the strict parser decides. (Nested payloads
# go straight to the strict parser: walking the result to count their separators costs as much as
# the hook saves.)
_plain_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_scan_plain: Callable[[str, int], tuple[Any, int]] = _make_scanner(_plain_decoder)

# Nested payloads: the gateway's tokens nest in one claim, its ``metadata`` object. The count
# extends to it: the commas outside strings of a payload are at least (members - 1) of every object
# and (elements - 1) of every array *as written* (a duplicate name or a comma in a string only adds
# to them, and an object or array not accounted for adds its own, >= 0). So when ``count(",")``
# equals (members - 1) of the top-level object plus those of ``metadata`` *as parsed*, both are
# exact and every other object has at most one member written: no object anywhere has a duplicate
# name. Otherwise (a comma in a string, other nesting, a real duplicate) the strict parser decides.


def parse_compact(
    token: str, *, algorithms: frozenset[str], max_size: int = DEFAULT_MAX_TOKEN_SIZE
) -> ParsedToken:
    """Parse a compact JWS carrying a JWT claim set, once, with every strict check applied.

    The signature is decoded but not verified: pass the result to :func:`verify_signature`.
    ``header`` may be shared between tokens with the same header segment: do not mutate it.

    Raises:
        MalformedToken: anything structurally wrong (see the module docstring).
        UnsupportedAlgorithm: ``alg`` not in ``algorithms``.
    """
    if type(token) is not str or len(token) > max_size or not token.isascii():
        raise _structure_error(token, max_size)
    return parse_ascii(token.encode("ascii"), algorithms)


def parse_ascii(raw: bytes, algorithms: frozenset[str]) -> ParsedToken:
    """:func:`parse_compact` of a token already known to be ASCII and within the size cap, as bytes.

    (The verifier checks the size and ASCII itself before its cache lookup; working on the bytes of
    the whole token saves encoding each segment on its own.) Bytes that break the promise still end
    as :class:`MalformedToken`, but the size cap is the caller's to apply.

    Raises:
        MalformedToken, UnsupportedAlgorithm: as :func:`parse_compact`.
    """
    parts = raw.split(b".")
    if len(parts) != 3 or _PLUS in raw or _SLASH in raw or _EQUALS in raw:
        raise _segments_error(len(parts))
    h, p, s = parts
    cached = _header_cache.get(h)
    if cached is None:
        header = parse_json_object(_decode_segment(h), "header")
        alg, kid = _check_header(header, algorithms)
        if len(h) <= _HEADER_CACHE_MAX_SEGMENT:
            if len(_header_cache) >= _HEADER_CACHE_SIZE:
                _header_cache.clear()
            _header_cache[h] = (header, alg, kid)
    else:
        header, alg, kid = cached
        if alg not in algorithms:
            raise UnsupportedAlgorithm("algorithm not allowed")
    payload = _decode_segment(p)
    claims: Any = None
    nested = _OPEN_BRACKET in payload or payload.count(b"{") > 1
    try:
        text = payload.decode("utf-8")
        claims, end = _scan_plain(text, 0)
    except (ValueError, StopIteration, RecursionError):
        claims = None  # the strict parser gives the reason
    else:
        # (an empty object fails the count too: the strict parser decides)
        if end != len(text) or type(claims) is not dict:
            claims = None
        else:
            expected = len(claims) - 1
            if nested:
                metadata = claims.get("metadata")
                if type(metadata) is dict and metadata:
                    expected += len(metadata) - 1
            if payload.count(b",") != expected:
                claims = None
    if claims is None:  # parse_json_object(payload, "payload"), inlined: nested payloads come here
        try:
            text = payload.decode("utf-8")
            try:
                claims, end = _scan_once(text, 0)
            except StopIteration:  # empty, or leading whitespace: let the full decoder decide
                claims, end = _decoder.decode(text), len(text)
            if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
                raise ValueError("extra data after the JSON value")
        except (ValueError, RecursionError):
            raise MalformedToken("payload is not valid JSON") from None
        if type(claims) is not dict:
            raise MalformedToken("payload is not a JSON object")
    signature = _decode_segment(s)
    # tuple.__new__ directly: the named tuple's own __new__ is a Python-level call
    return _new_tuple(  # type: ignore[no-any-return]
        ParsedToken, (header, claims, raw[: len(h) + 1 + len(p)], signature, alg, kid, nested)
    )


_new_tuple: Any = tuple.__new__


# --- signatures -----------------------------------------------------------------------------------

_SHA256 = hashes.SHA256()
_PKCS1V15 = padding.PKCS1v15()
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _verify_rs256(key: Any, data: bytes, sig: bytes) -> None:
    key.verify(sig, data, _PKCS1V15, _SHA256)


def _verify_ps256(key: Any, data: bytes, sig: bytes) -> None:
    key.verify(sig, data, _PSS, _SHA256)


def _verify_es256(key: Any, data: bytes, sig: bytes) -> None:
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
        raise BadSignature("signature does not verify")
    key.verify(utils.encode_dss_signature(r, s), data, _ECDSA_SHA256)


def _verify_eddsa(key: Any, data: bytes, sig: bytes) -> None:
    key.verify(sig, data)


_VERIFIERS: dict[str, Callable[[Any, bytes, bytes], None]] = {
    "RS256": _verify_rs256,
    "PS256": _verify_ps256,
    "ES256": _verify_es256,
    "EdDSA": _verify_eddsa,
}


def verify_signature(
    key: VerificationKey, alg: str, signing_input: bytes, signature: bytes
) -> None:
    """Verify ``signature`` over ``signing_input`` with ``key`` under ``alg``.

    The key must have been published for ``alg`` (its kty/crv and its own JWK ``alg`` fit, see
    :class:`~keyswap.verifier.jwk.VerificationKey`). ES256 signatures are raw ``r || s`` (64 bytes);
    DER or other lengths are refused, as are ``r`` or ``s`` of zero or at least the group order.
    RSA signatures must be exactly the modulus length.

    Raises:
        UnsupportedAlgorithm: ``alg`` is not supported or does not fit the key.
        BadSignature: wrong length or the signature does not verify.
    """
    if alg not in key.algorithms:
        raise UnsupportedAlgorithm("algorithm does not fit the key")
    if len(signature) != key.signature_size:
        raise BadSignature("signature has the wrong length")
    try:
        if alg == "RS256":  # the default, called directly: one Python call less per token
            key.public_key.verify(signature, signing_input, _PKCS1V15, _SHA256)  # type: ignore[call-arg, arg-type]
        elif alg == "EdDSA":  # likewise (a bound-mode choice: one verification per request)
            key.public_key.verify(signature, signing_input)  # type: ignore[call-arg]
        else:
            _VERIFIERS[alg](key.public_key, signing_input, signature)
    except InvalidSignature:
        raise BadSignature("signature does not verify") from None
