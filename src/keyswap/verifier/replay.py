"""Replay caches for request-bound tokens: each ``jti`` is accepted once during its token's lifetime.

- :class:`MemoryReplayCache`: per process, bounded. Entries live until the token's ``exp`` (plus
  leeway); expired ones are dropped from the oldest end as new ones arrive, and by a full scan (at
  most once a second) when the cache is full. When it is full of live entries it refuses
  (:class:`~keyswap.errors.ReplayCacheUnavailable`, 503) rather than forget one: forgetting would let
  that token be replayed.
- :class:`RedisReplayCache`: shared by several origin processes (``pip install 'keyswap[redis]'``).
  One ``SET key 1 NX PX <ms>`` per token: atomic, so two processes racing with the same token see one
  winner. Keys are ``<prefix><sha256(iss, jti)>``, expiring with the token.

  When Redis cannot be reached (connection refused, or no answer within ``timeout``), ``on_error``
  decides: ``"refuse"`` (the default, fail closed) answers 503 with ``Retry-After`` to every bound
  request until Redis is back; ``"local"`` falls back to a per-process :class:`MemoryReplayCache`
  (a replay to *another* process is then possible while Redis is down; each fallback is logged).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from typing import Any, Literal, Protocol

from keyswap.errors import ConfigError, ReplayCacheUnavailable

__all__ = [
    "DEFAULT_REPLAY_CACHE_SIZE",
    "MemoryReplayCache",
    "RedisReplayCache",
    "ReplayCache",
    "replay_key",
]

logger = logging.getLogger("keyswap.verifier.replay")

#: Default bound of :class:`MemoryReplayCache` (entries live until ``exp`` + leeway: with 30 s tokens
#: and 30 s leeway, room for ~1,600 bound requests a second).
DEFAULT_REPLAY_CACHE_SIZE = 100_000


def replay_key(issuer: str, jti: str) -> str:
    """The cache key of a token: a SHA-256 of issuer and ``jti`` (bounded length, no raw claim)."""
    return hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()


class ReplayCache(Protocol):
    """Records token ids; :meth:`first_use` is an atomic check-and-set."""

    async def first_use(self, key: str, *, expires: float, now: float) -> bool:
        """Record ``key`` until ``expires``; True the first time, False when it is already recorded.

        Raises:
            ReplayCacheUnavailable: the cache cannot answer (bound tokens are then refused, 503).
        """
        ...


class MemoryReplayCache:
    """A bounded per-process replay cache (see the module docstring for the policy).

    Args:
        max_entries: most live entries held; a new token beyond them is refused with 503.

    Raises:
        ConfigError: ``max_entries`` below 1.
    """

    def __init__(self, max_entries: int = DEFAULT_REPLAY_CACHE_SIZE) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"replay cache size must be at least 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._next_scan = float("-inf")  # a full scan at most once a second (see _purge)

    def __len__(self) -> int:
        return len(self._seen)

    def first_use_sync(self, key: str, *, expires: float, now: float) -> bool:
        """:meth:`first_use` without a coroutine (for WSGI adapters and the Redis fallback)."""
        seen = self._seen
        known = seen.get(key)
        if known is not None and known > now:
            return False
        if len(seen) >= self.max_entries:
            self._purge(now)
            if len(seen) >= self.max_entries:
                raise ReplayCacheUnavailable("the replay cache is full")
        # setdefault is one step under the GIL: of two threads (WSGI) racing with one key, one
        # inserts and the other sees its entry. A new key goes to the young end of the dict.
        known = seen.setdefault(key, expires)
        if known is expires:
            return True
        if known > now:
            return False
        seen[key] = expires  # expired but not purged yet: recorded anew, at the young end
        seen.move_to_end(key)
        return True

    async def first_use(self, key: str, *, expires: float, now: float) -> bool:
        """See :meth:`ReplayCache.first_use`."""
        return self.first_use_sync(key, expires=expires, now=now)

    def _purge(self, now: float) -> None:
        seen = self._seen
        # Insertion order is close to expiry order (one lifetime for all tokens); a full scan only
        # when the oldest entries are still live.
        while seen:
            key, expires = next(iter(seen.items()))
            if expires > now:
                break
            del seen[key]
        if len(seen) >= self.max_entries and now >= self._next_scan:
            # Tokens of different lifetimes interleave: an expired entry may sit behind a live one.
            # The scan is O(entries), so a full cache refuses for up to a second before the next.
            self._next_scan = now + 1.0
            for key in [k for k, e in seen.items() if e <= now]:
                del seen[key]


class RedisReplayCache:
    """A replay cache shared through Redis (see the module docstring for the outage behaviour).

    Args:
        url: ``redis://`` or ``rediss://`` URL.
        prefix: key prefix (several deployments can share one Redis).
        timeout: seconds to wait for a connection or an answer before treating Redis as down.
        on_error: ``"refuse"`` (503 while Redis is down) or ``"local"`` (fall back to memory).
        fallback_size: bound of the ``"local"`` fallback cache.
        client: a ready ``redis.asyncio.Redis`` (tests); by default one is made per event loop.

    Raises:
        ConfigError: redis-py is missing, or a bad ``url`` / ``on_error`` / ``timeout``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "keyswap:jti:",
        timeout: float = 0.5,
        on_error: Literal["refuse", "local"] = "refuse",
        fallback_size: int = DEFAULT_REPLAY_CACHE_SIZE,
        client: Any = None,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:  # pragma: no cover - redis is in the test environment
            raise ConfigError(
                "a Redis replay cache needs redis-py: pip install 'keyswap[redis]'"
            ) from exc
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("replay cache URL must be redis://, rediss:// or unix://")
        if on_error not in ("refuse", "local"):
            raise ConfigError("on_error must be 'refuse' or 'local'")
        if not 0 < timeout <= 30:
            raise ConfigError("replay cache timeout must be in (0, 30] seconds")
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.on_error = on_error
        self._fallback = MemoryReplayCache(fallback_size) if on_error == "local" else None
        self._client = client
        self._clients: dict[int, Any] = {}
        self._sync_client: Any = None

    def _client_for_loop(self) -> Any:
        if self._client is not None:
            return self._client
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry_on_timeout=False,
            )
            self._clients[loop_id] = client
        return client

    async def first_use(self, key: str, *, expires: float, now: float) -> bool:
        """See :meth:`ReplayCache.first_use`."""
        ttl_ms = max(1, int((expires - now) * 1000))
        try:
            async with asyncio.timeout(self.timeout * 2):
                created = await self._client_for_loop().set(
                    self.prefix + key, b"1", nx=True, px=ttl_ms
                )
        except Exception as exc:  # redis errors, OSError, timeouts: Redis is down for us
            return self._down(exc, key, expires, now)
        return bool(created)

    def first_use_sync(self, key: str, *, expires: float, now: float) -> bool:
        """:meth:`first_use` for WSGI apps (a blocking client, the same keys and outage rules)."""
        ttl_ms = max(1, int((expires - now) * 1000))
        try:
            if self._sync_client is None:
                import redis

                self._sync_client = redis.Redis.from_url(
                    self.url,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry_on_timeout=False,
                )
            created = self._sync_client.set(self.prefix + key, b"1", nx=True, px=ttl_ms)
        except Exception as exc:
            return self._down(exc, key, expires, now)
        return bool(created)

    def _down(self, exc: Exception, key: str, expires: float, now: float) -> bool:
        if self._fallback is not None:
            logger.warning(
                "replay cache Redis unreachable (%s): this process checks replays alone",
                type(exc).__name__,
            )
            return self._fallback.first_use_sync(key, expires=expires, now=now)
        logger.warning(
            "replay cache Redis unreachable (%s): bound tokens refused (503)", type(exc).__name__
        )
        raise ReplayCacheUnavailable("the replay cache is unavailable") from None

    def close(self) -> None:
        """Close the blocking client (if :meth:`first_use_sync` made one)."""
        client, self._sync_client = self._sync_client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the clients this cache made."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.aclose()
            except Exception:
                logger.debug("closing a replay cache client failed", exc_info=True)
