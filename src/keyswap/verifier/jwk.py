"""JWK -> :class:`VerificationKey`, and JWKS documents -> ``{kid: key}`` with reasons for skipped keys.

A key is *skipped* (RFC 7517 §5: ignore what you cannot or must not use), never half-used:

- ``kty``/``crv`` other than ``RSA``, ``EC`` + ``P-256``, ``OKP`` + ``Ed25519`` (``oct`` keys included);
- a JWK ``alg`` that keyswap does not verify with that key type (``RS256``/``PS256`` for RSA, ``ES256``
  for P-256, ``EdDSA`` for Ed25519);
- ``use`` other than ``sig``; ``key_ops`` without ``verify``;
- private members (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``, ``oth``, ``k``): a leaked private key
  is never used, even for verification;
- RSA moduli under 2048 or over 8192 bits, public exponents below 3 or even, ROCA-weak moduli;
- EC points off the curve, wrong coordinate or key lengths, bad base64url;
- ``kid`` missing, empty or not a string; a ``kid`` that occurs twice in one set (ambiguous: every
  key with that kid is dropped).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keyswap.errors import JWKSFetchError, MalformedToken
from keyswap.verifier.jws import b64url_decode

__all__ = [
    "KeySkippedError",
    "PublicKey",
    "SkippedKey",
    "VerificationKey",
    "parse_jwk",
    "parse_jwks",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

#: Smallest and largest accepted RSA modulus, in bits.
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192

_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_RSA_ALGORITHMS = frozenset({"RS256", "PS256"})
_ES256 = frozenset({"ES256"})
_EDDSA = frozenset({"EdDSA"})


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A usable public key from a JWKS, bound to the algorithms it may verify.

    ``algorithms`` is the JWK's own ``alg`` when it has one, otherwise every algorithm keyswap
    supports for the key type (RSA: RS256 and PS256). ``signature_size`` is the exact signature
    length in bytes (the RSA modulus length, 64 for ES256 and EdDSA).
    """

    kid: str
    kty: str
    alg: str | None
    algorithms: frozenset[str]
    public_key: PublicKey
    signature_size: int


@dataclass(frozen=True, slots=True)
class SkippedKey:
    """A JWKS entry that was not used, and why."""

    kid: str | None
    reason: str


