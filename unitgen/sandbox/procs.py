"""What /proc says about a process: its identity, its name, its children."""

from __future__ import annotations

import contextlib
from pathlib import Path


def start_time(pid: int) -> str:
    """The kernel's start time of ``pid``: with the pid, a unique process identity."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, started: str) -> bool:
    try:
        return start_time(pid) == started
    except (OSError, IndexError):
        return False


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def ns_children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def pids_in_ns(ns: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str((entry / "ns" / "pid").readlink()) == ns:
                    pids.append(int(entry.name))
    return pids
