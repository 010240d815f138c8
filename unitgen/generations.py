"""Generations: every applied spec's files kept whole, and one symlink saying which is live.

Layout (``ROOT`` is ``/var/lib/unitgen/generations`` for the system manager)::

    ROOT/.lock                 flock: one apply/rollback at a time
    ROOT/current -> 7          the live generation; replaced by rename(2), so atomic
    ROOT/7/units/NAME          every rendered unit file and drop-in
    ROOT/7/policy/NAME         every recovery policy
    ROOT/7/meta.json           number, time, spec path and hash, status

The unit directory (``/etc/systemd/system``) and the policy directory hold one
symlink per file, ``NAME -> ROOT/current/units/NAME``: they never change when a
generation replaces another with the same file names, so the switch of every
file at once is the one rename of ``current``. Only a file added or removed
between two generations adds or removes a link; added links are made before the
switch (they dangle until it, and systemd reads nothing before the daemon-reload
that follows it), removed ones after.

A path in the unit directory that is not one of these links belongs to someone
else: a switch that would take its place is refused before anything changes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unitgen.errors import LockBusyError, RenderError, StateError, UsageError

__all__ = [
    "Generation",
    "Store",
    "Trees",
]

Status = Literal["active", "superseded", "failed", "rolled-back-to"]
CURRENT = "current"
KINDS = ("units", "policy")


@dataclass(frozen=True)
class Trees:
    """The directories the links of a generation live in."""

    units: Path
    policy: Path

    def of(self, kind: str) -> Path:
        return self.units if kind == "units" else self.policy


@dataclass
class Generation:
    number: int
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def files(self, kind: str) -> dict[str, str]:
        """NAME -> text of every file of one kind (``units`` or ``policy``)."""
        base = self.path / kind
        out: dict[str, str] = {}
        if not base.is_dir():
            return out
        for p in sorted(base.rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[p.relative_to(base).as_posix()] = p.read_text(encoding="utf-8")
        return out


def spec_digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


class Store:
    """The generations directory of one scope."""

    def __init__(self, root: Path, trees: Trees) -> None:
        self.root = root
        self.trees = trees

    # -- reading ---------------------------------------------------------------------

    def numbers(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit() and p.is_dir())

    def get(self, number: int) -> Generation:
        path = self.root / str(number)
        if not path.is_dir():
            raise StateError(f"{self.root}: no generation {number}")
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(f"{path / 'meta.json'}: unreadable ({exc})") from exc
        return Generation(number, path, meta if isinstance(meta, dict) else {})

    def current(self) -> Generation | None:
        link = self.root / CURRENT
        try:
            target = str(link.readlink())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{link}: not a symlink to a generation ({exc.strerror})") from exc
        if not target.isdigit():
            raise StateError(f"{link}: points at {target!r}, not a generation number")
        return self.get(int(target))

    def link_target(self, kind: str, name: str) -> str:
        return str(self.root / CURRENT / kind / name)

    def is_ours(self, kind: str, name: str) -> bool:
        path = self.trees.of(kind) / name
        try:
            return str(path.readlink()) == self.link_target(kind, name)
        except OSError:
            return False

    def installed(self, kind: str, name: str) -> str | None:
        """What the host has at a file's place now (through our link or not)."""
        try:
            return (self.trees.of(kind) / name).read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise RenderError(f"{self.trees.of(kind) / name}: cannot read ({exc})") from exc

    # -- locking ---------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise LockBusyError(
                    f"{self.root}: another unitgen apply or rollback is running"
                ) from exc
            yield
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------------

    def create(self, files: Mapping[str, Mapping[str, str]], meta: Mapping[str, Any]) -> Generation:
        """Write a new generation whole (in a temporary directory, then one rename)."""
        number = max(self.numbers(), default=0) + 1
        tmp = self.root / f".new-{number}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for kind in KINDS:
                for name, text in files.get(kind, {}).items():
                    _check_name(name)
                    path = tmp / kind / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text, encoding="utf-8")
                    path.chmod(0o644)
            full = {"generation": number, "created": time.time(), "status": "new", **meta}
            (tmp / "meta.json").write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
            _fsync_tree(tmp)
            tmp.rename(self.root / str(number))
            _fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RenderError(f"{self.root}: cannot write generation {number} ({exc})") from exc
        return self.get(number)

    def set_status(self, gen: Generation, status: str, **extra: Any) -> None:
        gen.meta = {**gen.meta, "status": status, **extra}
        path = gen.path / "meta.json"
        tmp = path.with_name(".meta.json.new")
        tmp.write_text(json.dumps(gen.meta, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def conflicts(self, new: Generation | Mapping[str, Mapping[str, str]]) -> list[str]:
        """Paths a switch to ``new`` (a generation, or its files) would take from someone else."""
        out: list[str] = []
        for kind in KINDS:
            names = new.files(kind) if isinstance(new, Generation) else new.get(kind, {})
            for name in names:
                path = self.trees.of(kind) / name
                if (path.exists() or path.is_symlink()) and not self.is_ours(kind, name):
                    out.append(str(path))
        return out

    def switch(self, old: Generation | None, new: Generation) -> None:
        """Make ``new`` the live generation: add links, swap ``current``, drop links."""
        refuse_conflicts(self.conflicts(new))
        old_names = {k: set(old.files(k)) if old else set() for k in KINDS}
        new_names = {k: set(new.files(k)) for k in KINDS}
        try:
            for kind in KINDS:
                for name in sorted(new_names[kind] - old_names[kind]):
                    self._link(kind, name)
            tmp = self.root / f".{CURRENT}-new"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(str(new.number))
            tmp.replace(self.root / CURRENT)
            _fsync_dir(self.root)
            for kind in KINDS:
                for name in sorted(old_names[kind] - new_names[kind]):
                    self._unlink(kind, name)
        except OSError as exc:
            raise RenderError(f"switch to generation {new.number} failed ({exc})") from exc

    def _link(self, kind: str, name: str) -> None:
        path = self.trees.of(kind) / name
        if self.is_ours(kind, name):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.unitgen-link")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.link_target(kind, name))
        tmp.replace(path)
        _fsync_dir(path.parent)

    def _unlink(self, kind: str, name: str) -> None:
        path = self.trees.of(kind) / name
        if not self.is_ours(kind, name):
            return  # someone else's file now: not ours to remove
        path.unlink()
        if "/" in name:
            # A drop-in directory this link made, now empty.
            with contextlib.suppress(OSError):
                path.parent.rmdir()


def refuse_conflicts(conflicts: list[str]) -> None:
    if conflicts:
        raise UsageError(
            f"{conflicts[0]}: exists and is not managed by unitgen apply "
            "(move it aside first; nothing was changed)"
        )


def _check_name(name: str) -> None:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise RenderError(f"{name!r}: not a relative file name")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def retire(store: Store, gen: Generation) -> None:
    """Undo a first switch: no generation is live; every link of ``gen`` goes."""
    try:
        with contextlib.suppress(FileNotFoundError):
            (store.root / CURRENT).unlink()
        for kind in KINDS:
            for name in sorted(gen.files(kind)):
                path = store.trees.of(kind) / name
                if path.is_symlink() and str(path.readlink()) == store.link_target(kind, name):
                    path.unlink()
                    if "/" in name:
                        with contextlib.suppress(OSError):
                            path.parent.rmdir()
    except OSError as exc:
        raise RenderError(f"undoing generation {gen.number} failed ({exc})") from exc
