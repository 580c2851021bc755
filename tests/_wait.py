"""Bounded waiting for something a running node does (import as ``from _wait import until``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """``pred()``'s first truthy value, polled every 0.3 s; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = pred()
        if out:
            return out
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
