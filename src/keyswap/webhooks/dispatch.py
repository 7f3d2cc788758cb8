"""The webhook dispatcher: delivers due events, signed per Standard Webhooks, and retries with backoff.

Each round (:meth:`Dispatcher.run_once`) claims up to ``batch`` due events from the outbox with a lease
(:func:`keyswap.store.webhooks.claim_due_events`: two processes never hold one event at once; a process
that dies holding one loses it when the lease ends, and another node delivers it), then delivers each:

- the body is the event's JSON payload (``{"type", "timestamp", "data"}``), compact UTF-8;
- headers ``webhook-id`` (the event id, the same on every attempt), ``webhook-timestamp`` (epoch
  seconds of this attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of
  ``id.timestamp.body`` under the consumer's ``whsec_`` secret, by the ``standardwebhooks`` library);
- one POST with timeouts (default 10 s for each connect, read and write; the answer's body is read
  for at most :data:`MAX_TOTAL_TIME`), no redirects followed (a 3xx is a failed attempt), no proxy or
  ``.netrc`` from the environment; at most :data:`EXCERPT_BYTES` of the answer are read and kept,
  uncompressed (``accept-encoding: identity``; the raw bytes are never decoded);
- the host name is resolved when the connection is made, by the dispatcher's own resolver, and the
  connection goes to one of the addresses that were checked (never to a second, separate lookup:
  a name that answers a public address to the check and a private one to the connection -- DNS
  rebinding -- reaches nothing); it is refused if any address is not public (SSRF; a loopback address
  passes only for an endpoint set with ``allow_http_loopback`` whose URL names a loopback host).

The events of one round are delivered by up to ``concurrency`` threads at once (default 8), so one
slow receiver delays only its own events. The lease covers the whole round (``batch`` events at 35 s
each with the default timeout); a receiver that trickles its answer a byte at a time for longer than
that can see the event sent again by another node (receivers deduplicate on ``webhook-id``).

Every attempt is recorded (time, HTTP status or error kind, duration, next retry). A 2xx answer
delivers the event; anything else is retried after an exponential backoff (:class:`RetryPolicy`:
10 s, 30 s, 90 s, 4.5 min, 13.5 min, 40 min, 2 h, then every 6 h) until :attr:`RetryPolicy.max_age`
(24 h by default) after the event was recorded; then it is ``failed`` (``keyswap webhooks redeliver``
queues it again). An event whose consumer no longer has a webhook fails at once (``no_endpoint``).

Retention: delivered and failed events, with their attempts, are deleted 30 days after they finished
(``retention``); pending ones are kept until they finish.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from standardwebhooks.webhooks import Webhook

from keyswap import __version__
from keyswap.errors import ConfigError
from keyswap.gateway.secret import ServerSecret
from keyswap.manage.webhooks import host_is_loopback, unsafe_address
from keyswap.store import webhooks as wstore
from keyswap.store.sql import Store
from keyswap.store.webhooks import ClaimedEvent
from keyswap.webhooks.secrets import decrypt_secret, open_data

__all__ = [
    "DEFAULT_RETENTION",
    "ERROR_KINDS",
    "EXCERPT_BYTES",
    "MAX_TOTAL_TIME",
    "Dispatcher",
    "DispatcherThread",
    "RetryPolicy",
]

log = logging.getLogger("keyswap.webhooks")

#: Error kinds an attempt without an HTTP answer records: ``timeout``, ``connect`` (refused,
#: unreachable, TLS), ``network`` (any other transport error), ``blocked_address`` (the host resolves
#: to a non-public address), ``dns`` (the host does not resolve), ``no_endpoint`` (the consumer has no
#: webhook any more), ``secret`` (the secret or sealed data does not decrypt: another server secret).
ERROR_KINDS = (
    "timeout",
    "connect",
    "network",
    "blocked_address",
    "dns",
    "no_endpoint",
    "secret",
)
#: Most bytes of a response body read and kept (as text) with the attempt.
EXCERPT_BYTES = 256
#: Longest one delivery may take, seconds, whatever the per-phase timeouts.
MAX_TOTAL_TIME = 30.0
#: How long delivered and failed events (and their attempts) are kept: 30 days.
DEFAULT_RETENTION = 30 * 86400.0

Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again: after attempt *n* (1-based), wait ``min(first * factor**(n-1), longest)``
    seconds, spread by ``±jitter`` (a fraction), while the event is younger than ``max_age`` seconds.

    Defaults: 10 s, 30 s, 90 s, 270 s, 810 s, 2430 s, 7290 s, then 6 h: 11 attempts within 24 h.

    Raises:
        ValueError: a non-positive or non-finite value, or a jitter outside 0-0.5.
    """

    first: float = 10.0
    factor: float = 3.0
    longest: float = 6 * 3600.0
    max_age: float = 24 * 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("first", "factor", "longest", "max_age"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number")
        if not 0 <= self.jitter <= 0.5:
            raise ValueError("jitter must be 0-0.5")

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after attempt number ``attempt`` failed."""
        base = min(self.first * self.factor ** min(attempt - 1, 64), self.longest)
        return base * (1 + self.jitter * (2 * rng() - 1))

    def next_attempt(
        self,
        *,
        attempt: int,
        created_at: float,
        now: float,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """When to try after attempt ``attempt`` failed at ``now``; ``None``: give up."""
        due = now + self.delay(attempt, rng)
        return None if due - created_at > self.max_age else due


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _Blocked(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _checked_addresses(resolve: Resolver, host: str, port: int) -> list[str]:
    """``host``'s addresses from ``resolve``, all public, in order.

    Raises:
        _Blocked: ``dns`` if it does not resolve; ``blocked_address`` if any address is not public.
    """
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        raise _Blocked("dns") from None
    if not addresses:
        raise _Blocked("dns")
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise _Blocked("blocked_address") from None
        if unsafe_address(address):
            raise _Blocked("blocked_address")
    return list(dict.fromkeys(addresses))


class _PinnedBackend(httpcore.SyncBackend):
    """Connects only to addresses the resolver gave and :func:`unsafe_address` let through: the
    check and the connection use one lookup (no DNS rebinding between them). TLS still checks the
    URL's host name (httpcore sends it as SNI and verifies the certificate against it)."""

    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        addresses = _checked_addresses(self._resolve, host.strip("[]"), port)
        failure: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(
                    address.split("%", 1)[0], port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's transport over a :class:`_PinnedBackend` connection pool."""

    def __init__(self, resolve: Resolver) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=_PinnedBackend(resolve),
        )


def _excerpt(data: bytes) -> str | None:
    if not data:
        return None
    text = data[:EXCERPT_BYTES].decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else " " for c in text)


