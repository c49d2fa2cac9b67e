"""Polling with a deadline: the one ``wait_until`` (and its async twin for tests that run
the app in this event loop, where a blocking sleep would stall the server under test).

A condition is polled, never slept on: a loaded machine makes a test slower, not flaky.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

Message = str | Callable[[], str]
"""What was awaited; a callable is read only at the deadline (a log file's tail, say)."""


def _timed_out(what: Message, timeout: float) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g}s waiting for {text}")


def wait_until(
    cond: Callable[[], T],
    what: Message = "the condition",
    *,
    timeout: float = 60,
    every: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``cond`` every ``every`` seconds until it returns something true, and return
    that; ``AssertionError`` naming ``what`` after ``timeout`` seconds. Exceptions of the
    types in ``ignore`` count as "not yet"; any other propagates (a check that raises
    AssertionError fails at once, e.g. on a server that has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except ignore:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        time.sleep(every)


async def wait_until_async(
    cond: Callable[[], T | Awaitable[T]],
    what: Message = "the condition",
    *,
    timeout: float = 60,
    every: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """``wait_until`` on the event loop: ``cond`` may be a plain function or a coroutine
    function, and the wait between polls yields to the loop."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value: Any = cond()
            if inspect.isawaitable(value):
                value = await value
        except ignore:
            value = None
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        await asyncio.sleep(every)
