"""Fetch a JWKS document over HTTP(S): one synchronous request with hard limits.

:class:`JWKSFetcher` is deliberately sync and blocking; :class:`~keyswap.verifier.keyset.KeySet` runs it on
its own worker thread, so the event loop never waits on it. The rules:

- ``http`` and ``https`` URLs only (anything else is a :class:`~keyswap.errors.ConfigError`);
- one **total** deadline (default 5 s) for connect, redirects, headers and body. Per-operation timeouts
  alone let a server that drips one byte a second hold the fetch forever, so a watchdog shuts the socket
  down when the deadline passes;
- the body is streamed and the fetch stops as soon as it exceeds ``max_bytes`` (default 1 MiB);
- redirects are followed by hand, at most 3, and only to the same scheme and host as the configured URL;
- ``User-Agent: keyswap/<version>``, ``Accept: application/jwk-set+json, application/json``,
  ``Accept-Encoding: identity``;
- the status must be 2xx and the body strict UTF-8 JSON (no duplicate member names, no ``NaN``); an HTML
  page (a login or error page) is reported as such;
- ``Cache-Control: max-age`` (minus ``Age``) becomes :attr:`FetchResult.max_age`; ``no-cache`` or
  ``no-store`` give ``0`` (the key set then uses its minimum TTL); no usable directive gives ``None``.

Every failure is a :class:`~keyswap.errors.JWKSFetchError` whose ``kind`` names the cause. URLs in error
messages have their user-info and query removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import httpx

from keyswap import __version__
from keyswap.errors import ConfigError, JWKSFetchError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_REDIRECTS",
    "FetchResult",
    "JWKSFetcher",
    "check_jwks_url",
    "parse_max_age",
    "redact_url",
]

#: Total time allowed for one fetch (connect, redirects, headers, body), in seconds.
DEFAULT_TIMEOUT = 5.0
#: Largest JWKS body accepted, in bytes.
DEFAULT_MAX_BYTES = 1 << 20
#: Redirects followed at most (same scheme and host only).
MAX_REDIRECTS = 3

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ACCEPT = "application/jwk-set+json, application/json"


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A fetched JWKS document (parsed JSON, not yet checked as a JWKS) and its freshness.

    ``max_age`` is the lifetime the server allows, in seconds: from ``Cache-Control: max-age`` minus
    ``Age``; ``0.0`` for ``no-cache``/``no-store``; ``None`` when the server says nothing usable.
    """

    document: Any
    max_age: float | None


