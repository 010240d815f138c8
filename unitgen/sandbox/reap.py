"""Removing what a sandbox leaves on the host: its cgroup trees and its temp dir.

:func:`abort` is the one teardown path of a live sandbox; :func:`reap_stale`
finds what sandboxes of SIGKILLed owners left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from unitgen.errors import SandboxError
from unitgen.sandbox.layout import CGROUP_PREFIX, POLL
from unitgen.sandbox.procs import process_alive, start_time


def cgroup_mounts() -> list[tuple[Path, str]]:
    """(mount point, fstype) of every cgroup hierarchy mounted at its root."""
    found: list[tuple[Path, str]] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype = right.split()[0] if right else ""
            if fstype in ("cgroup", "cgroup2") and fields[3] == "/":
                found.append((Path(fields[4].replace("\\040", " ")), right.split()[2]))
    return found


def tracking_hierarchies() -> list[Path]:
    """Hierarchies the namespace init must join: systemd's own and the v2 one.

    v1 controller hierarchies (memory, pids, ...) are left alone: joining cpuset
    would need cpus/mems set first, and systemd creates its unit cgroups there
    below our ID anyway, which teardown removes.
    """
    result = []
    for mount, options in cgroup_mounts():
        if "name=systemd" in options.split(",") or is_cgroup2(mount):
            result.append(mount)
    return result


def is_cgroup2(mount: Path) -> bool:
    return (mount / "cgroup.controllers").exists()


def remove_cgroup_tree(top: Path, deadline: float) -> None:
    """rmdir ``top`` depth first; cgroup directories cannot be unlinked, only rmdir'd."""
    while True:
        try:
            for dirpath, _dirs, _files in sorted(
                os.walk(top), key=lambda t: t[0].count("/"), reverse=True
            ):
                Path(dirpath).rmdir()
        except FileNotFoundError:
            return
        except OSError as exc:
            # EBUSY: the kernel may still be finishing the last exits.
            if time.monotonic() > deadline:
                raise SandboxError(f"cannot remove sandbox cgroup {top}: {exc}") from exc
            time.sleep(0.01)
            continue
        return


# ROOT/owner: "PID STARTTIME" of the process that started the sandbox; reap_stale
# reads it back to tell a live sandbox from one whose owner was SIGKILLed.
OWNER_FILE = "owner"


def record_owner(root: Path) -> None:
    """Write ``ROOT/owner`` for this process, before anything else is started."""
    (root / OWNER_FILE).write_text(f"{os.getpid()} {start_time(os.getpid())}\n")


# How long reap_stale waits for a dead sandbox's last processes to leave its cgroup.
STALE_EXIT_WAIT = 2.0


def reap_stale() -> list[Path]:
    """Remove what sandboxes left when their owner was SIGKILLed mid-way.

    The namespace dies with its owner (PR_SET_PDEATHSIG), but nobody is left to
    remove the temp dir and the empty cgroup directories. A sandbox is stale when
    the process recorded in ``ROOT/owner`` is gone; a cgroup tree without a root
    dir is stale once it is empty and older than a few seconds (younger ones may
    belong to a sandbox being born). Returns what was removed.
    """
    removed: list[Path] = []
    now = time.time()
    for root in Path(tempfile.gettempdir()).glob(CGROUP_PREFIX + "*"):
        try:
            owner = (root / OWNER_FILE).read_text().split()
            alive = process_alive(int(owner[0]), owner[1])
        except (OSError, ValueError, IndexError):
            alive = now - _mtime(root) < 60
        if alive:
            continue
        left = False
        for mount, _ in cgroup_mounts():
            top = mount / root.name
            # The owner is gone, so its PID namespace is dead and the kernel has
            # SIGKILLed what is left in the cgroup; give those exits a moment.
            deadline = time.monotonic() + STALE_EXIT_WAIT
            while _cgroup_has_processes(top) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _cgroup_has_processes(top):
                left = True
                continue
            try:
                remove_cgroup_tree(top, time.monotonic() + 0.5)
            except SandboxError:
                left = True
        if left:
            continue  # keep the root dir: the next reap finds this sandbox again
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    tmp = Path(tempfile.gettempdir())
    for mount, _ in cgroup_mounts():
        try:
            entries = list(mount.glob(CGROUP_PREFIX + "*"))
        except OSError:
            continue
        for top in entries:
            if (tmp / top.name).exists() or now - _mtime(top) < 10:
                continue
            if _cgroup_has_processes(top):
                continue
            with contextlib.suppress(SandboxError):
                remove_cgroup_tree(top, time.monotonic() + 0.5)
                removed.append(top)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _cgroup_has_processes(top: Path) -> bool:
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" in files:
            try:
                if Path(dirpath, "cgroup.procs").read_text().strip():
                    return True
            except OSError:
                return True
    return False


def abort(launcher: subprocess.Popen[bytes], root: Path, cgroup_id: str, init_pid: int = 0) -> None:
    """The one teardown path: kill the namespace, then remove cgroups and files."""
    # Kill the namespace's init and let its parent (unshare, or nspawn) reap it:
    # killing the parent first would leave init a zombie of the host's PID 1.
    if init_pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init_pid, signal.SIGKILL)
    else:
        # A boot that failed half-way: we do not know init, so everything in our
        # cgroup tree is ours and dies, then the launcher.
        _kill_cgroup_tree(cgroup_id)
        with contextlib.suppress(ProcessLookupError):
            launcher.kill()
    try:
        launcher.wait(timeout=10)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _kill_cgroup_tree(cgroup_id) and time.monotonic() < deadline:
        time.sleep(POLL)
    for mount, _ in cgroup_mounts():
        remove_cgroup_tree(mount / cgroup_id, deadline)
    shutil.rmtree(root, ignore_errors=True)


def _kill_cgroup_tree(cgroup_id: str) -> int:
    """SIGKILL every process in ``/CGROUP_ID`` of any hierarchy; returns how many."""
    hit = 0
    for mount, _ in cgroup_mounts():
        for dirpath, _dirs, files in os.walk(mount / cgroup_id):
            if "cgroup.procs" not in files:
                continue
            with contextlib.suppress(OSError):
                for pid in Path(dirpath, "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                        hit += 1
    return hit
