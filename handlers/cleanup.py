"""Remove stale PID files and old files, only where declared, without ever following a link.

Over 800 lines on purpose: the walk, the re-checks before each removal and the
refusal reasons are one safety argument, read and reviewed together (the mount
look-up, which is separable, lives in :mod:`handlers.mounts`).

This is the recovery ladder's resource-cleanup step.  Everything here is
blocking filesystem I/O: the ladder calls these functions through
``asyncio.to_thread``, never on the event loop.

The rules (docs/cleanup.md explains each one):

* Act only inside the declared directories.  A root is opened component by
  component from ``/`` with ``O_NOFOLLOW``, so a root that is, or passes
  through, a symlink is refused.
* Never follow a symlink.  Directories are walked with directory file
  descriptors (``openat`` with ``O_DIRECTORY|O_NOFOLLOW``), entries are
  examined with ``fstatat(AT_SYMLINK_NOFOLLOW)`` and removed with
  ``unlinkat``/``rmdir(dir_fd=)``.  Symlinks, sockets, FIFOs and devices are
  left in place and reported as refused: only regular files and directories
  that became empty are removed.
* Never cross a mount point: anything on another mount than the root
  (``st_dev`` differs, or, for a bind mount of the same filesystem, the mount
  id from ``handlers.mounts`` differs) is refused with its whole subtree.
  Every directory fd is checked to be on the root's mount before it is used,
  so a mount that appears mid-walk is not entered either.
* Never chmod or chown anything.
* Fail closed when a directory is swapped under us: every directory fd is
  fstat-ed after opening and compared with the lstat the decision was based
  on; before each removal the chain of directories from the root is checked
  again (each directory's ``..`` must still be its recorded parent), and the
  entry is lstat-ed again and must still be the same regular file.  Any
  mismatch refuses that subtree.

Nothing raises for an unsafe or vanished entry: it lands in
``CleanupReport.refused`` (or is silently skipped when it simply vanished).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from handlers.mounts import mount_id
from unitgen.sysroots import is_system_root, normalized

__all__ = [
    "CleanupReport",
    "Removal",
    "display_path",
    "free_space",
    "remove_old_files",
    "remove_stale_pidfile",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Deeper trees are refused rather than walked: each level holds one fd.
_MAX_DEPTH = 128
# A PID file holds a number and a newline; anything longer is not one.
_PIDFILE_MAX = 64


@dataclass(frozen=True)
class Removal:
    """One file or directory that was removed (or, in a dry run, would be)."""

    path: str
    reason: str
    size: int
    mtime: float


@dataclass
class CleanupReport:
    """What cleanup removed, what it refused to touch and why, and whether it was a dry run."""

    removed: list[Removal] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def freed_bytes(self) -> int:
        """Sum of the removed files' sizes (``st_size``); in a dry run, what would be freed."""
        return sum(r.size for r in self.removed)

    def merge(self, other: CleanupReport) -> CleanupReport:
        """Append ``other``'s entries to this report, in place, and return it.

        The merged report is a dry run only if both were: if either removed
        anything for real, the combined report must not claim nothing was touched.
        """
        self.removed.extend(other.removed)
        self.refused.extend(other.refused)
        self.dry_run = self.dry_run and other.dry_run
        return self

    def refuse(self, path: str, reason: str) -> None:
        self.refused.append((path, reason))

    def render(self) -> str:
        """The human-readable report; the format is documented in docs/cleanup.md."""
        verb = "would remove" if self.dry_run else "removed"
        lines = ["DRY RUN: nothing was removed"] if self.dry_run else []
        for r in self.removed:
            when = datetime.fromtimestamp(r.mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append(f"{verb}\t{r.size}\t{when}\t{r.reason}\t{display_path(r.path)}")
        for path, reason in self.refused:
            lines.append(f"refused\t-\t-\t{reason}\t{display_path(path)}")
        tail = "would be freed" if self.dry_run else "freed"
        lines.append(
            f"total\t{len(self.removed)} removed, {len(self.refused)} refused, "
            f"{self.freed_bytes} bytes {tail}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """A JSON-safe form; paths go through :func:`display_path` like in :meth:`render`."""
        return {
            "dry_run": self.dry_run,
            "freed_bytes": self.freed_bytes,
            "removed": [
                {"path": display_path(r.path), "reason": r.reason, "size": r.size, "mtime": r.mtime}
                for r in self.removed
            ],
            "refused": [{"path": display_path(p), "reason": why} for p, why in self.refused],
        }


def display_path(path: str) -> str:
    r"""Make a path safe for a one-line log or report.

    Bytes that are not UTF-8 (kept by Python as surrogate escapes) become
    ``\xNN``, control characters (a newline in a file name could forge a
    report line) become escapes, and a literal backslash is doubled, so the
    result is unambiguous and always valid UTF-8.
    """
    out: list[str] = []
    for ch in path:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0x80 <= code < 0xA0 or 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


# --- opening paths without following links ---------------------------------------------


class _Unsafe(Exception):
    """An unsafe path: the caller records ``reason`` as a refusal."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _components(path: str) -> list[str]:
    if not path.startswith("/"):
        raise _Unsafe("not an absolute path")
    # normpath is lexical only; that is safe because no component is ever followed as a link.
    return [c for c in os.path.normpath(path).split("/") if c]


def _open_dir_nofollow(path: str) -> int:
    """Open the directory ``path`` from ``/`` one component at a time, refusing any symlink."""
    parts = _components(path)
    fd = os.open("/", _DIR_FLAGS)
    try:
        for i, name in enumerate(parts):
            where = "/" + "/".join(parts[: i + 1])
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise
                raise _Unsafe(_why_not_dir(fd, name, where, exc)) from exc
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _why_not_dir(dir_fd: int, name: str, where: str, exc: OSError) -> str:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return f"cannot open {display_path(where)}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{display_path(where)} is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return f"{display_path(where)} is not a directory"
    return f"cannot open {display_path(where)}: {exc.strerror}"


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Same file, unchanged: inode numbers are reused at once, so the ctime must match too."""
    return _same(a, b) and a.st_ctime_ns == b.st_ctime_ns


# --- PID files ---------------------------------------------------------------------------


def _pid_state(pid: int) -> str | None:
    """The process state letter from /proc, or None when there is no such process.

    ``"?"`` means the process exists but /proc would not tell us more (hidepid).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return "?"
    # The command name is in parentheses and may itself contain ") ".
    return data.rsplit(b")", 1)[1].split()[0].decode("ascii", "replace")


def _pid_cgroup(pid: int) -> str | None:
    """The unified-hierarchy (``0::``) cgroup of ``pid``, or None when unreadable/absent."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return None


def _in_cgroup(cgroup: str, unit_cgroup: str) -> bool:
    unit = unit_cgroup.rstrip("/") or "/"
    return cgroup == unit or cgroup.startswith(unit + "/") or unit == "/"


def remove_stale_pidfile(
    path: str,
    *,
    unit_cgroup: str | None,
    dry_run: bool = False,
    owner_uid: int | None = None,
) -> CleanupReport:
    """Remove the PID file ``path`` if its process is gone or is not the unit's.

    Blocking I/O: call through ``asyncio.to_thread`` from async code.

    The file is removed when its PID does not exist (or is a zombie), or when
    the PID is alive but its unified cgroup (``/proc/PID/cgroup``, ``0::``) is
    outside ``unit_cgroup`` (systemd's ControlGroup property), meaning the PID
    was reused by another process.  An alive PID is kept when ``unit_cgroup``
    is unknown (``None``): we cannot prove it is stale.

    Refused (recorded, never raised): a path with a symlink in any component;
    anything but a regular file; a file not owned by ``owner_uid`` (default:
    our effective uid, so root in system scope, the caller in user scope);
    a group- or other-writable file; content that is not a positive decimal PID;
    a PID file that is a mount point (a bind-mounted file).
    A missing PID file is nothing to do: an empty report.
    """
    report = CleanupReport(dry_run=dry_run)
    want_uid = os.geteuid() if owner_uid is None else owner_uid
    try:
        parts = _components(path)
    except _Unsafe as exc:
        report.refuse(path, exc.reason)
        return report
    if not parts:
        report.refuse(path, "not a file path")
        return report
    parent = "/" + "/".join(parts[:-1])
    name = parts[-1]
    dfd = _open_dir_or_refuse(parent, path, report)
    if dfd is None:
        return report
    try:
        _pidfile_in(dfd, name, path, unit_cgroup, want_uid, report)
    finally:
        os.close(dfd)
    return report


_PIDFILE_MOUNTED = "PID file is a mount point, left alone"


def _pidfile_in(
    dfd: int, name: str, path: str, unit_cgroup: str | None, want_uid: int, report: CleanupReport
) -> None:
    try:
        # O_NONBLOCK: a FIFO planted under the PID file's name must not hang the ladder.
        ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            report.refuse(path, "PID file is a symlink")
        else:
            report.refuse(path, f"cannot open PID file: {exc.strerror}")
        return
    try:
        try:
            dir_mnt = mount_id(dfd)
        except OSError as exc:
            report.refuse(
                path, f"cannot tell whether the PID file is a mount point: {exc.strerror}"
            )
            return
        # The fd, not the name: a bind mount over the name is what open() just entered.
        problem = _mount_problem(dir_mnt, ffd, None, _PIDFILE_MOUNTED)
        if problem is not None:
            report.refuse(path, problem)
            return
        st = os.fstat(ffd)
        if not stat.S_ISREG(st.st_mode):
            report.refuse(path, "PID file is not a regular file")
            return
        if st.st_uid != want_uid:
            report.refuse(path, f"PID file owned by uid {st.st_uid}, expected uid {want_uid}")
            return
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            report.refuse(
                path, f"PID file is group- or other-writable (mode {st.st_mode & 0o7777:o})"
            )
            return
        data = os.read(ffd, _PIDFILE_MAX + 1)
    finally:
        os.close(ffd)
    text = data.strip()
    if len(data) > _PIDFILE_MAX or not text.isdigit() or not text.isascii() or int(text) <= 0:
        report.refuse(path, "PID file does not hold a PID")
        return
    pid = int(text)
    state = _pid_state(pid)
    if state is None or state in ("Z", "X"):
        reason = f"stale PID file: process {pid} is not running"
    else:
        if unit_cgroup is None:
            return  # alive, and we cannot tell whose it is: keep it
        cgroup = _pid_cgroup(pid)
        if cgroup is None:
            if _pid_state(pid) is None:
                reason = f"stale PID file: process {pid} is not running"
            else:
                report.refuse(path, f"process {pid} is alive but its cgroup is unknown")
                return
        elif _in_cgroup(cgroup, unit_cgroup):
            return  # the unit's own process: the PID file is current
        else:
            reason = f"stale PID file: process {pid} belongs to {display_path(cgroup)}"
    if report.dry_run:
        report.removed.append(Removal(path, reason, st.st_size, st.st_mtime))
        return
    try:
        # The name must still be the file we inspected; unlinkat never follows links anyway.
        now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not _same_file(now, st):
            report.refuse(path, "PID file was replaced while being checked")
            return
        problem = _mount_problem(dir_mnt, dfd, name, _PIDFILE_MOUNTED)
        if problem is not None:
            report.refuse(path, problem)
            return
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    except OSError as exc:
        report.refuse(path, f"cannot remove PID file: {exc.strerror}")
        return
    report.removed.append(Removal(path, reason, st.st_size, st.st_mtime))


# --- walking declared directories --------------------------------------------------------

_Chain = tuple[tuple[str, int, int], ...]  # (name, st_dev, st_ino) of each directory below a root

# free_space keeps at most this many candidates in memory and rescans when they
# are used up, so a cache of millions of files cannot exhaust memory while the
# machine is already in trouble.
_BATCH = 50_000


@dataclass(frozen=True, slots=True)
class _Entry:
    """A regular file or directory found by the scan, with the lstat fields decisions rest on.

    Kept small on purpose (no stat_result, no joined path): a scan may hold many.
    """

    root_index: int
    chain: _Chain  # the directory the entry is in (shared by its siblings)
    dir_path: str  # that directory's path, for reports (shared by its siblings)
    name: str
    dev: int
    ino: int
    ctime_ns: int
    mtime: float
    size: int

    @classmethod
    def of(
        cls, root_index: int, chain: _Chain, dir_path: str, name: str, st: os.stat_result
    ) -> _Entry:
        return cls(
            root_index,
            chain,
            dir_path,
            name,
            st.st_dev,
            st.st_ino,
            st.st_ctime_ns,
            st.st_mtime,
            st.st_size,
        )

    @property
    def path(self) -> str:
        return f"{self.dir_path}/{self.name}"

    @property
    def own_chain(self) -> _Chain:
        """For a directory: the chain of the entries inside it."""
        return (*self.chain, (self.name, self.dev, self.ino))

    def same_dir(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def same_file(self, st: os.stat_result) -> bool:
        """Same file, unchanged: inode numbers are reused at once, so the ctime must match too."""
        return (st.st_dev, st.st_ino, st.st_ctime_ns) == (self.dev, self.ino, self.ctime_ns)


def _age_key(entry: _Entry) -> tuple[float, str]:
    return (entry.mtime, entry.path)


@dataclass
class _Root:
    path: str
    fd: int
    st: os.stat_result
    mnt: int  # the mount id every entry and directory fd must share


_NOT_CROSSED = "mount point, not crossed"
_MOUNTED_FILE = "mount point (a mounted file), left alone"
_MOUNTED_MIDWAY = "a mount point appeared while cleaning, subtree refused"


def _mount_problem(mnt: int, fd: int, name: str | None, reason: str = _NOT_CROSSED) -> str | None:
    """Why ``name`` in ``fd`` (or ``fd`` itself) must not be touched, or None.

    ``reason`` when it is on another mount than ``mnt`` (its root's or its
    directory's).  Raises FileNotFoundError when the entry vanished.
    """
    try:
        if mount_id(fd, name) == mnt:
            return None
    except FileNotFoundError:
        raise
    except OSError as exc:
        return f"cannot tell whether it is a mount point: {exc.strerror}"
    return reason


def _open_dir_or_refuse(directory: str, subject: str, report: CleanupReport) -> int | None:
    """An fd to ``directory`` (no symlink on the way), or None: missing, or refused
    under ``subject`` (the path the caller was asked about) with the reason."""
    try:
        return _open_dir_nofollow(directory)
    except FileNotFoundError:
        return None
    except _Unsafe as exc:
        report.refuse(subject, exc.reason)
    except OSError as exc:
        where = "" if directory == subject else f" {display_path(directory)}"
        report.refuse(subject, f"cannot open{where}: {exc.strerror}")
    return None


def _open_root(root: str, report: CleanupReport) -> _Root | None:
    try:
        _components(root)  # refuses a relative path
        if is_system_root(root):  # "/" among them
            report.refuse(root, "refusing to clean a system directory")
            return None
    except _Unsafe as exc:
        report.refuse(root, exc.reason)
        return None
    # Missing: the service has not created it yet, nothing to clean.
    fd = _open_dir_or_refuse(root, root, report)
    if fd is None:
        return None
    try:
        mnt = mount_id(fd)
    except OSError as exc:
        os.close(fd)
        report.refuse(root, f"cannot tell mount points apart: {exc.strerror}")
        return None
    return _Root(normalized(root), fd, os.fstat(fd), mnt)


@dataclass
class _Scan:
    """One walk of one root: the wanted files, the directories (post-order), entry counts.

    ``want`` filters files as they are found.  With ``limit``, only the
    ``limit`` oldest wanted files are kept and ``truncated`` says some were dropped.
    """

    root: _Root
    root_index: int
    report: CleanupReport
    want: Callable[[_Entry], bool] = lambda _e: True
    limit: int | None = None
    keep_dirs: bool = False
    files: list[_Entry] = field(default_factory=list)
    dirs: list[_Entry] = field(default_factory=list)
    truncated: bool = False
    # How many entries each directory held when listed; remove_old_files uses it
    # to know which directories cleaning emptied (and, in a dry run, would empty).
    entries: dict[_Chain, int] = field(default_factory=dict)

    def run(self) -> _Scan:
        self._walk(self.root.fd, (), self.root.path)
        self._trim(final=True)
        return self

    def _trim(self, *, final: bool = False) -> None:
        if self.limit is None:
            return
        if final or len(self.files) > 2 * self.limit:
            self.files.sort(key=_age_key)
            if len(self.files) > self.limit:
                self.truncated = True
                del self.files[self.limit :]

    def _walk(self, fd: int, chain: _Chain, dir_path: str) -> None:
        try:
            # Read the whole listing first so only one fd per level stays open.
            with os.scandir(fd) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            self.report.refuse(dir_path, f"cannot list: {exc.strerror}")
            return
        self.entries[chain] = len(names)
        for name in names:
            self._entry(fd, chain, dir_path, name)

    def _entry(self, fd: int, chain: _Chain, dir_path: str, name: str) -> None:
        report = self.report
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            report.refuse(f"{dir_path}/{name}", f"cannot stat: {exc.strerror}")
            return
        if st.st_dev != self.root.st.st_dev:
            report.refuse(f"{dir_path}/{name}", "on another filesystem (mount point), not crossed")
            return
        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            # A bind mount of the same filesystem keeps st_dev: only the mount id tells.
            mounted = _NOT_CROSSED if stat.S_ISDIR(st.st_mode) else _MOUNTED_FILE
            try:
                problem = _mount_problem(self.root.mnt, fd, name, mounted)
            except FileNotFoundError:
                return
            if problem is not None:
                report.refuse(f"{dir_path}/{name}", problem)
                return
        if stat.S_ISREG(st.st_mode):
            entry = _Entry.of(self.root_index, chain, dir_path, name, st)
            if self.want(entry):
                self.files.append(entry)
                self._trim()
        elif stat.S_ISDIR(st.st_mode):
            self._subdir(fd, _Entry.of(self.root_index, chain, dir_path, name, st))
        elif stat.S_ISLNK(st.st_mode):
            report.refuse(f"{dir_path}/{name}", "symlink, left alone")
        else:
            report.refuse(f"{dir_path}/{name}", "not a regular file, left alone")

    def _subdir(self, fd: int, entry: _Entry) -> None:
        if len(entry.chain) >= _MAX_DEPTH:
            self.report.refuse(entry.path, f"deeper than {_MAX_DEPTH} levels, not walked")
            return
        try:
            sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self.report.refuse(
                    entry.path, "directory was swapped while walking, subtree refused"
                )
            else:
                self.report.refuse(entry.path, f"cannot open: {exc.strerror}")
            return
        try:
            if not entry.same_dir(os.fstat(sub)):
                self.report.refuse(
                    entry.path, "directory was swapped while walking, subtree refused"
                )
                return
            # Mounted over between the check on the name and the open: the fd tells.
            problem = _mount_problem(self.root.mnt, sub, None, _MOUNTED_MIDWAY)
            if problem is not None:
                self.report.refuse(entry.path, problem)
                return
            self._walk(sub, entry.own_chain, entry.path)
        finally:
            os.close(sub)
        if self.keep_dirs:
            self.dirs.append(entry)


class _DirCache:
    """Opens (and keeps open) the directory an entry lives in, re-verifying every step."""

    def __init__(self, roots: list[_Root]) -> None:
        self.roots = roots
        self.key: tuple[int, _Chain] | None = None
        self.fds: list[int] = []

    def close(self) -> None:
        for fd in self.fds[1:]:
            os.close(fd)
        self.fds = []
        self.key = None

    def open(self, entry: _Entry) -> int:
        """The fd of ``entry``'s directory; raises _Unsafe when the path no longer matches."""
        key = (entry.root_index, entry.chain)
        if key != self.key:
            self.close()
            self.fds = [self.roots[entry.root_index].fd]
            self.key = key
            for name, dev, ino in entry.chain:
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=self.fds[-1])
                except OSError as exc:
                    self.close()
                    raise _Unsafe("directory was swapped or removed, subtree refused") from exc
                self.fds.append(fd)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (dev, ino):
                    self.close()
                    raise _Unsafe("directory was swapped while cleaning, subtree refused")
                problem = _mount_problem(
                    self.roots[entry.root_index].mnt, fd, None, _MOUNTED_MIDWAY
                )
                if problem is not None:
                    self.close()
                    raise _Unsafe(problem)
        self._verify()
        return self.fds[-1]

    def _verify(self) -> None:
        """Each open directory must still sit in its recorded parent (not moved out of the root)."""
        for parent, child in itertools.pairwise(self.fds):
            try:
                dotdot = os.stat("..", dir_fd=child, follow_symlinks=False)
            except OSError as exc:
                self.close()
                raise _Unsafe("directory was removed while cleaning, subtree refused") from exc
            if not _same(dotdot, os.fstat(parent)):
                self.close()
                raise _Unsafe("directory was moved while cleaning, subtree refused")


def _remove_file(cache: _DirCache, entry: _Entry, reason: str, report: CleanupReport) -> bool:
    """Remove one regular file (or, in a dry run, record it); True when it went."""
    if report.dry_run:
        report.removed.append(Removal(entry.path, reason, entry.size, entry.mtime))
        return True
    try:
        dfd = cache.open(entry)
        now = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
        if not entry.same_file(now) or not stat.S_ISREG(now.st_mode):
            report.refuse(entry.path, "file was replaced while cleaning, left alone")
            return False
        problem = _mount_problem(cache.roots[entry.root_index].mnt, dfd, entry.name, _MOUNTED_FILE)
        if problem is not None:
            report.refuse(entry.path, problem)
            return False
        os.unlink(entry.name, dir_fd=dfd)
    except _Unsafe as exc:
        report.refuse(entry.path, exc.reason)
        return False
    except FileNotFoundError:
        return False
    except OSError as exc:
        report.refuse(entry.path, f"cannot remove: {exc.strerror}")
        return False
    report.removed.append(Removal(entry.path, reason, now.st_size, now.st_mtime))
    return True


def _remove_dir(cache: _DirCache, entry: _Entry, reason: str, report: CleanupReport) -> bool:
    """Remove one directory if it is empty; True when it went (or, dry, would go)."""
    if report.dry_run:
        report.removed.append(Removal(entry.path, reason, 0, entry.mtime))
        return True
    try:
        dfd = cache.open(entry)
        now = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
        if not entry.same_dir(now):
            report.refuse(entry.path, "directory was replaced while cleaning, left alone")
            return False
        problem = _mount_problem(cache.roots[entry.root_index].mnt, dfd, entry.name)
        if problem is not None:
            report.refuse(entry.path, problem)
            return False
        os.rmdir(entry.name, dir_fd=dfd)
    except _Unsafe as exc:
        report.refuse(entry.path, exc.reason)
        return False
    except OSError as exc:
        # Not empty (a new file arrived) or already gone: leave it, nothing unsafe happened.
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY):
            report.refuse(entry.path, f"cannot remove directory: {exc.strerror}")
        return False
    report.removed.append(Removal(entry.path, reason, 0, entry.mtime))
    return True


def remove_old_files(
    root: str, *, older_than: float, now: float | None = None, dry_run: bool = False
) -> CleanupReport:
    """Remove regular files under ``root`` not modified for ``older_than`` seconds.

    Blocking I/O: call through ``asyncio.to_thread`` from async code.

    Then the subdirectories left empty are removed too, deepest first, if their
    own modification time (as seen before cleaning) is also older, so a fresh
    empty directory the service just made survives.  ``root`` itself is never
    removed.  Age is ``now - st_mtime``.  In a dry run nothing is touched and
    the report lists the files and the directories that would go.
    """
    report = CleanupReport(dry_run=dry_run)
    now = time.time() if now is None else now

    def old(entry: _Entry) -> bool:
        return now - entry.mtime > older_than

    opened = _open_root(root, report)
    if opened is None:
        return report
    cache = _DirCache([opened])
    try:
        scan = _Scan(opened, 0, report, want=old, keep_dirs=True).run()
        gone: dict[_Chain, int] = {}
        for entry in scan.files:
            if _remove_file(cache, entry, f"older than {older_than:g}s", report):
                gone[entry.chain] = gone.get(entry.chain, 0) + 1
        # scan.dirs is post-order: every directory comes after everything inside it.
        for entry in scan.dirs:
            emptied = gone.get(entry.own_chain, 0) == scan.entries.get(entry.own_chain, -1)
            if (
                emptied
                and old(entry)
                and _remove_dir(cache, entry, f"empty directory older than {older_than:g}s", report)
            ):
                gone[entry.chain] = gone.get(entry.chain, 0) + 1
    finally:
        cache.close()
        os.close(opened.fd)
    return report


def free_space(
    roots: Sequence[str], *, enough: Callable[[], bool], dry_run: bool = False
) -> CleanupReport:
    """Delete the oldest regular files across ``roots``, oldest first, until ``enough()``.

    Blocking I/O: call through ``asyncio.to_thread`` from async code.

    ``enough`` is checked before the first removal and after each one, so no
    more is removed than needed.  In a dry run it is checked once, before: if
    space is short, the files that could go are listed in the order they would
    go (at most the oldest 50,000), since nothing is freed to change the answer.
    Directories are left in place.  If ``enough()`` is still false afterwards,
    cleanup could not free enough and the caller must escalate.
    """
    report = CleanupReport(dry_run=dry_run)
    opened: list[_Root] = []
    try:
        for root in roots:
            r = _open_root(root, report)
            if r is not None:
                opened.append(r)
        if enough():
            return report
        while True:
            # Refusals from a rescan repeat the first pass's; keep each once.
            seen = set(report.refused)
            scratch = CleanupReport(dry_run=dry_run)
            files: list[_Entry] = []
            truncated = False
            for i, r in enumerate(opened):
                scan = _Scan(r, i, scratch, limit=_BATCH).run()
                files.extend(scan.files)
                truncated = truncated or scan.truncated
            report.refused.extend(x for x in dict.fromkeys(scratch.refused) if x not in seen)
            files.sort(key=_age_key)
            del files[_BATCH:]
            removed_any = False
            cache = _DirCache(opened)
            try:
                for entry in files:
                    if not _remove_file(cache, entry, "oldest file, freeing space", report):
                        continue
                    removed_any = True
                    if not dry_run and enough():
                        return report
            finally:
                cache.close()
            # Another pass only helps if this one was cut short and made progress.
            if dry_run or not truncated or not removed_any:
                return report
    finally:
        for r in opened:
            os.close(r.fd)