def redact_url(url: str | httpx.URL) -> str:
    """``url`` without user-info, query or fragment: safe for logs and error messages."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    port = f":{u.port}" if u.port is not None else ""
    return f"{u.scheme}://{u.host}{port}{u.path}"


def check_jwks_url(url: str) -> httpx.URL:
    """Validate a JWKS URL: absolute ``http`` or ``https`` with a host.

    Raises:
        ConfigError: any other scheme (``file:``, ``ftp:``, ...), no host, or an unparsable URL.
    """
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(f"invalid JWKS URL: {exc}") from None
    if u.scheme not in ("http", "https"):
        raise ConfigError(
            f"JWKS URL must use http or https, not {u.scheme or 'no scheme'!r}: {redact_url(u)}"
        )
    if not u.host:
        raise ConfigError(f"JWKS URL has no host: {redact_url(u)}")
    return u


def parse_max_age(headers: httpx.Headers) -> float | None:
    """The freshness lifetime from ``Cache-Control`` and ``Age`` (see :class:`FetchResult`)."""
    max_age: float | None = None
    for value in headers.get_list("cache-control", split_commas=True):
        name, _, arg = value.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age":
            arg = arg.strip().strip('"')
            if arg.isascii() and arg.isdigit():
                max_age = float(min(int(arg), 10**9))
    if max_age is None:
        return None
    age = headers.get("age", "").strip()
    if age.isascii() and age.isdigit():
        max_age = max(0.0, max_age - min(int(age), 10**9))
    return max_age


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _decode_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("byte order mark")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise JWKSFetchError("JWKS response is not valid JSON", kind="not_json") from None


class _Watchdog:
    """Shuts the fetch's socket down at the deadline, so a dripping server cannot outlast it."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._done = False
        self.fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.name = "keyswap-jwks-watchdog"

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        self._timer.join()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx/httpcore ``trace`` extension: remember each socket the request connects."""
        if event.endswith(("connect_tcp.complete", "start_tls.complete")):
            self.watch(info.get("return_value"))

    def watch(self, stream: Any) -> None:
        get_extra_info = getattr(stream, "get_extra_info", None)
        sock = get_extra_info("socket") if get_extra_info is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            if self.fired:
                _shutdown(sock)
            elif not self._done:
                self._socks.append(sock)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for sock in self._socks:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


#: Fetchers with a client of their own, given a new one in a forked child (see JWKSFetcher).
_OWN_CLIENTS: weakref.WeakSet[JWKSFetcher] = weakref.WeakSet()


def _new_clients_after_fork() -> None:
    for fetcher in list(_OWN_CLIENTS):
        fetcher._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_clients_after_fork)


class JWKSFetcher:
    """Fetches JWKS documents with a total deadline, a size cap and same-host redirects only.

    Thread-safe: several key sets may share one fetcher (each fetch has its own deadline). Pass
    ``client`` to use your own :class:`httpx.Client` (for example one with an ``httpx.MockTransport``
    in tests, or custom TLS settings); it must not follow redirects by itself (the fetcher asks it not
    to per request) and is not closed by :meth:`close`.

    Fork-safe with its own client: a forked child (a pre-fork server started after the verifier)
    gets a new client, because the parent's connection pool, and the lock a fetch in flight held at
    the fork, do not belong to the child. A client you pass is yours to replace after a fork.

    Raises:
        ConfigError: ``timeout`` or ``max_bytes`` not positive.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        user_agent: str = f"keyswap/{__version__}",
        max_redirects: int = MAX_REDIRECTS,
        client: httpx.Client | None = None,
    ) -> None:
        if not timeout > 0:
            raise ConfigError(f"JWKS fetch timeout must be positive, got {timeout!r}")
        if max_bytes < 1:
            raise ConfigError(f"JWKS size cap must be positive, got {max_bytes!r}")
        if max_redirects < 0:
            raise ConfigError(f"max_redirects must be >= 0, got {max_redirects!r}")
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self.max_redirects = max_redirects
        self.user_agent = user_agent
        self._own_client = client is None
        self._client = client if client is not None else self._default_client()
        if self._own_client:
            _OWN_CLIENTS.add(self)

    def _after_fork(self) -> None:
        """In a forked child: a new client; the parent's is dropped unclosed (its lock may be held)."""
        self._client = self._default_client()

    @staticmethod
    def _default_client() -> httpx.Client:
        # No keep-alive: a fetch every few minutes gains nothing from it, and a fresh connection per
        # fetch lets the watchdog see (and cut) the socket of every request.
        return httpx.Client(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=0),
        )

    def close(self) -> None:
        """Close the HTTP client if the fetcher created it."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> JWKSFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, url: str) -> FetchResult:
        """GET ``url`` and return the parsed JSON body with its ``max_age``.

        Raises:
            ConfigError: ``url`` is not an http(s) URL.
            JWKSFetchError: timeout, network error, redirect refused or too many, non-2xx status,
                body over ``max_bytes``, HTML or invalid JSON. ``kind`` names the cause.
        """
        return self.fetch_document(url)

    def fetch_document(self, url: str, *, accept: str = _ACCEPT, what: str = "JWKS") -> FetchResult:
        """:meth:`fetch` of any JSON document, with the same limits.

        ``accept`` is the ``Accept`` header; ``what`` names the document in error messages (the
        discovery of :mod:`keyswap.verifier.discovery` reads metadata documents with it).

        Raises:
            ConfigError, JWKSFetchError: as :meth:`fetch`.
        """
        origin = check_jwks_url(url)
        deadline = time.monotonic() + self.timeout
        with _Watchdog(self.timeout) as watchdog:
            try:
                return self._fetch(origin, deadline, watchdog, accept)
            except JWKSFetchError as exc:
                if what != "JWKS" and exc.reason.startswith("JWKS "):
                    # every message names the document first: name the one fetched
                    raise JWKSFetchError(what + exc.reason[4:], kind=exc.kind) from None
                raise
            except httpx.TimeoutException:
                raise self._timeout_error(origin, what) from None
            except httpx.HTTPError as exc:
                if watchdog.fired or time.monotonic() >= deadline:
                    raise self._timeout_error(origin, what) from None
                raise JWKSFetchError(
                    f"{what} fetch from {redact_url(origin)} failed: {type(exc).__name__}",
                    kind="network",
                ) from None

    def _timeout_error(self, origin: httpx.URL, what: str = "JWKS") -> JWKSFetchError:
        return JWKSFetchError(
            f"{what} fetch from {redact_url(origin)} took longer than {self.timeout:g} s",
            kind="timeout",
        )

    def _fetch(
        self, origin: httpx.URL, deadline: float, watchdog: _Watchdog, accept: str
    ) -> FetchResult:
        url = origin
        headers = {
            "User-Agent": self.user_agent,
            "Accept": accept,
            "Accept-Encoding": "identity",
        }
        for hop in range(self.max_redirects + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout_error(origin)
            request = self._client.build_request(
                "GET",
                url,
                headers=headers,
                timeout=httpx.Timeout(remaining),
                extensions={"trace": watchdog.trace},
            )
            response = self._client.send(request, stream=True, follow_redirects=False)
            try:
                watchdog.watch(response.extensions.get("network_stream"))
                if response.status_code in _REDIRECT_STATUSES:
                    url = self._redirect_target(origin, response, hop)
                    continue
                return self._read(origin, response, deadline)
            finally:
                response.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _redirect_target(self, origin: httpx.URL, response: httpx.Response, hop: int) -> httpx.URL:
        if hop >= self.max_redirects:
            raise JWKSFetchError(
                f"JWKS fetch from {redact_url(origin)}: more than {self.max_redirects} redirects",
                kind="redirect",
            )
        location = response.headers.get("location")
        if not location:
            raise JWKSFetchError(
                f"JWKS fetch from {redact_url(origin)}: redirect without Location", kind="redirect"
            )
        try:
            target = response.url.join(location)
        except httpx.InvalidURL:
            raise JWKSFetchError(
                f"JWKS fetch from {redact_url(origin)}: invalid redirect Location", kind="redirect"
            ) from None
        if target.scheme != origin.scheme or target.host != origin.host:
            raise JWKSFetchError(
                f"JWKS fetch from {redact_url(origin)}: redirect to another scheme or host refused "
                f"({redact_url(target)})",
                kind="redirect",
            )
        return target

    def _read(self, origin: httpx.URL, response: httpx.Response, deadline: float) -> FetchResult:
        where = redact_url(origin)
        if not 200 <= response.status_code < 300:
            raise JWKSFetchError(
                f"JWKS fetch from {where}: HTTP {response.status_code}", kind="status"
            )
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in ("text/html", "application/xhtml+xml"):
            raise JWKSFetchError(
                f"JWKS fetch from {where}: got an HTML page, not JSON", kind="not_json"
            )
        declared = response.headers.get("content-length", "").strip()
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(where)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                raise self._too_large(where)
            if time.monotonic() >= deadline:
                raise self._timeout_error(origin)
        document = _decode_json(bytes(body))
        return FetchResult(document=document, max_age=parse_max_age(response.headers))

    def _too_large(self, where: str) -> JWKSFetchError:
        return JWKSFetchError(
            f"JWKS fetch from {where}: body larger than {self.max_bytes} bytes", kind="too_large"
        )
