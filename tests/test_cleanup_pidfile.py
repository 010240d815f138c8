"""handlers.cleanup.remove_stale_pidfile: only a provably stale PID file goes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers.cleanup import remove_stale_pidfile


def own_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError("no unified cgroup line in /proc/self/cgroup")


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def pidfile(path: Path, content: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    os.chmod(path, mode)
    return path


def test_dead_pid_is_removed(tmp_path: Path, dead_pid: int) -> None:
    f = pidfile(tmp_path / "run" / "svc.pid", f"{dead_pid}\n")
    report = remove_stale_pidfile(str(f), unit_cgroup="/system.slice/svc.service")
    assert not f.exists()
    assert [r.path for r in report.removed] == [str(f)]
    assert report.removed[0].reason == f"stale PID file: process {dead_pid} is not running"
    assert report.refused == []


def test_live_pid_in_unit_cgroup_is_kept(tmp_path: Path, live_pid: int) -> None:
    f = pidfile(tmp_path / "svc.pid", str(live_pid))
    report = remove_stale_pidfile(str(f), unit_cgroup=own_cgroup())
    assert f.exists()
    assert report.removed == [] and report.refused == []


def test_live_pid_in_child_cgroup_of_unit_is_kept(tmp_path: Path, live_pid: int) -> None:
    parent = own_cgroup().rsplit("/", 1)[0] or "/"
    f = pidfile(tmp_path / "svc.pid", str(live_pid))
    remove_stale_pidfile(str(f), unit_cgroup=parent)
    assert f.exists()


def test_live_pid_outside_unit_cgroup_is_removed(tmp_path: Path, live_pid: int) -> None:
    f = pidfile(tmp_path / "svc.pid", f"{live_pid}\n")
    cgroup = own_cgroup()
    # A sibling whose name merely starts with ours is still outside.
    report = remove_stale_pidfile(str(f), unit_cgroup=cgroup + "x")
    assert not f.exists()
    assert report.removed[0].reason == f"stale PID file: process {live_pid} belongs to {cgroup}"


def test_live_pid_with_unknown_unit_cgroup_is_kept(tmp_path: Path, live_pid: int) -> None:
    f = pidfile(tmp_path / "svc.pid", str(live_pid))
    report = remove_stale_pidfile(str(f), unit_cgroup=None)
    assert f.exists()
    assert report.removed == []


def test_dry_run_reports_but_keeps(tmp_path: Path, dead_pid: int) -> None:
    f = pidfile(tmp_path / "svc.pid", str(dead_pid))
    report = remove_stale_pidfile(str(f), unit_cgroup=None, dry_run=True)
    assert f.exists()
    assert report.dry_run and [r.path for r in report.removed] == [str(f)]
    assert report.render().startswith("DRY RUN: nothing was removed\nwould remove\t")


def test_missing_pidfile_is_nothing_to_do(tmp_path: Path) -> None:
    report = remove_stale_pidfile(str(tmp_path / "none.pid"), unit_cgroup=None)
    report2 = remove_stale_pidfile(str(tmp_path / "nodir" / "none.pid"), unit_cgroup=None)
    assert report.removed == [] and report.refused == []
    assert report2.removed == [] and report2.refused == []


def test_foreign_owner_is_refused(tmp_path: Path, dead_pid: int) -> None:
    f = pidfile(tmp_path / "svc.pid", str(dead_pid))
    os.chown(f, 1000, 1000)
    report = remove_stale_pidfile(str(f), unit_cgroup=None)
    assert f.exists()
    assert report.refused == [(str(f), f"PID file owned by uid 1000, expected uid {os.geteuid()}")]


def test_owner_uid_can_be_given_for_user_scope(tmp_path: Path, dead_pid: int) -> None:
    f = pidfile(tmp_path / "svc.pid", str(dead_pid))
    os.chown(f, 1000, 1000)
    report = remove_stale_pidfile(str(f), unit_cgroup=None, owner_uid=1000)
    assert not f.exists() and len(report.removed) == 1


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_other_writable_is_refused(tmp_path: Path, dead_pid: int, mode: int) -> None:
    f = pidfile(tmp_path / "svc.pid", str(dead_pid), mode)
    report = remove_stale_pidfile(str(f), unit_cgroup=None)
    assert f.exists()
    assert report.refused[0][1] == f"PID file is group- or other-writable (mode {mode:o})"


def test_symlink_pidfile_is_refused_and_target_kept(tmp_path: Path, dead_pid: int) -> None:
    target = pidfile(tmp_path / "elsewhere" / "real.pid", str(dead_pid))
    link = tmp_path / "run" / "svc.pid"
    link.parent.mkdir()
    link.symlink_to(target)
    report = remove_stale_pidfile(str(link), unit_cgroup=None)
    assert link.is_symlink() and target.exists()
    assert report.refused == [(str(link), "PID file is a symlink")]


def test_symlink_in_a_directory_component_is_refused(tmp_path: Path, dead_pid: int) -> None:
    target = pidfile(tmp_path / "real" / "svc.pid", str(dead_pid))
    (tmp_path / "run").symlink_to(tmp_path / "real")
    report = remove_stale_pidfile(str(tmp_path / "run" / "svc.pid"), unit_cgroup=None)
    assert target.exists()
    assert report.refused[0][1] == f"{tmp_path}/run is a symlink"


@pytest.mark.parametrize(
    "content", ["", "abc", "12 34", "-5", "0", "+12", "1e3", "\u0661\u0662", "9" * 80, "0x10"]
)
def test_non_numeric_content_is_refused(tmp_path: Path, content: str) -> None:
    f = pidfile(tmp_path / "svc.pid", content)
    report = remove_stale_pidfile(str(f), unit_cgroup=None)
    assert f.exists()
    assert report.refused == [(str(f), "PID file does not hold a PID")]


def test_directory_and_fifo_are_refused_without_hanging(tmp_path: Path) -> None:
    d = tmp_path / "dir.pid"
    d.mkdir()
    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    r1 = remove_stale_pidfile(str(d), unit_cgroup=None)
    r2 = remove_stale_pidfile(str(fifo), unit_cgroup=None)
    assert d.is_dir() and fifo.exists()
    assert r1.refused == [(str(d), "PID file is not a regular file")]
    assert r2.refused == [(str(fifo), "PID file is not a regular file")]


def test_relative_path_is_refused() -> None:
    report = remove_stale_pidfile("run/svc.pid", unit_cgroup=None)
    assert report.refused == [("run/svc.pid", "not an absolute path")]


def test_zombie_pid_counts_as_dead(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    try:
        stat_file = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 10
        # Not reaped yet: the child lingers as a zombie, still in our own cgroup.
        while stat_file.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "child never became a zombie"
            time.sleep(0.01)
        f = pidfile(tmp_path / "svc.pid", str(proc.pid))
        report = remove_stale_pidfile(str(f), unit_cgroup=own_cgroup())
        assert not f.exists()
        assert report.removed[0].reason == f"stale PID file: process {proc.pid} is not running"
    finally:
        proc.wait()
