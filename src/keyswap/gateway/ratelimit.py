"""Per-consumer rate limits: a fixed window counter, in memory or shared by every node through Redis.

**Algorithm: fixed window.** Time is cut into windows of ``window`` seconds aligned to the Unix epoch
(``floor(now / window)``); each consumer gets ``requests`` requests per window; the counter starts again
at the next window. Every request counts, refused ones included. It is exact per window (never more
than ``requests`` accepted in one window, across all nodes when Redis is used) and cheap (one atomic
``INCR``), at the known cost of a burst at a window boundary: up to ``2 x requests`` can pass within
one window's length when a client spends one window's allowance at its end and the next one's at the
start. A sliding window or GCRA would smooth that at the cost of more state per consumer.

- :class:`MemoryRateLimiter`: one node's counters (the default; also the fallback).
- :class:`RedisRateLimiter` (``--redis``): one Lua script does ``INCR`` + ``PEXPIRE`` atomically and
  reads the window from the Redis server's clock (``TIME``), so every node counts in the same window
  whatever its own clock says. Keys: ``<prefix>:rl:{<consumer id>}:<window ms>:<window index>``,
  expiring one second after their window. Requests arriving in the same event-loop turn share one
  pipelined round trip (one ``EVALSHA`` each), which cuts the client's cost per request about
  threefold under load. If Redis fails (error or no answer within ``timeout``,
  250 ms by default), the request is counted in memory instead and Redis is left alone for
  ``retry_interval`` seconds: limits become per node until Redis answers again, by itself.

Limits (:class:`Rate`): ``<requests>/<window>``, e.g. ``100/60s``, ``100/1m``, ``10/s``, ``5000/1h``;
1-10^9 requests per 1 s to 1 day (whole seconds). A consumer's own limit (``keyswap consumers
set-limit``) wins over the gateway's default (``--rate-limit``); ``unlimited`` exempts a consumer.

Responses (IETF draft ``draft-ietf-httpapi-ratelimit-headers``, the widely deployed ``RateLimit-*``
field names): every response to a limited consumer carries ``RateLimit-Limit`` (requests per window),
``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds until the window ends), plus
``RateLimit-Policy: <requests>;w=<window>``; a refusal is ``429`` with ``Retry-After`` equal to the
reset, and never reaches the origin.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from keyswap.durations import parse_duration
from keyswap.errors import ConfigError, InvalidInput
from keyswap.store.models import MAX_RATE_REQUESTS, MAX_RATE_WINDOW, UNLIMITED

__all__ = [
    "UNLIMITED",
    "MemoryRateLimiter",
    "Rate",
    "RateDecision",
    "RateLimiter",
    "RedisRateLimiter",
    "parse_rate",
    "rate_for",
    "too_many_requests",
    "with_rate_headers",
]

log = logging.getLogger("keyswap.gateway")

_RATE = re.compile(r"\s*([0-9]+)\s*/\s*(\S+)\s*", re.ASCII)


@dataclass(frozen=True, slots=True)
class Rate:
    """``requests`` per ``window`` seconds (whole seconds)."""

    requests: int
    window: int

    def __str__(self) -> str:
        return f"{self.requests}/{self.window}s"

    @property
    def policy(self) -> str:
        """The ``RateLimit-Policy`` value: ``<requests>;w=<window>``."""
        return f"{self.requests};w={self.window}"


def parse_rate(text: str) -> Rate:
    """Parse ``<requests>/<window>``: ``100/60s``, ``100/1m``, ``10/s``, ``5000/1h``, ``100/60``.

    Raises:
        InvalidInput: another form, 0 or more than 10^9 requests, a window under 1 s, over a day, or
            not whole seconds.
    """
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(
            f"invalid rate {text!r}: use <requests>/<window>, e.g. 100/60s, 100/1m, 10/s"
        )
    requests = int(match.group(1))
    window_text = match.group(2)
    if window_text.isalpha():
        window_text = "1" + window_text  # "10/s" is 10 per second
    try:
        window = parse_duration(window_text)
    except InvalidInput:
        raise InvalidInput(
            f"invalid rate {text!r}: the window must be a duration such as 60s, 1m, 1h"
        ) from None
    if not 1 <= requests <= MAX_RATE_REQUESTS:
        raise InvalidInput(f"invalid rate {text!r}: 1 to {MAX_RATE_REQUESTS} requests per window")
    if not (1 <= window <= MAX_RATE_WINDOW and window.is_integer()):
        raise InvalidInput(
            f"invalid rate {text!r}: the window must be whole seconds from 1 s to 1 day"
        )
    return Rate(requests, int(window))


def rate_for(stored: str | None, default: Rate | None) -> Rate | None:
    """The limit that applies to a consumer: its own (``stored``), else ``default``; ``None``: none.

    ``stored`` is what the store keeps: ``None`` (use the default), ``"unlimited"`` or ``"<n>/<w>s"``.
    A value that does not parse (a newer keyswap's syntax) falls back to the default.
    """
    if stored is None:
        return default
    if stored == UNLIMITED:
        return None
    return _stored_rate(stored) or default


_parsed: dict[str, Rate | None] = {}


def _stored_rate(stored: str) -> Rate | None:
    rate = _parsed.get(stored, ...)
    if rate is ...:
        try:
            rate = parse_rate(stored)
        except InvalidInput:
            rate = None
        if len(_parsed) < 10_000:
            _parsed[stored] = rate
    return rate


class RateDecision(NamedTuple):
    """The outcome of one request against a limit."""

    allowed: bool
    rate: Rate
    remaining: int
    reset: int  # whole seconds until the window ends (>= 1)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``RateLimit-Limit``, ``-Remaining``, ``-Reset``, ``-Policy`` (plus ``Retry-After`` if refused)."""
        fields = [
            (b"ratelimit-limit", str(self.rate.requests).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset).encode()),
            (b"ratelimit-policy", self.rate.policy.encode()),
        ]
        if not self.allowed:
            fields.append((b"retry-after", str(self.reset).encode()))
        return fields


