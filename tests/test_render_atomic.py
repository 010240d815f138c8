"""``unitgen render`` is all-or-nothing: a failed render leaves both trees exactly as they were.

The three conditions that used to leave part of a tree written (a directory
where a unit file goes, a file where a drop-in directory goes, a file system
out of inodes), a failure in the middle of the renames (rolled back from the
journal), and the files it replaces: same bytes, same mode, same inode.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from sandboxlib import unavailable

import unitgen.writetrees as writetrees_module
from unitgen.errors import RenderError
from unitgen.writetrees import write_trees

OLD_SPEC = """
[service.a]
exec = ["/bin/true"]
[service.b]
exec = ["/bin/true"]
[override."nginx.service"]
hardening = "standard"
"""

# Changes a and b, adds c and d, and a drop-in directory the tree does not have yet.
NEW_SPEC = """
[service.a]
exec = ["/bin/false"]
[service.b]
exec = ["/bin/false"]
[service.c]
exec = ["/bin/true"]
[service.d]
exec = ["/bin/true"]
[override."nginx.service"]
hardening = "minimal"
[override."redis.service"]
hardening = "standard"
"""

Snapshot = dict[str, tuple[str, int, int, str]]


def snapshot(*roots: Path) -> Snapshot:
    """Every entry under ``roots``: kind, mode, inode, and the bytes or link target."""
    out: Snapshot = {}
    for root in roots:
        if not root.exists():
            continue
        for path in [root, *sorted(root.rglob("*"))]:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                kind, body = "link", os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                kind, body = "dir", ""
            else:
                kind, body = "file", path.read_bytes().hex()
            inode = st.st_ino if kind != "dir" else 0
            out[str(path)] = (kind, stat.S_IMODE(st.st_mode), inode, body)
    return out


def render_cli(spec: Path, out: Path, policies: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "unitgen",
            "render",
            str(spec),
            "--out",
            str(out),
            "--policy-dir",
            str(policies),
            "--systemd-version",
            "252",
            "--unitgen-bin",
            "/opt/unitgen/bin/unitgen",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def diff_cli(spec: Path, out: Path, policies: Path) -> tuple[int, str, str]:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "unitgen", "diff", str(spec), "--against", str(out)),
            *("--policies", "--policy-dir", str(policies), "--systemd-version", "252"),
            *("--unitgen-bin", "/opt/unitgen/bin/unitgen"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An installed tree (old spec) with foreign files; returns (new spec, out, policies)."""
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text(OLD_SPEC)
    new.write_text(NEW_SPEC)
    out, policies = tmp_path / "system", tmp_path / "policy.d"
    assert render_cli(old, out, policies).returncode == 0
    (out / "foreign.service").write_text("[Service]\nExecStart=/bin/true\n")
    (out / "a.service").chmod(0o600)  # an operator's mode on a file the render replaces
    (out / "d.service").symlink_to("/dev/null")  # a masked unit the render replaces
    return new, out, policies


def test_a_directory_where_a_unit_file_goes(installed: tuple[Path, Path, Path]) -> None:
    spec, out, policies = installed
    (out / "c.service").mkdir()
    before = snapshot(out, policies)
    proc = render_cli(spec, out, policies)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert f"{out / 'c.service'}: is a directory" in line and "nothing was changed" in line
    assert snapshot(out, policies) == before


def test_a_file_where_a_dropin_directory_goes(installed: tuple[Path, Path, Path]) -> None:
    spec, out, policies = installed
    (out / "redis.service.d").write_text("")
    before = snapshot(out, policies)
    diff_before = diff_cli(spec, out, policies)
    proc = render_cli(spec, out, policies)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert f"{out / 'redis.service.d'}: is a regular file" in line
    assert "drop-in directory of redis.service" in line and "nothing was changed" in line
    assert snapshot(out, policies) == before
    assert diff_cli(spec, out, policies) == diff_before  # diff sees the tree it saw before


