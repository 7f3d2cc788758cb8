"""A real ``keyswap`` subprocess (``origin``, ``gateway``) for end-to-end tests, its output kept.

The process's stdout and stderr are merged and drained by a thread while it runs, so a chatty server
never blocks on a full pipe, and tests can read what it has logged so far (:meth:`KeyswapProcess.log`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

KEYSWAP = [sys.executable, "-c", "from keyswap.cli import main; main()"]


class KeyswapProcess:
    """A running ``keyswap`` command listening on ``url``."""

    def __init__(self, args: list[str], url: str, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSWAP_")}
        full_env.update(env or {})
        self.url = url
        self.process = subprocess.Popen(
            [*KEYSWAP, *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line)

    def log(self) -> str:
        """Everything the process has written so far."""
        with self._lock:
            return "".join(self._lines)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, path: str, timeout: float = 20.0) -> None:
        """Poll ``url + path`` until the server answers anything (fails if the process exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"keyswap exited early:\n{self.stop()}")
            try:
                httpx.get(self.url + path, timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"keyswap did not start in time:\n{self.stop()}")

    def stop(self) -> str:
        """SIGTERM, wait for the exit, and return the whole log."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._drain.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.log()


@contextmanager
def running_keyswap(
    args: list[str], *, port: int, ready_path: str = "/", env: dict[str, str] | None = None
) -> Iterator[KeyswapProcess]:
    """Run ``keyswap <args>`` (which must listen on ``port``) for the duration of the block."""
    process = KeyswapProcess(args, f"http://127.0.0.1:{port}", env)
    try:
        process.wait_ready(ready_path)
        yield process
    finally:
        process.stop()