def _decision(rate: Rate, count: int, reset_seconds: float) -> RateDecision:
    return RateDecision(
        allowed=count <= rate.requests,
        rate=rate,
        remaining=max(0, rate.requests - count),
        reset=max(1, math.ceil(reset_seconds)),
    )


class RateLimiter:
    """What the gateway calls per request (both limiters have this shape)."""

    async def hit(
        self, consumer_id: int, rate: Rate
    ) -> RateDecision:  # pragma: no cover - protocol
        """Count one request of ``consumer_id`` against ``rate``."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections (no-op in memory)."""


class MemoryRateLimiter(RateLimiter):
    """Fixed windows counted in this process (see the module docstring).

    Args:
        clock: wall-clock seconds (windows are aligned to the epoch); injectable for tests.
        max_entries: counters kept at most; past it, counters of ended windows are dropped.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, max_entries: int = 100_000
    ) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._counters: dict[
            tuple[int, int], tuple[int, int]
        ] = {}  # (consumer, window) -> (index, n)
        self._lock = threading.Lock()

    def hit_now(self, consumer_id: int, rate: Rate) -> RateDecision:
        """Synchronous :meth:`hit` (no I/O)."""
        now = self._clock()
        index = math.floor(now / rate.window)
        key = (consumer_id, rate.window)
        with self._lock:
            seen_index, count = self._counters.get(key, (index, 0))
            count = count + 1 if seen_index == index else 1
            self._counters[key] = (index, count)
            if len(self._counters) > self._max_entries:
                self._drop_ended(now)
        return _decision(rate, count, (index + 1) * rate.window - now)

    async def hit(self, consumer_id: int, rate: Rate) -> RateDecision:
        """Count one request; never blocks."""
        return self.hit_now(consumer_id, rate)

    def _drop_ended(self, now: float) -> None:
        self._counters = {
            key: value
            for key, value in self._counters.items()
            if value[0] == math.floor(now / key[1])
        }


# KEYS[1]: "<prefix>:rl:{<consumer>}:<window ms>"; ARGV[1]: window ms. Returns {count, ms to reset}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local index = math.floor(now / window)
local key = KEYS[1] .. ':' .. index
local count = redis.call('INCR', key)
if count == 1 then
  redis.call('PEXPIRE', key, window + 1000)
end
return {count, (index + 1) * window - now}
"""


