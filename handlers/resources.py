"""Disk, inode and memory checks for the recovery ladder, and the thresholds they use.

``check_disk`` and ``memory_status`` do blocking I/O (``statvfs``, reading
/proc): the ladder calls them through ``asyncio.to_thread``.  Neither raises
for a path or file it cannot read: a check that cannot be made comes back
``ok`` with a reason saying so, because refusing to restart a service over a
measurement we could not take would make the outage worse, not better.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from unitgen.errors import PolicyError

__all__ = [
    "DiskStatus",
    "MemoryStatus",
    "Threshold",
    "check_disk",
    "format_size",
    "memory_status",
    "oom_killed",
]

# systemd's size suffixes, base 1024 (parse_size() in src/basic/parse-util.c).
_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[BKMGTP]?)")
_PERCENT_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*%")
_MAX_BYTES = (1 << 63) - 1
_EXPECTED = "expected a percentage like '10%' or a size like '512M' (K, M, G, T, P: base 1024)"


def format_size(n: int) -> str:
    """A byte count the way systemd prints one: ``1.5G``, ``512M``, ``900B``."""
    for unit in ("P", "T", "G", "M", "K"):
        scale = _SUFFIXES[unit]
        if n >= scale:
            value = n / scale
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class Threshold:
    """A minimum to keep free: a percentage of the total, an absolute amount, or both.

    For inodes the absolute amount is a count of inodes, not bytes.  With
    both set, both must hold; with neither, the threshold never fails.
    """

    percent: float | None = None
    bytes: int | None = None

    @classmethod
    def parse(cls, text: str | int, *, what: str = "threshold") -> Threshold:
        """Parse ``"10%"``, ``"512M"``, ``"1G"``, ``"1.5T"`` or a plain number of bytes.

        Raises PolicyError with a one-line message naming ``what`` on bad input.
        """
        if isinstance(text, bool) or not isinstance(text, str | int):
            raise PolicyError(f"{what}: {_EXPECTED}, got {type(text).__name__}")
        if isinstance(text, int):
            if not 0 <= text <= _MAX_BYTES:
                raise PolicyError(f"{what}: {_EXPECTED}, got {text}")
            return cls(bytes=text)
        raw = text.strip()
        shown = repr(text if len(text) <= 40 else text[:40] + "...")
        if m := _PERCENT_RE.fullmatch(raw):
            percent = float(m["num"])
            if not 0.0 <= percent <= 100.0:
                raise PolicyError(f"{what}: percentage must be between 0% and 100%, got {shown}")
            return cls(percent=percent)
        if m := _SIZE_RE.fullmatch(raw):
            # Fraction, not float: "9007199254740993" must stay exact.
            value = Fraction(m["num"]) * _SUFFIXES[m["unit"]]
            if value > _MAX_BYTES:
                raise PolicyError(f"{what}: size too large, got {shown}")
            return cls(bytes=int(value))
        raise PolicyError(f"{what}: {_EXPECTED}, got {shown}")

    def required(self, total: int) -> int:
        """The amount that must stay free out of ``total``."""
        need = 0
        if self.percent is not None:
            need = max(need, math.ceil(total * self.percent / 100.0))
        if self.bytes is not None:
            need = max(need, self.bytes)
        return need

    def satisfied(self, free: int, total: int) -> bool:
        return free >= self.required(total)

    def __str__(self) -> str:
        parts = []
        if self.percent is not None:
            parts.append(f"{self.percent:g}%")
        if self.bytes is not None:
            parts.append(format_size(self.bytes))
        return " and ".join(parts) or "none"


@dataclass(frozen=True)
class DiskStatus:
    """Free space and inodes where a path lives.

    ``checked_path`` is the path actually measured: ``path`` itself, or its
    nearest existing parent when ``path`` does not exist yet.
    """

    path: str
    free_bytes: int
    total_bytes: int
    free_inodes: int
    total_inodes: int
    ok: bool
    reason: str
    checked_path: str = ""


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current.parent != current:
        current = current.parent
    return current


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def check_disk(
    paths: Sequence[str], *, min_free: Threshold, min_free_inodes: Threshold
) -> list[DiskStatus]:
    """Check free space (``f_bavail``) and free inodes (``f_favail``) for each path.

    Blocking I/O: call through ``asyncio.to_thread`` from async code.

    Space and inodes are what an unprivileged service can use, not what
    root could.  A path that does not exist yet is measured at its nearest
    existing parent and the reason says so.  A filesystem that reports no
    inode total (btrfs, some FUSE) passes the inode check.
    """
    statuses: list[DiskStatus] = []
    for path in paths:
        # absolute() is lexical: the path is only measured, so no symlink concern here.
        wanted = Path(path).absolute()
        checked = _nearest_existing(wanted)
        note = "" if checked == wanted else f" (missing; checked {checked})"
        try:
            vfs = os.statvfs(checked)
        except OSError as exc:
            statuses.append(
                DiskStatus(
                    path,
                    0,
                    0,
                    0,
                    0,
                    True,
                    f"{path}: could not check free space ({exc.strerror}); not held against it",
                    str(checked),
                )
            )
            continue
        free = vfs.f_bavail * vfs.f_frsize
        total = vfs.f_blocks * vfs.f_frsize
        ifree, itotal = vfs.f_favail, vfs.f_files
        problems = []
        if not min_free.satisfied(free, total):
            problems.append(
                f"low disk space: {format_size(free)} free of {format_size(total)} "
                f"({_pct(free, total)}), need {min_free}"
            )
        if itotal > 0 and not min_free_inodes.satisfied(ifree, itotal):
            problems.append(
                f"low inodes: {ifree} free of {itotal} ({_pct(ifree, itotal)}), "
                f"need {min_free_inodes}"
            )
        if problems:
            reason = f"{path}{note}: " + "; ".join(problems)
        else:
            reason = (
                f"{path}{note}: {format_size(free)} free of {format_size(total)}, "
                f"{ifree} of {itotal} inodes free"
            )
        statuses.append(
            DiskStatus(path, free, total, ifree, itotal, not problems, reason, str(checked))
        )
    return statuses


@dataclass(frozen=True)
class MemoryStatus:
    """Available memory against the threshold, from /proc/meminfo."""

    available_bytes: int
    total_bytes: int
    ok: bool
    reason: str


def _parse_meminfo(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not fields or not fields[0].isdigit():
            continue
        scale = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
        values[key.strip()] = int(fields[0]) * scale
    return values


def memory_status(min_available: Threshold, meminfo: str = "/proc/meminfo") -> MemoryStatus:
    """Compare MemAvailable with ``min_available`` (a percentage is of MemTotal).

    Blocking I/O: call through ``asyncio.to_thread`` from async code.

    Kernels before 3.14 have no MemAvailable; then MemFree + Buffers + Cached
    stands in and the reason says it is an estimate.  An unreadable or
    malformed file gives ``ok`` with a reason saying nothing could be checked.
    In a container without lxcfs this is the host's memory, not the cgroup's.
    """
    try:
        with open(meminfo, encoding="ascii", errors="replace") as f:
            values = _parse_meminfo(f.read(64 * 1024))
    except OSError as exc:
        return MemoryStatus(0, 0, True, f"could not read {meminfo} ({exc.strerror}); not checked")
    total = values.get("MemTotal")
    if total is None:
        return MemoryStatus(0, 0, True, f"{meminfo} has no MemTotal; not checked")
    estimate = ""
    available = values.get("MemAvailable")
    if available is None:
        available = sum(values.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))
        estimate = " (estimated: no MemAvailable)"
    if min_available.satisfied(available, total):
        return MemoryStatus(
            available,
            total,
            True,
            f"{format_size(available)} of {format_size(total)} memory available{estimate}",
        )
    return MemoryStatus(
        available,
        total,
        False,
        f"low memory: {format_size(available)} of {format_size(total)} available "
        f"({_pct(available, total)}){estimate}, need {min_available}",
    )


def oom_killed(result: str, exec_main_code: int, exec_main_status: int) -> bool:
    """Whether systemd says the unit failed because the kernel's OOM killer struck.

    Only systemd's ``Result`` is trusted: it is ``oom-kill`` when the unit's
    cgroup recorded an OOM kill (memory.events).  A main process killed by
    SIGKILL (``ExecMainCode`` CLD_KILLED, ``ExecMainStatus`` 9) is *not*
    taken as proof, since ``kill -9``, a watchdog or a stop timeout look the
    same; the exec fields are accepted so callers pass what they read and a
    future systemd signal can be added here without touching them.
    """
    del exec_main_code, exec_main_status
    return result == "oom-kill"
