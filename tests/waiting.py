"""Polling for the tests: wait until something is true, and fail loudly (naming what was awaited and,
when given, why the wait cannot succeed) instead of timing out silently. A timeout here is a limit on
waiting, never the thing a test asserts."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(
    condition: Callable[[], Any],
    what: str,
    *,
    timeout: float = 300,
    interval: float = 0.2,
    gone: Callable[[], str | None] | None = None,
) -> Any:
    """Call ``condition`` until it returns something truthy, and return that. ``gone`` (optional) returns
    a reason when the thing awaited can no longer happen (the worker exited, the job failed)."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if gone is not None and (why := gone()):
            raise AssertionError(f"gave up waiting for {what}: {why}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
