from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyswap.errors import BadSignature, InvalidToken, MalformedToken, UnsupportedAlgorithm
from keyswap.verifier.jwk import parse_jwk
from keyswap.verifier.jws import (
    SUPPORTED_ALGORITHMS,
    b64url_decode,
    b64url_encode,
    decode_header,
    parse_ascii,
    parse_compact,
    parse_json_object,
    split_compact,
    verify_signature,
)
from tests.support.keys import TestKey as SigningKey
from tests.support.keys import b64u, ec_key, ed_key, rsa_key

ALL = SUPPORTED_ALGORITHMS


def raw_token(
    header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, sig: bytes = b"s"
) -> str:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64u(h)}.{b64u(p)}.{b64u(sig)}"


HEADER = {"alg": "RS256", "kid": "k1"}


# --- base64url --------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"f", b"fo", b"foo", b"\xff\xfe\xfd", bytes(range(256))])
def test_b64url_round_trips_every_length(data: bytes) -> None:
    encoded = b64url_encode(data)
    assert "=" not in encoded
    assert encoded == base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    assert b64url_decode(encoded) == data


@pytest.mark.parametrize(
    "segment",
    [
        "Zm9v=",  # padding
        "Zm8=",
        "ab+c",  # standard alphabet
        "ab/c",
        "Zm 9v",  # whitespace
        "Zm9v\n",
        "Zm9v?",
        "A",  # length 1 mod 4
        "Zm9vY",
        "Zm9=",
        "Zh",  # non-zero unused bits ("Zg" is canonical)
        "Zm9",  # "Zm8" is canonical
        "Zm9vé",  # non-ASCII
    ],
)
def test_b64url_decode_rejects_non_canonical_input(segment: str) -> None:
    with pytest.raises(MalformedToken):
        b64url_decode(segment)


def test_b64url_decode_accepts_canonical_tails() -> None:
    assert b64url_decode("Zg") == b"f"
    assert b64url_decode("Zm8") == b"fo"


# --- structure ------------------------------------------------------------------------------------


def test_parse_compact_returns_header_claims_and_signing_input() -> None:
    token = raw_token(HEADER, {"sub": "a"}, b"sig")
    parsed = parse_compact(token, algorithms=ALL)
    assert parsed.header == HEADER
    assert parsed.claims == {"sub": "a"}
    assert parsed.alg == "RS256"
    assert parsed.kid == "k1"
    assert parsed.signature == b"sig"
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("a.b", "three segments"),
        ("a.b.c.d", "three segments"),
        ("a.b.c.d.e", "JWE"),
        ("a.b.c.d.e.f", "three segments"),
        ("", "three segments"),
        ("..", "not valid JSON"),
        (" a.b.c", "base64url"),
        ("a.b.c ", "base64url"),
        ("a.b.c\n", "base64url"),
    ],
)
def test_wrong_structure_is_malformed(token: str, reason: str) -> None:
    with pytest.raises(MalformedToken, match=reason):
        parse_compact(token, algorithms=ALL)


def test_size_cap_is_checked_before_parsing() -> None:
    token = raw_token(HEADER, {"x": "y" * 9000})
    with pytest.raises(MalformedToken, match="too large"):
        split_compact(token)
    assert split_compact(token, max_size=len(token))[0] == token.split(".")[0]


def test_a_million_dots_is_rejected_by_size_not_by_splitting() -> None:
    with pytest.raises(MalformedToken, match="too large"):
        parse_compact("." * 1_000_000, algorithms=ALL)


def test_non_string_token_is_malformed() -> None:
    with pytest.raises(MalformedToken):
        split_compact(b"a.b.c")  # type: ignore[arg-type]


# --- JSON -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'"s"',
        b"null",
        b"1",
        b"",
        b"\xff\xfe{}",  # bad UTF-8
        "\ufeff{}".encode(),  # BOM
        '{"a":1}'.encode("utf-16"),
        b'{"a":1,"a":2}',  # duplicate member
        b'{"a":{"b":1,"b":1}}',
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"a":' + b"9" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"{'a':1}",
        b'{"a":1} x',
    ],
)
def test_json_must_be_a_strict_object(raw: bytes) -> None:
    with pytest.raises(MalformedToken):
        parse_json_object(raw, "payload")


