"""Find an issuer's JWKS URL from its metadata document (OpenID Connect Discovery, RFC 8414).

Given only an issuer URL, :class:`Discovery` reads the provider's metadata and takes its ``jwks_uri``:

1. ``<issuer>/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4: appended to the
   issuer, trailing slash removed);
2. when that answers a non-2xx status, ``/.well-known/oauth-authorization-server`` inserted between
   the host and the issuer's path (RFC 8414 §3.1: ``https://a.example/tenant`` ->
   ``https://a.example/.well-known/oauth-authorization-server/tenant``).

The rules (each pinned by a test in tests/verifier/test_discovery.py):

- the document's ``issuer`` must equal the configured issuer **exactly** (OpenID Connect Discovery §4.3,
  RFC 8414 §3.3): a provider (or a man in the middle) cannot substitute another issuer's keys;
- the issuer must be ``https``, or ``http`` on a loopback host (127.0.0.0/8, ``::1``, ``localhost``:
  tests and local providers); checked at configuration time (:func:`check_discovery_issuer`);
- ``jwks_uri`` must be an ``https`` URL; ``http`` only when the issuer itself is ``http`` on loopback,
  and then only on a loopback host too;
- the documents are fetched with the :class:`~keyswap.verifier.fetch.JWKSFetcher` limits (total
  deadline, size cap, same-host redirects only, strict JSON);
- a found ``jwks_uri`` is kept for :data:`DISCOVERY_TTL` seconds, and re-read sooner after a JWKS fetch
  failed (:meth:`Discovery.invalidate`: the provider may have moved its keys). When re-reading fails,
  the last good ``jwks_uri`` keeps being used (logged at WARNING).

Every failure is a :class:`~keyswap.errors.JWKSFetchError`, so the key set treats it exactly like an
unreachable JWKS: background retries with backoff and 503 + ``Retry-After`` while no key is held.
:class:`~keyswap.verifier.keyset.KeySet` calls :meth:`Discovery.jwks_url` on its worker thread only:
discovery never runs on a request's path beyond the key set's cold-start rules.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from keyswap.errors import ConfigError, JWKSFetchError
from keyswap.verifier.fetch import JWKSFetcher, redact_url

__all__ = [
    "DISCOVERY_TTL",
    "Discovery",
    "check_discovery_issuer",
    "jwks_uri_from_metadata",
    "metadata_urls",
]

log = logging.getLogger("keyswap.verifier.discovery")

#: Seconds a discovered ``jwks_uri`` is used before the metadata document is read again.
DISCOVERY_TTL = 86400.0

_OPENID = "/.well-known/openid-configuration"
_OAUTH = "/.well-known/oauth-authorization-server"
_ACCEPT = "application/json"
_MAX_SHOWN = 120  # characters of a provider-supplied value quoted in an error message


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def check_discovery_issuer(issuer: str) -> httpx.URL:
    """Validate an issuer used for discovery: ``https`` (or ``http`` on loopback), no query/fragment.

    Raises:
        ConfigError: not a URL, another scheme, ``http`` on a non-loopback host, a query or fragment.
    """
    try:
        u = httpx.URL(issuer)
    except (httpx.InvalidURL, TypeError):
        raise ConfigError(f"discovery needs the issuer to be a URL, got {_shown(issuer)}") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise ConfigError(f"discovery needs an https:// issuer URL, got {_shown(issuer)}")
    if u.scheme == "http" and not _is_loopback(u.host):
        raise ConfigError(
            f"discovery needs an https:// issuer (http only on loopback): {redact_url(u)}"
        )
    if u.query or u.fragment or "?" in issuer or "#" in issuer:
        raise ConfigError("discovery needs an issuer URL without query or fragment")
    return u


def metadata_urls(issuer: str) -> tuple[str, str]:
    """The OpenID Connect and the RFC 8414 metadata URLs of ``issuer``, in the order they are tried.

    Raises:
        ConfigError: see :func:`check_discovery_issuer`.
    """
    u = check_discovery_issuer(issuer)
    path = u.raw_path.decode("ascii").rstrip("/")
    base = f"{u.scheme}://{u.netloc.decode('ascii')}"
    return issuer.rstrip("/") + _OPENID, base + _OAUTH + path


def jwks_uri_from_metadata(document: Any, issuer: str, source: str) -> str:
    """The ``jwks_uri`` of a metadata ``document`` fetched from ``source`` for ``issuer``.

    Raises:
        JWKSFetchError: not a JSON object (``kind="not_metadata"``), an ``issuer`` that is not exactly
            ``issuer`` (``kind="issuer_mismatch"``), or a missing or unacceptable ``jwks_uri``
            (``kind="bad_jwks_uri"``).
    """
    where = redact_url(source)
    if type(document) is not dict:
        raise JWKSFetchError(f"metadata at {where} is not a JSON object", kind="not_metadata")
    named = document.get("issuer")
    if named != issuer or type(named) is not str:
        raise JWKSFetchError(
            f"metadata at {where} names issuer {_shown(named)}, not {issuer!r} "
            "(they must match exactly)",
            kind="issuer_mismatch",
        )
    jwks_uri = document.get("jwks_uri")
    if type(jwks_uri) is not str or not jwks_uri:
        raise JWKSFetchError(f"metadata at {where} has no jwks_uri", kind="bad_jwks_uri")
    try:
        u = httpx.URL(jwks_uri)
    except (httpx.InvalidURL, TypeError):
        u = None
    if u is None or not u.host or u.scheme not in ("http", "https"):
        raise JWKSFetchError(
            f"metadata at {where}: jwks_uri {_shown(jwks_uri)} is not an https URL",
            kind="bad_jwks_uri",
        )
    if u.scheme == "http":
        issuer_url = httpx.URL(issuer)
        if not (issuer_url.scheme == "http" and _is_loopback(issuer_url.host)) or not (
            _is_loopback(u.host)
        ):
            raise JWKSFetchError(
                f"metadata at {where}: jwks_uri {redact_url(u)} must use https "
                "(http only when issuer and jwks_uri are both on loopback)",
                kind="bad_jwks_uri",
            )
    return jwks_uri


class Discovery:
    """The ``jwks_uri`` of one issuer, read from its metadata document and cached (see the module).

    Blocking: :meth:`jwks_url` may fetch; the key set calls it on its worker thread. Thread-safe.

    Raises:
        ConfigError: the issuer is not usable for discovery (:func:`check_discovery_issuer`).
    """

    def __init__(
        self,
        issuer: str,
        *,
        fetcher: JWKSFetcher,
        ttl: float = DISCOVERY_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.urls = metadata_urls(issuer)
        self._fetcher = fetcher
        self._ttl = float(ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._jwks_url: str | None = None
        self._found_at = -float("inf")

    @property
    def current(self) -> str | None:
        """The last discovered ``jwks_uri`` (``None`` before the first success). No I/O."""
        return self._jwks_url

    def invalidate(self) -> None:
        """Read the metadata again on the next :meth:`jwks_url` (the last good one stays as fallback)."""
        with self._lock:
            self._found_at = -float("inf")

    def jwks_url(self) -> str:
        """The issuer's JWKS URL: cached while fresh, else read from the metadata document.

        Raises:
            JWKSFetchError: no metadata document could be read or accepted, and none was before.
        """
        with self._lock:
            cached, found_at = self._jwks_url, self._found_at
        if cached is not None and self._clock() - found_at < self._ttl:
            return cached
        try:
            found = self._discover()
        except JWKSFetchError as exc:
            if cached is None:
                raise
            log.warning(
                "discovery for %s failed (%s); keeping jwks_uri %s", self.issuer, exc, cached
            )
            return cached
        with self._lock:
            if found != self._jwks_url:
                log.info("discovery for %s: jwks_uri=%s", self.issuer, redact_url(found))
            self._jwks_url, self._found_at = found, self._clock()
        return found

    def _discover(self) -> str:
        openid, oauth = self.urls
        try:
            result = self._fetcher.fetch_document(openid, accept=_ACCEPT, what="OpenID metadata")
            source = openid
        except JWKSFetchError as first:
            if (
                first.kind != "status"
            ):  # unreachable, slow, not JSON...: the other path will not help
                raise
            try:
                result = self._fetcher.fetch_document(oauth, accept=_ACCEPT, what="OAuth metadata")
            except JWKSFetchError as second:
                raise JWKSFetchError(
                    f"no metadata for issuer {self.issuer}: {first.reason}; {second.reason}",
                    kind="discovery",
                ) from None
            source = oauth
        return jwks_uri_from_metadata(result.document, self.issuer, source)