class RedisRateLimiter(RateLimiter):
    """Fixed windows counted in Redis, shared by every gateway on it; falls back to memory.

    Args:
        url: the Redis URL.
        prefix: key prefix (``keyswap``).
        fallback: counts requests while Redis fails (default: a new :class:`MemoryRateLimiter`).
        timeout: seconds one Redis call may take before the request is counted in memory instead.
        retry_interval: after a failure, seconds before Redis is tried again.
        monotonic: monotonic seconds (failure bookkeeping); injectable for tests.

    Raises:
        ConfigError: bad URL or prefix.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "keyswap",
        fallback: MemoryRateLimiter | None = None,
        timeout: float = 0.25,
        retry_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis.asyncio

        from keyswap.gateway.redisbus import check_prefix, check_redis_url, redis_options

        if not (timeout > 0 and retry_interval >= 0):
            raise ConfigError(
                "the Redis timeout must be positive and the retry interval not negative"
            )
        self._prefix = check_prefix(prefix)
        self._client: Any = redis.asyncio.Redis.from_url(
            check_redis_url(url), **redis_options(timeout, asyncio=True)
        )
        self._sha: str | None = None  # the script's SHA1 once loaded into Redis
        self._batch: list[tuple[str, int, asyncio.Future[tuple[int, int]]]] = []
        self.fallback = fallback or MemoryRateLimiter()
        self._retry_interval = retry_interval
        self._monotonic = monotonic
        self._down_until: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def redis_down(self) -> bool:
        """True while requests are counted in memory because Redis failed recently."""
        down_until = self._down_until
        return down_until is not None and self._monotonic() < down_until

    @property
    def prefix(self) -> str:
        """The Redis key prefix."""
        return self._prefix

    async def hit(self, consumer_id: int, rate: Rate) -> RateDecision:
        """Count one request in Redis (or in memory while Redis fails)."""
        import redis

        if self.redis_down:
            return self.fallback.hit_now(consumer_id, rate)
        window_ms = rate.window * 1000
        key = f"{self._prefix}:rl:{{{consumer_id}}}:{window_ms}"
        try:
            count, reset_ms = await self._count(key, window_ms)
        except (redis.RedisError, OSError) as exc:
            if self._down_until is None:
                log.warning(
                    "rate limits: Redis failed (%s); counting per node until it answers",
                    type(exc).__name__,
                )
            self._down_until = self._monotonic() + self._retry_interval
            return self.fallback.hit_now(consumer_id, rate)
        if self._down_until is not None:
            self._down_until = None
            log.warning("rate limits: Redis answers again; limits are shared again")
        return _decision(rate, int(count), int(reset_ms) / 1000)

    async def close(self) -> None:
        """Close the Redis connections."""
        await self._client.aclose()

    def _count(self, key: str, window_ms: int) -> asyncio.Future[tuple[int, int]]:
        """Queue one INCR for the next pipelined round trip (sent at the end of this loop turn)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, int]] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send_batch)
        self._batch.append((key, window_ms, future))
        return future

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(
        self, batch: list[tuple[str, int, asyncio.Future[tuple[int, int]]]]
    ) -> None:
        import redis

        try:
            for attempt in range(2):
                if self._sha is None:
                    self._sha = await self._client.script_load(_SCRIPT)
                pipe = self._client.pipeline(transaction=False)
                for key, window_ms, _ in batch:
                    pipe.evalsha(self._sha, 1, key, window_ms)
                try:
                    replies = await pipe.execute()
                    break
                except redis.exceptions.NoScriptError:
                    self._sha = None  # Redis restarted or flushed its scripts: load it again
                    if attempt:
                        raise
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), (count, reset_ms) in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result((int(count), int(reset_ms)))


# -- responses ---------------------------------------------------------------------------------------

_RATE_HEADER_NAMES = frozenset(
    {b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset", b"ratelimit-policy"}
)


def too_many_requests(decision: RateDecision) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The 429 response (status, headers, body) for a refused request."""
    body = b"Too many requests"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *decision.headers(),
    ]
    return 429, headers, body


def with_rate_headers(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]], decision: RateDecision
) -> Callable[[MutableMapping[str, Any]], Awaitable[None]]:
    """Wrap an ASGI ``send`` so the response carries this decision's ``RateLimit-*`` fields (replacing
    any the upstream sent under the same names)."""
    extra = decision.headers()

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value)
                for name, value in message.get("headers", ())
                if name.lower() not in _RATE_HEADER_NAMES
            ]
            message["headers"] = headers + extra
        await send(message)

    return sending