def test_a_directory_where_a_policy_goes_keeps_the_unit_tree_too(
    installed: tuple[Path, Path, Path],
) -> None:
    spec, out, policies = installed
    (policies / "d.service.json").mkdir()
    before = snapshot(out, policies)
    proc = render_cli(spec, out, policies)
    assert proc.returncode == 2
    assert str(policies / "d.service.json") in proc.stderr
    assert snapshot(out, policies) == before


def test_a_file_in_place_of_the_output_directory(tmp_path: Path) -> None:
    spec = tmp_path / "new.toml"
    spec.write_text(NEW_SPEC)
    (tmp_path / "etc").write_text("")
    proc = render_cli(spec, tmp_path / "etc" / "system", tmp_path / "policy.d")
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert f"{tmp_path / 'etc'} is a regular file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc", "new.toml"]


def test_a_successful_render_after_a_failed_one(installed: tuple[Path, Path, Path]) -> None:
    spec, out, policies = installed
    (out / "c.service").mkdir()
    assert render_cli(spec, out, policies).returncode == 2
    (out / "c.service").rmdir()
    proc = render_cli(spec, out, policies)
    assert proc.returncode == 0, proc.stderr
    assert "new.toml" in (out / "a.service").read_text()
    assert stat.S_IMODE((out / "a.service").stat().st_mode) == 0o644
    assert (out / "d.service").is_file() and not (out / "d.service").is_symlink()
    assert (out / "redis.service.d" / "70-unitgen.conf").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".unitgen-stage-")]


# -- a failure in the middle of the renames: the journal undoes them -----------------


def _trees(spec: Path) -> list[tuple[Path, dict[str, str]]]:
    from unitgen.paths import Scope
    from unitgen.render import RenderOptions, render, render_policies
    from unitgen.specfile import load_spec

    loaded = load_spec(spec)
    options = RenderOptions(systemd_version=252, scope=Scope.SYSTEM, unitgen_bin="/x/unitgen")
    return [(Path(), render(loaded, options)), (Path(), render_policies(loaded, options))]


@pytest.mark.parametrize("victim", [0, 3, 7, 12])
def test_rename_failure_rolls_everything_back(
    installed: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, victim: int
) -> None:
    spec, out, policies = installed
    (_, unit_files), (_, policy_files) = _trees(spec)
    trees = [(out, unit_files), (policies, policy_files)]
    targets = [out / n for n in unit_files] + [policies / n for n in policy_files]
    before = snapshot(out, policies)
    real_sync = writetrees_module._sync_staged

    # Everything is staged and checked; then a directory takes one target's place, so
    # the kernel refuses that rename after the earlier ones went through.
    def sync_then_block(stages: list[Path], files: list[Path]) -> None:
        real_sync(stages, files)
        target = targets[victim]
        if target.is_symlink() or target.exists():
            target.unlink()
        (target / "x").mkdir(parents=True)

    monkeypatch.setattr(writetrees_module, "_sync_staged", sync_then_block)
    with pytest.raises(RenderError) as info:
        write_trees(trees)
    message = str(info.value)
    assert message.startswith(f"{targets[victim]}: cannot rename into place")
    assert message.endswith("nothing was changed") and "\n" not in message
    after = snapshot(out, policies)
    blocked = str(targets[victim])
    # Only what the test itself did differs: the blocking directory.
    assert {k: v for k, v in after.items() if not k.startswith(blocked)} == {
        k: v for k, v in before.items() if k != blocked
    }


