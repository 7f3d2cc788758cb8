"""Quotas and credits in the gateway: count accepted requests per consumer and period, refuse past it.

What applies to a consumer is in :mod:`keyswap.manage.quotas` (``<n>/day``, ``<n>/month``, credits with
or without a refill); each request is checked against every :class:`~keyswap.manage.quotas.Counter`
of its consumer and, if none is spent, counted on all of them. A refused request counts on none.

**Where the count lives.**

- With Redis (``--redis``): one Lua script per request checks and increments every counter of the
  consumer atomically (keys ``<prefix>:quota:{<consumer id>}:<counter>``, expiring a day after their
  period, or 400 days after the last use for credits that never refill): exact across every node. A
  consumer that also has a rate limit gets both in the same script (:meth:`QuotaEnforcer.check_with_rate`,
  the rate limiter's own keys), so one Redis round trip per request, not two. The
  period comes from the gateway's clock (calendar UTC days and months), so nodes must keep their
  clocks in sync (NTP): within a second of a boundary, two nodes may disagree on the period.
- Without Redis, or while Redis fails (an error, or no answer within 250 ms; it is tried again after
  a second, as the rate limits do): each node counts in memory, starting from what the database
  recorded. **Approximate**: up to ``nodes x`` what is left may be accepted between two flushes.
- **The record is the database** (``quota_usage``): every node adds what it accepted to it every
  ``flush_interval`` (2 s) and at shutdown, one additive upsert per counter, so the row is the total
  of all nodes. A node learns a counter's total from the database the first time it sees it (one read
  per consumer and period) and after every flush; a Redis counter that is missing (a new period,
  Redis restarted or flushed) is seeded from it. So neither a gateway restart nor a Redis restart
  refills credits; a crash loses at most one flush interval of counts.

**Responses.** Every response to a consumer with a quota or credits carries, per counter, the fields of
the IETF draft ``draft-ietf-httpapi-ratelimit-headers`` (-08 and later) with their own policy names:
``RateLimit-Policy: "quota";q=1000;w=86400`` (``"credits";q=500`` plus ``;w=`` if it refills) and
``RateLimit: "quota";r=<left>;t=<seconds until the refill>``. A spent counter answers ``429`` with an
RFC 9457 problem (``application/problem+json``, type ``.../quota-exceeded``) and ``Retry-After`` until
the refill (none for credits that never refill); the origin never sees it.

**Thresholds.** When a request takes a counter to 80 % or 100 % of its limit, ``on_threshold`` gets a
:class:`ThresholdEvent` (once per counter and threshold: with Redis exactly one request crosses it;
without, each node may, and the event's idempotency key makes one event of them). The gateway hands
them to a background thread (:class:`ThresholdNotifier`) that records a ``quota.threshold`` webhook
event; a request never waits for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from keyswap.errors import ConfigError, QuotaExceeded
from keyswap.gateway.ratelimit import RateDecision
from keyswap.manage.quotas import Counter, counters_for

if TYPE_CHECKING:
    from keyswap.gateway.ratelimit import Rate, RedisRateLimiter
    from keyswap.store import Store

__all__ = [
    "THRESHOLDS",
    "QuotaDecision",
    "QuotaEnforcer",
    "ThresholdEvent",
    "ThresholdNotifier",
    "quota_exceeded",
    "with_limit_headers",
]

log = logging.getLogger("keyswap.gateway")

#: Percentages of a limit that emit a ``quota.threshold`` event when a request reaches them.
THRESHOLDS = (80, 100)

#: How long the database keeps a period's counter after it was last written (the longest period, a
#: month, plus a month): older rows are pruned by the gateways.
_KEEP_USAGE = 62 * 86_400.0

#: How long a Redis counter of credits that never refill outlives its last use (the database has it).
_NEVER_TTL_MS = 400 * 86_400_000


class QuotaStore(Protocol):
    """What the enforcer needs of :class:`keyswap.store.Store`."""

    def add_quota_usage(
        self, deltas: dict[tuple[int, str], int], *, now: float
    ) -> dict[tuple[int, str], int]: ...  # pragma: no cover - protocol

    def quota_usage(
        self, consumer_id: int, counters: list[str]
    ) -> dict[str, int]: ...  # pragma: no cover - protocol


class QuotaPrincipal(Protocol):
    """What the enforcer reads of a :class:`~keyswap.gateway.apikeys.Principal`."""

    @property
    def consumer(self) -> str: ...  # pragma: no cover - protocol
    @property
    def consumer_id(self) -> int: ...  # pragma: no cover - protocol
    @property
    def quota(self) -> str | None: ...  # pragma: no cover - protocol
    @property
    def credits(self) -> int | None: ...  # pragma: no cover - protocol
    @property
    def credits_refill(self) -> str | None: ...  # pragma: no cover - protocol
    @property
    def credits_set_at(self) -> float | None: ...  # pragma: no cover - protocol


@dataclass(frozen=True, slots=True)
class ThresholdEvent:
    """A consumer's counter reached ``threshold`` % of its limit; :meth:`data` is the event body."""

    consumer: str
    consumer_id: int
    counter: Counter
    used: int
    threshold: int

    @property
    def idempotency_key(self) -> str:
        """``quota:<consumer>:<counter>:<threshold>``: one event per counter (period or grant)."""
        return f"quota:{self.consumer}:{self.counter.name}:{self.threshold}"

    def data(self) -> dict[str, object]:
        """``{consumer, kind, period, period_start, limit, used, threshold}``."""
        return {
            "consumer": self.consumer,
            "kind": self.counter.kind,
            "period": self.counter.label,
            "period_start": _rfc3339(self.counter.start),
            "limit": self.counter.limit,
            "used": self.used,
            "threshold": self.threshold,
        }


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class QuotaDecision(NamedTuple):
    """The outcome of one request: ``used`` per counter after it (refused: before it)."""

    allowed: bool
    counters: tuple[Counter, ...]
    used: tuple[int, ...]
    now: float
    #: ``RateLimit-Policy`` value per counter, if already known (else computed).
    policies: tuple[bytes, ...] = ()

    @property
    def refused_by(self) -> Counter | None:
        """The first spent counter (``None`` if allowed)."""
        if self.allowed:
            return None
        for counter, used in zip(self.counters, self.used, strict=True):
            if used >= counter.limit:
                return counter
        return self.counters[0]  # pragma: no cover - a refusal always has a spent counter

    def retry_after(self) -> int | None:
        """Whole seconds until the refusing counter refills (``None``: it never does)."""
        counter = self.refused_by
        if counter is None or counter.end is None:
            return None
        return max(1, math.ceil(counter.end - self.now))

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``RateLimit-Policy`` and ``RateLimit`` per counter (plus ``Retry-After`` if refused)."""
        fields: list[tuple[bytes, bytes]] = []
        policies = self.policies or tuple(_policy(counter) for counter in self.counters)
        for counter, used, policy in zip(self.counters, self.used, policies, strict=True):
            left = counter.limit - used if used < counter.limit else 0
            if counter.end is None:
                state = f'"{counter.kind}";r={left}'
            else:
                state = f'"{counter.kind}";r={left};t={max(1, math.ceil(counter.end - self.now))}'
            fields.append((b"ratelimit-policy", policy))
            fields.append((b"ratelimit", state.encode()))
        if not self.allowed:
            retry = self.retry_after()
            if retry is not None:
                fields.append((b"retry-after", str(retry).encode()))
        return fields


def _policy(counter: Counter) -> bytes:
    """``"quota";q=1000;w=86400`` (no ``w`` for credits that never refill)."""
    window = counter.window
    policy = f'"{counter.kind}";q={counter.limit}'
    return (policy if window is None else f"{policy};w={window}").encode()


def quota_exceeded(decision: QuotaDecision) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The 429 problem response (status, headers, body) for a request refused by a quota."""
    counter = decision.refused_by
    assert counter is not None
    if counter.kind == "quota":
        title = "Quota exceeded"
        detail = f"the {counter.label} quota of {counter.limit} requests is spent"
    else:
        title = "Credits exhausted"
        detail = f"the {counter.limit} credits are spent"
    detail += "; it refills at " + _rfc3339(counter.end) if counter.end is not None else ""
    body = json.dumps(
        {
            "type": "https://keyswap.dev/problems/quota-exceeded",
            "title": title,
            "status": QuotaExceeded.status,
            "code": QuotaExceeded.code,
            "detail": detail,
            "limit": counter.limit,
            "period": counter.label,
            "refills_at": None if counter.end is None else _rfc3339(counter.end),
        },
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *decision.headers(),
    ]
    return 429, headers, body


