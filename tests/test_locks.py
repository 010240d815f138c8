"""Per-unit flock: exclusive across processes, safe directory, hostile unit names refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.locks import UnitLock, check_unit_name, ensure_lock_dir
from unitgen.errors import LockBusyError, StateError, UsageError


def test_lock_dir_created_0700(tmp_path: Path) -> None:
    d = tmp_path / "run" / "locks"
    os.close(ensure_lock_dir(d))
    assert (d.stat().st_mode & 0o777) == 0o700


def test_refuses_group_writable_dir(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    d.mkdir()
    d.chmod(0o770)
    with pytest.raises(StateError, match="group- or other-writable"):
        ensure_lock_dir(d)


def test_refuses_symlinked_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "locks").symlink_to(real)
    with pytest.raises(StateError):
        ensure_lock_dir(tmp_path / "locks")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_refuses_dir_owned_by_someone_else(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(StateError, match="owned by uid 65534"):
        ensure_lock_dir(d)


def test_lock_file_symlink_is_not_followed(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    os.close(ensure_lock_dir(d))
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (d / "a.service.lock").symlink_to(victim)
    with pytest.raises(StateError):
        UnitLock(d, "a.service").try_acquire()
    assert victim.read_text() == "keep"


def test_exclusive_across_processes(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    code = (
        "import sys, time; from pathlib import Path; from handlers.locks import UnitLock;"
        f"l = UnitLock(Path({str(d)!r}), 'a.service'); assert l.try_acquire();"
        "print('held', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        mine = UnitLock(d, "a.service")
        assert not mine.try_acquire()
        assert UnitLock(d, "b.service").try_acquire()  # per unit
        proc.kill()  # the kernel drops a dead holder's lock: no stale lock
        proc.wait()
        deadline = time.monotonic() + 5
        while not mine.try_acquire():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        mine.release()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.asyncio
async def test_two_holders_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    first = UnitLock(d, "a.service")
    second = UnitLock(d, "a.service")
    assert first.try_acquire()
    with pytest.raises(LockBusyError):
        await second.acquire(0.05)
    waiter = asyncio.create_task(second.wait_released(5.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    first.release()
    assert await waiter
    with second:
        assert second.held
    assert not second.held


@pytest.mark.parametrize(
    "name", ["api.service", "worker@3.service", "foo\\x2dbar.service", "a:b_c-d.timer"]
)
def test_valid_unit_names(name: str) -> None:
    assert check_unit_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../etc/passwd",
        "a/b.service",
        "api",
        ".service",
        "a b.service",
        "x" * 300 + ".service",
        "api.service\n",
        "api.SERVICE",
    ],
)
def test_invalid_unit_names(name: str) -> None:
    with pytest.raises(UsageError):
        check_unit_name(name)


@given(st.text(max_size=300))
def test_hostile_names_never_escape_the_lock_dir(name: str) -> None:
    try:
        check_unit_name(name)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert "/" not in name and not name.startswith(".") and "\x00" not in name


def test_lock_file_names_its_holder(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    lock = UnitLock(lock_dir, "api.service")
    assert lock.try_acquire()
    path = lock_dir / "api.service.lock"
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()
    # Left by another (dead) process, longer than ours: replaced, not overwritten in part.
    path.write_text("4194304999\n")
    assert lock.try_acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()
