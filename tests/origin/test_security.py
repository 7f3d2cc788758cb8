"""jwt_tool-style attacks against a real ``keyswap origin`` process (security corpus A01-A30, origin side).

One ``keyswap origin`` subprocess for the module, verifying against a real JWKS server on 127.0.0.1
(an RSA and an EC key). A second JWKS server plays the attacker: tokens point at it through ``jku``,
``x5u`` or a URL-shaped ``kid``, and its hit count must stay 0. Every attack must get exactly the
documented ``401 Invalid token``: never a 500, never a verifier crash logged at ERROR, never a fetch
the token asked for, and the process must keep serving valid tokens afterwards.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from keyswap.origin.app import create_app
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support import keys
from tests.support.asgi_server import ServerThread, free_port, raw_http, serving
from tests.support.jwks_server import JWKSServer, running_jwks_server
from tests.support.keys import b64u, claims, ec_key, jwks, rsa_key
from tests.support.keyswap_process import KeyswapProcess, running_keyswap

ISSUER = "https://gateway.test/__keyswap/issuer"
AUDIENCE = "https://api.test"
#: What the origin logs when a verifier raised something that is not a keyswap error (a bug).
VERIFIER_BUG = "verifier raised an unexpected"


@dataclass
class Target:
    origin: KeyswapProcess
    legit: JWKSServer
    attacker: JWKSServer
    rsa: keys.TestKey
    ec: keys.TestKey
    intruder: keys.TestKey  # a key pair the attacker owns, absent from the legit JWKS

    def send(self, token: str, **kw: Any) -> httpx.Response:
        return httpx.get(
            self.origin.url + "/orders",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            **kw,
        )

    def attacker_hits(self) -> int:
        return sum(self.attacker.hits.values())

    def good_token(self) -> str:
        return self.rsa.sign(claims(iss=ISSUER, aud=AUDIENCE))


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    rsa = rsa_key("legit-rsa")
    ec = ec_key("legit-ec")
    intruder = rsa_key("legit-rsa", slot=7)
    with running_jwks_server() as legit, running_jwks_server() as attacker:
        legit.serve(jwks(rsa, ec))
        attacker.serve(jwks(intruder))
        port = free_port()
        args = [
            "origin",
            "--jwks-url", legit.url,
            "--issuer", ISSUER,
            "--audience", AUDIENCE,
            "--port", str(port),
            "--jwks-cooldown", "10",
        ]  # fmt: skip
        with running_keyswap(args, port=port) as origin:
            state = Target(origin, legit, attacker, rsa, ec, intruder)
            _wait_until_serving(state)
            yield state
            log = origin.log()
        assert "Traceback" not in log
        assert VERIFIER_BUG not in log


def _wait_until_serving(target: Target) -> None:
    token = target.good_token()
    for _ in range(200):
        if target.send(token).status_code == 200:
            return
        target.legit.wait_for_hits(1, timeout=0.05)
    pytest.fail("keyswap origin never accepted a valid token")


def assert_refused(target: Target, response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.text == "Invalid token"
    assert response.headers["www-authenticate"].startswith(
        'Bearer realm="keyswap", error="invalid_token"'
    )
    assert target.attacker_hits() == 0
    log = target.origin.log()
    assert "Traceback" not in log
    assert VERIFIER_BUG not in log


# -- token builders ------------------------------------------------------------------------------


def segment(part: dict[str, Any] | bytes) -> str:
    raw = part if isinstance(part, bytes) else json.dumps(part).encode()
    return b64u(raw)


def forge(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, sig: bytes) -> str:
    return f"{segment(header)}.{segment(payload)}.{b64u(sig)}"


def hmac_token(alg: str, kid: str, secret: bytes) -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{segment({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{segment(good_claims())}"
    return signing_input + "." + b64u(hmac.new(secret, signing_input.encode(), digest).digest())


def good_claims(**extra: Any) -> dict[str, Any]:
    return claims(iss=ISSUER, aud=AUDIENCE, **extra)


def self_signed_cert_der(key: keys.TestKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    now = datetime.datetime.now(datetime.UTC)
    private = key.private
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


# -- A01 alg none ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("keep_signature", [False, True], ids=["empty-sig", "old-sig-kept"])
def test_alg_none_in_every_casing_is_refused(
    target: Target, alg: str, keep_signature: bool
) -> None:
    good = target.good_token()
    header = segment({"alg": alg, "typ": "JWT", "kid": "legit-rsa"})
    payload = segment(good_claims(sub="admin"))
    signature = good.split(".")[2] if keep_signature else ""
    assert_refused(target, target.send(f"{header}.{payload}.{signature}"))


# -- A02 HMAC with the public key as the secret -------------------------------------------------------


def _public_key_encodings(key: keys.TestKey) -> dict[str, bytes]:
    public = key.private.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encodings = {
        "spki-pem": pem,
        "spki-pem-no-newline": pem.rstrip(b"\n"),
        "spki-der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "openssh": public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
        "jwk-json": json.dumps(key.public_jwk()).encode(),
    }
    if key.alg == "RS256":
        encodings["pkcs1-pem"] = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
        encodings["raw-n"] = base64.urlsafe_b64decode(key.public_jwk()["n"] + "==")
    else:
        encodings["x962-point"] = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return encodings


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_hmac_signed_with_the_public_key_as_secret_is_refused(
    target: Target, alg: str, which: str
) -> None:
    key = target.rsa if which == "rsa" else target.ec
    for encoding, secret in _public_key_encodings(key).items():
        response = target.send(hmac_token(alg, key.kid, secret))
        assert response.status_code == 401, encoding
        assert_refused(target, response)


def test_a_token_signed_with_another_algorithm_than_its_key_is_bound_to_is_refused(
    target: Target,
) -> None:
    pss = target.rsa.sign(good_claims(), alg="PS256")  # same RSA key, JWK says RS256
    assert_refused(target, target.send(pss))


# -- A04/A05 keys carried or pointed at by the token -------------------------------------------------


def _attacker_tokens(target: Target) -> dict[str, str]:
    intruder = target.intruder
    pub = intruder.public_jwk()
    cert = base64.b64encode(self_signed_cert_der(intruder)).decode()
    attacker_jwks = target.attacker.url
    return {
        "embedded-jwk": intruder.sign(good_claims(), header={"jwk": pub}),
        "embedded-jwk-no-kid": intruder.sign(good_claims(), header={"jwk": pub, "kid": None}),
        "x5c-self-signed": intruder.sign(good_claims(), header={"x5c": [cert]}),
        "jku-attacker": intruder.sign(good_claims(), header={"jku": attacker_jwks}),
        "jku-attacker-new-kid": intruder.sign(
            good_claims(), header={"jku": attacker_jwks}, kid="attacker-kid"
        ),
        "jku-file": intruder.sign(good_claims(), header={"jku": "file:///etc/passwd"}),
        "x5u-attacker": intruder.sign(
            good_claims(), header={"x5u": target.attacker.base + "/cert.pem"}
        ),
        "kid-is-attacker-url": intruder.sign(good_claims(), kid=attacker_jwks),
        "signed-by-legit-but-jku-attacker": target.rsa.sign(
            good_claims(), header={"jku": attacker_jwks}
        ),
    }


@pytest.mark.parametrize(
    "attack",
    [
        "embedded-jwk",
        "embedded-jwk-no-kid",
        "x5c-self-signed",
        "jku-attacker",
        "jku-attacker-new-kid",
        "jku-file",
        "x5u-attacker",
        "kid-is-attacker-url",
        "signed-by-legit-but-jku-attacker",
    ],
)
def test_keys_embedded_in_or_pointed_at_by_the_token_are_never_used_nor_fetched(
    target: Target, attack: str
) -> None:
    assert_refused(target, target.send(_attacker_tokens(target)[attack]))
    assert target.attacker_hits() == 0


def test_a_token_signed_by_a_key_outside_the_jwks_with_a_known_kid_is_refused(
    target: Target,
) -> None:
    assert_refused(target, target.send(target.intruder.sign(good_claims())))


# -- A06/A08 kid injection and unknown-kid floods -----------------------------------------------------

INJECTED_KIDS: list[Any] = [
    "../../../../dev/null",
    "/etc/passwd",
    "' OR '1'='1",
    "x' UNION SELECT 'legit-rsa'--",
    "|id",
    "$(id)",
    "",
    "legit-rsa\u0000",
    "legit-rsa ",
    "LEGIT-RSA",
    "l\u0435git-rsa",  # Cyrillic "е"
    "k" * 3000,
    "legit-ec",  # the kid of a key of another type
    None,
    123,
    [],
    {},
    ["legit-rsa"],
    True,
]


@pytest.mark.parametrize("kid", INJECTED_KIDS, ids=[repr(k)[:24] for k in INJECTED_KIDS])
def test_injected_kids_are_only_ever_an_exact_lookup_key(target: Target, kid: Any) -> None:
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = f"{segment(header)}.{segment(good_claims())}".encode()
    token = signing_input.decode() + "." + b64u(target.rsa.raw_sign(signing_input))
    assert_refused(target, target.send(token))


def test_a_flood_of_unknown_kids_costs_at_most_one_jwks_fetch(target: Target) -> None:
    before = target.legit.count()
    for n in range(30):
        assert_refused(target, target.send(target.rsa.sign(good_claims(), kid=f"random-{n}")))
    assert target.legit.count() - before <= 1


# -- A09/A10 signatures ---------------------------------------------------------------------------------


def test_stripped_and_null_signatures_are_refused(target: Target) -> None:
    header, payload, _ = target.good_token().split(".")
    for token in (f"{header}.{payload}.", f"{header}.{payload}", f"{header}.{payload}.AA"):
        assert_refused(target, target.send(token))


@pytest.mark.parametrize(
    "signature",
    [bytes(64), (2**256 - 2**224 + 2**192 + 2**96 - 1).to_bytes(32, "big") * 2, b"\x00"],
    ids=["zeros", "p-p", "one-byte"],
)
def test_psychic_ecdsa_signatures_are_refused(target: Target, signature: bytes) -> None:
    header = {"alg": "ES256", "typ": "JWT", "kid": "legit-ec"}
    assert_refused(target, target.send(forge(header, good_claims(), signature)))


# -- A15 hostile claims, really signed -------------------------------------------------------------------


def _valid_payload() -> bytes:
    return json.dumps(good_claims()).encode()


def _with_exp(exp: str) -> bytes:
    """Valid claims whose ``exp`` member is the raw JSON text ``exp`` (appended last)."""
    valid = good_claims()
    del valid["exp"]
    return (json.dumps(valid)[:-1] + f', "exp": {exp}}}').encode()


HOSTILE_EXP = [
    '"9999999999"',
    "true",
    "1e400",
    "Infinity",
    "NaN",
    "-1",
    "null",
    "[]",
    "{}",
    "9" * 5000,
]


@pytest.mark.parametrize("exp", HOSTILE_EXP, ids=[e[:12] for e in HOSTILE_EXP])
def test_really_signed_tokens_with_hostile_exp_values_are_refused(target: Target, exp: str) -> None:
    assert_refused(target, target.send(target.rsa.sign(_with_exp(exp))))


PAYLOADS: dict[str, Callable[[], bytes]] = {
    "array": lambda: b"[]",
    "string": lambda: b'"claims"',
    "null": lambda: b"null",
    "utf-8-bom": lambda: b"\xef\xbb\xbf" + _valid_payload(),
    "utf-16": lambda: _valid_payload().decode().encode("utf-16"),
    "duplicate-sub": lambda: _valid_payload()[:-1] + b', "sub": "admin"}',
    "duplicate-exp": lambda: _valid_payload()[:-1] + b', "exp": 99999999999}',
    "duplicate-aud": lambda: _valid_payload()[:-1] + b', "aud": "https://other.test"}',
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_really_signed_tokens_with_non_object_or_ambiguous_payloads_are_refused(
    target: Target, kind: str
) -> None:
    assert_refused(target, target.send(target.rsa.sign(PAYLOADS[kind]())))


def test_the_hand_built_payloads_are_accepted_when_nothing_is_wrong_with_them(
    target: Target,
) -> None:
    exp = str(int(good_claims()["exp"]))
    for payload in (_valid_payload(), _with_exp(exp)):
        assert target.send(target.rsa.sign(payload)).status_code == 200


def test_a_really_signed_token_for_another_audience_is_refused(target: Target) -> None:
    token = target.rsa.sign(claims(iss=ISSUER, aud="https://other-service.test"))
    assert_refused(target, target.send(token))


# -- A20/A21/A23 structure and size ------------------------------------------------------------------


def _deep_header() -> str:
    inner = "[" * 2500 + "]" * 2500
    raw = '{"alg": "RS256", "kid": "legit-rsa", "x": ' + inner + "}"
    return b64u(raw.encode()) + "." + segment(good_claims()) + "." + b64u(b"x" * 256)


SHAPES: dict[str, Callable[[Target], str]] = {
    "oversized-header": lambda t: t.rsa.sign(good_claims(), header={"x": "a" * 20_000}),
    "1e5-dots": lambda t: "." * 100_000,
    "deeply-nested-header-json": lambda t: _deep_header(),
    "jwe-five-parts": lambda t: ".".join([segment({"alg": "RSA-OAEP", "enc": "A256GCM"})] * 5),
    "no-kid": lambda t: t.rsa.sign(good_claims(), header={"kid": None}),
    "two-parts": lambda t: ".".join(t.good_token().split(".")[:2]),
    "six-parts": lambda t: t.good_token() + ".a.b.c",
    "padded-base64": lambda t: t.good_token().replace(".", "=.", 1),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_malformed_and_oversized_tokens_are_refused(target: Target, shape: str) -> None:
    assert_refused(target, target.send(SHAPES[shape](target)))


def test_a_json_serialised_jws_as_bearer_is_not_a_token(target: Target) -> None:
    header, payload, sig = target.good_token().split(".")
    body = json.dumps({"protected": header, "payload": payload, "signature": sig})
    response = httpx.get(
        target.origin.url + "/x", headers={"Authorization": f"Bearer {body}"}, timeout=10
    )
    assert_refused(target, response)


# -- the middleware's exempt paths -------------------------------------------------------------------

SNEAKING_OUT = [
    b"/public/../secret",
    b"/public/%2e%2e/secret",
    b"/public/.%2E/secret",
    b"/public/..%2Fsecret",
    b"/public/x/../../secret",
    b"/public/./secret",
    b"/public/%2e/secret",
    b"/public",
    b"/health/",
    b"/health/..",
    b"/HEALTH",
    b"//health",
    b"/health;x",
    b"/health%00",
]


@pytest.fixture(scope="module")
def with_exempt_paths(target: Target) -> Iterator[ServerThread]:
    verifier = Verifier(IssuerConfig(issuer=ISSUER, jwks_url=target.legit.url, audience=AUDIENCE))
    app = create_app(verifier, exempt_paths=["/public/*", "/health"])
    with serving(app) as server:
        yield server


@pytest.mark.parametrize("path", SNEAKING_OUT, ids=[p.decode() for p in SNEAKING_OUT])
def test_no_encoding_or_dot_segment_walks_out_of_an_exempt_path_without_a_token(
    with_exempt_paths: ServerThread, path: bytes
) -> None:
    request = b"GET " + path + b" HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n"
    status, headers, body = raw_http(with_exempt_paths.port, request)
    assert (status, body) == (401, b"No token provided")
    assert dict(headers)["www-authenticate"] == 'Bearer realm="keyswap"'


@pytest.mark.parametrize("path", [b"/public/readme", b"/public/a/b.txt", b"/health"])
def test_exempt_paths_themselves_are_served_without_a_token(
    with_exempt_paths: ServerThread, path: bytes
) -> None:
    request = b"GET " + path + b" HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n"
    assert raw_http(with_exempt_paths.port, request)[::2] == (200, b"{}")


# -- resource bounds ------------------------------------------------------------------------------------


def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the server closes; ``b""`` if it reset the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionError:
            return b""
    return b"".join(chunks)


def _port(target: Target) -> int:
    return int(target.origin.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("what", ["10-mb-authorization", "100k-headers"])
def test_huge_request_heads_get_a_4xx_or_a_closed_connection_and_the_origin_stays_up(
    target: Target, what: str
) -> None:
    token = target.good_token().encode()
    if what == "10-mb-authorization":
        head = b"Authorization: Bearer " + b"a" * 10_000_000 + b"\r\n"
    else:
        head = b"Authorization: Bearer " + token + b"\r\n"
        head += b"".join(b"X-H%d: v\r\n" % i for i in range(100_000))
    answer = _raw_exchange(
        _port(target), b"GET /x HTTP/1.1\r\nHost: o\r\nConnection: close\r\n" + head + b"\r\n"
    )
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert status < 500
        if what == "10-mb-authorization":
            assert status == 401
    assert target.origin.alive
    assert target.send(token.decode()).status_code == 200


def test_a_valid_token_still_gets_its_claims_after_every_attack(target: Target) -> None:
    response = target.send(target.good_token())
    assert response.status_code == 200
    assert response.json()["iss"] == ISSUER
    assert target.attacker_hits() == 0