_LIMIT_HEADER_NAMES = frozenset(
    {
        b"ratelimit",
        b"ratelimit-limit",
        b"ratelimit-remaining",
        b"ratelimit-reset",
        b"ratelimit-policy",
    }
)


def with_limit_headers(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]], extra: list[tuple[bytes, bytes]]
) -> Callable[[MutableMapping[str, Any]], Awaitable[None]]:
    """Wrap an ASGI ``send`` so the response carries ``extra`` (rate-limit and quota fields),
    replacing any the upstream sent under those names."""

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value)
                for name, value in message.get("headers", ())
                if name.lower() not in _LIMIT_HEADER_NAMES
            ]
            message["headers"] = headers + extra
        await send(message)

    return sending


# The quota part of both scripts: KEYS[KO + i] are the consumer's counters; ARGV[AO + i] per counter
# "<limit> <seed> <TTL ms; 0: never refills>" (seed: the database's count, used if the key is
# missing). Sets `used` (counts after the increment if allowed, else as found) and `allowed`.
_QUOTA_PART = """
local n = #KEYS - KO
local used, limits, refresh = {}, {}, {}
local allowed = 1
for i = 1, n do
  local limit, seed, ttl = string.match(ARGV[AO + i], '^(%d+) (%d+) (%d+)$')
  limits[i], refresh[i] = tonumber(limit), ttl == '0'
  local v = redis.call('GET', KEYS[KO + i])
  if v then
    used[i] = tonumber(v)
  else
    used[i] = tonumber(seed)
    if refresh[i] then ttl = 'NEVER_TTL' end
    redis.call('SET', KEYS[KO + i], seed, 'PX', ttl)
  end
  if used[i] >= limits[i] then allowed = 0 end
end
if allowed == 1 then
  for i = 1, n do
    used[i] = redis.call('INCR', KEYS[KO + i])
    if refresh[i] then redis.call('PEXPIRE', KEYS[KO + i], 'NEVER_TTL') end
  end
end
""".replace("NEVER_TTL", str(_NEVER_TTL_MS))

