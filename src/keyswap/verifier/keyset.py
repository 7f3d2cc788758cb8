"""KeySet: the cached JWKS of one issuer, shared by async and sync (threaded) callers.

See :class:`KeySet` for the cache rules and docs/verifier-keyset.md for the operator's view.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keyswap.errors import ConfigError, JWKSFetchError, KeysUnavailable, UnknownKey
from keyswap.verifier.fetch import JWKSFetcher, check_jwks_url, redact_url

if TYPE_CHECKING:
    from keyswap.verifier.discovery import Discovery
from keyswap.verifier.jwk import SkippedKey, VerificationKey, parse_jwks
from keyswap.verifier.metrics import Metrics

__all__ = ["KeySet", "KeySetStatus"]

log = logging.getLogger("keyswap.verifier.keyset")

_Outcome = JWKSFetchError | None  # what a fetch future resolves to: None on success, never raises
_FetchFuture = concurrent.futures.Future[_Outcome]

#: Most (kid, reason) pairs remembered for "log each skipped key once"; the memory is reset beyond it.
_SKIP_LOG_MEMORY = 4096

#: While a set has never had keys, a failed fetch is logged at WARNING at most this often (real
#: seconds); the failures in between are logged at DEBUG (rule 6).
_COLD_WARN_EVERY = 60.0

#: Longest a lookup waits for a fetch that a lookup started after failed attempts (rule 12): a JWKS
#: that is back answers well within it; one that hangs does not hold requests for the fetch timeout.
_RETRY_LOOKUP_WAIT = 1.0

_Wait = tuple[_FetchFuture, float]  # the fetch a lookup waits for, and for how long at most


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """One installed key set. Replaced as a whole, so readers never need a lock."""

    keys: Mapping[str, VerificationKey]
    expires_at: float  # fresh until then (KeySet clock)
    usable_until: float  # expires_at + max_stale: served (stale) until then


_NOTHING = _Snapshot({}, -math.inf, -math.inf)

#: Key sets that have started a worker thread, reset in a forked child (which has no such thread).
_THREADED: weakref.WeakSet[KeySet] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for keyset in list(_THREADED):
        keyset._after_fork()
    _THREADED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


@dataclass(frozen=True, slots=True)
class KeySetStatus:
    """A point-in-time view of a :class:`KeySet`, for health checks and tests.

    ``expires_in`` is negative once the set is stale and ``None`` before the first successful fetch;
    ``usable`` says whether lookups are answered from the cache; ``failures`` counts consecutive failed
    fetches; ``fetching`` is true while a fetch is requested or running; ``next_retry_in`` is the wait
    before the next background retry (``None`` when none is scheduled); ``negative_cache`` is the number
    of kids remembered as absent from the current set.
    """

    url: str
    keys: int
    expires_in: float | None
    usable: bool
    failures: int
    fetching: bool
    next_retry_in: float | None
    negative_cache: int


class KeySet:
    """The keys of one JWKS URL, cached under an explicit policy; usable from async code and threads.

    Rules (each has a test in tests/verifier/test_keyset.py named after it):

    1. **Hot path.** A kid in a fresh set is answered by a plain dict read: no lock, no await, no I/O.
    2. **TTL.** A set is fresh for ``Cache-Control: max-age`` (minus ``Age``) clamped to
       ``[min_ttl, max_ttl]``; ``no-cache``/``no-store`` mean ``min_ttl``; without the header,
       ``default_ttl`` (default 300 s, at least 1 s).
    3. **Stale-while-revalidate.** After the TTL a known kid is still answered at once, and the lookup
       starts one background refresh; it never waits for it.
    4. **Keep last good.** A failed fetch (network, timeout, non-2xx, HTML, bad JSON, not a JWKS, too
       big, no usable key) never replaces the set: it keeps being served up to ``max_stale`` (default
       3600 s) past its expiry.
    5. **Unavailable, not unknown.** Without a usable set (never fetched, or older than ``max_stale``)
       lookups raise :class:`~keyswap.errors.KeysUnavailable` (503 + Retry-After), never
       :class:`~keyswap.errors.UnknownKey`.
    6. **Backoff.** After a failure the set retries in the background with exponential backoff
       (``retry_min`` doubling up to ``retry_max``, with jitter) until a fetch succeeds; lookups do not
       add fetches while a retry is pending. While the set has **never had keys** the backoff is
       capped at ``cold_retry_max`` (default 1 s, so a retry comes every 0.5-1 s) and lookups may add
       fetches (rule 12), so a service started before its issuer serves within about a second of
       the JWKS becoming reachable; such failures are logged at WARNING at most once a minute (DEBUG
       in between). Once the set has had keys, the full backoff applies.
    7. **Unknown kid.** A kid missing from a usable set triggers a refetch at most once per
       ``cooldown`` (default 10 s, at least 1 s), counted from the start of the last fetch of any kind;
       the lookup waits for that fetch (bounded by the fetch timeout) and looks again. Within the
       cooldown an unknown kid is refused at once with ``UnknownKey`` (zero I/O).
    8. **Negative cache.** A kid already checked against the current set (missed after a fetch, or
       removed by one) is refused at once, even after the cooldown, until the next successful fetch
       replaces the set. Bounded (``negative_cache_size``, oldest dropped first).
    9. **Single flight.** At most one fetch runs at a time; every caller that needs one (async tasks
       and threads alike) waits on the same future, so a burst causes exactly one request.
    10. **Rotation.** A new kid is accepted on first sight (rule 7). A fetch that removes kids calls
        ``on_keys_removed(removed)`` (on the worker thread) and the removed kids are refused from then on.
    11. **Skipped keys.** Keys that cannot be used are skipped and logged once per (kid, reason), not on
        every refresh; ``jwks_keys_skipped`` counts them once too.
    12. **Cold start.** :meth:`start` never blocks or fails: it starts the first fetch in the
        background. A lookup during the first attempt waits for it (bounded by the fetch timeout); after
        a failed attempt lookups answer ``KeysUnavailable`` at once while retries go on, and the set
        recovers by itself. While the set has never had keys, a lookup that finds no fetch running
        and the ``cooldown`` passed since the last fetch started fetches at once instead of waiting
        for the next retry, and waits for that fetch (at most 1 s after failed attempts; single
        flight: concurrent lookups wait for the same fetch). A lookup on a set that was never started starts it. A set
        left idle past ``max_stale`` (no failure seen) fetches and waits like a cold start.
    13. **Threads.** Fetches run on one daemon worker thread per key set; async callers await the
        fetch future through :func:`asyncio.wrap_future` (the event loop never blocks on I/O), sync
        callers wait on it with a timeout. :meth:`close` stops the worker.

    14. **Discovery.** With ``discovery`` (a :class:`~keyswap.verifier.discovery.Discovery`) instead of
        ``url``, each fetch first asks it for the JWKS URL (cached; read from the issuer's metadata
        document on the worker thread). A discovery failure is a failed fetch (rules 4-6, 12); a failed
        JWKS fetch makes the next one read the metadata again.

    ``clock`` (monotonic seconds) drives TTL, staleness and cooldown; backoff waits use real time.

    Raises:
        ConfigError: the URL is not http(s), both or neither of ``url`` and ``discovery``, or a
            duration is out of range.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        discovery: Discovery | None = None,
        fetcher: JWKSFetcher | None = None,
        default_ttl: float = 300,
        min_ttl: float = 1,
        max_ttl: float = 86400,
        cooldown: float = 10,
        max_stale: float = 3600,
        retry_min: float = 1,
        retry_max: float = 60,
        cold_retry_max: float = 1,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        on_keys_removed: Callable[[set[str]], None] | None = None,
        name: str | None = None,
        wait_timeout: float | None = None,
        negative_cache_size: int = 1024,
    ) -> None:
        if (url is None) == (discovery is None):
            raise ConfigError("a key set needs exactly one of a JWKS URL and a discovery")
        if url is not None:
            check_jwks_url(url)
        _check("min_ttl", min_ttl, low=0, strict=True)
        _check("max_ttl", max_ttl, low=min_ttl)
        _check("default_ttl", default_ttl, low=1)
        _check("cooldown", cooldown, low=1)
        _check("max_stale", max_stale, low=0)
        _check("retry_min", retry_min, low=0, strict=True)
        _check("retry_max", retry_max, low=retry_min)
        _check("cold_retry_max", cold_retry_max, low=0, strict=True)
        if wait_timeout is not None:
            _check("wait_timeout", wait_timeout, low=0, strict=True)
        if negative_cache_size < 0:
            raise ConfigError("negative_cache_size must be >= 0")
        self._url = url
        self._discovery = discovery
        if name is None:
            name = redact_url(discovery.issuer if discovery is not None else url or "")
        self.name = name
        self._fetcher = fetcher if fetcher is not None else JWKSFetcher()
        self._own_fetcher = fetcher is None
        self._default_ttl = float(default_ttl)
        self._min_ttl = float(min_ttl)
        self._max_ttl = float(max_ttl)
        self._cooldown = float(cooldown)
        self._max_stale = float(max_stale)
        self._retry_min = float(retry_min)
        self._retry_max = float(retry_max)
        self._cold_retry_max = float(cold_retry_max)
        self._clock = clock
        self._metrics = metrics if metrics is not None else Metrics()
        self._on_keys_removed = on_keys_removed
        self._wait_timeout = (
            float(wait_timeout) if wait_timeout is not None else self._fetcher.timeout + 0.5
        )
        self._negative_cache_size = negative_cache_size

        self._snap = _NOTHING
        # Everything below is guarded by _cond (slow paths only).
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self._inflight: _FetchFuture | None = None
        self._picked = False  # the worker has taken _inflight
        self._failures = 0
        self._had_keys = False  # a fetch has ever succeeded (rules 6 and 12: cold until then)
        # _inflight was started by a lookup that found no usable set: later lookups wait on it too.
        self._lookup_fetch = False
        self._cold_warned_at = -math.inf  # real monotonic time of the last cold-failure WARNING
        self._retry_at: float | None = None  # real monotonic time of the next background retry
        self._last_fetch_started = -math.inf  # KeySet clock
        self._negative: OrderedDict[str, None] = OrderedDict()
        self._skips_logged: set[tuple[str | None, str]] = set()

    # ---------------------------------------------------------------- public API

    @property
    def url(self) -> str | None:
        """The JWKS URL: the configured one, or the discovered one (``None`` before discovery)."""
        return self._url if self._discovery is None else self._discovery.current

    def start(self) -> None:
        """Start the first fetch in the background and return at once (idempotent, never raises)."""
        with self._cond:
            if self._closed or self._inflight is not None or self._retry_at is not None:
                return
            if self._snap is _NOTHING:
                self._begin_locked(self._clock())

    def close(self) -> None:
        """Stop the worker thread (waiting at most the fetch timeout) and close the own fetcher."""
        with self._cond:
            self._closed = True
            thread = self._thread
            orphan = self._inflight if not self._picked else None
            self._cond.notify_all()
        if orphan is not None:
            _resolve(orphan, JWKSFetchError("key set closed", kind="closed"))
        if thread is not None:
            thread.join(self._fetcher.timeout + 1.0)
        if self._own_fetcher:
            self._fetcher.close()

    def __enter__(self) -> KeySet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def get_key(self, kid: str) -> VerificationKey:
        """The key for ``kid``; awaits a fetch only on a cold start or an unknown kid (rules 7, 12).

        Raises:
            UnknownKey: no usable key has that kid (after at most one refetch per cooldown).
            KeysUnavailable: no usable key set right now (``retry_after`` in seconds).
        """
        snap = self._snap
        key = snap.keys.get(kid)
        if key is not None and self._clock() < snap.expires_at:
            return key
        step = self._decide(kid)
        if isinstance(step, VerificationKey):
            return step
        fut, bound = step
        outcome: _Outcome = None
        timed_out = False
        if not fut.done():
            waiter = asyncio.wrap_future(fut)
            # asyncio.wait never cancels `waiter`; cancelling it would cancel the shared future.
            done, _ = await asyncio.wait({waiter}, timeout=bound)
            timed_out = not done
        if not timed_out:
            outcome = fut.result()
        return self._after_wait(kid, confirmed=not timed_out and outcome is None)

    def fresh_key(self, kid: str) -> VerificationKey | None:
        """The key for ``kid`` when the current set is fresh and has it, else ``None`` (then call
        :meth:`get_key`). Never does I/O, never waits, never raises: the first step of
        :meth:`get_key`, without a coroutine."""
        snap = self._snap
        key = snap.keys.get(kid)
        if key is not None and self._clock() < snap.expires_at:
            return key
        return None

    def get_key_sync(self, kid: str) -> VerificationKey:
        """Blocking variant of :meth:`get_key` for threads (never call it on an event loop thread).

        Raises:
            UnknownKey: no usable key has that kid.
            KeysUnavailable: no usable key set right now.
        """
        snap = self._snap
        key = snap.keys.get(kid)
        if key is not None and self._clock() < snap.expires_at:
            return key
        step = self._decide(kid)
        if isinstance(step, VerificationKey):
            return step
        fut, bound = step
        try:
            outcome = fut.result(timeout=bound)
        except concurrent.futures.TimeoutError:
            return self._after_wait(kid, confirmed=False)
        return self._after_wait(kid, confirmed=outcome is None)

    def has_kid(self, kid: str) -> bool:
        """Whether the last good set (fresh or stale) has ``kid``. No I/O, no lock."""
        return kid in self._snap.keys

    @property
    def kids(self) -> frozenset[str]:
        """The kids of the last good set."""
        return frozenset(self._snap.keys)

    async def refresh(self) -> None:
        """Fetch now (or join the running fetch), ignoring the cooldown, and wait for it.

        Raises:
            JWKSFetchError: the fetch failed or took too long (the last good set is kept).
        """
        fut = self._force()
        if not fut.done():
            done, _ = await asyncio.wait({asyncio.wrap_future(fut)}, timeout=self._wait_timeout)
            if not done:
                raise self._wait_expired()
        error = fut.result()
        if error is not None:
            raise error

    def refresh_sync(self) -> None:
        """Blocking variant of :meth:`refresh`.

        Raises:
            JWKSFetchError: the fetch failed or took too long (the last good set is kept).
        """
        fut = self._force()
        try:
            error = fut.result(timeout=self._wait_timeout)
        except concurrent.futures.TimeoutError:
            raise self._wait_expired() from None
        if error is not None:
            raise error

    def status(self) -> KeySetStatus:
        """A snapshot of the cache state (see :class:`KeySetStatus`)."""
        now = self._clock()
        snap = self._snap
        with self._cond:
            retry_at = self._retry_at
            return KeySetStatus(
                url=self.name,
                keys=len(snap.keys),
                expires_in=None if snap is _NOTHING else snap.expires_at - now,
                usable=now < snap.usable_until,
                failures=self._failures,
                fetching=self._inflight is not None,
                next_retry_in=None if retry_at is None else max(0.0, retry_at - time.monotonic()),
                negative_cache=len(self._negative),
            )

    # ---------------------------------------------------------------- lookup policy

    def _decide(self, kid: str) -> VerificationKey | _Wait:
        """Slow path: answer, raise, or return the fetch to wait on (and how long) before looking again."""
        now = self._clock()
        snap = self._snap
        key = snap.keys.get(kid)
        if now < snap.usable_until:
            if key is not None:  # stale-while-revalidate
                self._refresh_in_background(now)
                return key
            self._metrics.inc("kid_misses", issuer=self.name)
            if kid in self._negative:
                raise UnknownKey("no key with this kid in the issuer's key set")
            with self._cond:
                fut = self._inflight
                if fut is None:
                    if now - self._last_fetch_started < self._cooldown:
                        raise UnknownKey("no key with this kid in the issuer's key set")
                    fut = self._begin_locked(now)
            return fut, self._wait_timeout
        with self._cond:  # no usable set: cold start, idle past max_stale, or an outage
            fut = self._inflight
            if fut is not None:
                if self._failures == 0:
                    return fut, self._wait_timeout
                if self._lookup_fetch:
                    return fut, min(self._wait_timeout, _RETRY_LOOKUP_WAIT)
                raise self._unavailable_locked()
            if self._closed:
                raise self._unavailable_locked()
            if self._retry_at is not None:
                cold_and_cooled = (
                    not self._had_keys and now - self._last_fetch_started >= self._cooldown
                )
                if not cold_and_cooled:
                    raise self._unavailable_locked()
            bound = self._wait_timeout if self._failures == 0 else _RETRY_LOOKUP_WAIT
            return self._begin_locked(now, by_lookup=True), min(self._wait_timeout, bound)

    def _after_wait(self, kid: str, *, confirmed: bool) -> VerificationKey:
        """Look again after waiting for a fetch; ``confirmed``: it succeeded, so a miss is final."""
        now = self._clock()
        snap = self._snap
        if now < snap.usable_until:
            key = snap.keys.get(kid)
            if key is not None:
                return key
            if confirmed:
                with self._cond:
                    if self._snap is snap:
                        self._remember_missing_locked(kid)
            raise UnknownKey("no key with this kid in the issuer's key set")
        with self._cond:
            raise self._unavailable_locked()

    def _refresh_in_background(self, now: float) -> None:
        if self._inflight is not None or self._retry_at is not None:
            return  # cheap unlocked pre-check; re-checked under the lock
        with self._cond:
            if self._inflight is None and self._retry_at is None and not self._closed:
                self._begin_locked(now)

    def _force(self) -> _FetchFuture:
        with self._cond:
            if self._inflight is not None:
                return self._inflight
            if self._closed:
                fut: _FetchFuture = concurrent.futures.Future()
                fut.set_result(JWKSFetchError("key set closed", kind="closed"))
                return fut
            return self._begin_locked(self._clock())

    def _remember_missing_locked(self, kid: str) -> None:
        if self._negative_cache_size == 0:
            return
        self._negative[kid] = None
        self._negative.move_to_end(kid)
        while len(self._negative) > self._negative_cache_size:
            self._negative.popitem(last=False)

    def _unavailable_locked(self) -> KeysUnavailable:
        if self._retry_at is not None:
            wait = self._retry_at - time.monotonic()
        elif self._inflight is not None:
            wait = self._wait_timeout if self._had_keys else _RETRY_LOOKUP_WAIT
        else:
            wait = 1.0
        return KeysUnavailable(
            "the issuer's signing keys are temporarily unavailable",
            retry_after=max(1, math.ceil(wait)),
        )

    def _wait_expired(self) -> JWKSFetchError:
        return JWKSFetchError(
            f"JWKS fetch from {self.name} did not finish within {self._wait_timeout:g} s",
            kind="timeout",
        )

    # ---------------------------------------------------------------- worker

    def _begin_locked(self, now: float, *, by_lookup: bool = False) -> _FetchFuture:
        """Request a fetch (caller holds the lock and checked that none is in flight).

        ``by_lookup``: a lookup with no usable set asked for it and waits; later lookups wait too.
        """
        if self._closed:
            raise self._unavailable_locked()
        fut: _FetchFuture = concurrent.futures.Future()
        self._inflight = fut
        self._lookup_fetch = by_lookup
        self._picked = False
        self._retry_at = None
        self._last_fetch_started = now
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"keyswap-jwks {self.name}", daemon=True
            )
            self._thread.start()
            _THREADED.add(self)
        self._cond.notify_all()
        return fut

    def _after_fork(self) -> None:
        """In a forked child: the worker thread did not survive, and the lock may be held forever.

        Keeps the installed set; forgets the parent's thread, fetch in flight and scheduled retry, so
        the child's next lookup that needs a fetch starts its own worker (rules 3, 7, 12).
        """
        self._cond = threading.Condition(threading.Lock())
        self._thread = None
        self._inflight = None
        self._picked = False
        self._retry_at = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if self._inflight is not None and not self._picked:
                        break
                    if self._retry_at is None:
                        self._cond.wait()
                        continue
                    delay = self._retry_at - time.monotonic()
                    if delay <= 0:
                        self._begin_locked(self._clock())
                        break
                    self._cond.wait(delay)
                fut = self._inflight
                assert fut is not None
                self._picked = True
            outcome = self._fetch_once()
            with self._cond:
                self._inflight = None
                self._picked = False
            _resolve(fut, outcome)

    def _fetch_once(self) -> _Outcome:
        """One fetch + parse + install; never raises."""
        try:
            if self._discovery is None:
                assert self._url is not None
                result = self._fetcher.fetch(self._url)
            else:
                url = self._discovery.jwks_url()
                try:
                    result = self._fetcher.fetch(url)
                except JWKSFetchError:
                    self._discovery.invalidate()  # the provider may have moved its keys
                    raise
            keys, skipped = parse_jwks(result.document)
            self._log_skipped(skipped)
            if not keys:
                raise JWKSFetchError(
                    f"JWKS from {self.name} has no usable key", kind="no_usable_keys"
                )
        except JWKSFetchError as exc:
            self._failed(exc)
            return exc
        except Exception as exc:  # a bug or an odd fetcher: the worker must survive it
            log.exception("JWKS fetch from %s raised unexpectedly", self.name)
            error = JWKSFetchError(f"JWKS fetch failed: {type(exc).__name__}", kind="internal")
            self._failed(error)
            return error
        self._install(keys, result.max_age)
        return None

    def _install(self, keys: dict[str, VerificationKey], max_age: float | None) -> None:
        if max_age is None:
            ttl = self._default_ttl
        else:
            ttl = min(max(max_age, self._min_ttl), self._max_ttl)
        now = self._clock()
        with self._cond:
            old = self._snap
            self._snap = _Snapshot(keys, now + ttl, now + ttl + self._max_stale)
            recovered = self._failures
            self._failures = 0
            self._had_keys = True
            self._retry_at = None
            removed = set(old.keys) - set(keys)
            self._negative.clear()
            for kid in removed:
                self._remember_missing_locked(kid)
        self._metrics.inc("jwks_fetches", issuer=self.name)
        log.info(
            "JWKS fetch ok: url=%s keys=%d ttl=%gs%s",
            self.name,
            len(keys),
            ttl,
            f" (recovered after {recovered} failures)" if recovered else "",
        )
        if removed and self._on_keys_removed is not None:
            try:
                self._on_keys_removed(removed)
            except Exception:
                log.exception("on_keys_removed callback failed for %s", self.name)

    def _failed(self, exc: JWKSFetchError) -> None:
        with self._cond:
            self._failures += 1
            failures = self._failures
            cap = self._retry_max if self._had_keys else min(self._retry_max, self._cold_retry_max)
            base = self._retry_min * 2 ** min(failures - 1, 40)
            delay = min(cap, base) * random.uniform(0.5, 1.0)
            real_now = time.monotonic()
            self._retry_at = real_now + delay
            kept = len(self._snap.keys)
            level = logging.WARNING
            if not self._had_keys:  # short retries: do not log every one of them (rule 6)
                if real_now - self._cold_warned_at < _COLD_WARN_EVERY:
                    level = logging.DEBUG
                else:
                    self._cold_warned_at = real_now
        self._metrics.inc("jwks_fetch_failures", issuer=self.name, reason=exc.kind)
        log.log(
            level,
            "JWKS fetch failed: url=%s reason=%s (%s); keeping %d cached keys; retry in %.2fs"
            " (failure %d)",
            self.name,
            exc.kind,
            exc.reason,
            kept,
            delay,
            failures,
        )

    def _log_skipped(self, skipped: list[SkippedKey]) -> None:
        for item in skipped:
            marker = (item.kid, item.reason)
            if marker in self._skips_logged:
                continue
            if len(self._skips_logged) >= _SKIP_LOG_MEMORY:
                self._skips_logged.clear()
            self._skips_logged.add(marker)
            self._metrics.inc("jwks_keys_skipped", reason=item.reason)
            kid = item.kid if item.kid is None or len(item.kid) <= 80 else item.kid[:80] + "..."
            log.warning("JWKS key skipped: url=%s kid=%r reason=%s", self.name, kid, item.reason)


def _check(name: str, value: float, *, low: float, strict: bool = False) -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        op = ">" if strict else ">="
        raise ConfigError(f"{name} must be a finite number {op} {low:g}, got {value!r}")


def _resolve(fut: _FetchFuture, outcome: _Outcome) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # never cancelled; be safe
        fut.set_result(outcome)