def test_json_keeps_valid_objects() -> None:
    assert parse_json_object(b' {"a": [1, 2.5, "x", null, true]} ', "payload") == {
        "a": [1, 2.5, "x", None, True]
    }


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sub":"a","sub":"b"}',  # flat duplicate: caught by the comma count
        b'{"sub":"a,b","sub":"c"}',  # a comma inside a string makes up for the lost member
        b'{"a":",","b":1,"a":2}',
        b'{"sub":"a" , "sub" : "b"}',  # whitespace around the separators
        b'{"sub":"a"}{"sub":"b"}',  # trailing data
        b'{"sub":"a"} x',
        b'{"sub":NaN}',
        b'{"sub":"\xff"}',  # not UTF-8
        b"{}",  # empty: the strict parser decides (a JSON object, so it is kept)
    ],
)
def test_flat_payload_fast_path_agrees_with_the_strict_parser(payload: bytes) -> None:
    token = raw_token(HEADER, payload)
    try:
        expected: Any = parse_json_object(payload, "payload")
    except MalformedToken as exc:
        expected = exc
    if isinstance(expected, MalformedToken):
        with pytest.raises(MalformedToken, match="payload is not valid JSON"):
            parse_compact(token, algorithms=ALL)
    else:
        assert parse_compact(token, algorithms=ALL).claims == expected


_JSON_NAMES = st.sampled_from(["a", "b", "sub", "a,b", ",", "x\\", '"'])
_JSON_SCALARS = st.one_of(
    st.integers(-(10**20), 10**20),
    st.text(alphabet=',ab :\\"{}[]\u00e9', max_size=6),
    st.booleans(),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(
    members=st.lists(st.tuples(_JSON_NAMES, _JSON_SCALARS), max_size=5),
    spaced=st.booleans(),
)
def test_fast_and_strict_json_paths_agree_on_flat_objects(
    members: list[tuple[str, Any]], spaced: bool
) -> None:
    sep = ", " if spaced else ","
    body = sep.join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members)
    payload = ("{" + body + "}").encode()
    try:
        expected: Any = parse_json_object(payload, "payload")
    except MalformedToken:
        expected = None
    names = [k for k, _ in members]
    assert (expected is None) == (len(set(names)) != len(names))
    token = raw_token(HEADER, payload)
    if expected is None:
        with pytest.raises(MalformedToken):
            parse_compact(token, algorithms=ALL)
    else:
        assert parse_compact(token, algorithms=ALL).claims == expected


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sub":"a","metadata":{"plan":"pro","plan":"free"}}',  # duplicate inside metadata
        b'{"sub":"a","metadata":{"plan":"pro"},"sub":"b"}',  # duplicate beside metadata
        b'{"sub":"a","metadata":{"p":"x,y","p":1}}',  # a string comma making up for it
        b'{"sub":"a","metadata":{"p":1},"x":{"q":1,"q":2}}',  # in an object not counted
        b'{"sub":"a","metadata":{"p":1},"x":{"q":1,"r":2}}',  # other nesting: strict decides
        b'{"sub":"a","metadata":{"a":{"b":1,"b":2}}}',  # deeper inside metadata
        b'{"sub":"a","metadata":{"a":{"b":1,"c":2}}}',
        b'{"sub":"a","metadata":{}}',
        b'{"sub":"a","metadata":[1,2,2]}',
        b'{"sub":"a","metadata":{"plan":"pro","tier":"gold"},"aud":["x","y"]}',
        b'{"metadata":{"p":1},"metadata":{"q":1}}',
        b'{"sub":"a,b","metadata":{"plan":"pro"}}',
    ],
)
def test_nested_payload_fast_path_agrees_with_the_strict_parser(payload: bytes) -> None:
    token = raw_token(HEADER, payload)
    try:
        expected: Any = parse_json_object(payload, "payload")
    except MalformedToken as exc:
        expected = exc
    if isinstance(expected, MalformedToken):
        with pytest.raises(MalformedToken, match="payload is not valid JSON"):
            parse_compact(token, algorithms=ALL)
    else:
        parsed = parse_compact(token, algorithms=ALL)
        assert parsed.claims == expected
        assert parsed.nested


