"""Cleanup never crosses a mount point, even a bind mount of the same filesystem.

The scenarios run in a private mount namespace (``unshare --mount``), with
real bind mounts made there; the files behind them are on the test's own
filesystem, so a crossing really deletes them.  Each scenario keeps canary
files outside the root and checks they are intact afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cleanup import OLD, make, run_in_mount_namespace

from handlers import cleanup, mounts
from handlers.cleanup import free_space, remove_old_files

METHODS = {
    "statx": mounts.statx_mount_id,
    "name_to_handle_at": mounts.handle_mount_id,
    "fdinfo": mounts.fdinfo_mount_id,
}

# Runs inside the namespace: argv = scenario, base directory, mount-id method.
SCENARIO = textwrap.dedent(
    """
    import ctypes, json, os, subprocess, sys, time
    from handlers import cleanup, mounts
    from handlers.cleanup import free_space, remove_old_files, remove_stale_pidfile

    scenario, base, method = sys.argv[1], sys.argv[2], sys.argv[3]
    cleanup.mount_id = {
        "default": mounts.mount_id,
        "statx": mounts.statx_mount_id,
        "name_to_handle_at": mounts.handle_mount_id,
        "fdinfo": mounts.fdinfo_mount_id,
    }[method]
    OLD = 1e9

    def bind(src, dst):
        subprocess.run(["mount", "--bind", src, dst], check=True)

    def old_file(path, data=b"x"):
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (OLD, OLD))

    def result(*reports, **extra):
        out = {"removed": [], "refused": []}
        for r in reports:
            out["removed"] += [x.path for x in r.removed]
            out["refused"] += [list(x) for x in r.refused]
        out.update(extra)
        print(json.dumps(out))

    root = os.path.join(base, "root")
    if scenario in ("dir", "dir-dry", "free_space"):
        os.mkdir(os.path.join(root, "mnt"))
        bind(os.path.join(base, "outside", "dir"), os.path.join(root, "mnt"))
        old_file(os.path.join(root, "old.log"))
        if scenario == "free_space":
            result(free_space([root], enough=lambda: False))
        else:
            result(remove_old_files(root, older_than=60, dry_run=scenario == "dir-dry"))
    elif scenario == "file":
        old_file(os.path.join(root, "f.log"), b"decoy")
        bind(os.path.join(base, "outside", "file.log"), os.path.join(root, "f.log"))
        r1 = remove_old_files(root, older_than=60, dry_run=True)
        r2 = remove_old_files(root, older_than=60)
        r3 = free_space([root], enough=lambda: False)
        result(r1, r2, r3)
    elif scenario == "ancestor":
        # The root's own ancestor, bind-mounted inside the root: a loop back out of it.
        root = os.path.join(base, "anc", "tmp")
        os.mkdir(os.path.join(root, "loop"))
        bind(os.path.join(base, "anc"), os.path.join(root, "loop"))
        old_file(os.path.join(root, "old.log"))
        result(remove_old_files(root, older_than=60), free_space([root], enough=lambda: False))
    elif scenario == "under":
        # Roots that are, or lie below, a bind mount: normal (BindPaths=, a separate /var).
        for name in ("view", "top"):
            os.mkdir(os.path.join(base, name))
        bind(os.path.join(base, "src"), os.path.join(base, "view"))
        bind(os.path.join(base, "src", "tmp"), os.path.join(base, "top"))
        below, itself = os.path.join(base, "view", "tmp"), os.path.join(base, "top")
        old_file(os.path.join(below, "a.log"))
        r1 = remove_old_files(below, older_than=60, dry_run=True)
        r2 = remove_old_files(itself, older_than=60, dry_run=True)
        r3 = remove_old_files(below, older_than=60)
        result(r1, r2, r3)
    elif scenario == "pidfile":
        dead = subprocess.run(["true"], check=True)
        pidfile = os.path.join(root, "svc.pid")
        old_file(pidfile, b"decoy")
        bind(os.path.join(base, "outside", "dead.pid"), pidfile)
        result(
            remove_stale_pidfile(pidfile, unit_cgroup=None, dry_run=True),
            remove_stale_pidfile(pidfile, unit_cgroup=None),
        )
    elif scenario == "race":
        target = os.path.join(root, "d")
        os.mkdir(target)
        tfd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        racer = subprocess.Popen(
            [sys.executable, "-c", RACER, os.path.join(base, "outside", "dir"), target],
            stdout=subprocess.PIPE,
        )
        canary = os.path.join(base, "outside", "dir")
        names = sorted(os.listdir(canary))
        seen, rounds, hits = set(), 0, 0
        try:
            racer.stdout.readline()  # it has mounted once: the race is on
            deadline = time.monotonic() + 15
            # Enough rounds that met the mount to make a crossing near certain without the fix.
            while hits < 50 and time.monotonic() < deadline:
                rounds += 1
                # Through the fd taken before the race: the name may be mounted over now.
                fd = os.open(f"in-{rounds}.log", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=tfd)
                os.utime(fd, (OLD, OLD))
                os.close(fd)
                if rounds % 2:
                    r = remove_old_files(root, older_than=60)
                else:
                    r = free_space([root], enough=lambda: False)
                seen.update(why for _p, why in r.refused)
                hits += bool(r.refused)
                if sorted(os.listdir(canary)) != names:
                    break
        finally:
            racer.kill()
            racer.wait()
        result(rounds=rounds, reasons=sorted(seen), hits=hits)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    """
)

# Mounts and unmounts as fast as it can until its parent goes away.
RACER = textwrap.dedent(
    """
    import ctypes, os, random, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    src, dst = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])
    parent, deadline = os.getppid(), time.monotonic() + 60
    MS_BIND, MNT_DETACH = 4096, 2
    ready = False
    while os.getppid() == parent and time.monotonic() < deadline:
        if libc.mount(src, dst, None, MS_BIND, None) == 0:
            if not ready:
                ready = True
                print("mounted", flush=True)
            time.sleep(random.random() / 500)  # held a little: long enough to be walked into
            libc.umount2(dst, MNT_DETACH)
        time.sleep(random.random() / 500)
    """
)


def scenario(name: str, base: Path, method: str = "default") -> dict[str, object]:
    out = run_in_mount_namespace(f"RACER = {RACER!r}\n" + SCENARIO, name, str(base), method)
    result: dict[str, object] = json.loads(out)
    return result


def outside(base: Path) -> dict[str, bytes]:
    """Canary files outside the root, all old enough to go if cleanup ever reached them."""
    files = {
        base / "outside" / "dir" / "a.log": b"canary a",
        base / "outside" / "dir" / "sub" / "b.log": b"canary b",
        base / "outside" / "file.log": b"canary file",
        base / "outside" / "dead.pid": b"999999999\n",
        base / "anc" / "canary.log": b"canary ancestor",
    }
    for path, data in files.items():
        make(path, data)
    (base / "root").mkdir()
    (base / "anc" / "tmp").mkdir()
    os.utime(base / "outside" / "dir" / "sub", (OLD, OLD))
    return {str(p): d for p, d in files.items()}


def intact(canaries: dict[str, bytes]) -> None:
    for path, data in canaries.items():
        assert Path(path).read_bytes() == data, path


@pytest.mark.parametrize("method", ["default", *METHODS])
def test_bind_mounted_directory_is_not_crossed(tmp_path: Path, method: str) -> None:
    canaries = outside(tmp_path)
    result = scenario("dir", tmp_path, method)
    root = tmp_path / "root"
    assert result["removed"] == [f"{root}/old.log"]
    assert result["refused"] == [[f"{root}/mnt", "mount point, not crossed"]]
    intact(canaries)


def test_dry_run_does_not_list_files_behind_a_bind_mount(tmp_path: Path) -> None:
    canaries = outside(tmp_path)
    result = scenario("dir-dry", tmp_path)
    root = tmp_path / "root"
    assert result["removed"] == [f"{root}/old.log"]
    assert result["refused"] == [[f"{root}/mnt", "mount point, not crossed"]]
    intact(canaries)
    assert (root / "old.log").exists()


def test_free_space_does_not_cross_a_bind_mount(tmp_path: Path) -> None:
    canaries = outside(tmp_path)
    result = scenario("free_space", tmp_path)
    root = tmp_path / "root"
    assert result["removed"] == [f"{root}/old.log"]
    assert result["refused"] == [[f"{root}/mnt", "mount point, not crossed"]]
    intact(canaries)


@pytest.mark.parametrize("method", ["default", *METHODS])
def test_bind_mounted_file_is_left_alone(tmp_path: Path, method: str) -> None:
    canaries = outside(tmp_path)
    result = scenario("file", tmp_path, method)
    path = f"{tmp_path}/root/f.log"
    why = "mount point (a mounted file), left alone"
    # Dry run, real run and free_space: refused each time, never listed as removable.
    assert result["removed"] == []
    assert result["refused"] == [[path, why]] * 3
    intact(canaries)


def test_bind_mount_of_an_ancestor_inside_the_root_is_not_crossed(tmp_path: Path) -> None:
    canaries = outside(tmp_path)
    result = scenario("ancestor", tmp_path)
    root = tmp_path / "anc" / "tmp"
    assert result["removed"] == [f"{root}/old.log"]
    assert result["refused"] == [[f"{root}/loop", "mount point, not crossed"]] * 2
    intact(canaries)


def test_a_root_on_or_below_a_bind_mount_is_still_cleaned(tmp_path: Path) -> None:
    # Not a regression test: it guards against the fix refusing ordinary set-ups.
    canaries = outside(tmp_path)
    keep = make(tmp_path / "src" / "keep.log", b"sibling of the root")
    make(tmp_path / "src" / "tmp" / "sub" / "b.log")
    os.utime(tmp_path / "src" / "tmp" / "sub", (OLD, OLD))
    result = scenario("under", tmp_path)
    view, top = tmp_path / "view" / "tmp", tmp_path / "top"
    assert result["refused"] == []
    assert result["removed"] == [
        *(f"{view}/{p}" for p in ("a.log", "sub/b.log", "sub")),
        *(f"{top}/{p}" for p in ("a.log", "sub/b.log", "sub")),
        *(f"{view}/{p}" for p in ("a.log", "sub/b.log", "sub")),
    ]
    assert not (tmp_path / "src" / "tmp" / "a.log").exists()
    assert not (tmp_path / "src" / "tmp" / "sub").exists()
    assert keep.read_bytes() == b"sibling of the root"
    intact(canaries)


def test_bind_mounted_pidfile_is_left_alone(tmp_path: Path) -> None:
    canaries = outside(tmp_path)
    result = scenario("pidfile", tmp_path)
    path = f"{tmp_path}/root/svc.pid"
    assert result["removed"] == []
    assert result["refused"] == [[path, "PID file is a mount point, left alone"]] * 2
    intact(canaries)


def test_bind_mount_made_while_cleaning_is_not_crossed(tmp_path: Path) -> None:
    canaries = outside(tmp_path)
    result = scenario("race", tmp_path)
    intact(canaries)
    # The race was really run: cleanup met the mount, whichever check caught it.
    assert result["hits"], result
    allowed = {
        "mount point, not crossed",
        "a mount point appeared while cleaning, subtree refused",
        "directory was swapped while walking, subtree refused",
        "directory was swapped while cleaning, subtree refused",
        "directory was swapped or removed, subtree refused",
        "file was replaced while cleaning, left alone",
        "mount point (a mounted file), left alone",
    }
    reasons = result["reasons"]
    assert isinstance(reasons, list) and set(reasons) <= allowed, result


# --- handlers.mounts on this machine's own mounts (no namespace needed) ----------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    make(tmp_path / "file")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("/proc")
    return tmp_path


@pytest.mark.parametrize("name", ["file", "dir", "link", None])
def test_every_method_gives_the_same_mount_id(tree: Path, name: str | None) -> None:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = {m: fn(fd, name) for m, fn in METHODS.items()}
        assert len(set(ids.values())) == 1, ids
        # A final symlink is never followed: the link to /proc is on the tree's mount.
        assert ids["statx"] == mounts.mount_id(fd)
    finally:
        os.close(fd)


def test_another_mount_has_another_id(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    slash = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        mine = mounts.mount_id(fd)
        proc = mounts.statx_mount_id(slash, "proc")
        assert proc != mine
        assert mounts.fdinfo_mount_id(slash, "proc") != mine
        # procfs makes no file handles: the fallback has to go on to fdinfo.
        with pytest.raises(OSError) as info:
            mounts.handle_mount_id(slash, "proc")
        assert info.value.errno == errno.EOPNOTSUPP
        monkeypatch.setattr(mounts, "_statx_call", lambda: None)
        assert mounts.mount_id(slash, "proc") == proc
    finally:
        os.close(fd)
        os.close(slash)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.binary(min_size=1, max_size=60).filter(
        lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
    ),
    kind=st.sampled_from(["file", "dir", "link"]),
)
def test_hostile_names_get_the_directorys_mount_id(tmp_path: Path, name: bytes, kind: str) -> None:
    top = os.fsencode(tmp_path) + b"/h-" + os.urandom(6).hex().encode()
    os.mkdir(top)
    path = top + b"/" + name
    if kind == "file":
        with open(path, "wb"):
            pass
    elif kind == "dir":
        os.mkdir(path)
    else:
        os.symlink(b"/proc", path)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        want = mounts.mount_id(fd)
        for fn in METHODS.values():
            assert fn(fd, os.fsdecode(name)) == want
    finally:
        os.close(fd)


@pytest.mark.parametrize("fn", METHODS.values(), ids=list(METHODS))
def test_a_vanished_entry_is_file_not_found(tree: Path, fn: object) -> None:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileNotFoundError):
            fn(fd, "missing")  # type: ignore[operator]
    finally:
        os.close(fd)


def test_fallback_order(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    calls: list[str] = []

    def spy(name: str, fn: object) -> object:
        def wrapped(*args: object) -> int:
            calls.append(name)
            return fn(*args)  # type: ignore[operator,no-any-return]

        return wrapped

    try:
        want = mounts.mount_id(fd, "dir")
        monkeypatch.setattr(mounts, "_statx_call", lambda: None)
        monkeypatch.setattr(mounts, "handle_mount_id", spy("handle", mounts.handle_mount_id))
        monkeypatch.setattr(mounts, "fdinfo_mount_id", spy("fdinfo", mounts.fdinfo_mount_id))
        assert mounts.method() == "name_to_handle_at"
        assert mounts.mount_id(fd, "dir") == want
        assert calls == ["handle"]

        def no_handles(*_args: object) -> int:
            calls.append("handle")
            raise OSError(errno.EOPNOTSUPP, "no handles")

        calls.clear()
        monkeypatch.setattr(mounts, "handle_mount_id", no_handles)
        assert mounts.mount_id(fd, "dir") == want
        assert calls == ["handle", "fdinfo"]
    finally:
        os.close(fd)


def test_cleanup_fails_closed_when_mounts_cannot_be_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def blind(*_args: object) -> int:
        raise OSError(errno.ENOTSUP, "no way to get a mount id")

    old = make(tmp_path / "root" / "old.log")
    monkeypatch.setattr(cleanup, "mount_id", blind)
    root = str(tmp_path / "root")
    for report in (
        remove_old_files(root, older_than=60),
        free_space([root], enough=lambda: False),
    ):
        assert report.removed == []
        assert report.refused == [
            (root, "cannot tell mount points apart: no way to get a mount id")
        ]
    assert old.exists()
