"""Many gateway nodes as one: change push, scheduled rotation, shared rate limits, outage settings.

:class:`ClusterSettings` holds the options of ``keyswap gateway`` that matter once there is more than one
node (``--redis``, ``--redis-prefix``, ``--rotate-every``, ``--rate-limit``, ``--outage-grace``,
``--db-timeout``).
:class:`ClusterServices` is what the gateway starts in its lifespan and stops at shutdown, in order:

1. the :class:`~keyswap.store.ChangeWatcher` (polls the store revision every ``watch_interval``; the
   fallback that always runs);
2. on PostgreSQL, a :class:`~keyswap.store.listen.PostgresListener` (``LISTEN``; the store
   ``NOTIFY``-s in every mutating transaction);
3. with ``--redis``, a :class:`~keyswap.gateway.redisbus.RedisChanges` subscriber (the store publishes
   after every commit; registered by :func:`build_cluster`);
4. the :class:`~keyswap.gateway.rotation.RotationScheduler` (unless ``--rotate-every 0``).

Push channels hand revisions to :meth:`ChangeWatcher.observe`, which calls the gateway's ``on_change``
once per new revision whichever channel brings it first, and poll once whenever they reconnect.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from keyswap.errors import ConfigError
from keyswap.gateway.apikeys import DEFAULT_OUTAGE_GRACE
from keyswap.gateway.ratelimit import MemoryRateLimiter, Rate, RateLimiter, RedisRateLimiter
from keyswap.gateway.redisbus import DEFAULT_PREFIX, RedisChanges, check_prefix, check_redis_url
from keyswap.gateway.rotation import RotationScheduler
from keyswap.gateway.storecalls import DEFAULT_DB_TIMEOUT
from keyswap.store import ChangeWatcher, Store
from keyswap.store.listen import PostgresListener

__all__ = [
    "DEFAULT_ROTATE_EVERY",
    "ClusterServices",
    "ClusterSettings",
    "build_cluster",
    "build_rate_limiter",
]

log = logging.getLogger("keyswap.gateway")

#: Default signing-key rotation period: 30 days.
DEFAULT_ROTATE_EVERY = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Options for running several gateway nodes as one (all optional; validated at construction).

    Attributes:
        redis_url: Redis for shared rate limits and change pub/sub (``None``: in memory, polling).
        redis_prefix: prefix of every Redis key and channel (several deployments on one Redis).
        rotate_every: signing-key rotation period in seconds; 0 turns scheduled rotation off.
        rate_limit: the limit for consumers without their own (``None``: unlimited).
        outage_grace: how long a known API key keeps working while the database is unreachable.
        db_timeout: seconds a request waits for the database (then it is answered as during an
            outage); also PostgreSQL's ``statement_timeout`` for the gateway's connections.
    """

    redis_url: str | None = None
    redis_prefix: str = DEFAULT_PREFIX
    rotate_every: float = DEFAULT_ROTATE_EVERY
    rate_limit: Rate | None = None
    outage_grace: float = DEFAULT_OUTAGE_GRACE
    db_timeout: float = DEFAULT_DB_TIMEOUT

    def __post_init__(self) -> None:
        if self.redis_url is not None:
            object.__setattr__(self, "redis_url", check_redis_url(self.redis_url))
        check_prefix(self.redis_prefix)
        if not (math.isfinite(self.rotate_every) and self.rotate_every >= 0):
            raise ConfigError("the rotation period must be 0 (off) or a positive duration")
        if 0 < self.rotate_every < 60:
            raise ConfigError("the rotation period must be at least 1 minute (or 0 for off)")
        if not (math.isfinite(self.outage_grace) and self.outage_grace >= 0):
            raise ConfigError("the outage grace must be 0 or a positive duration")
        if not (math.isfinite(self.db_timeout) and 0 < self.db_timeout <= 60):
            raise ConfigError("the database timeout must be more than 0 and at most 60 seconds")


class _Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class ClusterServices:
    """The background services of one node, started and stopped together (a ``WatcherLike``)."""

    def __init__(
        self,
        watcher: ChangeWatcher,
        *,
        listeners: tuple[_Service, ...] = (),
        rotation: RotationScheduler | None = None,
    ) -> None:
        self.watcher = watcher
        self.listeners = listeners
        self.rotation = rotation

    def start(self) -> None:
        """Watcher first (it takes the baseline revision), then push channels, then rotation."""
        self.watcher.start()
        for listener in self.listeners:
            listener.start()
        if self.rotation is not None:
            self.rotation.start()

    def observe(self, revision: int) -> bool:
        """A revision read elsewhere: apply it now if it is new (:meth:`ChangeWatcher.observe`)."""
        return self.watcher.observe(revision)

    def stop(self) -> None:
        """Stop in reverse order; the watcher's final tick flushes last-used times."""
        if self.rotation is not None:
            self.rotation.stop()
        for listener in reversed(self.listeners):
            listener.stop()
        self.watcher.stop()


class _RotatingKeyring(Protocol):
    cache_margin: float

    def rotate_if_due(
        self, every: float, min_next_age: float, now: float | None = None
    ) -> bool: ...

    def rotation_due_in(self, every: float, now: float | None = None) -> float | None: ...


def build_cluster(
    store: Store,
    keyring: _RotatingKeyring,
    settings: ClusterSettings,
    *,
    on_change: Callable[[], None],
    on_tick: Callable[[], None] | None = None,
    watch_interval: float = 1.0,
    clock: Callable[[], float] = time.time,
) -> ClusterServices:
    """Wire the services for ``store``: watcher, PostgreSQL listener, Redis pub/sub, rotation.

    With ``settings.redis_url``, the store also publishes every committed change on Redis.

    Raises:
        ConfigError: bad settings.
    """
    watcher = ChangeWatcher(store, watch_interval, on_change, on_tick=on_tick)
    listeners: list[_Service] = []
    if store.is_postgres:
        listeners.append(PostgresListener(store, watcher.observe, watcher.poll_once))
    if settings.redis_url is not None:
        changes = RedisChanges(
            settings.redis_url,
            prefix=settings.redis_prefix,
            on_revision=watcher.observe,
            on_connect=watcher.poll_once,
        )
        store.on_commit(changes.publish)
        listeners.append(changes)
    rotation = None
    if settings.rotate_every > 0:
        rotation = RotationScheduler(
            keyring,
            store,
            every=settings.rotate_every,
            min_next_age=keyring.cache_margin,
            clock=clock,
            audit=_rotation_audit(store, settings.rotate_every, clock),
        )
    return ClusterServices(watcher, listeners=tuple(listeners), rotation=rotation)


def build_rate_limiter(
    settings: ClusterSettings, *, clock: Callable[[], float] = time.time
) -> RateLimiter:
    """Redis-backed limits shared by every node with ``--redis``; per-node memory otherwise."""
    memory = MemoryRateLimiter(clock=clock)
    if settings.redis_url is None:
        return memory
    return RedisRateLimiter(settings.redis_url, prefix=settings.redis_prefix, fallback=memory)


def _rotation_audit(
    store: Store, every: float, clock: Callable[[], float]
) -> Callable[[], AbstractContextManager[object]]:
    """Scheduled rotations go to the audit log as actor ``system:rotation``."""
    from keyswap.manage.context import audit_retention_from_env
    from keyswap.manage.signing import scheduled_rotation

    retention = audit_retention_from_env()
    return lambda: scheduled_rotation(store, every, clock=clock, retention=retention)
