"""Test key pairs and token factory: signs JWTs with `cryptography` directly (no library under test)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64u(n: int, length: int | None = None) -> str:
    length = length or (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class TestKey:
    """A private key with its public JWK; `sign()` makes compact JWS tokens."""

    private: PrivateKey
    alg: str
    kid: str
    jwk_extra: dict[str, Any] = field(default_factory=dict)

    def public_jwk(self, **overrides: Any) -> dict[str, Any]:
        key = self.private
        jwk: dict[str, Any]
        if isinstance(key, rsa.RSAPrivateKey):
            nums = key.public_key().public_numbers()
            jwk = {"kty": "RSA", "n": _int_b64u(nums.n), "e": _int_b64u(nums.e)}
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            nums_ec = key.public_key().public_numbers()
            size = (key.curve.key_size + 7) // 8
            jwk = {
                "kty": "EC",
                "crv": {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[
                    key.curve.name
                ],
                "x": _int_b64u(nums_ec.x, size),
                "y": _int_b64u(nums_ec.y, size),
            }
        else:
            raw = key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        jwk.update(self.jwk_extra)
        jwk.update(overrides)
        return {k: v for k, v in jwk.items() if v is not None}

    def raw_sign(self, signing_input: bytes, alg: str | None = None) -> bytes:
        alg = alg or self.alg
        key = self.private
        if alg == "RS256":
            assert isinstance(key, rsa.RSAPrivateKey)
            return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        if alg == "PS256":
            assert isinstance(key, rsa.RSAPrivateKey)
            return key.sign(
                signing_input,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                hashes.SHA256(),
            )
        if alg == "ES256":
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = utils.decode_dss_signature(der)
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if alg == "EdDSA":
            assert isinstance(key, ed25519.Ed25519PrivateKey)
            return key.sign(signing_input)
        raise ValueError(alg)

    def sign(
        self,
        claims: dict[str, Any] | bytes,
        *,
        header: dict[str, Any] | None = None,
        alg: str | None = None,
        kid: str | None = None,
    ) -> str:
        """Sign `claims` (a dict, or raw payload bytes) as a compact JWS."""
        hdr: dict[str, Any] = {"alg": alg or self.alg, "typ": "JWT", "kid": kid or self.kid}
        if header is not None:
            hdr.update(header)
            hdr = {k: v for k, v in hdr.items() if v is not None}
        payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
        signing_input = (b64u(json.dumps(hdr).encode()) + "." + b64u(payload)).encode("ascii")
        sig = self.raw_sign(
            signing_input,
            hdr.get("alg") if hdr.get("alg") in ("RS256", "PS256", "ES256", "EdDSA") else self.alg,
        )
        return signing_input.decode("ascii") + "." + b64u(sig)


@cache
def _rsa(bits: int, n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def rsa_key(kid: str = "rsa-1", *, bits: int = 2048, alg: str = "RS256", slot: int = 0) -> TestKey:
    """An RSA key; keys are cached per (bits, slot) so tests stay fast."""
    return TestKey(_rsa(bits, slot), alg, kid)


def ec_key(kid: str = "ec-1", *, curve: ec.EllipticCurve | None = None) -> TestKey:
    return TestKey(ec.generate_private_key(curve or ec.SECP256R1()), "ES256", kid)


def ed_key(kid: str = "ed-1") -> TestKey:
    return TestKey(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid)


def jwks(*keys: TestKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


def claims(
    *,
    iss: str = "https://issuer.test",
    aud: str | list[str] | None = "https://api.test",
    sub: str = "consumer-1",
    ttl: int = 300,
    now: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A valid claim set; pass a key with value None to drop it."""
    t = int(now if now is not None else time.time())
    c: dict[str, Any] = {"iss": iss, "sub": sub, "aud": aud, "iat": t, "exp": t + ttl}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (for tests that want realistic kids)."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
    req = {k: jwk[k] for k in members[jwk["kty"]]}
    return b64u(
        hashlib.sha256(json.dumps(req, separators=(",", ":"), sort_keys=True).encode()).digest()
    )