# One counter: returns the count after the increment if allowed, else -(count + 1); several:
# {1 or 0, count per counter...}.
_SCRIPT = (
    "local KO, AO = 0, 0\n"
    + _QUOTA_PART
    + """
if n == 1 then
  if allowed == 1 then return used[1] end
  return -(used[1] + 1)
end
table.insert(used, 1, allowed)
return used
"""
)

# The rate limit (keyswap.gateway.ratelimit's fixed window, same keys) and the quota in one call, for
# a consumer that has both: KEYS[1] the rate limit's key, ARGV[1] its window in ms, ARGV[2] its
# requests; then the quota's. A request refused by the rate limit (counted there, as always) is not
# counted on the quota. Returns {rate count, ms to the window's end, 1 or 0, count per counter...}.
_RATE_AND_QUOTA_SCRIPT = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local index = math.floor(now / window)
local rkey = KEYS[1] .. ':' .. index
local rcount = redis.call('INCR', rkey)
if rcount == 1 then
  redis.call('PEXPIRE', rkey, window + 1000)
end
local reset = (index + 1) * window - now
if rcount > tonumber(ARGV[2]) then
  return {rcount, reset}
end
local KO, AO = 1, 2
"""
    + _QUOTA_PART
    + """
table.insert(used, 1, allowed)
table.insert(used, 1, reset)
table.insert(used, 1, rcount)
return used
"""
)

_Job = tuple[str, tuple[bytes, ...], list[bytes], "asyncio.Future[Any]"]


class _Plan(NamedTuple):
    """A consumer's counters while none changes period: what each request reuses."""

    counters: tuple[Counter, ...]
    keys: tuple[tuple[int, str], ...]  # (consumer id, counter name)
    redis_keys: tuple[bytes, ...]
    redis_args: tuple[tuple[int, float | None], ...]  # (limit, end; None: never refills)
    policies: tuple[bytes, ...]  # RateLimit-Policy per counter
    marks: tuple[tuple[tuple[int, int], ...], ...]  # per counter: (count, threshold %) that emit
    valid_from: float
    valid_until: float


