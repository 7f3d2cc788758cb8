"""``keyswap gateway --workers N``: N processes serving one listening socket (pre-forked listener).

The parent binds the listener (:func:`keyswap.ports.bind_listeners`), prepares the store (signing keys
created once), then forks N workers that inherit the socket; the kernel hands each new connection to one
of the workers waiting in ``accept``. Each worker builds its own gateway after the fork: its own store
connections, API-key cache, token cache, upstream pool and change watcher (push or poll), so a change
reaches every worker within the same bounds as it reaches a single process. Nothing is shared between
workers but the socket (and Redis, when given: rate limits are then counted across all workers).

The parent only supervises: SIGTERM/SIGINT are passed to every worker as SIGTERM (each drains and
exits; a second signal stops them at once), a worker
that dies after start-up is replaced, a worker that fails to start stops them all (exit status 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

__all__ = ["resolve_workers", "run_workers"]

logger = logging.getLogger("keyswap.gateway")

#: Seconds between a worker's unexpected death and its replacement (a crash loop stays slow).
RESPAWN_DELAY = 1.0


def resolve_workers(value: str) -> int:
    """``--workers``: a count of at least 1, or ``auto`` (the CPUs this process may run on).

    Raises:
        ValueError: neither.
    """
    text = value.strip().lower()
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    count = int(text)
    if not 1 <= count <= 1024:
        raise ValueError("out of range")
    return count


def run_workers(
    count: int,
    worker: Callable[[Callable[[], None]], int],
    *,
    idle: Callable[[float], None] | None = None,
) -> int:
    """Fork ``count`` workers running ``worker(on_ready)`` (which serves until SIGTERM and returns an
    exit status) and supervise them until they have all exited.

    ``idle(seconds)`` replaces the supervisor's short sleeps between checks (it may do some work
    for at most about that long, e.g. answer one ``/metrics`` scrape); it runs in this process only,
    which starts no thread (it forks).

    Returns 0 when every worker exited cleanly after a signal, 1 if one failed to start.
    """
    stopping = False
    failed = False
    ready_r, ready_w = os.pipe()
    os.set_blocking(ready_r, False)
    children: dict[int, bool] = {}  # pid -> has been ready

    parent = os.getpid()

    def spawn() -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                os.close(ready_r)
                os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which passes it on
                _drain_when_orphaned()
                if os.getppid() != parent:  # the parent died before that took effect
                    os._exit(1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)

                def on_ready() -> None:
                    with contextlib.suppress(OSError):
                        os.write(ready_w, os.getpid().to_bytes(4, "big"))

                status = worker(on_ready)
            except BaseException as exc:  # never return into the parent's code
                if not isinstance(exc, SystemExit | KeyboardInterrupt):
                    logger.error("gateway worker failed (%s)", type(exc).__name__)
                status = (
                    exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
                )
            finally:
                os._exit(status)
        children[pid] = False
        return pid

    def stop(_signum: int, _frame: object) -> None:
        # Each worker drains on the first SIGTERM and stops at once on a second (as one process does).
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(count):
            spawn()
        respawn_at: list[float] = []
        while children or (respawn_at and not stopping):
            _read_ready(ready_r, children)
            if respawn_at and not stopping and time.monotonic() >= respawn_at[0]:
                respawn_at.pop(0)
                spawn()
            pid, status = os.waitpid(-1, os.WNOHANG) if children else (0, 0)
            if pid == 0:
                if idle is None:
                    time.sleep(0.05)
                else:
                    idle(0.05)
                continue
            _read_ready(ready_r, children)
            was_ready = children.pop(pid, False)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                continue
            if not was_ready:  # failed to start: the others would too (port, database, keys)
                failed = True
                stop(signal.SIGTERM, None)
                continue
            logger.warning("gateway worker %d exited (status %d); starting another", pid, code)
            respawn_at.append(time.monotonic() + RESPAWN_DELAY)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(ready_r)
        os.close(ready_w)
    return 1 if failed else 0


def _drain_when_orphaned() -> None:
    """Linux: SIGTERM this worker when the parent dies (killed with SIGKILL, say), so that no worker
    keeps serving unsupervised; elsewhere nothing."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def _read_ready(fd: int, children: dict[int, bool]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            return
        for i in range(0, len(data) - 3, 4):
            pid = int.from_bytes(data[i : i + 4], "big")
            if pid in children and not children[pid]:
                children[pid] = True
                logger.info("gateway worker %d serving", pid)