class Dispatcher:
    """Delivers due webhook events from ``store`` (see the module docstring).

    Args:
        store: the store holding the outbox.
        secret: the server secret (the webhook secrets are encrypted under a key derived from it).
        policy: the retry schedule.
        clock: wall-clock seconds (when events are due; the ``webhook-timestamp``).
        timer: monotonic seconds (how long an attempt took).
        client: the HTTP client (default: one of our own, no redirects, ``timeout`` per phase).
        timeout: seconds for each of connect, read and write.
        batch: most events claimed per round.
        concurrency: most deliveries at once (threads).
        owner: this process's lease name (default: host, pid and a random suffix).
        resolver: ``(host, port) -> addresses`` for the SSRF check (default: the system's).
        rng: ``[0, 1)`` numbers for the jitter.
        retention: seconds a delivered or failed event (and its attempts) is kept; pruned at most
            once an hour by :meth:`run_once`. ``0``: kept forever.
    """

    def __init__(
        self,
        store: Store,
        secret: ServerSecret,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        batch: int = 20,
        concurrency: int = 8,
        owner: str | None = None,
        resolver: Resolver | None = None,
        rng: Callable[[], float] = random.random,
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError("the webhook timeout must be a positive number of seconds")
        if not 1 <= batch <= 1000:
            raise ConfigError("the webhook batch must be 1-1000")
        if not 1 <= concurrency <= 64:
            raise ConfigError("the webhook concurrency must be 1-64")
        self.store = store
        self.policy = policy or RetryPolicy()
        self._key = secret.webhook_secret_encryption_key
        self._clock = clock
        self._timer = timer
        self._resolve = resolver or _system_resolver
        self._own_client = client is None

        def new_client(transport: httpx.BaseTransport | None) -> httpx.Client:
            return httpx.Client(
                timeout=httpx.Timeout(timeout),
                follow_redirects=False,
                trust_env=False,
                transport=transport,
                headers={
                    "user-agent": f"keyswap-webhooks/{__version__}",
                    "accept-encoding": "identity",
                },
            )

        # Public endpoints: connections pinned to checked addresses. Loopback endpoints (allowed
        # with allow_http_loopback, the URL naming a loopback host): the system's resolver.
        self._client = client or new_client(_PinnedTransport(self._resolve))
        self._loopback_client = client or new_client(None)
        self.timeout = timeout
        self.batch = batch
        self._pool = (
            ThreadPoolExecutor(concurrency, thread_name_prefix="keyswap-webhook")
            if concurrency > 1
            else None
        )
        self.owner = owner or f"{socket.gethostname()[:40]}:{os.getpid()}:{os.urandom(3).hex()}"
        self._rng = rng
        self.retention = retention
        self._next_prune = 0.0
        # Each claimed event may take up to MAX_TOTAL_TIME: the lease covers the whole batch.
        self.lease = batch * (min(MAX_TOTAL_TIME, 3 * timeout) + 5.0)

    def close(self) -> None:
        """Stop the delivery threads and close the HTTP client (if it is ours)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._own_client:
            self._client.close()
            self._loopback_client.close()

    def run_once(self) -> int:
        """Claim the due events and try each once; returns how many attempts were made."""
        now = self._clock()
        if self.retention > 0 and now >= self._next_prune:
            self._next_prune = now + 3600
            pruned = wstore.prune_events(self.store, finished_before=now - self.retention)
            if pruned:
                log.info("pruned %d finished webhook event(s)", pruned)
        claimed = wstore.claim_due_events(
            self.store, owner=self.owner, now=self._clock(), lease=self.lease, limit=self.batch
        )
        if self._pool is None or len(claimed) < 2:
            for item in claimed:
                self._deliver(item)
        else:
            for _ in self._pool.map(self._deliver, claimed):
                pass
        return len(claimed)

    def drain(self, rounds: int = 100) -> int:
        """:meth:`run_once` until nothing is due (at most ``rounds`` rounds); attempts made."""
        total = 0
        for _ in range(rounds):
            made = self.run_once()
            total += made
            if made == 0:
                break
        return total

    # -- one attempt ---------------------------------------------------------------------------------

    def _deliver(self, item: ClaimedEvent) -> None:
        event, endpoint = item.event, item.endpoint
        started = self._timer()
        at = self._clock()
        status: int | None = None
        error: str | None = None
        excerpt: str | None = None
        url = endpoint.url if endpoint is not None else ""
        final_error = False
        if endpoint is None:
            error, final_error = "no_endpoint", True
        else:
            try:
                whsec = decrypt_secret(self._key, endpoint.consumer_id, endpoint.secret_blob)
                body = self._body(event.id, event.payload)
            except ConfigError as exc:
                error, final_error = "secret", True
                log.error("webhook %s of consumer %s: %s", event.id, endpoint.consumer_name, exc)
            else:
                try:
                    client = self._client_for(endpoint.url, endpoint.allow_http_loopback)
                    status, excerpt = self._post(client, event.id, endpoint.url, whsec, body, at)
                except _Blocked as blocked:
                    error = blocked.kind
                except httpx.TimeoutException:
                    error = "timeout"
                except httpx.ConnectError:
                    error = "connect"
                except httpx.HTTPError:
                    error = "network"
        duration = max(0.0, self._timer() - started)
        number = event.attempts + 1
        if status is not None and 200 <= status < 300:
            state, next_at = "delivered", None
        elif final_error:
            state, next_at = "failed", None
        else:
            next_at = self.policy.next_attempt(
                attempt=number, created_at=event.created_at, now=at, rng=self._rng
            )
            state = "pending" if next_at is not None else "failed"
        wstore.finish_attempt(
            self.store,
            event.id,
            owner=self.owner,
            at=at,
            url=url,
            status_code=status,
            error=error,
            duration=duration,
            state=state,
            next_retry_at=next_at,
            response_excerpt=excerpt,
        )
        log.info(
            "webhook %s %s to consumer %s: attempt %d %s -> %s",
            event.type,
            event.id,
            event.consumer_name,
            number,
            status if status is not None else error,
            state,
        )

    def _client_for(self, url: str, allow_loopback: bool) -> httpx.Client:
        """The client for ``url``: the loopback one for an allowed loopback endpoint; else the
        pinned one (which resolves and checks the host as it connects). An injected client gets the
        check here, before it connects (it resolves again itself: no rebinding guard)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if allow_loopback and host_is_loopback(host):
            return self._loopback_client
        if not self._own_client:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            _checked_addresses(self._resolve, host, port)
        return self._client

    def _body(self, event_id: str, payload: dict[str, Any]) -> bytes:
        """The JSON body: the payload, with sealed data opened (:func:`enqueue`'s ``seal``)."""
        if "sealed" in payload:
            data = json.loads(open_data(self._key, event_id, str(payload["sealed"])))
            payload = {
                "type": payload.get("type"),
                "timestamp": payload.get("timestamp"),
                "data": data,
            }
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def _post(
        self, client: httpx.Client, event_id: str, url: str, whsec: str, body: bytes, at: float
    ) -> tuple[int, str | None]:
        stamp = datetime.fromtimestamp(math.floor(at), UTC)
        signature = Webhook(whsec).sign(event_id, stamp, body)
        headers = {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(math.floor(at)),
            "webhook-signature": signature,
        }
        deadline = self._timer() + MAX_TOTAL_TIME
        with client.stream("POST", url, content=body, headers=headers) as response:
            data = b""
            for chunk in response.iter_raw():
                data += chunk
                if len(data) >= EXCERPT_BYTES or self._timer() > deadline:
                    break
            return response.status_code, _excerpt(data)


class DispatcherThread:
    """Runs a :class:`Dispatcher` in a daemon thread: a round every ``interval`` seconds (at once again
    after a full batch), until :meth:`stop`. Errors (the store down) are logged once (a warning) and
    retried every round."""

    def __init__(self, dispatcher: Dispatcher, *, interval: float = 2.0) -> None:
        self.dispatcher = dispatcher
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyswap-webhooks", daemon=True)

    def start(self) -> DispatcherThread:
        """Start the thread."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current round and close the dispatcher."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.dispatcher.close()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                made = self.dispatcher.run_once()
            except Exception as exc:  # the store down: say so once, keep trying
                log.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "webhook dispatcher round failed (%s); retrying every %.0f s",
                    type(exc).__name__,
                    self.interval,
                )
                failing = True
                made = 0
            else:
                if failing:
                    log.info("webhook dispatcher working again")
                failing = False
            if made < self.dispatcher.batch:
                self._stop.wait(self.interval)