class KeySkippedError(ValueError):
    """Raised by :func:`parse_jwk` for a JWK that must not be used; ``reason`` says why.

    Internal signalling between the JWK parser and its callers: it never reaches a request.
    """

    def __init__(self, reason: str, kid: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kid = kid


def parse_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    """Turn one JWK into a :class:`VerificationKey` with a prepared ``cryptography`` public key.

    Raises:
        KeySkippedError: the key must not be used (see the module docstring for every reason).
    """
    if not isinstance(jwk, Mapping):
        raise KeySkippedError("entry is not a JSON object")
    raw_kid = jwk.get("kid")
    kid = raw_kid if type(raw_kid) is str and raw_kid else None
    try:
        return _parse(jwk, kid)
    except KeySkippedError as exc:
        exc.kid = kid
        raise


def _parse(jwk: Mapping[str, Any], kid: str | None) -> VerificationKey:
    kty = jwk.get("kty")
    if kty == "oct":
        raise KeySkippedError("symmetric (oct) keys are not used")
    for member in _PRIVATE_MEMBERS:
        if member in jwk:
            raise KeySkippedError("private key material present")
    if kid is None:
        raise KeySkippedError("kid missing or not a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise KeySkippedError("use is not 'sig'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (type(key_ops) is not list or "verify" not in key_ops):
        raise KeySkippedError("key_ops does not include 'verify'")
    alg = jwk.get("alg")
    if alg is not None and type(alg) is not str:
        raise KeySkippedError("alg is not a string")

    public_key: PublicKey
    if kty == "RSA":
        family, public_key, size = _RSA_ALGORITHMS, *_rsa_key(jwk)
    elif kty == "EC":
        if jwk.get("crv") != "P-256":
            raise KeySkippedError("unsupported EC curve")
        family, public_key, size = _ES256, _p256_key(jwk), 64
    elif kty == "OKP":
        if jwk.get("crv") != "Ed25519":
            raise KeySkippedError("unsupported OKP curve")
        family, public_key, size = _EDDSA, _ed25519_key(jwk), 64
    else:
        raise KeySkippedError("unsupported kty")

    if alg is None:
        algorithms = family
    elif alg in family:
        algorithms = frozenset({alg})
    else:
        raise KeySkippedError("alg not supported for this key type")
    return VerificationKey(kid, kty, alg, algorithms, public_key, size)


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if type(value) is not str or not value:
        raise KeySkippedError(f"member {name!r} missing or not a string")
    try:
        return b64url_decode(value)
    except MalformedToken:
        raise KeySkippedError(f"member {name!r} is not base64url") from None


def _rsa_key(jwk: Mapping[str, Any]) -> tuple[rsa.RSAPublicKey, int]:
    n = int.from_bytes(_member(jwk, "n"), "big")
    e = int.from_bytes(_member(jwk, "e"), "big")
    bits = n.bit_length()
    if bits < MIN_RSA_BITS:
        raise KeySkippedError(f"RSA key under {MIN_RSA_BITS} bits")
    if bits > MAX_RSA_BITS:
        raise KeySkippedError(f"RSA key over {MAX_RSA_BITS} bits")
    if e < 3 or e % 2 == 0 or e >= n:
        raise KeySkippedError("RSA public exponent is invalid")
    if _roca_weak(n):
        raise KeySkippedError("RSA modulus has the ROCA weakness")
    try:
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:  # pragma: no cover - the checks above cover what OpenSSL refuses
        raise KeySkippedError("RSA key is invalid") from None
    return key, (bits + 7) // 8


def _p256_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    x = _member(jwk, "x")
    y = _member(jwk, "y")
    if len(x) != 32 or len(y) != 32:
        raise KeySkippedError("EC coordinates must be 32 bytes")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    except ValueError:
        raise KeySkippedError("EC point is not on the curve") from None


def _ed25519_key(jwk: Mapping[str, Any]) -> ed25519.Ed25519PublicKey:
    x = _member(jwk, "x")
    if len(x) != 32:
        raise KeySkippedError("Ed25519 key must be 32 bytes")
    try:
        return ed25519.Ed25519PublicKey.from_public_bytes(x)
    except ValueError:  # pragma: no cover - OpenSSL accepts any 32 bytes here
        raise KeySkippedError("Ed25519 key is invalid") from None


# ROCA (CVE-2017-15361): moduli made by the vulnerable Infineon library are, modulo each of these
# small primes, a power of 65537. A random modulus passes every test only with negligible probability.
_ROCA_PRIMES = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83,
                89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167)  # fmt: skip


def _powers_of_65537(p: int) -> frozenset[int]:
    seen = {1}
    x = 65537 % p
    while x not in seen:
        seen.add(x)
        x = x * 65537 % p
    return frozenset(seen)


_ROCA_SUBGROUPS = tuple((p, _powers_of_65537(p)) for p in _ROCA_PRIMES)


def _roca_weak(n: int) -> bool:
    return all(n % p in group for p, group in _ROCA_SUBGROUPS)


def parse_jwks(document: Any) -> tuple[dict[str, VerificationKey], list[SkippedKey]]:
    """Parse a JWKS document into ``{kid: VerificationKey}`` and the list of skipped entries.

    A kid that occurs more than once (usable or not) is ambiguous: every key with it is dropped and
    reported as ``"duplicate kid"``.

    Raises:
        JWKSFetchError: ``document`` is not a JSON object with a ``keys`` array.
    """
    if not isinstance(document, Mapping) or type(document.get("keys")) is not list:
        raise JWKSFetchError("JWKS document is not an object with a 'keys' array")
    entries: list[Any] = document["keys"]
    counts = Counter(
        e.get("kid") for e in entries if isinstance(e, Mapping) and type(e.get("kid")) is str
    )
    keys: dict[str, VerificationKey] = {}
    skipped: list[SkippedKey] = []
    for entry in entries:
        try:
            key = parse_jwk(entry)
        except KeySkippedError as exc:
            skipped.append(SkippedKey(exc.kid, exc.reason))
            continue
        if counts[key.kid] > 1:
            skipped.append(SkippedKey(key.kid, "duplicate kid"))
            continue
        keys[key.kid] = key
    return keys, skipped
