"""Which systemd the units are for, and what that version understands.

The version comes from ``--systemd-version N`` or from ``systemctl --version``
(asked once per process). Directives newer than the target are left out, not
emitted for systemd to warn about and ignore.

The one behaviour change that matters to recovery: from 254, OnFailure= fires
before every automatic restart unless ``RestartMode=direct``. The renderer sets
it there, so on both 252 and 254+ OnFailure= fires only once systemd gives up.
"""

from __future__ import annotations

import functools
import re
import subprocess

from unitgen.errors import SystemdError, UsageError

__all__ = [
    "MIN_SUPPORTED",
    "RESTART_MODE_SINCE",
    "detect",
    "parse_version_output",
    "resolve",
]

# StartLimitIntervalSec= in [Unit] (230) is the oldest directive we cannot do without.
MIN_SUPPORTED = 230
RESTART_MODE_SINCE = 254  # RestartMode=, RestartSteps=, RestartMaxDelaySec=

_FIRST_LINE = re.compile(r"systemd (\d+)\b")


def parse_version_output(text: str) -> int:
    match = _FIRST_LINE.match(text.strip())
    if match is None:
        first = text.strip().splitlines()[0][:60] if text.strip() else "nothing"
        raise SystemdError(f"systemctl --version: expected 'systemd N', got {first!r}")
    return int(match.group(1))


@functools.cache
def detect() -> int:
    """The installed systemd's version (cached for the life of the process)."""
    try:
        res = subprocess.run(
            ["systemctl", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemdError(
            f"cannot run systemctl --version ({exc}); pass --systemd-version N"
        ) from exc
    if res.returncode != 0:
        raise SystemdError(f"systemctl --version exited {res.returncode}; pass --systemd-version N")
    return parse_version_output(res.stdout)


def resolve(requested: int | None) -> int:
    """``requested`` if given (checked), else the installed version."""
    version = detect() if requested is None else requested
    if version < MIN_SUPPORTED:
        raise UsageError(
            f"--systemd-version {version}: unitgen renders for systemd {MIN_SUPPORTED} or newer"
        )
    return version
