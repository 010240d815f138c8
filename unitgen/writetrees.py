"""Writing rendered files all-or-nothing: :func:`write_trees`.

Every (directory, files) pair is written, or nothing changes. docs/rendering.md
("Writing, all or nothing") has the steps, docs/reliability.md their cost.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unitgen.errors import RenderError

__all__ = ["write_trees"]


def _check_relative(name: str) -> None:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts or len(parts) > 2:
        raise RenderError(f"refusing to write {name!r}: not NAME or NAME.d/FILE")


@dataclass
class _Target:
    """One file to write: where it goes, and where its staged copy and backup are."""

    final: Path
    text: str
    tmp: Path | None = None
    # A hard link to the file it replaces, kept until every rename has succeeded.
    backup: Path | None = None


@dataclass
class _Journal:
    """Every change a write made so far, so that a failure can undo it in reverse."""

    made_dirs: list[Path] = field(default_factory=list)
    stages: list[Path] = field(default_factory=list)
    switched: list[_Target] = field(default_factory=list)

    def undo(self) -> list[str]:
        """Put back what was replaced, remove what was added; what could not be undone."""
        failed: list[str] = []
        for target in reversed(self.switched):
            try:
                if target.backup is not None:
                    target.backup.replace(target.final)
                else:
                    target.final.unlink()
            except OSError as exc:
                failed.append(f"{target.final} ({exc.strerror or exc})")
        self.switched.clear()
        self.discard_stages()
        for directory in reversed(self.made_dirs):
            try:
                directory.rmdir()
            except OSError as exc:
                failed.append(f"{directory} ({exc.strerror or exc})")
        self.made_dirs.clear()
        return failed

    def discard_stages(self) -> None:
        for stage in self.stages:
            for leftover in stage.iterdir() if stage.exists() else ():
                with contextlib.suppress(OSError):
                    leftover.unlink()
            with contextlib.suppress(OSError):
                stage.rmdir()
        self.stages.clear()


def write_trees(trees: Sequence[tuple[Path, Mapping[str, str]]]) -> list[Path]:
    """Write every (directory, files) pair, or change nothing at all.

    1. Check every target first, touching nothing: each directory is one (or can
       be created), no unit file's place is taken by a directory, no drop-in
       directory's by a file (exit 2, naming the path).
    2. Stage: create the missing directories, write each file to a temporary
       directory inside its target directory (same file system, so the rename is
       atomic), hard-link each file it will replace next to it, and flush them.
       Everything that needs a new inode or block happens here, before any
       existing file changes.
    3. Switch: rename each staged file into place, then sync the directories.

    A failure at any step undoes the journal in reverse: replaced files are
    renamed back from their hard links (same inode: same bytes, mode, owner and
    times), added files and created directories are removed. The output
    directory holds other files (/etc/systemd/system), so it is never swapped
    as a whole.
    """
    journal = _Journal()
    try:
        plan = _plan(trees)
        _stage(plan, journal)
        _switch(plan, journal)
    except RenderError as exc:
        failed = journal.undo()
        outcome = (
            "nothing was changed"
            if not failed
            else f"undoing the write failed too, left changed: {', '.join(failed)}"
        )
        err = RenderError(f"{exc}; {outcome}")
        err.exit_code = exc.exit_code
        raise err from exc.__cause__
    except BaseException:
        journal.undo()  # Ctrl-C or a bug: still leave the tree as it was
        raise
    journal.discard_stages()  # the backups of the replaced files go with it
    return [target.final for _, targets in plan for target in targets]


def _bad_target(message: str) -> RenderError:
    err = RenderError(message)
    err.exit_code = 2
    return err


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "a special file"


def _check_directory(directory: Path, what: str) -> int | None:
    """``directory`` is one or can be created; its device, None when it does not exist yet."""
    try:
        st = directory.stat()  # a symlink to a directory is a directory here
    except (FileNotFoundError, NotADirectoryError):
        for ancestor in directory.parents:
            up = _lstat(ancestor)
            if up is None:
                continue
            if not ancestor.is_dir():
                raise _bad_target(
                    f"{directory}: cannot create {what}: {ancestor} is {_kind(up.st_mode)}"
                ) from None
            break
        return None
    except OSError as exc:
        raise _write_error(f"{directory}: cannot use {what}", exc) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise _bad_target(f"{directory}: is {_kind(st.st_mode)}, expected {what}")
    return st.st_dev


def _plan(trees: Sequence[tuple[Path, Mapping[str, str]]]) -> list[tuple[Path, list[_Target]]]:
    """Step 1 of :func:`write_trees`: every target checked, nothing written."""
    plan: list[tuple[Path, list[_Target]]] = []
    seen: set[Path] = set()
    for directory, files in trees:
        for name in files:
            _check_relative(name)
        device = _check_directory(directory, "a directory for the files")
        targets: list[_Target] = []
        for name, text in files.items():
            final = directory / name
            if final in seen:
                raise _bad_target(f"{final}: would be written twice")
            seen.add(final)
            if final.parent != directory:
                what = f"the drop-in directory of {final.parent.name.removesuffix('.d')}"
                sub = _check_directory(final.parent, what)
                if sub is not None and device is not None and sub != device:
                    # The staged file could not be renamed in: rename(2) stays on one file system.
                    raise _bad_target(f"{final.parent}: is on another file system than {directory}")
            st = _lstat(final)
            if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                kind = _kind(st.st_mode)
                raise _bad_target(f"{final}: is {kind}, expected a regular file or nothing there")
            targets.append(_Target(final, text))
        plan.append((directory, targets))
    return plan


def _make_dirs(directory: Path, journal: _Journal) -> None:
    """Create ``directory`` and its missing parents, each one journaled."""
    missing: list[Path] = []
    for path in (directory, *directory.parents):
        if path.is_dir():
            break
        missing.append(path)
    for path in reversed(missing):
        path.mkdir()
        journal.made_dirs.append(path)


def _stage(plan: Sequence[tuple[Path, Sequence[_Target]]], journal: _Journal) -> None:
    """Step 2 of :func:`write_trees`: everything written next to its place, nothing replaced."""
    for directory, targets in plan:
        try:
            _make_dirs(directory, journal)
            stage = Path(tempfile.mkdtemp(prefix=".unitgen-stage-", dir=directory))
        except OSError as exc:
            raise _write_error(f"{directory}: cannot write there", exc) from exc
        journal.stages.append(stage)
        for index, target in enumerate(targets):
            final = target.final
            try:
                if final.parent != directory:
                    _make_dirs(final.parent, journal)
                target.tmp = stage / str(index)
                with open(target.tmp, "x", encoding="utf-8") as fh:
                    fh.write(target.text)
                target.tmp.chmod(0o644)
            except OSError as exc:
                raise _write_error(f"{final}: cannot write", exc) from exc
            # Asked again, not taken from the plan: a file that appeared since must be
            # kept for the undo too.
            if _lstat(final) is not None:
                backup = stage / f"{index}.replaced"
                try:
                    # The link itself for a symlink: undoing puts back the link, not a copy.
                    os.link(final, backup, follow_symlinks=False)
                except OSError as exc:
                    raise _write_error(f"{final}: cannot keep the file it replaces", exc) from exc
                target.backup = backup
    try:
        _sync_staged(journal.stages, [t.tmp for _, ts in plan for t in ts if t.tmp is not None])
    except OSError as exc:
        raise _write_error("cannot flush the staged files", exc) from exc


def _switch(plan: Sequence[tuple[Path, Sequence[_Target]]], journal: _Journal) -> None:
    """Step 3 of :func:`write_trees`: the renames, each journaled, then their directories synced."""
    for _, targets in plan:
        for target in targets:
            assert target.tmp is not None
            try:
                target.tmp.replace(target.final)
            except OSError as exc:
                raise _write_error(f"{target.final}: cannot rename into place", exc) from exc
            journal.switched.append(target)
    parents = sorted({t.final.parent for _, targets in plan for t in targets})
    try:
        # The renames are durable only once their directories are synced.
        for parent in parents:
            _fsync_dir(parent)
    except OSError as exc:
        raise _write_error("cannot flush the renamed files", exc) from exc


def _write_error(message: str, exc: OSError) -> RenderError:
    """A one-line RenderError; exit 2 when the operator pointed us at a bad place."""
    err = RenderError(f"{message} ({exc.strerror or exc})")
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        err.exit_code = 2  # EACCES, EROFS, ENOTDIR...: a bad --out, not a failure of ours
    return err


def _sync_staged(stages: Sequence[Path], files: Sequence[Path]) -> None:
    """Flush every staged file before any rename.

    One syncfs(2) per file system: an fsync per file forces a journal commit each
    (docs/rendering.md has the cost).
    Where syncfs is unavailable, fall back to fsync per file.
    """
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return
    seen: set[int] = set()
    for stage in stages:
        fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
        try:
            device = os.fstat(fd).st_dev
            if device not in seen and syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            seen.add(device)
        finally:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
