"""The gateway's signing thread: tokens a request needs that are not cached yet, signed beside the
event loop (signing releases the GIL; RS256 takes ~250-330 µs).

Written by hand rather than with :class:`concurrent.futures.ThreadPoolExecutor` because that
executor's ``submit`` costs the event loop a pure-Python semaphore and condition round per call
(about 15 % of a cold request's event-loop time in a profile), and it hands results back one
wake-up each. Here a request puts one tuple on a :class:`queue.SimpleQueue` (C) and awaits a
future; the thread takes whatever is queued, runs it, and hands the whole batch's results back to
the loop in one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Signer"]

A = TypeVar("A")
R = TypeVar("R")

logger = logging.getLogger("keyswap.gateway")

_STOP = object()


def _settle(done: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the loop: resolve the futures of one batch (those cancelled meanwhile are skipped)."""
    for future, ok, value in done:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Signer(Generic[A, R]):
    """Runs ``work(arg)`` on one daemon thread, started on first use, for coroutines on any loop.

    ``close`` stops the thread after what is queued (idempotent); :meth:`run` after ``close`` raises
    :class:`RuntimeError`.
    """

    def __init__(self, work: Callable[[A], R], *, name: str = "keyswap-sign") -> None:
        self._work = work
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def run(self, arg: A) -> asyncio.Future[R]:
        """A future of ``work(arg)`` done on the signing thread (await it on the running loop)."""
        if self._thread is None or self._closed:
            self._start()  # raises once closed
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put((loop, future, arg))
        return future

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the signing thread is closed")
            if self._thread is None:
                thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                thread.start()
                self._thread = thread

    def _serve(self) -> None:
        get, get_nowait, work = self._queue.get, self._queue.get_nowait, self._work
        while True:
            item = get()
            batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
            batches = {}
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                else:
                    loop, future, arg = item
                    outcome: tuple[asyncio.Future[Any], bool, Any]
                    try:
                        outcome = (future, True, work(arg))
                    except Exception as exc:  # handed to the awaiting request
                        outcome = (future, False, exc)
                    except BaseException as exc:  # the thread must not die: every
                        # request queued after this one would wait forever.
                        error = RuntimeError(f"signing failed: {type(exc).__name__}")
                        error.__cause__ = exc
                        outcome = (future, False, error)
                    batches.setdefault(loop, []).append(outcome)
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            for loop, done in batches.items():
                try:
                    loop.call_soon_threadsafe(_settle, done)
                except RuntimeError:  # that loop is closed: nobody is waiting any more
                    logger.debug("a signing result arrived after its event loop closed")
            if stop:
                return

    def close(self) -> None:
        """Stop the thread once the work queued before this call is done (without waiting)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._queue.put(_STOP)
