"""Sign-in with OpenID Connect: the authorization code flow with PKCE (S256), ``state`` and ``nonce``.

:meth:`OidcClient.begin` draws ``state``, ``nonce`` and a PKCE verifier, keeps them in a short-lived
cookie signed with HMAC-SHA-256 (so any portal process can finish the flow) and returns the provider's
authorization URL. :meth:`OidcClient.finish` checks the returned ``state`` against the cookie (in
constant time), exchanges the code (with the verifier; with the client secret for a confidential
client), verifies the ID token with keyswap's own verifier (signature from the provider's JWKS, found
by discovery; ``iss``, ``aud`` = the client id, ``exp``) and checks its ``nonce``. The person is the
token's ``sub``; their e-mail address counts only when ``email_verified`` is true.

authlib provides the PKCE challenge and the random values; the endpoints come from the issuer's
discovery document (``/.well-known/openid-configuration``), fetched once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from keyswap.errors import InvalidInput, KeyswapError
from keyswap.portal.settings import OidcSettings
from keyswap.store.models import validate_email
from keyswap.verifier.verify import IssuerConfig, Verifier

__all__ = ["CALLBACK_PATH", "OidcClient", "SignedInPerson"]

#: Where the provider sends the browser back (register ``<public URL>/portal/signin/oidc/callback``).
CALLBACK_PATH = "/portal/signin/oidc/callback"
#: How long a started sign-in may take (seconds).
FLOW_LIFETIME = 600
_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")


class SignInFailed(InvalidInput):
    """The provider's answer did not sign anybody in (400)."""


@dataclass(frozen=True, slots=True)
class SignedInPerson:
    """Who the provider says signed in, and where to go next."""

    subject: str
    email: str | None
    next: str


class OidcClient:
    """The portal's OpenID Connect relying party (one provider).

    Raises:
        ConfigError: at construction, a configuration the verifier refuses.
    """

    def __init__(
        self,
        settings: OidcSettings,
        public_url: str,
        signing_key: bytes,
        *,
        clock: Callable[[], float] = time.time,
        http: httpx.Client | None = None,
    ) -> None:
        self.settings = settings
        self.redirect_uri = public_url.rstrip("/") + CALLBACK_PATH
        self._key = signing_key
        self._http = http or httpx.Client(timeout=10.0, follow_redirects=False)
        self._metadata: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._verifier = Verifier(
            IssuerConfig(
                issuer=settings.issuer,
                audience=settings.client_id,
                algorithms=_ALGORITHMS,
                discover=True,
                required_claims=("sub", "iat"),
            ),
            clock=clock,
        )

    def close(self) -> None:
        """Stop the verifier's key fetches and close the HTTP client."""
        self._verifier.close()
        self._http.close()

    def _endpoints(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None:
                url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                try:
                    response = self._http.get(url)
                    response.raise_for_status()
                    metadata = response.json()
                except (httpx.HTTPError, ValueError):
                    raise KeyswapError("the identity provider cannot be reached") from None
                if not isinstance(metadata, dict) or metadata.get("issuer") != self.settings.issuer:
                    raise KeyswapError("the identity provider's metadata names another issuer")
                self._metadata = metadata
            return self._metadata

    # -- the signed flow cookie ----------------------------------------------------------------------

    def _seal(self, values: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode())
        mac = hmac.new(self._key, b"oidc-flow:" + body, hashlib.sha256).digest()
        return body.decode().rstrip("=") + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def _open(self, cookie: str | None, now: float) -> dict[str, Any]:
        if not cookie or len(cookie) > 2048 or "." not in cookie:
            raise SignInFailed("the sign-in took too long or was started elsewhere; try again")
        body, _, mac = cookie.partition(".")
        padded = body + "=" * (-len(body) % 4)
        expected = hmac.new(self._key, b"oidc-flow:" + padded.encode(), hashlib.sha256).digest()
        try:
            given = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
        except ValueError:
            given = b""
        if not hmac.compare_digest(expected, given):
            raise SignInFailed("the sign-in could not be checked; try again")
        values: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(values, dict) or float(values.get("exp", 0)) < now:
            raise SignInFailed("the sign-in took too long; try again")
        return values

    # -- the flow ------------------------------------------------------------------------------------

    def begin(self, next_path: str, now: float) -> tuple[str, str]:
        """``(authorization URL, flow cookie)`` of a new sign-in that returns to ``next_path``."""
        endpoint = str(self._endpoints()["authorization_endpoint"])
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": " ".join(self.settings.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": create_s256_code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        cookie = self._seal(
            {
                "state": state,
                "nonce": nonce,
                "verifier": verifier,
                "next": next_path,
                "exp": now + FLOW_LIFETIME,
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", cookie

    def finish(
        self,
        code: str | None,
        state: str | None,
        error: str | None,
        cookie: str | None,
        now: float,
    ) -> SignedInPerson:
        """Complete a sign-in from the provider's redirect.

        Raises:
            SignInFailed: an error from the provider, a missing or wrong ``state``, a refused code,
                an ID token that does not verify or carries another ``nonce``.
            KeyswapError: the provider cannot be reached.
        """
        flow = self._open(cookie, now)
        if error:
            raise SignInFailed("the identity provider did not sign you in")
        if not state or not hmac.compare_digest(str(flow["state"]).encode(), state.encode()):
            raise SignInFailed("the sign-in answer does not match the sign-in started here")
        if not code or len(code) > 2048:
            raise SignInFailed("the identity provider sent no code")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": str(flow["verifier"]),
            "client_id": self.settings.client_id,
        }
        try:
            endpoint = str(self._endpoints()["token_endpoint"])
            if self.settings.client_secret:
                secret = (self.settings.client_id, self.settings.client_secret)
                response = self._http.post(endpoint, data=form, auth=secret)
            else:
                response = self._http.post(endpoint, data=form)
        except httpx.HTTPError:
            raise KeyswapError("the identity provider cannot be reached") from None
        if response.status_code != 200:
            raise SignInFailed("the identity provider refused the sign-in code")
        try:
            tokens = response.json()
            id_token = tokens["id_token"]
        except (ValueError, KeyError, TypeError):
            raise SignInFailed("the identity provider sent no ID token") from None
        try:
            claims = self._verifier.verify_sync(str(id_token))
        except KeyswapError:
            raise SignInFailed("the ID token did not verify") from None
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(
            nonce.encode(), str(flow["nonce"]).encode()
        ):
            raise SignInFailed("the ID token was not made for this sign-in (nonce)")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 1 <= len(subject) <= 255:
            raise SignInFailed("the ID token has no usable subject")
        if "email" not in claims:
            claims = {**self._userinfo(tokens.get("access_token"), subject), **claims}
        email = None
        if claims.get("email_verified") is True and isinstance(claims.get("email"), str):
            try:
                email = validate_email(claims["email"])
            except InvalidInput:
                email = None
        return SignedInPerson(subject, email, str(flow.get("next", "/portal/")))

    def _userinfo(self, access_token: object, subject: str) -> dict[str, Any]:
        """The e-mail claims from the UserInfo endpoint (providers that keep them out of the ID
        token); nothing if there is no endpoint or it answers for another subject."""
        endpoint = self._endpoints().get("userinfo_endpoint")
        if not isinstance(access_token, str) or not isinstance(endpoint, str):
            return {}
        try:
            response = self._http.get(endpoint, headers={"Authorization": f"Bearer {access_token}"})
            info = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return {}
        if not isinstance(info, dict) or info.get("sub") != subject:
            return {}
        return {name: info[name] for name in ("email", "email_verified") if name in info}
