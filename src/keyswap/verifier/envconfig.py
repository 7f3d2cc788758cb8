"""An :class:`~keyswap.verifier.verify.IssuerConfig` from ``KEYSWAP_*`` environment variables.

The variables are those of ``keyswap origin`` (see docs/origin.md), with the same defaults, so an
application configured for ``keyswap origin`` configures a FastAPI, Starlette, Flask, Django or WSGI
app the same way (the examples in examples/ use it)::

    verifier = Verifier(issuer_config_from_env(os.environ))

=============================  =========================================================================
``KEYSWAP_ISSUER``             exact ``iss`` (required)
``KEYSWAP_JWKS_URL``           the issuer's JWKS (required unless ``KEYSWAP_DISCOVER`` is true)
``KEYSWAP_DISCOVER``           ``true``/``1``/``yes``/``on``: read ``jwks_uri`` from the issuer's metadata
``KEYSWAP_AUDIENCE``           required ``aud``
``KEYSWAP_ALGORITHMS``         comma-separated allow-list (default: all four, :data:`DEFAULT_ALGORITHMS`)
``KEYSWAP_REQUIRED_CLAIMS``    comma-separated claims that must be present (default ``sub``)
``KEYSWAP_PROFILE``            ``rfc9068``: JWT access tokens (``typ: at+jwt`` and its claims)
``KEYSWAP_LEEWAY``             clock skew, seconds (default 30)
``KEYSWAP_JWKS_CACHE_TTL``     JWKS freshness without ``Cache-Control``, seconds (default 300)
``KEYSWAP_JWKS_COOLDOWN``      minimum seconds between unknown-kid refetches (default 10)
=============================  =========================================================================

An empty variable counts as unset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from keyswap.errors import ConfigError
from keyswap.verifier.verify import IssuerConfig

__all__ = ["DEFAULT_ALGORITHMS", "ENV_PREFIX", "issuer_config_from_env", "parse_bool", "split_list"]

#: Accepted when no algorithm list is given: every algorithm keyswap verifies. Each JWKS key is bound
#: to its own algorithm family, so allowing all four never lets one key verify another's alg.
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")

#: The prefix of every variable read here.
ENV_PREFIX = "KEYSWAP_"

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_SECONDS = (
    ("leeway", "LEEWAY", 30.0),
    ("jwks_cache_ttl", "JWKS_CACHE_TTL", 300.0),
    ("jwks_cooldown", "JWKS_COOLDOWN", 10.0),
)


def split_list(value: str) -> tuple[str, ...]:
    """``"a, b,,a"`` -> ``("a", "b")``: comma-separated, stripped, empty items and repeats dropped."""
    return tuple(dict.fromkeys(item.strip() for item in value.split(",") if item.strip()))


def parse_bool(name: str, value: str) -> bool:
    """A boolean variable the way click reads one (``1/true/yes/on``, ``0/false/no/off``, any case).

    Raises:
        ConfigError: any other value.
    """
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def issuer_config_from_env(environ: Mapping[str, str], *, prefix: str = ENV_PREFIX) -> IssuerConfig:
    """The issuer configuration described by the ``KEYSWAP_*`` variables of ``environ``.

    Raises:
        ConfigError: ``KEYSWAP_ISSUER`` missing, neither ``KEYSWAP_JWKS_URL`` nor ``KEYSWAP_DISCOVER``,
            or a malformed or out-of-range value (the message names the variable).
    """

    def text(name: str) -> str | None:
        value = environ.get(prefix + name, "").strip()
        return value or None

    issuer, jwks_url = text("ISSUER"), text("JWKS_URL")
    discover_text = text("DISCOVER")
    discover = discover_text is not None and parse_bool(prefix + "DISCOVER", discover_text)
    missing = [prefix + "JWKS_URL"] if jwks_url is None and not discover else []
    if issuer is None:
        missing.append(prefix + "ISSUER")
    if missing or issuer is None:
        hint = f" (or {prefix}DISCOVER=true)" if jwks_url is None and not discover else ""
        raise ConfigError(f"{' and '.join(missing)} must be set{hint}")
    if jwks_url is not None and discover:
        raise ConfigError(f"set {prefix}JWKS_URL or {prefix}DISCOVER=true, not both")
    seconds: dict[str, float] = {}
    for attribute, name, default in _SECONDS:
        raw = text(name)
        try:
            seconds[attribute] = default if raw is None else float(raw)
        except ValueError:
            raise ConfigError(f"{prefix}{name} must be a number of seconds") from None
        if not math.isfinite(seconds[attribute]):
            raise ConfigError(f"{prefix}{name} must be a finite number of seconds")
    algorithms = split_list(text("ALGORITHMS") or ",".join(DEFAULT_ALGORITHMS))
    required = text("REQUIRED_CLAIMS")
    profile = text("PROFILE")
    return IssuerConfig(
        issuer=issuer,
        jwks_url=jwks_url,
        discover=discover,
        audience=text("AUDIENCE"),
        algorithms=algorithms,
        leeway=seconds["leeway"],
        jwks_cache_ttl=seconds["jwks_cache_ttl"],
        jwks_cooldown=seconds["jwks_cooldown"],
        required_claims=split_list(required) if required is not None else ("sub",),
        profile=profile.lower() if profile is not None else None,
    )
