"""Run a function in a forked child and read back the short answer it gives (for fork-safety tests)."""

from __future__ import annotations

import os
import select
import signal
import warnings
from collections.abc import Callable


def answer_from_forked_child(child: Callable[[], str], *, timeout: float = 15.0) -> str:
    """Fork; the child calls ``child`` and reports what it returns, or the name of what it raised.

    The child never returns into pytest (``os._exit``); a child that does not answer within
    ``timeout`` seconds (a deadlock, say) is killed, and the answer is ``"no answer"``.
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about forking a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            try:
                answer = child()
            except Exception as exc:
                answer = type(exc).__name__
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    ready: list[int] = []
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        return os.read(read_end, 200).decode() if ready else "no answer"
    finally:
        os.close(read_end)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
