"""Run a service's declared config-validation command (``nginx -t``) before a restart.

A failing check means restarting would only crash the service again, so the
ladder escalates with reason ``config`` instead.  Built on
:func:`handlers.procs.run_command`: asynchronous, bounded output, its own
process group, killed as a group on timeout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from handlers.procs import CommandResult, run_command

__all__ = ["ValidateResult", "validate_config"]

# Tools tend to print their real complaint first and a summary ("test failed") last.
_COMPLAINT = re.compile(r"\b(emerg|error|fatal|invalid|failed to)\b", re.IGNORECASE)
_MAX_REASON = 300


@dataclass(frozen=True)
class ValidateResult:
    """Whether the configuration passed, a one-line reason, and the raw command result."""

    ok: bool
    reason: str
    result: CommandResult


def _one_line(text: str) -> str:
    flat = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return flat if len(flat) <= _MAX_REASON else flat[: _MAX_REASON - 3] + "..."


def _complaint(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        if _COMPLAINT.search(line):
            return _one_line(line)
    return _one_line(lines[-1]) if lines else ""


async def validate_config(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 -- passed on to run_command, which kills the group
    env: Mapping[str, str] | None = None,
) -> ValidateResult:
    """Run the validate command; ``ok`` only for exit code 0 within ``timeout`` seconds.

    Never raises for the command's sake: a missing program, a timeout, a
    signal or a non-zero exit all give ``ok=False`` with a one-line reason
    (for a timeout exactly ``timed out after Ns``).
    """
    result = await run_command(argv, timeout=timeout, env=env)
    if result.error is not None:
        return ValidateResult(False, result.error, result)
    if result.timed_out:
        return ValidateResult(False, f"timed out after {timeout:g}s", result)
    name = result.argv[0]
    if result.returncode == 0:
        return ValidateResult(True, f"{name}: configuration is valid", result)
    what = result.describe()
    complaint = _complaint(result.output_tail)
    return ValidateResult(False, f"{what}: {complaint}" if complaint else what, result)
