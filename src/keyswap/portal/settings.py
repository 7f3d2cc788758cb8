"""What the portal is configured with (built once by ``keyswap portal``, frozen)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from keyswap.errors import ConfigError

__all__ = [
    "DEFAULT_ABSOLUTE_TIMEOUT",
    "DEFAULT_GRACE_CHOICES",
    "DEFAULT_IDLE_TIMEOUT",
    "OidcSettings",
    "PortalSettings",
    "SignupPlan",
]

#: A session ends after 30 minutes without a request, and 12 hours after sign-in in any case.
DEFAULT_IDLE_TIMEOUT = 30 * 60.0
DEFAULT_ABSOLUTE_TIMEOUT = 12 * 3600.0
#: The grace periods a person may choose when rolling a key (seconds).
DEFAULT_GRACE_CHOICES = (0.0, 3600.0, 86400.0, 7 * 86400.0)
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """Sign-in with OpenID Connect: the issuer (discovery at ``/.well-known/openid-configuration``),
    the client id and, for a confidential client, its secret. PKCE (S256), ``state`` and ``nonce``
    are always used."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ("openid", "email", "profile")


@dataclass(frozen=True, slots=True)
class SignupPlan:
    """What a consumer made by self sign-up starts with."""

    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({"plan": "free"}))
    rate_limit: str | None = None


@dataclass(frozen=True, slots=True)
class PortalSettings:
    """The portal's configuration.

    ``public_url``: where people reach the portal (scheme and host, no path; ``https`` makes the
    session cookie ``Secure``); ``gateway_url``: the API's base URL shown on the overview;
    ``provider_name``, ``logo_url`` and ``accent`` (``#rrggbb``) brand the pages; ``idle_timeout`` and
    ``absolute_timeout``: session expiry (seconds); ``grace_choices``: the grace periods offered when
    rolling a key; ``signup``: self sign-up (OIDC only) with this plan, ``None`` (default): off;
    ``key_prefix``: the gateway's API-key prefix; ``clock``: wall-clock seconds.

    Raises:
        ConfigError: a URL that is not http(s), a bad colour, a non-positive timeout.
    """

    public_url: str = "http://127.0.0.1:8082"
    gateway_url: str = "http://127.0.0.1:8080"
    provider_name: str = "API"
    logo_url: str | None = None
    accent: str = "#4f46e5"
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    absolute_timeout: float = DEFAULT_ABSOLUTE_TIMEOUT
    grace_choices: tuple[float, ...] = DEFAULT_GRACE_CHOICES
    oidc: OidcSettings | None = None
    signup: SignupPlan | None = None
    key_prefix: str | None = None
    #: Sign-in attempts (link uses, OIDC callbacks) one address may make per minute.
    signin_attempts_per_minute: int = 20
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        for name in ("public_url", "gateway_url"):
            value = getattr(self, name)
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"the portal's {name.replace('_', ' ')} must be an http(s) URL")
            object.__setattr__(self, name, value.rstrip("/"))
        if self.logo_url is not None and urlsplit(self.logo_url).scheme not in ("http", "https"):
            raise ConfigError("the logo URL must be an http(s) URL")
        if _COLOUR.fullmatch(self.accent) is None:
            raise ConfigError("the accent colour must be #rrggbb")
        if not (self.idle_timeout > 0 and self.absolute_timeout > 0):
            raise ConfigError("session timeouts must be positive")
        if not self.grace_choices or any(g < 0 for g in self.grace_choices):
            raise ConfigError("grace choices must be seconds >= 0")

    @property
    def secure_cookies(self) -> bool:
        """Whether cookies carry ``Secure`` (the public URL is https)."""
        return self.public_url.startswith("https://")
