"""TEST ONLY: a pause at a named ladder step, so a sandbox test can ``kill -9`` there.

Killing the listener "during the back-off" or "between counting a restart and
making it" cannot be timed from outside: the second is a few microseconds wide.
With both variables set, the engine stops at the step and waits to be killed:

* ``UNITGEN_TEST_PAUSE_AT=STEP`` or ``STEP:N``: ``backing-off`` (before the
  pause of attempt N), ``restarting`` (attempt N counted in the history,
  RestartUnit not called yet) or ``verifying`` (RestartUnit returned, nothing
  seen yet); ``N`` (default: any attempt) is the attempt's number in the window.
* ``UNITGEN_TEST_PAUSE_FILE=PATH``: the first process to arrive writes
  ``PID STEP UNIT`` there and sleeps (an hour at most); whoever arrives while the
  file exists goes on, so the process that adopts the incident is not stopped too.

Unset, as in every real deployment, the engine never imports this module.
tests/test_adoption_sandbox.py is its user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PausePoint", "from_environment"]

PAUSE_AT = "UNITGEN_TEST_PAUSE_AT"
PAUSE_FILE = "UNITGEN_TEST_PAUSE_FILE"
_LONGEST = 3600.0
STEPS = ("backing-off", "restarting", "verifying")


@dataclass(frozen=True)
class PausePoint:
    step: str
    attempt: int | None
    marker: Path

    async def reached(self, step: str, unit: str, attempt: int) -> None:
        if step != self.step or (self.attempt is not None and attempt != self.attempt):
            return
        try:
            # O_EXCL: exactly one process pauses per marker file.
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return
        with contextlib.suppress(OSError):
            os.write(fd, f"{os.getpid()} {step} {unit}\n".encode())
        os.close(fd)
        await asyncio.sleep(_LONGEST)


def from_environment(env: Mapping[str, str]) -> PausePoint | None:
    spec, marker = env.get(PAUSE_AT, ""), env.get(PAUSE_FILE, "")
    if not spec or not marker:
        return None
    step, _, number = spec.partition(":")
    if step not in STEPS:
        return None
    return PausePoint(step, int(number) if number.isdigit() else None, Path(marker))
