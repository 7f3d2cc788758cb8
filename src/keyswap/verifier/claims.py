"""JWT claim checks: ``exp``/``nbf``/``iat`` with leeway, exact ``iss``, ``aud``, required claims.

Pure: the caller passes the wall-clock time ``now`` (seconds since the epoch).
"""

from __future__ import annotations

import math
from typing import Any

from keyswap.errors import (
    ExpiredToken,
    InvalidAudience,
    InvalidClaim,
    InvalidIssuer,
    TokenNotYetValid,
)

__all__ = ["STRING_CLAIMS", "numeric_date", "validate_claims", "validity_window"]

#: Registered claims that must be strings whenever they are present (``aud`` has its own rules).
STRING_CLAIMS = frozenset({"iss", "sub", "jti"})


_NUMBER_TYPES = frozenset({int, float})
#: Largest integer NumericDate accepted (any larger cannot be converted to a float).
_MAX_DATE = 10**300
_MIN_DATE = -_MAX_DATE


def _is_numeric_date(value: Any) -> bool:
    # int or float but not bool (type(), not isinstance); ``x - x == 0`` is false for inf and nan.
    return type(value) in _NUMBER_TYPES and value - value == 0


def numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """Return claim ``name`` as a NumericDate, or ``None`` when absent.

    Raises:
        InvalidClaim: present but not a finite JSON number (``bool``, strings, ``null`` refused).
    """
    if name not in claims:
        return None
    return _checked_date(name, claims[name])


def _checked_date(name: str, value: Any) -> float:
    if not _is_numeric_date(value):
        raise InvalidClaim(f"claim {name!r} is not a number")
    if type(value) is int and not _MIN_DATE <= value <= _MAX_DATE:
        # An integer beyond float range would raise OverflowError in the leeway arithmetic.
        raise InvalidClaim(f"claim {name!r} is out of range")
    return value  # type: ignore[no-any-return]


_ABSENT: Any = object()


def validity_window(claims: dict[str, Any], *, leeway: float) -> tuple[float, float]:
    """``(not_before, expires)``: the token is valid while ``not_before <= now < expires``.

    Both bounds include ``leeway``. ``not_before`` comes from ``nbf`` and ``iat`` (a token issued
    in the future is not valid yet); ``expires`` from ``exp``, which is required.

    Raises:
        InvalidClaim: ``exp`` missing, or a time claim that is not a finite number.
    """
    # Every token pays for this, so it is unrolled: integer dates in range pass inline, anything else
    # goes through _checked_date, which accepts finite floats and gives the precise reason for the rest.
    get = claims.get
    exp = get("exp", _ABSENT)
    if type(exp) is not int or not _MIN_DATE <= exp <= _MAX_DATE:
        if exp is _ABSENT:
            raise InvalidClaim("claim 'exp' is required")
        exp = _checked_date("exp", exp)
    nbf = get("nbf", _ABSENT)
    if type(nbf) is not int or not _MIN_DATE <= nbf <= _MAX_DATE:
        nbf = -math.inf if nbf is _ABSENT else _checked_date("nbf", nbf)
    iat = get("iat", _ABSENT)
    if type(iat) is not int or not _MIN_DATE <= iat <= _MAX_DATE:
        iat = -math.inf if iat is _ABSENT else _checked_date("iat", iat)
    return (nbf if nbf > iat else iat) - leeway, exp + leeway


def validate_claims(
    claims: dict[str, Any],
    *,
    issuer: str,
    audience: str | None,
    leeway: float,
    required: tuple[str, ...],
    now: float,
) -> tuple[float, float]:
    """Check the claim set of a token; return its validity window (see :func:`validity_window`).

    - ``exp`` is required; the token is expired when ``now >= exp + leeway``.
    - ``nbf`` and ``iat``, when present, must not be later than ``now + leeway``.
    - ``iss`` must equal ``issuer`` exactly.
    - with ``audience`` set, ``aud`` must be that string or a non-empty list of strings containing it;
      without it, ``aud`` (when present) must still have one of those shapes.
    - every claim in ``required`` must be present; ``iss``/``sub``/``jti`` must be non-empty strings.

    Raises:
        InvalidClaim, ExpiredToken, TokenNotYetValid, InvalidIssuer, InvalidAudience.
    """
    not_before, expires = validity_window(claims, leeway=leeway)
    if now >= expires:
        raise ExpiredToken("token has expired")
    if now < not_before:
        raise TokenNotYetValid("token is not valid yet (nbf or iat in the future)")

    for name in required:
        if name not in claims:
            raise InvalidClaim(f"claim {name!r} is required")
    # STRING_CLAIMS, unrolled (every token pays for this): an absent sub/jti passes as "-"; an
    # ``iss`` equal to ``issuer`` (a non-empty string) needs no type check of its own.
    get = claims.get
    value = get("sub", "-")
    if type(value) is not str or not value:
        raise InvalidClaim("claim 'sub' must be a non-empty string")
    value = get("jti", "-")
    if type(value) is not str or not value:
        raise InvalidClaim("claim 'jti' must be a non-empty string")
    value = get("iss", _ABSENT)
    if value != issuer or not value:
        if value is not _ABSENT and (type(value) is not str or not value):
            raise InvalidClaim("claim 'iss' must be a non-empty string")
        raise InvalidIssuer("issuer not accepted")
    aud = get("aud")
    if audience is not None and aud == audience and type(aud) is str:
        return not_before, expires  # the common case, decided without a call
    _check_audience(claims, audience)
    return not_before, expires


def _check_audience(claims: dict[str, Any], audience: str | None) -> None:
    if "aud" not in claims:
        if audience is not None:
            raise InvalidAudience("claim 'aud' is required")
        return
    aud = claims["aud"]
    if type(aud) is str:
        if audience is not None and aud != audience:
            raise InvalidAudience("audience not accepted")
        return
    if type(aud) is not list or not aud:
        raise InvalidAudience("claim 'aud' must be a string or a non-empty list of strings")
    for item in aud:
        if type(item) is not str:
            raise InvalidAudience("claim 'aud' must be a string or a non-empty list of strings")
    if audience is not None and audience not in aud:
        raise InvalidAudience("audience not accepted")
