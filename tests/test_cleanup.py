"""handlers.cleanup: old files, free space, and the hard rules (no links, no mounts, no swaps)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sandboxlib import unavailable

from handlers import cleanup
from handlers.cleanup import CleanupReport, Removal, display_path, free_space, remove_old_files

OLD = 1_000_000_000.0  # 2001: far older than any threshold used here
NOW = 2_000_000_000.0


def make(path: Path, data: bytes = b"x", mtime: float | None = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def age_dirs(root: Path, mtime: float = OLD) -> None:
    """Directories get fresh mtimes as files are made in them; push them back too."""
    for d in sorted(
        (p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True
    ):
        os.utime(d, (mtime, mtime))


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """Every entry under root with mode, uid, gid and content (or link target)."""
    out: dict[str, tuple[int, int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            s = os.lstat(p)
            if stat.S_ISLNK(s.st_mode):
                body: bytes | str = os.readlink(p)
            elif stat.S_ISREG(s.st_mode):
                body = Path(p).read_bytes()
            else:
                body = b""
            out[p] = (s.st_mode, s.st_uid, s.st_gid, body)
    return out


def outside_tree(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, int, int, bytes | str]]]:
    outside = tmp_path / "outside"
    make(outside / "precious.txt", b"keep me")
    make(outside / "deep" / "also.txt", b"keep me too")
    age_dirs(outside)
    return outside, snapshot(outside)


# --- remove_old_files ----------------------------------------------------------------------


def test_removes_old_files_keeps_new_ones(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    make(root / "old.log", b"12345")
    make(root / "sub" / "old2.log", b"1")
    make(root / "new.log", mtime=NOW - 10)
    age_dirs(root)
    report = remove_old_files(str(root), older_than=3600, now=NOW)
    assert not report.dry_run
    removed = {r.path for r in report.removed}
    assert removed == {f"{root}/old.log", f"{root}/sub/old2.log", f"{root}/sub"}
    assert not (root / "old.log").exists()
    assert not (root / "sub").exists()
    assert (root / "new.log").exists()
    assert root.is_dir()
    assert report.freed_bytes == 6
    assert report.refused == []


def test_fresh_empty_directory_and_dir_with_new_file_survive(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    make(root / "keep" / "old.log")
    make(root / "keep" / "new.log", mtime=NOW - 1)
    age_dirs(root)
    (root / "fresh").mkdir()
    os.utime(root / "fresh", (NOW - 1, NOW - 1))
    remove_old_files(str(root), older_than=3600, now=NOW)
    assert (root / "fresh").is_dir()
    assert (root / "keep" / "new.log").exists()
    assert not (root / "keep" / "old.log").exists()


def test_dry_run_lists_but_removes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    make(root / "a" / "old.log", b"abc")
    make(root / "b.log", b"de")
    age_dirs(root)
    before = snapshot(root)
    report = remove_old_files(str(root), older_than=60, now=NOW, dry_run=True)
    assert report.dry_run
    assert snapshot(root) == before
    assert {r.path for r in report.removed} == {
        f"{root}/a/old.log",
        f"{root}/b.log",
        f"{root}/a",
    }
    assert report.freed_bytes == 5
    text = report.render()
    assert text.splitlines()[0] == "DRY RUN: nothing was removed"
    assert f"would remove\t3\t2001-09-09T01:46:40Z\tolder than 60s\t{root}/a/old.log" in text
    assert text.splitlines()[-1] == "total\t3 removed, 0 refused, 5 bytes would be freed"
    # The same call for real removes exactly what the dry run announced.
    real = remove_old_files(str(root), older_than=60, now=NOW)
    assert [r.path for r in real.removed] == [r.path for r in report.removed]


def test_symlink_planted_inside_points_outside_target_survives(tmp_path: Path) -> None:
    outside, before = outside_tree(tmp_path)
    root = tmp_path / "tmp"
    make(root / "old.log")
    (root / "link-dir").symlink_to(outside)
    (root / "link-file").symlink_to(outside / "precious.txt")
    (root / "sub").mkdir()
    (root / "sub" / "dangling").symlink_to(tmp_path / "nowhere")
    age_dirs(root)
    report = remove_old_files(str(root), older_than=0, now=NOW)
    assert snapshot(outside) == before
    # Our decision: symlinks are left in place (and reported), never followed, never removed.
    assert (root / "link-dir").is_symlink() and (root / "link-file").is_symlink()
    refused = dict(report.refused)
    assert refused[f"{root}/link-dir"] == "symlink, left alone"
    assert refused[f"{root}/link-file"] == "symlink, left alone"
    assert refused[f"{root}/sub/dangling"] == "symlink, left alone"
    assert not (root / "old.log").exists()
    assert (root / "sub").is_dir()  # not empty: the refused symlink stays


def test_free_space_never_follows_symlinks(tmp_path: Path) -> None:
    outside, before = outside_tree(tmp_path)
    root = tmp_path / "tmp"
    make(root / "old.log")
    (root / "link-dir").symlink_to(outside)
    report = free_space([str(root)], enough=lambda: False)
    assert snapshot(outside) == before
    assert [r.path for r in report.removed] == [f"{root}/old.log"]


def test_root_given_as_symlink_is_refused(tmp_path: Path) -> None:
    outside, before = outside_tree(tmp_path)
    link = tmp_path / "rootlink"
    link.symlink_to(outside)
    report = remove_old_files(str(link), older_than=0, now=NOW)
    assert report.removed == []
    assert report.refused == [(str(link), f"{link} is a symlink")]
    report = free_space([str(link)], enough=lambda: False)
    assert report.removed == [] and len(report.refused) == 1
    assert snapshot(outside) == before


def test_root_through_symlinked_component_is_refused(tmp_path: Path) -> None:
    outside, before = outside_tree(tmp_path)
    (tmp_path / "via").symlink_to(outside.parent)
    report = remove_old_files(str(tmp_path / "via" / "outside"), older_than=0, now=NOW)
    assert report.removed == []
    assert report.refused[0][1] == f"{tmp_path}/via is a symlink"
    assert snapshot(outside) == before


@pytest.mark.parametrize("bad", ["relative/dir", "", "/", "//", "/tmp/../"])
def test_bad_roots_are_refused(bad: str) -> None:
    report = remove_old_files(bad, older_than=0, now=NOW)
    assert report.removed == []
    assert len(report.refused) == 1


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = make(tmp_path / "file")
    report = remove_old_files(str(f), older_than=0, now=NOW)
    assert report.refused == [(str(f), f"{f} is not a directory")]
    assert f.exists()


def test_missing_root_is_nothing_to_do(tmp_path: Path) -> None:
    report = remove_old_files(str(tmp_path / "not-yet"), older_than=0, now=NOW)
    assert report.removed == [] and report.refused == []


def test_special_files_are_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    root.mkdir()
    os.mkfifo(root / "fifo")
    os.utime(root / "fifo", (OLD, OLD))
    report = remove_old_files(str(root), older_than=0, now=NOW)
    assert (root / "fifo").exists()
    assert report.refused == [(f"{root}/fifo", "not a regular file, left alone")]


def test_never_chmod_or_chown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tmp"
    make(root / "ro" / "old.log")
    make(root / "ro" / "new.log", mtime=NOW)
    make(root / "keep.log", mtime=NOW)
    os.chmod(root / "keep.log", 0o600)
    os.chown(root / "keep.log", 1234, 5678)
    age_dirs(root)
    os.chmod(root / "ro", 0o500)

    def forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("cleanup must never chmod or chown")

    for name in ("chmod", "fchmod", "lchmod", "chown", "fchown", "lchown"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, forbidden)
    before = snapshot(root)
    remove_old_files(str(root), older_than=3600, now=NOW)
    free_space([str(root)], enough=lambda: (root / "ro" / "new.log").exists() is False)
    monkeypatch.undo()
    after = snapshot(root)
    assert after == {k: v for k, v in before.items() if k in after}
    assert after[f"{root}/ro"][0] & 0o777 == 0o500
    assert before[f"{root}/keep.log"][:3] == (stat.S_IFREG | 0o600, 1234, 5678)


def test_directory_swapped_after_scan_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside, before = outside_tree(tmp_path)
    make(outside / "victim.log")  # same name as the file inside, to tempt a confused deleter
    before = snapshot(outside)
    root = tmp_path / "tmp"
    make(root / "sub" / "victim.log")
    age_dirs(root)
    real_run = cleanup._Scan.run

    def run_then_swap(self: cleanup._Scan) -> cleanup._Scan:
        result = real_run(self)
        os.rename(root / "sub", tmp_path / "sub.moved")
        (root / "sub").symlink_to(outside)
        return result

    monkeypatch.setattr(cleanup._Scan, "run", run_then_swap)
    report = remove_old_files(str(root), older_than=0, now=NOW)
    assert snapshot(outside) == before
    assert (tmp_path / "sub.moved" / "victim.log").exists()
    assert report.removed == []
    assert any("swapped" in why for _p, why in report.refused)


def test_directory_moved_out_of_root_mid_cleanup_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    make(root / "sub" / "a.log", mtime=OLD)
    make(root / "sub" / "b.log", mtime=OLD + 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    calls: list[int] = []

    def enough() -> bool:
        calls.append(1)
        if len(calls) == 2:
            # After the first removal the directory (whose fd cleanup holds) leaves the root.
            os.rename(root / "sub", elsewhere / "sub")
        return False

    report = free_space([str(root)], enough=enough)
    assert [r.path for r in report.removed] == [f"{root}/sub/a.log"]
    assert (elsewhere / "sub" / "b.log").exists()
    assert report.refused == [
        (f"{root}/sub/b.log", "directory was moved while cleaning, subtree refused")
    ]


def test_file_replaced_after_scan_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "tmp"
    make(root / "a.log")
    real_run = cleanup._Scan.run

    def run_then_replace(self: cleanup._Scan) -> cleanup._Scan:
        result = real_run(self)
        (root / "a.log").unlink()
        make(root / "a.log", b"new content")
        return result

    monkeypatch.setattr(cleanup._Scan, "run", run_then_replace)
    report = remove_old_files(str(root), older_than=0, now=NOW)
    assert (root / "a.log").read_bytes() == b"new content"
    assert report.refused == [(f"{root}/a.log", "file was replaced while cleaning, left alone")]


@pytest.mark.timeout(60)
def test_race_swapping_directory_for_symlink_never_reaches_outside(tmp_path: Path) -> None:
    outside, before = outside_tree(tmp_path)
    make(outside / "f.log")  # the same name cleanup is busy deleting inside
    before = snapshot(outside)
    root = tmp_path / "tmp"
    victim = root / "victim"
    parked = root / "parked"
    make(victim / "f.log")
    stop = threading.Event()
    swaps = [0]
    errors: list[BaseException] = []

    def swapper() -> None:
        try:
            while not stop.is_set():
                # Through an fd: cleanup may unlink the name before we set its age.
                fd = os.open(victim / "f.log", os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, b"x")
                os.utime(fd, (OLD, OLD))
                os.close(fd)
                os.rename(victim, parked)
                os.symlink(outside, victim)
                swaps[0] += 1
                os.unlink(victim)
                os.rename(parked, victim)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=swapper)
    t.start()
    removed = 0
    try:
        # Keep cleaning until the swapper has swapped many times (bounded, in case it stalls).
        i = 0
        while swaps[0] < 200 and i < 20_000 and not errors:
            i += 1
            if i % 2:
                # older_than=60 keeps victim itself (its mtime is always fresh) in place.
                report = remove_old_files(str(root), older_than=60)
            else:
                report = free_space([str(root)], enough=lambda: False)
            removed += len(report.removed)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert swaps[0] >= 200, "the race never happened"
    assert removed > 0, "cleanup never got to work during the race"
    assert snapshot(outside) == before


# --- free_space ----------------------------------------------------------------------------


def test_free_space_removes_oldest_first_until_enough(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make(a / "3.log", b"333", mtime=OLD + 3)
    make(b / "1.log", b"1", mtime=OLD + 1)
    make(a / "deep" / "2.log", b"22", mtime=OLD + 2)
    make(b / "4.log", b"4444", mtime=OLD + 4)
    checks: list[int] = []

    def enough() -> bool:
        checks.append(1)
        return not (b / "1.log").exists() and not (a / "deep" / "2.log").exists()

    report = free_space([str(a), str(b)], enough=enough)
    assert [r.path for r in report.removed] == [f"{b}/1.log", f"{a}/deep/2.log"]
    assert [r.size for r in report.removed] == [1, 2]
    assert len(checks) == 3  # before the first removal, then after each one
    assert (a / "3.log").exists() and (b / "4.log").exists()
    assert (a / "deep").is_dir()  # free_space leaves directories


def test_free_space_does_nothing_when_already_enough(tmp_path: Path) -> None:
    make(tmp_path / "x.log")
    report = free_space([str(tmp_path)], enough=lambda: True)
    assert report.removed == []
    assert (tmp_path / "x.log").exists()


def test_free_space_cannot_free_enough_removes_all_regular_files(tmp_path: Path) -> None:
    make(tmp_path / "x.log", b"12")
    make(tmp_path / "d" / "y.log", b"3")
    report = free_space([str(tmp_path)], enough=lambda: False)
    assert report.freed_bytes == 3
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_free_space_dry_run_lists_in_order_and_removes_nothing(tmp_path: Path) -> None:
    make(tmp_path / "new.log", b"1", mtime=OLD + 5)
    make(tmp_path / "old.log", b"22", mtime=OLD)
    before = snapshot(tmp_path)
    report = free_space([str(tmp_path)], enough=lambda: False, dry_run=True)
    assert snapshot(tmp_path) == before
    assert [r.path for r in report.removed] == [f"{tmp_path}/old.log", f"{tmp_path}/new.log"]
    assert report.dry_run and report.freed_bytes == 3


# --- reports --------------------------------------------------------------------------------


def test_report_merge_and_json() -> None:
    a = CleanupReport([Removal("/a", "r", 5, OLD)], [("/x", "symlink, left alone")], dry_run=True)
    b = CleanupReport([Removal("/b", "r", 7, OLD)], [], dry_run=False)
    merged = a.merge(b)
    assert merged is a
    assert merged.freed_bytes == 12
    assert not merged.dry_run  # something was removed for real
    doc = json.loads(json.dumps(merged.to_dict()))
    assert doc["freed_bytes"] == 12
    assert [r["path"] for r in doc["removed"]] == ["/a", "/b"]
    assert doc["refused"] == [{"path": "/x", "reason": "symlink, left alone"}]


def test_display_path_escapes_hostile_names() -> None:
    assert display_path("/t/a\nrefused\t-") == "/t/a\\nrefused\\t-"
    assert display_path(os.fsdecode(b"/t/\xff\xfe")) == "/t/\\xff\\xfe"
    assert display_path("/t/back\\xff") == "/t/back\\\\xff"  # a real backslash is not a byte escape
    assert display_path("/t/\x1b[31m") == "/t/\\x1b[31m"
    assert display_path("/t/caf\u00e9 %s 'q' \"q\"") == "/t/caf\u00e9 %s 'q' \"q\""


# --- hostile names (hypothesis) -------------------------------------------------------------

_name_bytes = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
_name_text = st.text(
    alphabet=st.sampled_from([*"ab%'\"\n\t\\ $*?-.", "\u00e9", "\u202e", "\x1b"]),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))
_names = st.one_of(_name_bytes, _name_text.map(os.fsencode))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(_names, min_size=1, max_size=8, unique=True), dry=st.booleans())
def test_hostile_names_are_cleaned_and_reported_on_one_line(
    tmp_path: Path, names: list[bytes], dry: bool
) -> None:
    base = os.fsencode(tmp_path) + b"/h-" + os.urandom(6).hex().encode()
    root = base + b"/root"
    sentinel = base + b"/sentinel"
    os.makedirs(root)
    os.makedirs(sentinel)
    with open(sentinel + b"/keep", "wb") as f:
        f.write(b"keep")
    for i, name in enumerate(names):
        target = root + b"/" + name
        if i % 3 == 2:
            os.symlink(sentinel, target)  # a hostile-named link pointing outside
            continue
        with open(target, "wb") as f:
            f.write(name)
        os.utime(target, (OLD, OLD))
    report = remove_old_files(os.fsdecode(root), older_than=60, now=NOW, dry_run=dry)
    files = [n for i, n in enumerate(names) if i % 3 != 2]
    links = [n for i, n in enumerate(names) if i % 3 == 2]
    assert sorted(os.fsencode(r.path) for r in report.removed) == sorted(
        root + b"/" + n for n in files
    )
    assert sorted(os.fsencode(p) for p, _ in report.refused) == sorted(
        root + b"/" + n for n in links
    )
    left = set(os.listdir(root))
    assert left == (set(names) if dry else set(links))
    with open(sentinel + b"/keep", "rb") as f:
        assert f.read() == b"keep"
    rendered = report.render()
    # One line per entry plus the total (and the dry-run banner): no name can forge a line.
    assert len(rendered.splitlines()) == len(names) + 1 + int(dry)
    rendered.encode("utf-8")  # always valid UTF-8, whatever the bytes were
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")


# --- mount points (a real tmpfs in a private mount namespace) -------------------------------

MOUNT_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from handlers.cleanup import free_space, remove_old_files
    root = sys.argv[1]
    mnt = os.path.join(root, "mnt")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], check=True)
    for d in (root, mnt):
        p = os.path.join(d, "old.log")
        open(p, "w").write("x")
        os.utime(p, (1e9, 1e9))
    r1 = remove_old_files(root, older_than=60)
    r2 = free_space([root], enough=lambda: False)
    print(json.dumps({
        "removed": [r.path for r in r1.removed + r2.removed],
        "refused": r1.refused + r2.refused,
        "inner_survived": os.path.exists(os.path.join(mnt, "old.log")),
    }))
    """
)


