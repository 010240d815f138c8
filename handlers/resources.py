"""Disk, inode and memory checks for the recovery ladder, and the thresholds they use.

``check_disk`` and ``memory_status`` do blocking I/O (``statvfs``, reading
/proc): the ladder calls them through ``asyncio.to_thread``.  Neither raises
for a path or file it cannot read: a check that cannot be made comes back
``ok`` with a reason saying so, because refusing to restart a service over a
measurement we could not take would make the outage worse, not better.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unitgen.model import Threshold, format_size

__all__ = [
    "DiskStatus",
    "MemoryStatus",
    "Threshold",
    "check_disk",
    "format_size",
    "memory_status",
    "oom_killed",
]


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


_MEMINFO_KEYS = frozenset({"MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached"})


def _parse_meminfo(text: str) -> dict[str, int]:
    # Only the few keys used, and stop once they are in: the file has ~55 lines
    # and this runs before every restart of a burst.
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        key = key.strip()
        if key not in _MEMINFO_KEYS:
            continue
        fields = rest.split()
        if not sep or not fields or not fields[0].isdigit():
            continue
        scale = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
        values[key] = int(fields[0]) * scale
        if len(values) == len(_MEMINFO_KEYS):
            break
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
