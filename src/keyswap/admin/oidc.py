"""OIDC callers of the admin API: JWTs from the company's identity provider.

:class:`OidcAuthenticator` verifies a bearer JWT with keyswap's own
:class:`~keyswap.verifier.verify.Verifier` (one issuer, a required audience, the JWKS from
``jwks_url`` or found by discovery in the issuer's metadata) and maps it to a
:class:`~keyswap.admin.auth.Caller` of kind ``oidc``: its name is the token's ``sub`` (audit actor
``oidc:<sub>``), its scopes the admin scopes named in the configured claims (``scope`` then ``scp``
by default; ``roles`` or a nested path such as ``realm_access.roles`` for Keycloak-style roles).
Only exact admin scope names count (:data:`~keyswap.manage.scopes.MANAGEMENT_SCOPES` and
``admin``); every other value is ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from keyswap.admin.auth import Caller
from keyswap.errors import ConfigError, InvalidToken
from keyswap.manage.scopes import ADMIN, MANAGEMENT_SCOPES
from keyswap.verifier.permissions import ClaimPath, normalise_paths, permissions_from_claims
from keyswap.verifier.verify import IssuerConfig, Verifier

__all__ = ["DEFAULT_OIDC_ALGORITHMS", "DEFAULT_SCOPES_CLAIMS", "OidcAuthenticator", "OidcConfig"]

#: The signature algorithms OIDC tokens may use unless configured otherwise.
DEFAULT_OIDC_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
#: Where the admin scopes are read when nothing else is configured: ``scope``, then ``scp``.
DEFAULT_SCOPES_CLAIMS: tuple[ClaimPath, ...] = ("scope", "scp")

_ADMIN_SCOPES = (*MANAGEMENT_SCOPES, ADMIN)


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """How OIDC tokens are checked.

    Attributes:
        issuer: the exact ``iss`` of the identity provider's tokens.
        audience: the ``aud`` they must carry (required: the admin API is never any audience).
        jwks_url: the provider's JWKS; ``None`` finds it in the issuer's metadata (discovery).
        scopes_claims: the claims the admin scopes are read from (dotted paths for nested claims).
        algorithms: the ``alg`` values accepted.
        profile: ``"rfc9068"`` to require RFC 9068 JWT access tokens; ``None`` does not.
    """

    issuer: str
    audience: str
    jwks_url: str | None = None
    scopes_claims: tuple[ClaimPath, ...] = DEFAULT_SCOPES_CLAIMS
    algorithms: tuple[str, ...] = DEFAULT_OIDC_ALGORITHMS
    profile: str | None = None

    def issuer_config(self) -> IssuerConfig:
        """The verifier's configuration of this issuer.

        Raises:
            ConfigError: an empty issuer or audience, a bad claim path, or what
                :class:`~keyswap.verifier.verify.IssuerConfig` refuses.
        """
        if not self.issuer.strip():
            raise ConfigError("the OIDC issuer must not be empty")
        if not self.audience.strip():
            raise ConfigError("an OIDC audience is required with an OIDC issuer")
        try:
            normalise_paths(self.scopes_claims)
        except ValueError as exc:
            raise ConfigError(f"OIDC scopes claim: {exc}") from None
        if not self.scopes_claims:
            raise ConfigError("at least one OIDC scopes claim is required")
        return IssuerConfig(
            issuer=self.issuer,
            jwks_url=self.jwks_url,
            audience=self.audience,
            algorithms=self.algorithms,
            discover=self.jwks_url is None,
            profile=self.profile,
        )


class OidcAuthenticator:
    """Turns verified OIDC tokens into admin API callers.

    :meth:`caller` blocks (it may fetch the JWKS): call it from a worker thread, as the admin API's
    synchronous route dependencies are. Start it (:meth:`start`, or as a context manager) to fetch
    the keys in the background before the first request.

    Raises:
        ConfigError: at construction, for a configuration :meth:`OidcConfig.issuer_config` refuses.
    """

    def __init__(self, config: OidcConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._verifier = Verifier(config.issuer_config(), clock=clock)

    def start(self) -> None:
        """Fetch the provider's keys in the background."""
        self._verifier.start()

    def close(self) -> None:
        """Stop the background fetches."""
        self._verifier.close()

    def __enter__(self) -> OidcAuthenticator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def caller(self, token: str) -> Caller:
        """The caller ``token`` authenticates.

        Raises:
            InvalidToken: the token is refused (signature, expiry, issuer, audience, no ``sub``...).
            KeysUnavailable: the provider's keys cannot be fetched.
        """
        claims = self._verifier.verify_sync(token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip():
            raise InvalidToken("the token has no subject")
        granted = permissions_from_claims(claims, self.config.scopes_claims)
        scopes = tuple(scope for scope in _ADMIN_SCOPES if scope in granted)
        return Caller("oidc", subject, subject, scopes)
