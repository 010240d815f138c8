"""Background tasks: every failure is logged, once, the same way.

The project's tasks are kept by strong reference in their owner's set (the loop
holds only weak ones) and each owner has one teardown path; what they share is
how a task that died of an exception is reported, so that none dies silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["log_failure", "report_failure"]


def report_failure(task: asyncio.Task[Any], log: logging.Logger) -> None:
    """Log ``task``'s exception with its traceback, if it died of one (not cancelled)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s failed", task.get_name(), exc_info=exc)


def log_failure(log: logging.Logger) -> Callable[[asyncio.Task[Any]], None]:
    """A done-callback that reports a failed task to ``log``."""

    def done(task: asyncio.Task[Any]) -> None:
        report_failure(task, log)

    return done
