"""Blocking store calls from the event loop: a deadline on each, and a bound on the threads they use.

A request that needs the database (an API-key cache miss) runs the lookup on one of a few daemon
threads and waits for it at most ``timeout`` seconds, counting any wait for a free thread. A database
that hangs (frozen, not refusing) therefore costs a request ``timeout`` at most, and pins at most
``threads`` threads however many requests arrive: the call that hangs keeps its thread until the
database answers or the connection breaks (libpq keepalives, ``tcp_user_timeout``), but nobody waits for
it any more. The threads are daemons, so a hung call never holds up the process at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from keyswap.errors import ConfigError, StoreUnavailable

__all__ = ["DEFAULT_DB_TIMEOUT", "DEFAULT_STORE_THREADS", "StoreCalls", "StoreTimeout"]

T = TypeVar("T")

#: Seconds a request waits for the database (a lookup, including any wait for a free thread).
DEFAULT_DB_TIMEOUT = 2.0
#: Most threads blocked on the database at once for requests.
DEFAULT_STORE_THREADS = 8

_Job = tuple[
    Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], None]
]


class StoreTimeout(StoreUnavailable):
    """The store did not answer within the deadline (or every store thread stayed busy that long)."""


class StoreCalls:
    """Run blocking calls on at most ``threads`` daemon threads, each awaited for ``timeout`` seconds.

    Args:
        timeout: seconds :meth:`run` waits, from the call (> 0).
        threads: most calls running at once (>= 1); further calls wait for a free thread, within
            their own deadline.

    Raises:
        ConfigError: a timeout that is not positive, or no threads.
    """

    def __init__(
        self, timeout: float = DEFAULT_DB_TIMEOUT, threads: int = DEFAULT_STORE_THREADS
    ) -> None:
        if not (timeout > 0 and threads >= 1):
            raise ConfigError("the database timeout must be positive and there must be a thread")
        self.timeout = float(timeout)
        self.threads = threads
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None
        self._running = 0  # calls holding a slot (read and written on the event loop only)

    @property
    def busy(self) -> int:
        """Calls running now (hung ones included)."""
        return self._running

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on a store thread; its result or its exception.

        Raises:
            StoreTimeout: no answer within ``timeout`` (the call goes on, unwatched, and keeps its
                thread until it ends).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
        slots = self._slots
        if slots.locked():  # every thread busy: wait for one, within the deadline
            try:
                await asyncio.wait_for(slots.acquire(), self.timeout)
            except TimeoutError:
                raise StoreTimeout("the key store did not answer in time") from None
        else:  # a free thread: taken at once (no task, no timer)
            await slots.acquire()
        self._running += 1

        def release() -> None:
            self._running -= 1
            slots.release()

        future: asyncio.Future[T] = loop.create_future()
        self._submit((lambda: function(*args), loop, future, release))
        # One timer for the deadline instead of wait_for's task and callbacks: it fails the future
        # (StoreTimeout), whose late answer is then dropped; a cancelled caller cancels it.
        timer = loop.call_at(deadline, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def close(self) -> None:
        """Let idle threads end (threads on a hung call end when it does)."""
        with self._lock:
            for _ in self._workers:
                self._jobs.put(None)
            self._workers = []
            self._idle = 0

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                worker = threading.Thread(target=self._work, name="keyswap-store-call", daemon=True)
                self._workers.append(worker)
                worker.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, loop, future, release = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = call()
            except BaseException as exc:
                error = exc
            with self._lock:  # idle before the slot is released: the next call reuses this thread
                self._idle += 1
            _settle(loop, future, release, result, error)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(StoreTimeout("the key store did not answer in time"))


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    release: Callable[[], None],
    result: Any,
    error: BaseException | None,
) -> None:
    def settle() -> None:
        release()
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(settle)