def test_flush_failure_after_every_rename_rolls_back(
    installed: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, out, policies = installed
    (_, unit_files), (_, policy_files) = _trees(spec)
    before = snapshot(out, policies)

    def failing_fsync(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writetrees_module, "_fsync_dir", failing_fsync)
    with pytest.raises(RenderError, match="nothing was changed") as info:
        write_trees([(out, unit_files), (policies, policy_files)])
    assert info.value.exit_code == 1
    # Same inodes: the replaced files were renamed back, not rewritten.
    assert snapshot(out, policies) == before


def test_an_undo_that_fails_says_what_is_left(
    installed: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, out, _ = installed
    (_, unit_files), _ = _trees(spec)
    real_fsync = writetrees_module._fsync_dir

    def failing_fsync(directory: Path) -> None:
        (out / "c.service").unlink()  # the undo cannot remove what is already gone
        (out / "c.service").mkdir()
        monkeypatch.setattr(writetrees_module, "_fsync_dir", real_fsync)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writetrees_module, "_fsync_dir", failing_fsync)
    with pytest.raises(RenderError) as info:
        write_trees([(out, unit_files)])
    message = str(info.value)
    assert "undoing the write failed too" in message and str(out / "c.service") in message
    assert "\n" not in message
    assert "old.toml" in (out / "a.service").read_text()  # the rest was undone


# -- out of inodes, on a real file system ---------------------------------------------

INODES_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, os, stat, subprocess, sys
    from pathlib import Path
    from unitgen.cli import main

    old_spec, new_spec, mnt = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    def snap():
        out = {}
        for p in [mnt, *sorted(mnt.rglob("*"))]:
            st = p.lstat()
            body = p.read_bytes().hex() if stat.S_ISREG(st.st_mode) else ""
            out[str(p)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), body)
        return out

    def render(spec):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["render", spec, "--out", str(mnt / "system"), "--policy-dir",
                       str(mnt / "policy.d"), "--systemd-version", "252",
                       "--unitgen-bin", "/opt/unitgen/bin/unitgen"])
        return rc, err.getvalue()

    results = []
    for prefill in (False, True):
        wins = 0
        for inodes in range(2, 80):
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=4m,nr_inodes={inodes}",
                            "tmpfs", str(mnt)], check=True)
            try:
                if prefill:
                    rc, _ = render(old_spec)
                    if rc != 0:
                        continue
                    (mnt / "system" / "a.service").chmod(0o600)
                before = snap()
                rc, err = render(new_spec)
                results.append({"prefill": prefill, "inodes": inodes, "rc": rc,
                                "err": err, "same": snap() == before,
                                "files": sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*")
                                                if p.is_file())})
                wins += rc == 0
                if wins == 2:
                    break
            finally:
                subprocess.run(["umount", str(mnt)], check=True)
    print(json.dumps(results))
    """
)


def test_out_of_inodes_leaves_the_tree_as_it_was(tmp_path: Path) -> None:
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text(OLD_SPEC)
    new.write_text(NEW_SPEC)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c"]
    try:
        proc = subprocess.run(
            [*cmd, INODES_SCRIPT, str(old), str(new), str(mnt)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except FileNotFoundError:
        unavailable("unshare is not installed")
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        unavailable(f"cannot create a mount namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    complete = {
        "system/a.service", "system/b.service", "system/c.service", "system/d.service",
        "system/nginx.service.d/70-unitgen.conf", "system/redis.service.d/70-unitgen.conf",
        "system/unitgen-recover@.service", "policy.d/a.service.json", "policy.d/b.service.json",
        "policy.d/c.service.json", "policy.d/d.service.json", "policy.d/nginx.service.json",
        "policy.d/redis.service.json",
    }  # fmt: skip
    failed = [r for r in results if r["rc"] != 0]
    # Every inode budget from "nothing fits" up to "everything fits" was tried, both
    # on an empty file system and over an installed tree.
    assert {r["prefill"] for r in failed} == {False, True}
    assert len(failed) >= 2 * 10
    for r in results:
        if r["rc"] == 0:
            assert set(r["files"]) == complete, r
            continue
        assert r["same"], r  # the same entries, bytes and modes as before
        assert r["rc"] == 1, r  # a full file system is a run-time failure
        [line] = r["err"].splitlines()
        assert "No space left on device" in line and "nothing was changed" in line, r
        assert str(tmp_path / "mnt") in line, r


# -- any starting tree, any single failure: all or nothing ----------------------------

_UNITS = ["a.service", "b.service", "x.service.d/70-unitgen.conf", "y.service.d/70-unitgen.conf"]
_POLICIES = ["a.service.json", "x.service.json"]
# What may already sit where a file goes: nothing, an old file (content, mode), a
# symlink, a directory (holding a foreign file).
_EXISTING = st.one_of(
    st.none(),
    st.tuples(st.just("file"), st.binary(max_size=8), st.sampled_from([0o600, 0o644, 0o755])),
    st.just(("link",)),
    st.just(("dir",)),
)
# The drop-in directory of x/y: absent, a directory, or a file in its place.
_DROPIN = st.sampled_from(["absent", "dir", "file"])
_FAULTS = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["mkdir", "link", "replace", "fsync", "open"]), st.integers(0, 12)),
)


def _build(root: Path, name: str, existing: tuple[object, ...] | None) -> None:
    path = root / name
    if existing is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if existing[0] == "file":
        path.write_bytes(existing[1])  # type: ignore[arg-type]
        path.chmod(existing[2])  # type: ignore[arg-type]
    elif existing[0] == "link":
        path.symlink_to("/dev/null")
    else:
        (path / "foreign").mkdir(parents=True)


@settings(max_examples=150, deadline=None)
@given(
    units=st.tuples(*[_EXISTING] * len(_UNITS)),
    dropins=st.tuples(_DROPIN, _DROPIN),
    policies=st.tuples(*[_EXISTING] * len(_POLICIES)),
    policy_dir=st.booleans(),
    fault=_FAULTS,
)
def test_any_tree_any_single_failure_is_all_or_nothing(
    units: tuple[tuple[object, ...] | None, ...],
    dropins: tuple[str, str],
    policies: tuple[tuple[object, ...] | None, ...],
    policy_dir: bool,
    fault: tuple[str, int] | None,
) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        out, pol = root / "system", root / "policy.d"
        out.mkdir()
        (out / "foreign.service").write_text("theirs\n")
        for name, existing in zip(_UNITS, units, strict=True):
            dropin = {"x": dropins[0], "y": dropins[1]}.get(name[0])
            if dropin == "file":
                (out / name).parent.write_text("not a directory\n")
            elif dropin is not None:
                (out / name).parent.mkdir(exist_ok=True)
                _build(out, name, existing)
            else:
                _build(out, name, existing)
        if policy_dir:
            pol.mkdir()
            for name, existing in zip(_POLICIES, policies, strict=True):
                _build(pol, name, existing)
        before = snapshot(out, pol)
        if fault is not None:
            _inject(mp, *fault)
        trees = [(out, {n: f"new {n}\n" for n in _UNITS}), (pol, {n: "{}\n" for n in _POLICIES})]
        try:
            written = write_trees(trees)
        except RenderError as exc:
            event(f"refused at exit {exc.exit_code}" if fault is None else f"{fault[0]} failed")
            assert "\n" not in str(exc)
            assert str(exc).endswith("nothing was changed"), exc
            assert snapshot(out, pol) == before
            return
        event("written")
        assert len(written) == len(_UNITS) + len(_POLICIES)
        for directory, files in trees:
            for name, text in files.items():
                assert (directory / name).read_text() == text
                assert stat.S_IMODE((directory / name).lstat().st_mode) == 0o644
        assert (out / "foreign.service").read_text() == "theirs\n"
        assert not [p for p in out.iterdir() if p.name.startswith(".unitgen-stage-")]


def _inject(mp: pytest.MonkeyPatch, call: str, at: int) -> None:
    """Make the ``at``-th call of one file-system operation fail once (EIO)."""
    count = [0]

    def failing(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] == at + 1:
                raise OSError(errno.EIO, "Input/output error (injected)")
            return real(*args, **kwargs)

        return wrapper

    if call == "fsync":
        mp.setattr(writetrees_module, "_fsync_dir", failing(writetrees_module._fsync_dir))
    elif call == "open":
        mp.setattr("builtins.open", failing(open))
    else:
        mp.setattr(os, call, failing(getattr(os, call)))