_NESTED_VALUES = st.one_of(
    _JSON_SCALARS,
    st.lists(st.tuples(_JSON_NAMES, _JSON_SCALARS), max_size=3),  # an object (pairs)
    st.lists(_JSON_SCALARS, max_size=3),  # an array (marked below)
)


def _object_text(members: list[tuple[str, Any]]) -> str:
    parts = []
    for name, value in members:
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            text = _object_text(value)
        else:
            text = json.dumps(value)
        parts.append(f"{json.dumps(name)}:{text}")
    return "{" + ",".join(parts) + "}"


@settings(max_examples=300, deadline=None)
@given(
    members=st.lists(
        st.tuples(st.sampled_from(["sub", "metadata", "aud", "a", "a,b"]), _NESTED_VALUES),
        max_size=5,
    )
)
def test_fast_and_strict_json_paths_agree_on_nested_objects(
    members: list[tuple[str, Any]],
) -> None:
    payload = _object_text(members).encode()
    try:
        expected: Any = parse_json_object(payload, "payload")
    except MalformedToken:
        expected = None
    token = raw_token(HEADER, payload)
    if expected is None:
        with pytest.raises(MalformedToken):
            parse_compact(token, algorithms=ALL)
    else:
        assert parse_compact(token, algorithms=ALL).claims == expected


def test_duplicate_alg_in_header_is_malformed() -> None:
    token = raw_token(b'{"alg":"none","alg":"RS256","kid":"k1"}', {"sub": "a"})
    with pytest.raises(MalformedToken):
        parse_compact(token, algorithms=ALL)


def test_payload_that_is_not_an_object_is_malformed() -> None:
    with pytest.raises(MalformedToken, match="payload"):
        parse_compact(raw_token(HEADER, b"foo"), algorithms=ALL)


# --- header rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alg",
    [
        "none",
        "None",
        "HS256",
        "rs256",
        "RS256 ",
        "RS256\x00",
        "ES256K",
        "Ed25519",
        "RS384",
        1,
        None,
    ],
)
def test_alg_outside_the_allow_list_is_unsupported(alg: object) -> None:
    with pytest.raises(UnsupportedAlgorithm):
        parse_compact(raw_token({"alg": alg, "kid": "k1"}, {}), algorithms=ALL)


def test_missing_alg_is_unsupported() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        parse_compact(raw_token({"kid": "k1"}, {}), algorithms=ALL)


def test_alg_must_be_in_the_callers_allow_list_not_just_supported() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        parse_compact(raw_token({"alg": "ES256", "kid": "k1"}, {}), algorithms=frozenset({"RS256"}))


@pytest.mark.parametrize("kid", [None, 1, [], {}, ""])
def test_kid_must_be_a_non_empty_string(kid: object) -> None:
    header = {"alg": "RS256", "kid": kid} if kid is not None else {"alg": "RS256"}
    with pytest.raises(MalformedToken, match="kid"):
        parse_compact(raw_token(header, {}), algorithms=ALL)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("crit", ["exp"]),
        ("crit", []),
        ("b64", False),
        ("b64", True),
        ("zip", "DEF"),
        ("enc", "A128GCM"),
        ("jwk", {"kty": "EC"}),
        ("jku", "http://127.0.0.1/jwks"),
        ("x5u", "http://127.0.0.1/cert"),
        ("x5c", ["MII..."]),
    ],
)
def test_forbidden_header_parameters_reject_the_token(name: str, value: object) -> None:
    with pytest.raises(MalformedToken, match=name):
        parse_compact(raw_token({**HEADER, name: value}, {}), algorithms=ALL)


def test_decode_header_works_on_a_non_jwt_payload() -> None:
    header, alg, kid = decode_header(b64u(json.dumps(HEADER).encode()), algorithms=ALL)
    assert (header, alg, kid) == (HEADER, "RS256", "k1")


# --- signatures -------------------------------------------------------------------------------------


def _sign_and_parse(key: SigningKey, alg: str | None = None) -> tuple[bytes, bytes]:
    token = key.sign({"sub": "a"}, alg=alg)
    parsed = parse_compact(token, algorithms=ALL)
    return parsed.signing_input, parsed.signature


@pytest.mark.parametrize(
    "key", [rsa_key(), rsa_key(alg="PS256"), ec_key(), ed_key()], ids=lambda k: k.alg
)
def test_valid_signatures_verify_for_every_supported_algorithm(key: SigningKey) -> None:
    data, sig = _sign_and_parse(key)
    verify_signature(parse_jwk(key.public_jwk()), key.alg, data, sig)