def run_in_mount_namespace(script: str, *args: str) -> str:
    """Run ``script`` with our interpreter in a private mount namespace; fail in CI, else skip."""
    cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        unavailable("unshare is not installed")
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        unavailable(f"cannot create a mount namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_mount_point_is_never_crossed(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    (root / "mnt").mkdir(parents=True)
    result = json.loads(run_in_mount_namespace(MOUNT_SCRIPT, str(root)))
    assert result["removed"] == [f"{root}/old.log"]
    assert result["inner_survived"] is True
    assert [f"{root}/mnt", "on another filesystem (mount point), not crossed"] in result["refused"]


def test_blocking_functions_say_so_in_their_docstrings() -> None:
    for fn in (remove_old_files, free_space, cleanup.remove_stale_pidfile):
        assert fn.__doc__ is not None and "asyncio.to_thread" in fn.__doc__


def test_many_files_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "many"
    for i in range(500):
        make(root / f"d{i % 10}" / f"f{i}")
    age_dirs(root)
    report = remove_old_files(str(root), older_than=1, now=NOW)
    assert len(report.removed) == 510
    assert list(root.iterdir()) == []


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), min_size=1, max_size=15),
    target=st.integers(0, 16),
)
def test_free_space_removes_exactly_the_oldest_needed(
    tmp_path: Path, files: list[tuple[int, int]], target: int
) -> None:
    base = tmp_path / os.urandom(6).hex()
    paths = []
    for i, (depth, age) in enumerate(files):
        where = base.joinpath(*[f"d{j}" for j in range(depth)])
        paths.append(str(make(where / f"f{i}", mtime=OLD + age)))
    expected = sorted(paths, key=lambda p: (os.stat(p).st_mtime, p))

    def enough() -> bool:
        return sum(not os.path.exists(p) for p in paths) >= target

    report = free_space([str(base)], enough=enough)
    assert [r.path for r in report.removed] == expected[: min(target, len(paths))]
    assert all(os.path.exists(p) for p in expected[target:])


def test_free_space_works_in_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cleanup, "_BATCH", 3)
    root = tmp_path / "cache"
    paths = [make(root / f"d{i % 2}" / f"f{i:02d}", mtime=OLD + i) for i in range(10)]
    (root / "link").symlink_to(tmp_path)

    def gone() -> int:
        return sum(not p.exists() for p in paths)

    report = free_space([str(root)], enough=lambda: gone() >= 7)
    assert [r.path for r in report.removed] == [str(p) for p in paths[:7]]
    assert report.refused == [(f"{root}/link", "symlink, left alone")]  # once, not per pass

    report = free_space([str(root)], enough=lambda: False)
    assert [r.path for r in report.removed] == [str(p) for p in paths[7:]]
    assert report.refused == [(f"{root}/link", "symlink, left alone")]

    for p in paths:
        make(p, mtime=OLD + int(p.name[1:]))
    dry = free_space([str(root)], enough=lambda: False, dry_run=True)
    assert [r.path for r in dry.removed] == [str(p) for p in paths[:3]]  # at most one batch
