"""handlers.tasks: a background task that dies of an exception is logged, once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from handlers.tasks import log_failure, report_failure

log = logging.getLogger("test.tasks")


async def _boom() -> None:
    raise ValueError("boom")


async def _fine() -> None:
    return None


@pytest.mark.asyncio
async def test_a_failed_task_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    task = asyncio.create_task(_boom(), name="bursting")
    task.add_done_callback(log_failure(log))
    with caplog.at_level(logging.ERROR, "test.tasks"):
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done-callbacks run on the next loop pass
    (record,) = caplog.records
    assert "bursting" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


@pytest.mark.asyncio
async def test_a_finished_or_cancelled_task_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    done = asyncio.create_task(_fine())
    cancelled = asyncio.create_task(asyncio.sleep(10))
    await done
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    with caplog.at_level(logging.DEBUG, "test.tasks"):
        report_failure(done, log)
        report_failure(cancelled, log)
    assert caplog.records == []
