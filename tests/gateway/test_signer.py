"""The gateway's signing thread (keyswap.gateway.signer)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from keyswap.gateway.signer import Signer


def test_work_runs_on_the_signing_thread_and_results_reach_their_requests() -> None:
    threads: set[str] = set()

    def work(n: int) -> int:
        threads.add(threading.current_thread().name)
        if n < 0:
            raise ValueError("negative")
        return n * n

    signer: Signer[int, int] = Signer(work)

    async def main() -> list[int | str]:
        futures = [signer.run(n) for n in (3, -1, 4, 5)]
        answers: list[int | str] = []
        for future in futures:
            try:
                answers.append(await future)
            except ValueError as exc:
                answers.append(str(exc))
        return answers

    try:
        assert asyncio.run(main()) == [9, "negative", 16, 25]
        assert threads == {"keyswap-sign"}
    finally:
        signer.close()


def test_a_cancelled_request_does_not_break_the_batch_and_close_stops_the_thread() -> None:
    release = threading.Event()

    def work(n: int) -> int:
        release.wait(10)
        return n

    signer: Signer[int, int] = Signer(work)

    async def main() -> int:
        first = signer.run(1)  # holds the thread until released
        gone = signer.run(2)
        kept = signer.run(3)
        gone.cancel()  # the client left while it was queued
        release.set()
        assert await first == 1
        return await kept

    assert asyncio.run(main()) == 3
    signer.close()
    signer.close()  # idempotent

    async def after() -> None:
        signer.run(4)

    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(after())


class _Fatal(BaseException):
    """Not an Exception (as SystemExit or GeneratorExit are not)."""


def test_work_raising_a_base_exception_fails_its_request_and_the_thread_keeps_serving() -> None:
    def work(n: int) -> int:
        if n < 0:
            raise _Fatal("fatal")
        return n

    signer: Signer[int, int] = Signer(work)

    async def main() -> tuple[str, int]:
        failed = signer.run(-1)
        try:
            await asyncio.wait_for(failed, 5)
        except TimeoutError:
            return "hung", -1
        except Exception as exc:
            outcome = type(exc).__name__
        else:
            outcome = "no error"
        return outcome, await asyncio.wait_for(signer.run(7), 5)

    try:
        outcome, after = asyncio.run(main())
        assert outcome == "RuntimeError"
        assert after == 7
    finally:
        signer.close()
