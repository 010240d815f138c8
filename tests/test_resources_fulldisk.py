"""A real full disk: a small tmpfs in a private mount namespace, filled, checked, cleaned.

Each test runs a script with our interpreter under
``unshare --mount --propagation private``, so the tmpfs never shows up on the
host.  Under ``CI=true`` a missing namespace is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from sandboxlib import unavailable

PRELUDE = textwrap.dedent(
    """
    import asyncio, errno, json, os, subprocess, sys
    from handlers.cleanup import free_space, remove_old_files, remove_stale_pidfile
    from handlers.configcheck import validate_config
    from handlers.resources import Threshold, check_disk, memory_status

    base = sys.argv[1]

    def mount(name, options):
        path = os.path.join(base, name)
        os.makedirs(path)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)
        return path

    def fill(directory, prefix, size, start_mtime):
        '''Write files of `size` bytes until the disk is full; return how many fit.'''
        os.makedirs(directory, exist_ok=True)
        n = 0
        while True:
            path = os.path.join(directory, f"{prefix}{n:04d}")
            try:
                with open(path, "wb") as f:
                    f.write(b"x" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if os.path.exists(path):
                    os.unlink(path)
                return n
            os.utime(path, (start_mtime + n, start_mtime + n))
            n += 1

    def status(paths, min_free, min_inodes="0%"):
        return check_disk(paths, min_free=Threshold.parse(min_free),
                          min_free_inodes=Threshold.parse(min_inodes))

    def ok(paths, min_free, min_inodes="0%"):
        return all(s.ok for s in status(paths, min_free, min_inodes))
    """
)


def run_in_mount_namespace(script: str, base: Path) -> dict[str, Any]:
    """Run PRELUDE + ``script`` in a private mount namespace and return its JSON output."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c"]
    try:
        proc = subprocess.run(
            [*cmd, PRELUDE + textwrap.dedent(script), str(base)],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
    except FileNotFoundError:
        unavailable("unshare is not installed")
    if proc.returncode != 0 and proc.stderr.startswith("unshare:"):
        unavailable(f"cannot create a mount namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_full_disk_is_detected_and_cleanup_frees_it(tmp_path: Path) -> None:
    result = run_in_mount_namespace(
        """
        disk = mount("disk", "size=1m")
        cache = os.path.join(disk, "cache")
        # Something the cleanup must not touch: state outside the cleanup directory.
        with open(os.path.join(disk, "state.db"), "wb") as f:
            f.write(b"s" * 100_000)
        written = fill(cache, "c", 64 * 1024, 1e9)
        [before] = status([disk], "25%")
        report = free_space([cache], enough=lambda: ok([disk], "25%"))
        [after] = status([disk], "25%")
        print(json.dumps({
            "written": written,
            "before": [before.ok, before.free_bytes, before.total_bytes, before.reason],
            "after": [after.ok, after.free_bytes, after.reason],
            "removed": [os.path.basename(r.path) for r in report.removed],
            "refused": report.refused,
            "state_kept": os.path.getsize(os.path.join(disk, "state.db")),
        }))
        """,
        tmp_path,
    )
    assert result["written"] >= 8
    before_ok, before_free, total, before_reason = result["before"]
    assert total == 1024 * 1024
    assert not before_ok and before_free < total // 4
    assert "low disk space" in before_reason and before_reason.endswith("need 25%")
    after_ok, after_free, _reason = result["after"]
    assert after_ok and after_free >= total // 4
    # Oldest first, and only as many as needed: one file fewer would not have been enough.
    removed = result["removed"]
    assert removed == [f"c{i:04d}" for i in range(len(removed))]
    assert after_free - 64 * 1024 < total // 4
    assert result["refused"] == []
    assert result["state_kept"] == 100_000


def test_full_disk_that_cleanup_cannot_fix_stays_not_ok(tmp_path: Path) -> None:
    result = run_in_mount_namespace(
        """
        disk = mount("disk", "size=1m")
        cache = os.path.join(disk, "cache")
        fill(cache, "c", 16 * 1024, 1e9)
        fill(cache, "c", 16 * 1024, 1e9)  # no-op: already full
        for name in os.listdir(cache)[4:]:
            os.unlink(os.path.join(cache, name))
        # The rest of the disk goes to data cleanup must never remove.
        fill(os.path.join(disk, "data"), "d", 64 * 1024, 2e9)
        fill(os.path.join(disk, "data"), "e", 4 * 1024, 2e9)
        report = free_space([cache], enough=lambda: ok([disk], "50%"))
        [after] = status([disk], "50%")
        print(json.dumps({
            "removed": len(report.removed),
            "cache_left": os.listdir(cache),
            "data_left": len(os.listdir(os.path.join(disk, "data"))),
            "after": [after.ok, after.reason],
        }))
        """,
        tmp_path,
    )
    assert result["removed"] == 4
    assert result["cache_left"] == []
    assert result["data_left"] > 0
    after_ok, reason = result["after"]
    assert not after_ok and "low disk space" in reason


def test_inodes_exhausted_is_detected_and_freed(tmp_path: Path) -> None:
    result = run_in_mount_namespace(
        """
        disk = mount("disk", "size=1m,nr_inodes=64")
        cache = os.path.join(disk, "cache")
        written = fill(cache, "i", 0, 1e9)
        [before] = status([disk], "0%", "20%")
        report = free_space([cache], enough=lambda: ok([disk], "0%", "20%"))
        [after] = status([disk], "0%", "20%")
        print(json.dumps({
            "written": written,
            "before": [before.ok, before.free_inodes, before.total_inodes, before.reason],
            "after": [after.ok, after.free_inodes],
            "removed": len(report.removed),
        }))
        """,
        tmp_path,
    )
    before_ok, free_inodes, total_inodes, reason = result["before"]
    assert total_inodes == 64 and free_inodes == 0
    assert not before_ok and "low inodes" in reason
    after_ok, after_free = result["after"]
    assert after_ok and after_free >= 13
    assert result["removed"] == after_free  # one inode back per file, and no more removed


def test_enospc_crashes_nothing(tmp_path: Path) -> None:
    result = run_in_mount_namespace(
        """
        disk = mount("disk", "size=256k")
        tmp = os.path.join(disk, "tmp")
        with open(os.path.join(disk, "svc.pid"), "w") as f:
            f.write("999999999\\n")  # beyond pid_max: certainly dead
        fill(tmp, "t", 8 * 1024, 1e9)
        fill(tmp, "u", 512, 1e9 + 5000)
        out = {}
        out["disk"] = [s.ok for s in status([disk, os.path.join(disk, "missing/dir")], "10%")]
        out["mem"] = memory_status(Threshold.parse("0%")).ok
        out["dry"] = len(remove_old_files(tmp, older_than=60, dry_run=True).removed)
        out["old"] = len(remove_old_files(tmp, older_than=60).removed)
        fill(tmp, "v", 512, 1e9)
        out["pid"] = [
            os.path.basename(r.path)
            for r in remove_stale_pidfile(os.path.join(disk, "svc.pid"), unit_cgroup=None).removed
        ]
        fill(tmp, "w", 512, 1e9)
        out["free"] = len(free_space([tmp], enough=lambda: False).removed)
        fill(tmp, "x", 512, 1e9)
        # A validator that itself runs into the full disk.
        target = os.path.join(disk, "out")
        code = f"open({target!r}, 'w').write('y' * 100000)"
        v = asyncio.run(validate_config([sys.executable, "-c", code], timeout=10))
        out["validate"] = [v.ok, "No space left on device" in v.result.output_tail]
        print(json.dumps(out))
        """,
        tmp_path,
    )
    assert result["disk"] == [False, False]
    assert result["mem"] is True
    assert result["dry"] == result["old"] > 0
    assert result["pid"] == ["svc.pid"]
    assert result["free"] > 0
    # The validator died of ENOSPC; validate_config reported it instead of raising.
    assert result["validate"] == [False, True]