class QuotaEnforcer:
    """Counts requests against quotas and credits (see the module docstring).

    Args:
        store: where counts are recorded and read (``None``: memory only, nothing persists).
        redis_url: count in Redis, shared by every node (``None``: per node).
        prefix: Redis key prefix.
        clock: wall-clock seconds (periods are calendar UTC days and months); injectable for tests.
        on_threshold: called on the event loop with each :class:`ThresholdEvent`; must not block.
        flush_interval: seconds between two writes of the counts to the store (:meth:`tick`).
        timeout: seconds a Redis call or the first database read of a counter may take.
        retry_interval: after a Redis failure, seconds before Redis is tried again.
        monotonic: monotonic seconds (failure bookkeeping); injectable for tests.

    Raises:
        ConfigError: bad Redis URL or prefix, or bad intervals.
    """

    def __init__(
        self,
        store: QuotaStore | None = None,
        *,
        redis_url: str | None = None,
        prefix: str = "keyswap",
        clock: Callable[[], float] = time.time,
        on_threshold: Callable[[ThresholdEvent], None] | None = None,
        flush_interval: float = 2.0,
        timeout: float = 0.25,
        retry_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (timeout > 0 and retry_interval >= 0 and flush_interval >= 0):
            raise ConfigError("quota timeouts and intervals must be positive")
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._on_threshold = on_threshold
        self._flush_interval = flush_interval
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        # (consumer id, counter) -> the database's total as last read or written
        self._base: dict[tuple[int, str], int] = {}
        # accepted here and not yet written; being written by the running flush
        self._pending: dict[tuple[int, str], int] = {}
        self._writing: dict[tuple[int, str], int] = {}
        self._loading: dict[tuple[int, str], asyncio.Future[None]] = {}
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._last_flush = float("-inf")
        self._next_prune = float("-inf")
        self._flush_lock = threading.Lock()
        self._client: Any = None
        self._prefix = prefix
        if redis_url is not None:
            import redis.asyncio

            from keyswap.gateway.redisbus import check_prefix, check_redis_url, redis_options

            self._prefix = check_prefix(prefix)
            self._client = redis.asyncio.Redis.from_url(
                check_redis_url(redis_url), **redis_options(timeout, asyncio=True)
            )
        self._shas: dict[str, str] = {}  # script -> its SHA1 once loaded into Redis
        self._batch: list[_Job] = []
        self._down_until: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def redis_down(self) -> bool:
        """True while requests are counted per node because Redis failed recently."""
        down_until = self._down_until
        return down_until is not None and self._monotonic() < down_until

    # -- per request ----------------------------------------------------------------------------

    async def check(self, principal: QuotaPrincipal) -> QuotaDecision | None:
        """Check one request of ``principal``'s consumer and count it if allowed (``None``: no quota
        nor credits apply)."""
        if principal.quota is None and principal.credits is None:
            return None
        now = self._clock()
        plan = self._plan_for(principal, now)
        if not plan.counters:
            return None
        await self._known(principal.consumer_id, plan)
        used: list[int] | None = None
        if self._client is not None and not self.redis_down:
            used = await self._redis_check(plan, now)
        if used is None:
            allowed, used = self._memory_check(plan.counters, plan.keys)
            return self._decided(principal, plan, now, allowed, used, counted=True)
        return self._decided(principal, plan, now, bool(used[0]), used[1:], counted=False)

    def shares_redis_with(self, limiter: object) -> bool:
        """True if :meth:`check_with_rate` can count ``limiter``'s limits in the same Redis call
        (a :class:`~keyswap.gateway.ratelimit.RedisRateLimiter` on the same Redis prefix)."""
        from keyswap.gateway.ratelimit import RedisRateLimiter

        return (
            self._client is not None
            and isinstance(limiter, RedisRateLimiter)
            and limiter.prefix == self._prefix
        )

    async def check_with_rate(
        self, principal: QuotaPrincipal, rate: Rate, limiter: RedisRateLimiter
    ) -> tuple[RateDecision, QuotaDecision | None]:
        """The rate limit and the quota of one request in one Redis round trip (what
        ``limiter.hit`` then :meth:`check` decide, with the same keys, for half the cost). A request
        refused by the rate limit is not counted on the quota (its decision is then ``None``).
        While Redis fails both are counted per node (as each would be alone)."""
        import redis

        now = self._clock()
        consumer_id = principal.consumer_id
        plan = self._plan_for(principal, now)
        if not plan.counters:
            return await limiter.hit(consumer_id, rate), None
        await self._known(consumer_id, plan)
        if self.redis_down:
            return self._per_node(principal, plan, now, rate, limiter)
        window_ms = rate.window * 1000
        keys = (f"{self._prefix}:rl:{{{consumer_id}}}:{window_ms}".encode(), *plan.redis_keys)
        args = [str(window_ms).encode(), str(rate.requests).encode(), *self._args(plan, now)]
        try:
            reply = await self._queue(keys, args, _RATE_AND_QUOTA_SCRIPT)
        except (redis.RedisError, OSError) as exc:
            self._redis_failed(exc)
            return self._per_node(principal, plan, now, rate, limiter)
        self._redis_answered()
        count, reset_ms = int(reply[0]), int(reply[1])
        rated = RateDecision(
            allowed=count <= rate.requests,
            rate=rate,
            remaining=max(0, rate.requests - count),
            reset=max(1, math.ceil(reset_ms / 1000)),
        )
        if len(reply) == 2:
            return rated, None
        allowed = bool(reply[2])
        used = [int(n) for n in reply[3:]]
        return rated, self._decided(principal, plan, now, allowed, used, counted=False)

    def _per_node(
        self,
        principal: QuotaPrincipal,
        plan: _Plan,
        now: float,
        rate: Rate,
        limiter: RedisRateLimiter,
    ) -> tuple[RateDecision, QuotaDecision | None]:
        """While Redis fails: the rate limiter's memory fallback, then the quota in memory (this
        enforcer tries Redis again after ``retry_interval``, for both)."""
        rated = limiter.fallback.hit_now(principal.consumer_id, rate)
        if not rated.allowed:
            return rated, None
        allowed, used = self._memory_check(plan.counters, plan.keys)
        return rated, self._decided(principal, plan, now, allowed, used, counted=True)

    def _plan_for(self, principal: QuotaPrincipal, now: float) -> _Plan:
        plan_key = (
            principal.consumer_id,
            principal.quota,
            principal.credits,
            principal.credits_refill,
            principal.credits_set_at,
        )
        plan = self._plans.get(plan_key)
        if plan is None or not plan.valid_from <= now < plan.valid_until:
            plan = self._plan(plan_key, now)
        return plan

    async def _known(self, consumer_id: int, plan: _Plan) -> None:
        """Make sure the database's totals of the plan's counters are known here."""
        base = self._base
        for key in plan.keys:
            if key not in base:
                await self._load(consumer_id, plan.keys)
                return

    def _decided(
        self,
        principal: QuotaPrincipal,
        plan: _Plan,
        now: float,
        allowed: bool,
        used: list[int],
        *,
        counted: bool,
    ) -> QuotaDecision:
        if allowed and not counted:
            with self._lock:
                pending = self._pending
                for key in plan.keys:
                    pending[key] = pending.get(key, 0) + 1
        decision = QuotaDecision(allowed, plan.counters, tuple(used), now, plan.policies)
        if allowed and self._on_threshold is not None:
            self._thresholds(principal, decision, plan.marks)
        return decision

    def _plan(self, plan_key: tuple[Any, ...], now: float) -> _Plan:
        consumer_id, quota, credits, refill, set_at = plan_key
        counters = counters_for(
            quota=quota, credits=credits, credits_refill=refill, credits_set_at=set_at, now=now
        )
        ends = [c.end for c in counters if c.end is not None]
        plan = _Plan(
            counters,
            tuple((consumer_id, c.name) for c in counters),
            tuple(f"{self._prefix}:quota:{{{consumer_id}}}:{c.name}".encode() for c in counters),
            tuple((c.limit, c.end) for c in counters),
            tuple(_policy(c) for c in counters),
            tuple(
                tuple((math.ceil(c.limit * t / 100), t) for t in THRESHOLDS if c.limit)
                for c in counters
            ),
            max([c.start for c in counters if c.end is not None], default=float("-inf")),
            min(ends, default=float("inf")),
        )
        if len(self._plans) >= 10_000:
            self._plans.clear()
        self._plans[plan_key] = plan
        return plan

    def _memory_check(
        self, counters: tuple[Counter, ...], keys: tuple[tuple[int, str], ...]
    ) -> tuple[bool, list[int]]:
        with self._lock:
            used = [
                self._base.get(key, 0) + self._writing.get(key, 0) + self._pending.get(key, 0)
                for key in keys
            ]
            if any(n >= counter.limit for n, counter in zip(used, counters, strict=True)):
                return False, used
            for key in keys:
                self._pending[key] = self._pending.get(key, 0) + 1
        return True, [n + 1 for n in used]

    def _thresholds(
        self,
        principal: QuotaPrincipal,
        decision: QuotaDecision,
        marks: tuple[tuple[tuple[int, int], ...], ...],
    ) -> None:
        assert self._on_threshold is not None
        for counter, used, counter_marks in zip(
            decision.counters, decision.used, marks, strict=True
        ):
            for mark, threshold in counter_marks:
                if mark == used:
                    event = ThresholdEvent(
                        principal.consumer, principal.consumer_id, counter, used, threshold
                    )
                    try:
                        self._on_threshold(event)
                    except Exception:  # never fail a request for an event
                        log.exception("quota: could not hand over a threshold event")

    async def _load(self, consumer_id: int, keys: tuple[tuple[int, str], ...]) -> None:
        """Learn the database's totals for counters seen for the first time (one read, shared by
        concurrent requests; on failure or timeout they start from 0 until a flush learns the total)."""
        missing = [key for key in keys if key not in self._base]
        if self._store is None:
            with self._lock:
                for key in missing:
                    self._base.setdefault(key, 0)
            return
        loading = self._loading.get(missing[0])
        if loading is None:
            loading = asyncio.get_running_loop().create_future()
            for key in missing:
                self._loading[key] = loading
            store = self._store
            names = [name for _, name in missing]
            try:
                found = await asyncio.wait_for(
                    asyncio.to_thread(store.quota_usage, consumer_id, names), self._timeout * 8
                )
            except Exception as exc:
                log.warning(
                    "quota: could not read the recorded counts (%s); counting from what this node "
                    "saw",
                    type(exc).__name__,
                )
                found = {}
            finally:
                for key in missing:
                    self._loading.pop(key, None)
                if not loading.done():
                    loading.set_result(None)
            with self._lock:
                for key in missing:
                    if key not in self._base:
                        self._base[key] = found.get(key[1], 0)
        else:
            await asyncio.shield(loading)

    # -- Redis ----------------------------------------------------------------------------------

    def _args(self, plan: _Plan, now: float) -> list[bytes]:
        """The quota script's argument per counter: limit, seed (what is known here), TTL ms."""
        base, writing, pending = self._base, self._writing, self._pending
        return [
            (
                f"{limit} {base.get(key, 0) + writing.get(key, 0) + pending.get(key, 0)} "
                f"{0 if end is None else max(1000, int((end - now) * 1000) + 86_400_000)}"
            ).encode()
            for key, (limit, end) in zip(plan.keys, plan.redis_args, strict=True)
        ]

    async def _redis_check(self, plan: _Plan, now: float) -> list[int] | None:
        import redis

        try:
            reply = await self._queue(plan.redis_keys, self._args(plan, now))
        except (redis.RedisError, OSError) as exc:
            self._redis_failed(exc)
            return None
        self._redis_answered()
        if isinstance(reply, int):  # one counter
            return [1, reply] if reply >= 0 else [0, -reply - 1]
        return [int(n) for n in reply]

    def _redis_failed(self, exc: BaseException) -> None:
        if self._down_until is None:
            log.warning(
                "quotas: Redis failed (%s); counting per node until it answers", type(exc).__name__
            )
        self._down_until = self._monotonic() + self._retry_interval

    def _redis_answered(self) -> None:
        if self._down_until is not None:
            self._down_until = None
            log.warning("quotas: Redis answers again; quotas are shared again")

    def _queue(
        self, keys: tuple[bytes, ...], args: list[bytes], script: str = _SCRIPT
    ) -> asyncio.Future[Any]:
        """Queue one script call for the next pipelined round trip (sent at the end of this turn)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send_batch)
        self._batch.append((script, keys, args, future))
        return future

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[_Job]) -> None:
        import redis

        try:
            for attempt in range(2):
                for script in {job[0] for job in batch} - self._shas.keys():
                    self._shas[script] = await self._client.script_load(script)
                pipe = self._client.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    pipe.evalsha(self._shas[script], len(keys), *keys, *args)
                try:
                    replies = await pipe.execute()
                    break
                except redis.exceptions.NoScriptError:
                    self._shas.clear()  # Redis restarted or flushed its scripts: load them again
                    if attempt:
                        raise
        except BaseException as exc:
            for _, _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, _, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(reply)

    # -- recording ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Write the counts to the store if ``flush_interval`` has passed (blocking; call from a
        thread, e.g. the change watcher's tick)."""
        if self._monotonic() - self._last_flush >= self._flush_interval:
            self.flush()

    def flush(self) -> None:
        """Add what this node accepted since the last flush to the store, and learn the totals
        (blocking). On failure the counts are kept for the next flush."""
        if self._store is None:
            return
        with self._flush_lock:
            self._last_flush = self._monotonic()
            with self._lock:
                if not self._pending:
                    return
                self._writing, self._pending = self._pending, {}
                writing = dict(self._writing)
            try:
                totals = self._store.add_quota_usage(writing, now=self._clock())
            except Exception as exc:
                log.warning("quota: could not record counts (%s); kept", type(exc).__name__)
                with self._lock:
                    for key, n in self._writing.items():
                        self._pending[key] = self._pending.get(key, 0) + n
                    self._writing = {}
                return
            with self._lock:
                self._writing = {}
                self._base.update(totals)
                self._drop_ended()
            self._prune()

    def _prune(self) -> None:
        """Delete ended periods' rows (last written over 62 days ago), at most once an hour."""
        prune = getattr(self._store, "prune_quota_usage", None)
        if prune is None or self._monotonic() < self._next_prune:
            return
        self._next_prune = self._monotonic() + 3600
        try:
            removed = prune(self._clock() - _KEEP_USAGE)
        except Exception as exc:
            log.warning("quota: could not prune old counts (%s)", type(exc).__name__)
            return
        if removed:
            log.info("quota: pruned %d counter(s) of ended periods", removed)

    def _drop_ended(self) -> None:
        """Forget counters of ended periods once many are known (they are never asked again)."""
        if len(self._base) < 100_000:
            return
        now = self._clock()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        month = day[:7]
        self._base = {
            key: n
            for key, n in self._base.items()
            if not (":day:" in key[1] or ":month:" in key[1])
            or key[1].endswith((day, month))
            or key in self._pending
        }

    async def close(self) -> None:
        """Record what is pending and close the Redis connections."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.to_thread(self.flush)
        except Exception as exc:  # pragma: no cover - flush logs its own failures
            log.warning("quota: final flush failed (%s)", type(exc).__name__)
        if self._client is not None:
            await self._client.aclose()


class ThresholdNotifier:
    """Records ``quota.threshold`` webhook events on one background thread, off the request path.

    ``enqueue`` is :func:`keyswap.manage.webhooks.enqueue` bound to a store (``(event) -> None``);
    events past ``max_queued`` waiting are dropped (logged). :meth:`__call__` never blocks.
    """

    def __init__(
        self, enqueue: Callable[[ThresholdEvent], object], *, max_queued: int = 10_000
    ) -> None:
        self._enqueue = enqueue
        self._queue: queue.Queue[ThresholdEvent | None] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def __call__(self, event: ThresholdEvent) -> None:
        """Hand one event over (drops it if the queue is full)."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="keyswap-quota-events", daemon=True
                    )
                    self._thread.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.warning("quota: too many threshold events waiting; one dropped")

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                self._enqueue(event)
            except Exception as exc:
                log.warning("quota: could not record a threshold event (%s)", type(exc).__name__)
            finally:
                self._queue.task_done()

    def join(self) -> None:
        """Wait until every event handed over has been recorded (tests, shutdown)."""
        self._queue.join()

    def close(self) -> None:
        """Record what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)


def webhook_enqueuer(store: Store) -> Callable[[ThresholdEvent], object]:
    """``(event) -> event id`` recording a ``quota.threshold`` event for the consumer's webhook
    (:func:`keyswap.manage.webhooks.enqueue`; nothing if the consumer has none). Blocking."""
    from keyswap.manage import webhooks

    def record(event: ThresholdEvent) -> object:
        return webhooks.enqueue(
            store,
            consumer_id=str(event.consumer_id),
            event_type="quota.threshold",
            data=event.data(),
            idempotency_key=event.idempotency_key,
        )

    return record