@pytest.mark.parametrize(
    "key", [rsa_key(), rsa_key(alg="PS256"), ec_key(), ed_key()], ids=lambda k: k.alg
)
def test_tampered_signing_input_fails(key: SigningKey) -> None:
    data, sig = _sign_and_parse(key)
    with pytest.raises(BadSignature):
        verify_signature(parse_jwk(key.public_jwk()), key.alg, data + b"x", sig)


def test_rsa_key_without_jwk_alg_verifies_both_rs256_and_ps256() -> None:
    key = rsa_key()
    vkey = parse_jwk(key.public_jwk(alg=None))
    for alg in ("RS256", "PS256"):
        data, sig = _sign_and_parse(key, alg)
        verify_signature(vkey, alg, data, sig)


def test_rsa_key_published_for_rs256_refuses_ps256() -> None:
    key = rsa_key()
    data, sig = _sign_and_parse(key, "PS256")
    with pytest.raises(UnsupportedAlgorithm):
        verify_signature(parse_jwk(key.public_jwk()), "PS256", data, sig)


@pytest.mark.parametrize(
    ("key", "alg"),
    [(ec_key(), "EdDSA"), (ed_key(), "ES256"), (rsa_key(), "ES256"), (ec_key(), "RS256")],
)
def test_key_type_fixes_the_algorithm_family(key: SigningKey, alg: str) -> None:
    data, sig = _sign_and_parse(key)
    with pytest.raises(UnsupportedAlgorithm):
        verify_signature(parse_jwk(key.public_jwk(alg=None)), alg, data, sig)


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.mark.parametrize(
    ("r", "s"), [(0, 0), (0, 1), (1, 0), (P256_N, 1), (1, P256_N), (P256_N - 1, P256_N - 1)]
)
def test_psychic_ecdsa_signatures_fail(r: int, s: int) -> None:
    key = ec_key()
    data, _ = _sign_and_parse(key)
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    with pytest.raises(BadSignature):
        verify_signature(parse_jwk(key.public_jwk()), "ES256", data, sig)


def test_der_encoded_ecdsa_signature_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import utils

    key = ec_key()
    data, sig = _sign_and_parse(key)
    der = utils.encode_dss_signature(
        int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    )
    with pytest.raises(BadSignature):
        verify_signature(parse_jwk(key.public_jwk()), "ES256", data, der)


@pytest.mark.parametrize("key", [rsa_key(), ec_key(), ed_key()], ids=lambda k: k.alg)
@pytest.mark.parametrize("change", ["empty", "truncated", "extended", "zero-padded"])
def test_reshaped_signatures_fail(key: SigningKey, change: str) -> None:
    data, sig = _sign_and_parse(key)
    bad = {
        "empty": b"",
        "truncated": sig[:-1],
        "extended": sig + b"\x00",
        "zero-padded": b"\x00" + sig,
    }[change]
    with pytest.raises(BadSignature):
        verify_signature(parse_jwk(key.public_jwk()), key.alg, data, bad)


def test_every_error_here_is_an_invalid_token() -> None:
    for cls in (MalformedToken, UnsupportedAlgorithm, BadSignature):
        assert issubclass(cls, InvalidToken)


@pytest.mark.parametrize("segment", [0, 1, 2])
@pytest.mark.parametrize("junk", [b"\xff", b"\xc3\xa9", b"\x00", b" "])
def test_parse_ascii_refuses_bytes_outside_base64url_in_any_segment(
    segment: int, junk: bytes
) -> None:
    # parse_ascii trusts its caller for ASCII and the size cap; bytes that break the promise still
    # end as MalformedToken, never another exception.
    parts = raw_token(HEADER, {"sub": "a"}).encode().split(b".")
    parts[segment] = parts[segment][:4] + junk + parts[segment][4:]
    with pytest.raises(MalformedToken):
        parse_ascii(b".".join(parts), ALL)


def test_parse_ascii_and_parse_compact_agree() -> None:
    token = raw_token(HEADER, {"sub": "a", "n": [1, {"x": 2}]})
    assert parse_ascii(token.encode(), ALL) == parse_compact(token, algorithms=ALL)
