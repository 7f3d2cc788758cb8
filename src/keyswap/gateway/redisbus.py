"""Change announcements over Redis pub/sub (``--redis``): one gateway's change reaches every other at once.

Channel ``<prefix>:changes`` (prefix ``keyswap`` unless ``--redis-prefix``), payload the new store
revision as decimal text. The publishing side is the store: :meth:`RedisChanges.publish` is registered
with :meth:`keyswap.store.Store.on_commit`, so it runs after each committed change. The listening side
is a daemon thread that passes each revision to ``on_revision`` (the gateway's
:meth:`keyswap.store.ChangeWatcher.observe`), reconnects by itself with exponential backoff, and calls
``on_connect`` each time it is subscribed again (the gateway polls once for anything it missed).

Redis pub/sub is at-most-once: a message published while a subscriber is disconnected is lost. That is
why the revision poller stays on as the fallback, and why a reconnect triggers a poll. Several keyswap
deployments on one Redis need different prefixes (pub/sub ignores the database number).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from keyswap.errors import ConfigError

__all__ = ["DEFAULT_PREFIX", "RedisChanges", "check_prefix", "check_redis_url", "redis_options"]

log = logging.getLogger("keyswap.gateway")

#: Prefix of every Redis key and channel keyswap uses.
DEFAULT_PREFIX = "keyswap"
_SCHEMES = ("redis://", "rediss://", "unix://")


def check_redis_url(url: str) -> str:
    """Return ``url`` if it is a ``redis://``, ``rediss://`` or ``unix://`` URL redis-py accepts.

    Raises:
        ConfigError: anything else (the message never shows a password).
    """
    import redis

    url = url.strip()
    if not url.startswith(_SCHEMES):
        raise ConfigError("the Redis URL must start with redis://, rediss:// or unix://")
    try:
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:
        raise ConfigError(
            "the Redis URL is not valid (expected e.g. redis://host:6379/0)"
        ) from None
    return url


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is 1-64 characters of ``[A-Za-z0-9._-]``.

    Raises:
        ConfigError: anything else.
    """
    if (
        not prefix
        or len(prefix) > 64
        or not all(c.isascii() and (c.isalnum() or c in "._-") for c in prefix)
    ):
        raise ConfigError(
            "the Redis prefix must be 1-64 characters of letters, digits, '.', '_', '-'"
        )
    return prefix


def redis_options(timeout: float, *, asyncio: bool = False) -> dict[str, Any]:
    """Client options for keyswap's Redis connections: short timeouts, no retries of redis-py's own
    (keyswap decides what a failure means); ``asyncio`` for a ``redis.asyncio`` client."""
    from redis.backoff import NoBackoff

    if asyncio:
        from redis.asyncio.retry import Retry as AsyncRetry

        retry: Any = AsyncRetry(NoBackoff(), 0)
    else:
        from redis.retry import Retry

        retry = Retry(NoBackoff(), 0)
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": retry,
        "health_check_interval": 0,
    }


class RedisChanges:
    """Publish and receive store revisions on ``<prefix>:changes``.

    Args:
        url: the Redis URL (:func:`check_redis_url`).
        prefix: key and channel prefix (:func:`check_prefix`).
        on_revision: called on the subscriber thread with each announced revision.
        on_connect: called on the subscriber thread each time the subscription (re)starts.
        timeout: socket timeout of every Redis operation, seconds.
        backoff_min: first reconnection delay, seconds; doubles up to ``backoff_max``.
        heartbeat: seconds between PINGs on an idle subscription (notices a dead connection).

    Raises:
        ConfigError: bad URL or prefix.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        on_revision: Callable[[int], object] = lambda _revision: None,
        on_connect: Callable[[], object] = lambda: None,
        timeout: float = 0.5,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        heartbeat: float = 5.0,
    ) -> None:
        import redis

        self.url = check_redis_url(url)
        self.channel = f"{check_prefix(prefix)}:changes"
        #: ``CLIENT SETNAME`` of the subscriber connection (``<prefix>:changes``), for operators.
        self.client_name = self.channel
        self._on_revision = on_revision
        self._on_connect = on_connect
        self._timeout = timeout
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._heartbeat = heartbeat
        self._publisher = redis.Redis.from_url(self.url, **redis_options(timeout))
        self._publish_failing = False
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._failing = False
        self._thread: threading.Thread | None = None
        #: How many times the subscription was established (for tests and status).
        self.connections = 0

    # -- publishing -----------------------------------------------------------------------------------

    def publish(self, revision: int) -> bool:
        """Announce ``revision`` (after the change committed); False if Redis could not be reached.

        Never raises: a lost announcement is caught up by the other nodes' revision polling.
        """
        import redis

        try:
            self._publisher.publish(self.channel, str(int(revision)))
        except (redis.RedisError, OSError) as exc:
            if not self._publish_failing:
                self._publish_failing = True
                log.warning("could not announce a change on Redis (%s)", type(exc).__name__)
            return False
        if self._publish_failing:
            self._publish_failing = False
            log.warning("announcing changes on Redis again")
        return True

    # -- subscribing ----------------------------------------------------------------------------------

    @property
    def subscribed(self) -> bool:
        """True while the subscription is live."""
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until subscribed (or ``timeout`` seconds); True if subscribed."""
        return self._subscribed.wait(timeout)

    def start(self) -> None:
        """Start the subscriber thread (idempotent; returns at once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="keyswap-redis-changes", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the subscriber thread and close the connections."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout)
        self._publisher.close()

    def _run(self) -> None:
        delay = self._backoff_min
        while not self._stop.is_set():
            try:
                self._subscribe()
            except Exception as exc:
                if self._subscribed.is_set():
                    delay = self._backoff_min
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "change notifications from Redis stopped (%s); reconnecting",
                        type(exc).__name__,
                    )
            finally:
                self._subscribed.clear()
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._backoff_max)

    def _subscribe(self) -> None:
        import redis

        client = redis.Redis.from_url(
            self.url, client_name=self.client_name, **redis_options(self._timeout)
        )
        # redis-py < 8.2 leaves pubsub() unannotated and 8.2 annotates it: going through a typed
        # name keeps mypy --strict quiet on both (a `type: ignore` is "unused" on one of them).
        new_pubsub: Callable[[], Any] = client.pubsub
        pubsub = new_pubsub()
        try:
            pubsub.subscribe(self.channel)
            # Live once the server confirms the subscription (its first reply).
            deadline = time.monotonic() + max(self._timeout, 1.0)
            while True:
                reply = pubsub.get_message(timeout=0.05)
                if reply is not None and reply.get("type") == "subscribe":
                    break
                if time.monotonic() > deadline:
                    raise redis.TimeoutError("no subscription confirmation")
            self.connections += 1
            self._subscribed.set()
            if self._failing:
                self._failing = False
                log.warning("listening for change notifications on Redis again")
            _call(self._on_connect)
            last_beat = time.monotonic()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.25)
                if message is not None and message.get("type") == "message":
                    revision = _revision(message.get("data"))
                    if revision is not None:
                        _call(self._on_revision, revision)
                if time.monotonic() - last_beat >= self._heartbeat:
                    pubsub.ping()
                    last_beat = time.monotonic()
        finally:
            pubsub.close()
            client.close()


def _revision(data: object) -> int | None:
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


def _call(callback: Callable[..., object], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("change notification callback failed")
