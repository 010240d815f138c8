"""A disposable, real systemd to test against: a user manager or a booted container.

Nothing in unitgen may claim to work with systemd until it has worked against a
real one, and the machines that run the tests do not boot systemd as PID 1. This
module starts one on demand and removes every trace of it afterwards.

Two kinds, chosen by :class:`unitgen.paths.Scope`:

``Scope.USER`` -- ``/lib/systemd/systemd --user`` (about 0.2 s to "running")
    Started inside ``unshare --mount --pid --fork --mount-proc --propagation
    private``. The namespace's PID 1 is a small shell that, before starting
    anything, moves itself into a private cgroup ``/unitgen-sandbox-ID/init.scope``
    (otherwise the manager, seeing ``/init.scope``, would adopt the *host's root*
    cgroup and two sandboxes would share ``app.slice/x.service``), mounts tmpfs on
    ``/run/systemd`` (so the manager believes it was booted), ``/run/log`` and
    ``/var/log/journal``, binds private directories over ``/tmp`` and ``/var/tmp``
    (``PrivateTmp=`` directories would otherwise land in the host's /tmp and
    survive a kill), starts ``systemd-journald`` (so :meth:`Sandbox.journal`
    works) and then the user manager. The session bus is the manager's own
    socket-activated ``dbus.socket`` at ``$XDG_RUNTIME_DIR/bus``.

``Scope.SYSTEM`` -- ``systemd-nspawn -b`` (about 1 s to "running")
    A booted container over the host's read-only ``/usr``: the host's own
    systemd as PID 1 with a real system bus. See :func:`start_system_sandbox`.

Inside the sandbox, paths the caller shares (``share=``; the pytest fixtures
share pytest's base temp dir, so ``tmp_path`` works in ``ExecStart=``) and the
sandbox's own ``root`` are visible at the same path as on the host.

API (the pytest fixtures in ``tests/conftest.py`` wrap it)::

    with Sandbox.start(Scope.USER) as sb:       # or start_user_sandbox()
        sb.install_units({"web.service": "[Service]\\nExecStart=..."})
        sb.systemctl("start", "web.service", check=True)
        props = sb.wait_for("web.service", "active", timeout=10)
        sb.kill_main("web.service", signal.SIGKILL)
        sb.wait_for("web.service", {"failed", "activating"})
        print(sb.journal("web.service", lines=20))
        subprocess.run(["systemctl", "--user", "status"], env={**os.environ, **sb.env})

Attributes: ``scope``; ``root`` (the private temp dir: everything the sandbox
writes on the host is below it); ``env`` (what a host-side client needs to reach
this manager: ``DBUS_SESSION_BUS_ADDRESS``/``DBUS_SYSTEM_BUS_ADDRESS``,
``XDG_RUNTIME_DIR``, ``XDG_CONFIG_HOME``, ``XDG_STATE_HOME``, ``HOME``,
``UNITGEN_SCOPE``, ``UNITGEN_STATE_DIR``, ``UNITGEN_RUN_DIR``,
``UNITGEN_POLICY_DIR``); ``bus_address``; ``unit_dir`` (drop unit files there).

PIDs. The sandbox keeps its own PID namespace, because then teardown is total:
SIGKILL to the namespace's init makes the kernel kill every process in it,
daemons that double-forked included, before ``waitpid`` returns. The price is
that ``MainPID`` read over D-Bus is a PID *inside* the namespace. Use
:meth:`Sandbox.kill_main` (``systemctl kill``) or :meth:`Sandbox.run` to signal
from inside, or :meth:`Sandbox.host_pid` to translate a namespace PID to the
host's (via ``NSpid`` in ``/proc/PID/status``), e.g. for ``os.kill``.

Host-side ``systemctl --user`` with :attr:`Sandbox.env` works, except
``is-system-running`` which answers "offline" because the host lacks
``/run/systemd/system``; :meth:`Sandbox.systemctl` runs inside and has no such gap.

Teardown (``close()``, idempotent, also on ``__exit__``): SIGKILL the namespace
init, wait for ``unshare``, remove ``/unitgen-sandbox-ID`` from every cgroup
hierarchy, remove ``root``. If the Python process itself is SIGKILLed, the
namespace still dies (``setpriv --pdeathsig`` + ``unshare --kill-child``); only
the empty temp dir and empty cgroup directories can then remain, and the next
:func:`reap_stale` (called by every start) removes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from unitgen.errors import SandboxError, UnitNotFoundError
from unitgen.paths import Scope

SYSTEMD = "/lib/systemd/systemd"
JOURNALD = "/lib/systemd/systemd-journald"
USER_BUS_SOCKET_UNIT = "/usr/lib/systemd/user/dbus.socket"
CGROUP_PREFIX = "unitgen-sandbox-"
# Where the user sandbox's HOME and runtime dir appear inside (ROOT/home, ROOT/run).
INSIDE_HOME = "/home/sandbox"
INSIDE_RUNTIME = "/run/user/0"
DEFAULT_BOOT_TIMEOUT = 20.0
_POLL = 0.01  # seconds between state polls; systemctl show costs ~3 ms

StatePredicate = Callable[[dict[str, str]], bool]

# The user-mode namespace init. Positional args: ROOT ID JOURNAL SHARED... ;
# the cgroup hierarchies to join come in $UNITGEN_SANDBOX_CGROUPS (space-separated).
_USER_INIT = r"""
set -eu
R=$1; ID=$2; JOURNAL=$3; shift 3
for h in $UNITGEN_SANDBOX_CGROUPS; do
    mkdir -p "$h/$ID/init.scope"
    echo 0 > "$h/$ID/init.scope/cgroup.procs"
done
# A fresh /run: the runtime dir must live where a real one does (/run/user/UID),
# because under /tmp a PrivateTmp= unit could not reach the notify socket; and the
# host's /run (its system bus included) is none of the sandbox's business.
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/systemd/system /run/systemd/journal /run/log /run/lock /run/user/0 /run/.keep
mount --bind "$R/run" /run/user/0
if [ -d "$R/inaccessible" ]; then
    mkdir /run/systemd/inaccessible
    mount --bind "$R/inaccessible" /run/systemd/inaccessible
fi
# HOME under /home, as on a real host, so ProtectHome= means what it will mean there.
mount -t tmpfs -o mode=755 tmpfs /home
mkdir /home/sandbox
mount --bind "$R/home" /home/sandbox
# Keep the root and the shared paths reachable across the /tmp and /var/tmp binds.
i=0
for p in "$R" "$@"; do
    mkdir -p /run/.keep/$i
    mount --bind "$p" /run/.keep/$i
    i=$((i+1))
done
mount --bind /run/.keep/0/tmp /tmp
mount --bind /run/.keep/0/var-tmp /var/tmp
i=0
for p in "$R" "$@"; do
    mkdir -p "$p"
    mount --bind /run/.keep/$i "$p"
    umount /run/.keep/$i
    i=$((i+1))
done
rmdir /run/.keep/* /run/.keep
if [ "$JOURNAL" = 1 ]; then
    if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=755 tmpfs /var/log/journal; fi
    __JOURNALD__ </dev/null >/dev/null 2>&1 &
    # The manager opens its log target once; without the socket it would log to
    # the host's /dev/kmsg.
    n=0
    while [ ! -S /run/systemd/journal/socket ] && [ $n -lt 500 ]; do sleep 0.005; n=$((n+1)); done
    export SYSTEMD_LOG_TARGET=journal
else
    export SYSTEMD_LOG_TARGET=console
fi
__SYSTEMD__ --user </dev/null &
wait
"""


# The system-mode wrapper, run by ``unshare --mount``: join the private cgroup
# (nspawn --keep-unit creates payload/ and supervisor/ below its own cgroup,
# which would otherwise be the host's), hide the host's /run/systemd (nspawn
# leaves nspawn/locks and nspawn/propagate there), then become nspawn.
_SYSTEM_INIT = r"""
set -eu
ID=$1; shift
for h in $UNITGEN_SANDBOX_CGROUPS; do
    mkdir -p "$h/$ID"
    echo 0 > "$h/$ID/cgroup.procs"
done
mount -t tmpfs -o mode=755 tmpfs /run/systemd
exec "$@"
"""


def _cgroup_mounts() -> list[tuple[Path, str]]:
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


def _tracking_hierarchies() -> list[Path]:
    """Hierarchies the namespace init must join: systemd's own and the v2 one.

    v1 controller hierarchies (memory, pids, ...) are left alone: joining cpuset
    would need cpus/mems set first, and systemd creates its unit cgroups there
    below our ID anyway, which teardown removes.
    """
    result = []
    for mount, options in _cgroup_mounts():
        if "name=systemd" in options.split(",") or _is_cgroup2(mount):
            result.append(mount)
    return result


def _is_cgroup2(mount: Path) -> bool:
    return (mount / "cgroup.controllers").exists()


def _remove_cgroup_tree(top: Path, deadline: float) -> None:
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
            owner = (root / "owner").read_text().split()
            alive = _process_alive(int(owner[0]), owner[1])
        except (OSError, ValueError, IndexError):
            alive = now - _mtime(root) < 60
        if alive:
            continue
        left = False
        for mount, _ in _cgroup_mounts():
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
                _remove_cgroup_tree(top, time.monotonic() + 0.5)
            except SandboxError:
                left = True
        if left:
            continue  # keep the root dir: the next reap finds this sandbox again
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    tmp = Path(tempfile.gettempdir())
    for mount, _ in _cgroup_mounts():
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
                _remove_cgroup_tree(top, time.monotonic() + 0.5)
                removed.append(top)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _start_time(pid: int) -> str:
    """The kernel's start time of ``pid``: with the pid, a unique process identity."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]


def _process_alive(pid: int, start_time: str) -> bool:
    try:
        return _start_time(pid) == start_time
    except (OSError, IndexError):
        return False


def _cgroup_has_processes(top: Path) -> bool:
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" in files:
            try:
                if Path(dirpath, "cgroup.procs").read_text().strip():
                    return True
            except OSError:
                return True
    return False


def probe(scope: Scope = Scope.USER) -> str | None:
    """Why a sandbox of this scope cannot start here, or None if it should.

    Cheap checks only (no process is started); the pytest fixtures use this to
    decide between running, skipping and -- under CI=true -- failing.
    """
    if os.geteuid() != 0:
        return "the sandbox needs root (mount and PID namespaces, cgroups)"
    needed = ["unshare", "nsenter", "setpriv", "systemctl", "journalctl"]
    if scope is Scope.SYSTEM:
        needed.append("systemd-nspawn")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if not Path(SYSTEMD).exists():
        missing.append(SYSTEMD)
    if scope is Scope.USER and not Path(USER_BUS_SOCKET_UNIT).exists():
        # The user manager's session bus is dbus-user-session's socket unit.
        missing.append(f"{USER_BUS_SOCKET_UNIT} (Debian package dbus-user-session)")
    if missing:
        return "missing: " + ", ".join(missing)
    if not _tracking_hierarchies():
        return "no systemd-usable cgroup hierarchy is mounted under /sys/fs/cgroup"
    return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _ns_children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _launch(
    argv: list[str], root: Path, env: Mapping[str, str], *, die_with_parent: bool
) -> subprocess.Popen[bytes]:
    """Start the namespace init with its output in ``root/init.log``."""
    if die_with_parent:
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
    child_env = {
        **_base_env(),
        **env,
        "UNITGEN_SANDBOX_CGROUPS": " ".join(str(p) for p in _tracking_hierarchies()),
    }
    with open(root / "init.log", "wb") as log:
        return subprocess.Popen(
            argv,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's ^C goes to us, not the manager
        )


def _code_roots() -> list[str]:
    """Where the running unitgen lives: the interpreter's prefixes and, for an
    editable install, the work tree it imports from. Sandboxes must see them so
    that `unitgen` from the venv runs inside."""
    import unitgen

    source_root = str(Path(unitgen.__file__).resolve().parent.parent)
    return list(dict.fromkeys([sys.base_prefix, sys.prefix, source_root]))


class Sandbox:
    """A running disposable systemd. Create with :meth:`start`; always ``close()``."""

    scope: Scope
    root: Path
    env: dict[str, str]
    bus_address: str
    unit_dir: Path

    def __init__(
        self,
        scope: Scope,
        root: Path,
        env: dict[str, str],
        bus_address: str,
        unit_dir: Path,
        launcher: subprocess.Popen[bytes],
        init_pid: int,
        cgroup_id: str,
        inside_env: dict[str, str],
    ) -> None:
        self.scope = scope
        self.root = root
        self.env = env
        self.bus_address = bus_address
        self.unit_dir = unit_dir
        self._launcher = launcher
        self.init_pid = init_pid  # host PID of the namespace's PID 1
        self.cgroup_id = cgroup_id
        self._closed = False
        self.shared: tuple[Path, ...] = ()  # host paths bound at the same path inside
        # What runs inside sees the manager's real runtime dir; env is for the host.
        self._inside_env = inside_env
        namespaces = ["--mount", "--pid"]
        if scope is Scope.SYSTEM:
            namespaces = ["--mount", "--uts", "--ipc", "--net", "--pid"]
        self._nsenter = ["nsenter", f"--target={init_pid}", *namespaces]

    # --- construction -------------------------------------------------------

    @classmethod
    def start(
        cls,
        scope: Scope = Scope.USER,
        *,
        share: Iterable[Path] = (),
        journal: bool = True,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        die_with_parent: bool = True,
        host_like: bool = True,
    ) -> Sandbox:
        """Start a sandbox and wait until its manager reports "running".

        ``host_like`` (user scope): provide ``/run/systemd/inaccessible/``, which
        PID 1 creates on a real host and which systemd 252 needs for ProtectHome=yes,
        ProtectKernelTunables=, ProtectKernelLogs= and InaccessiblePaths=; without it
        those die with 226/NAMESPACE (see docs/sandbox.md). ``False`` reproduces a
        host whose PID 1 is not systemd.

        ``share``: host directories made visible inside at the same path (the
        sandbox's private /tmp and /var/tmp would hide them otherwise).
        ``die_with_parent``: kill the sandbox if the *thread* that started it
        exits (PR_SET_PDEATHSIG semantics), so start it from a long-lived thread.
        """
        if scope is Scope.SYSTEM:
            return cls._start_system(
                share=share, boot_timeout=boot_timeout, die_with_parent=die_with_parent
            )
        return cls._start_user(
            share=share,
            journal=journal,
            boot_timeout=boot_timeout,
            die_with_parent=die_with_parent,
            host_like=host_like,
        )

    @classmethod
    def _start_user(
        cls,
        *,
        share: Iterable[Path],
        journal: bool,
        boot_timeout: float,
        die_with_parent: bool,
        host_like: bool,
    ) -> Sandbox:
        reason = probe(Scope.USER)
        if reason:
            raise SandboxError(f"cannot start the user sandbox: {reason}")
        reap_stale()
        root = Path(tempfile.mkdtemp(prefix=CGROUP_PREFIX))
        cgroup_id = root.name
        try:
            (root / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
            runtime = root / "run"
            home = root / "home"
            for sub in ("run", "home", "tmp", "var-tmp"):
                (root / sub).mkdir(mode=0o700)
            for sub in (".config", ".local/state", ".local/share", ".cache"):
                (home / sub).mkdir(mode=0o700, parents=True)
            (root / "tmp").chmod(0o1777)
            (root / "var-tmp").chmod(0o1777)
            bus = f"unix:path={runtime}/bus"
            # Host-side clients get a runtime dir holding only the bus: the manager
            # refuses private-socket peers from outside its PID namespace (their PID
            # does not map, so getpeercred() says ENODATA), and systemctl, finding
            # $XDG_RUNTIME_DIR/systemd/private, would try it and fail at random.
            client_runtime = root / "client-run"
            client_runtime.mkdir(mode=0o700)
            (client_runtime / "bus").symlink_to(runtime / "bus")

            def user_env(home: str, runtime: str) -> dict[str, str]:
                return {
                    "XDG_RUNTIME_DIR": runtime,
                    "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus",
                    "HOME": home,
                    "XDG_CONFIG_HOME": f"{home}/.config",
                    "XDG_STATE_HOME": f"{home}/.local/state",
                    "XDG_DATA_HOME": f"{home}/.local/share",
                    "XDG_CACHE_HOME": f"{home}/.cache",
                    "UNITGEN_SCOPE": "user",
                    "UNITGEN_STATE_DIR": f"{home}/.local/state/unitgen",
                    "UNITGEN_RUN_DIR": f"{runtime}/unitgen",
                    "UNITGEN_POLICY_DIR": f"{home}/.config/unitgen/policy.d",
                }

            env = {**user_env(str(home), str(runtime)), "XDG_RUNTIME_DIR": str(client_runtime)}
            inside_env = user_env(INSIDE_HOME, INSIDE_RUNTIME)
            if host_like:
                _make_inaccessible_nodes(root / "inaccessible")
            init_script = root / "init.sh"
            init_script.write_text(
                _USER_INIT.replace("__SYSTEMD__", SYSTEMD).replace("__JOURNALD__", JOURNALD)
            )
            shared = [str(Path(p).resolve()) for p in share]
            # The private /tmp and /var/tmp would hide the interpreter or the work tree
            # of an editable install living there (a CI clone under /tmp, say).
            for code in _code_roots():
                hidden = any(Path(code).is_relative_to(t) for t in ("/tmp", "/var/tmp"))
                if hidden and not any(Path(code).is_relative_to(p) for p in shared):
                    shared.append(code)
            argv = [
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "--kill-child=SIGKILL",
                "--",
                "/bin/sh",
                str(init_script),
                str(root),
                cgroup_id,
                "1" if journal else "0",
                *shared,
            ]
            launcher = _launch(argv, root, inside_env, die_with_parent=die_with_parent)
        except OSError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise SandboxError(f"cannot start the user sandbox in {root}: {exc}") from exc

        deadline = time.monotonic() + boot_timeout
        init_pid = 0
        while not init_pid:
            kids = _ns_children(launcher.pid)
            if kids:
                init_pid = kids[0]
                break
            if launcher.poll() is not None or time.monotonic() > deadline:
                _abort(launcher, root, cgroup_id)
                raise SandboxError(f"user sandbox did not start: {_tail(root / 'init.log')}")
            time.sleep(0.002)
        sb = cls(
            Scope.USER,
            root,
            env,
            bus,
            home / ".config" / "systemd" / "user",
            launcher,
            init_pid,
            cgroup_id,
            inside_env,
        )
        sb.shared = tuple(Path(p) for p in shared)
        try:
            sb.unit_dir.mkdir(parents=True, exist_ok=True)
            sb._wait_running(deadline)
        except BaseException:
            sb.close()
            raise
        return sb

    @classmethod
    def _start_system(
        cls, *, share: Iterable[Path], boot_timeout: float, die_with_parent: bool
    ) -> Sandbox:
        reason = probe(Scope.SYSTEM)
        if reason:
            raise SandboxError(f"cannot start the system sandbox: {reason}")
        reap_stale()
        root = Path(tempfile.mkdtemp(prefix=CGROUP_PREFIX))
        cgroup_id = root.name
        try:
            (root / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
            # Non-root callers must reach the bus socket below root.
            root.chmod(0o755)
            skel = root / "skel"
            skel.mkdir()
            for name in ("bin", "sbin", "lib", "lib64"):
                (skel / name).symlink_to(f"usr/{name}")
            for name in ("usr", "etc", "var", "tmp", "run", "proc", "sys", "dev", "root", "home"):
                (skel / name).mkdir()
            (skel / "tmp").chmod(0o1777)
            # nspawn checks for os-release on the host side, before /usr is bound, so
            # the usual symlink into usr/lib would dangle: give it a real file.
            os_release = Path("/usr/lib/os-release").read_bytes()
            (skel / "etc" / "os-release").write_bytes(os_release)
            etc_upper = root / "etc-upper"
            etc_upper.mkdir()
            (etc_upper / "os-release").write_bytes(os_release)
            dirs = {
                "dbus": "/run/dbus",
                "system-units": "/etc/systemd/system",
                "etc-unitgen": "/etc/unitgen",
                "run-unitgen": "/run/unitgen",
            }
            for sub in dirs:
                (root / sub).mkdir(mode=0o755)
            (root / "etc-unitgen" / "policy.d").mkdir()
            bus = f"unix:path={root}/dbus/system_bus_socket"
            env = {
                "DBUS_SYSTEM_BUS_ADDRESS": bus,
                "UNITGEN_SCOPE": "system",
                "UNITGEN_STATE_DIR": str(skel / "var" / "lib" / "unitgen"),
                "UNITGEN_RUN_DIR": str(root / "run-unitgen"),
                "UNITGEN_POLICY_DIR": str(root / "etc-unitgen" / "policy.d"),
            }
            shared = [str(Path(p).resolve()) for p in share]
            binds = [f"--bind={root}"]
            binds += [f"--bind={root / sub}:{inside}" for sub, inside in dirs.items()]
            binds += [f"--bind={p}" for p in shared]
            bound = [str(root), *shared]
            for prefix in _code_roots():
                inside_usr = prefix == "/usr" or prefix.startswith("/usr/")
                if inside_usr or any(Path(prefix).is_relative_to(b) for b in bound):
                    continue
                binds.append(f"--bind-ro={prefix}")
                bound.append(prefix)
            nspawn = [
                "systemd-nspawn",
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--machine=unitgen-sandbox",
                f"--directory={skel}",
                "--bind-ro=/usr",
                f"--overlay=/etc:{etc_upper}:/etc",
                *binds,
                "--setenv=SYSTEMD_LOG_LEVEL=info",
                "-b",
            ]
            init_script = root / "init.sh"
            init_script.write_text(_SYSTEM_INIT)
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--kill-child=SIGKILL",
                "--",
                "/bin/sh",
                str(init_script),
                cgroup_id,
                *nspawn,
            ]
            launcher = _launch(argv, root, {}, die_with_parent=die_with_parent)
        except OSError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise SandboxError(f"cannot start the system sandbox in {root}: {exc}") from exc

        deadline = time.monotonic() + boot_timeout
        init_pid = 0
        while not init_pid:
            # unshare -> (sh exec'd into) nspawn -> container's systemd
            for nspawn_pid in _ns_children(launcher.pid):
                kids = _ns_children(nspawn_pid)
                if kids and _comm(kids[0]) == "systemd":
                    init_pid = kids[0]
            if init_pid:
                break
            if launcher.poll() is not None or time.monotonic() > deadline:
                _abort(launcher, root, cgroup_id)
                raise SandboxError(f"system sandbox did not boot: {_tail(root / 'init.log')}")
            time.sleep(0.005)
        sb = cls(
            Scope.SYSTEM,
            root,
            env,
            bus,
            root / "system-units",
            launcher,
            init_pid,
            cgroup_id,
            {},
        )
        sb.shared = tuple(Path(p) for p in shared)
        try:
            sb._wait_running(deadline)
        except BaseException:
            sb.close()
            raise
        return sb

    def _wait_running(self, deadline: float) -> None:
        # Over the bus, not the private socket: the manager refuses private-socket
        # peers from another PID namespace, and the bus is what clients will use.
        # systemd1 appears on the socket-activated bus only after dbus.service is up.
        bus_socket = Path(self.bus_address.removeprefix("unix:path="))
        last = ""
        while time.monotonic() < deadline:
            if self._launcher.poll() is not None:
                raise SandboxError(f"sandbox exited while booting: {_tail(self.root / 'init.log')}")
            if bus_socket.exists():
                last = self._system_state()
                if last in ("running", "degraded"):
                    return
            time.sleep(_POLL)
        raise SandboxError(
            f"{self.scope.value} manager not running after boot timeout (last state: {last!r})"
        )

    def _system_state(self) -> str:
        res = subprocess.run(
            [
                "busctl",
                f"--address={self.bus_address}",
                "get-property",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "SystemState",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        out = res.stdout.strip()  # 's "running"'
        return out[3:-1] if out.startswith('s "') else (res.stderr.strip() or out)

    # --- context manager ----------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, *, graceful: bool = False, timeout: float = 10.0) -> None:
        """Kill everything, remove the cgroups and the temp dir. Safe to call twice.

        ``graceful``: ask the manager to exit (``systemctl exit``/``poweroff``) and
        wait up to ``timeout`` first, so units run their ExecStop=; the kill that
        follows then finds nothing, but still runs.
        """
        if self._closed:
            return
        if graceful:
            verb = "exit" if self.scope is Scope.USER else "poweroff"
            with contextlib.suppress(SandboxError):
                self.systemctl(verb, "--no-block", timeout=timeout)
            if self.scope is Scope.SYSTEM:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._launcher.wait(timeout=timeout)
            else:
                deadline = time.monotonic() + timeout
                while Path(f"/proc/{self.init_pid}").exists() and time.monotonic() < deadline:
                    if not any(_comm(p) == "systemd" for p in _ns_children(self.init_pid)):
                        break
                    time.sleep(_POLL)
        self._closed = True
        _abort(self._launcher, self.root, self.cgroup_id, self.init_pid)

    # --- running things inside ----------------------------------------------

    def to_host(self, inside: str | Path) -> Path:
        """The host path of a path as the sandbox sees it (user scope remaps some)."""
        path = Path(inside)
        if any(path.is_relative_to(p) for p in (self.root, *self.shared)):
            return path
        if self.scope is Scope.SYSTEM:
            for prefix, host in (
                ("/etc/systemd/system", self.root / "system-units"),
                ("/etc/unitgen", self.root / "etc-unitgen"),
                ("/run/unitgen", self.root / "run-unitgen"),
                ("/run/dbus", self.root / "dbus"),
                ("/etc", self.root / "etc-upper"),  # only what the container wrote
            ):
                if path.is_relative_to(prefix):
                    return host / path.relative_to(prefix)
            if path.parts[1:2] and path.parts[1] in ("var", "opt", "root", "home", "srv"):
                return self.root / "skel" / path.relative_to("/")
            return path
        if self.scope is Scope.USER:
            for prefix, host in (
                (INSIDE_HOME, self.root / "home"),
                (INSIDE_RUNTIME, self.root / "run"),
                ("/var/tmp", self.root / "var-tmp"),
                ("/tmp", self.root / "tmp"),
            ):
                if path.is_relative_to(prefix):
                    return host / path.relative_to(prefix)
        return path

    def inside_env(self) -> dict[str, str]:
        """The variables a process inside needs (``run`` adds them for you)."""
        return dict(self._inside_env)

    def command(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside the sandbox (for Popen and friends)."""
        return [*self._nsenter, "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        user: int | str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the sandbox's namespaces; output captured as text.

        ``user``: a uid or user name to run as (via ``setpriv``, groups cleared).
        """
        if self._closed:
            raise SandboxError("sandbox is closed")
        if user is not None:
            argv = [*as_user(user), *argv]
        full_env = {**_base_env(), **self._inside_env, **(env or {})}
        try:
            res = subprocess.run(
                self.command(argv),
                env=full_env,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SandboxError(f"{argv[0]} timed out after {timeout} s in the sandbox") from exc
        if check and res.returncode != 0:
            raise SandboxError(
                f"{' '.join(argv)} exited {res.returncode} in the sandbox: "
                f"{(res.stderr or res.stdout).strip()[-500:]}"
            )
        return res

    def systemctl(
        self, *args: str, check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``systemctl`` against this manager (``--user`` added in user scope)."""
        scope_flag = ["--user"] if self.scope is Scope.USER else []
        return self.run(["systemctl", *scope_flag, *args], check=check, timeout=timeout)

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload", check=True)

    def install_units(self, files: Mapping[str, str] | Path, reload: bool = True) -> list[Path]:
        """Write unit files (name -> text) or copy a directory of them into unit_dir.

        Directories in a copied tree (``x.service.d/``) are kept. Returns the paths.
        """
        written: list[Path] = []
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(files, Path):
            for src in sorted(files.rglob("*")):
                if src.is_dir():
                    continue
                dest = self.unit_dir / src.relative_to(files)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                written.append(dest)
        else:
            for name, text in files.items():
                if "/" in name.strip("/").replace(".d/", "", 1) or name.startswith(".."):
                    raise SandboxError(f"unit file name {name!r} must be NAME or NAME.d/FILE")
                dest = self.unit_dir / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text, encoding="utf-8")
                written.append(dest)
        if reload:
            self.daemon_reload()
        return written

    def install_bus_policy(self, name: str, text: str | None) -> None:
        """Put (or, with None, remove) ``/etc/dbus-1/system.d/NAME`` in the container.

        The system bus reads its policy files only on ReloadConfig, which follows.
        """
        if self.scope is not Scope.SYSTEM or "/" in name or name.startswith("."):
            raise SandboxError(f"bus policy {name!r}: only a file name, in a system sandbox")
        path = f"/etc/dbus-1/system.d/{name}"
        if text is None:
            self.run(["rm", "-f", path], check=True)
        else:
            self.run(
                ["sh", "-c", f"mkdir -p /etc/dbus-1/system.d && cat > {path}"],
                input=text,
                check=True,
            )
        self.run(
            [
                "busctl",
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "ReloadConfig",
            ],
            check=True,
        )

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` as a dict (all properties when none are named)."""
        args = ["show", unit]
        if props:
            args.append("--property=" + ",".join(props))
        res = self.systemctl(*args, check=True)
        out: dict[str, str] = {}
        for line in res.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    def wait_for(
        self,
        unit: str,
        state: str | Iterable[str] | StatePredicate,
        timeout: float = 10.0,
        *,
        prop: str = "ActiveState",
    ) -> dict[str, str]:
        """Poll (deadline, no bare sleep) until the unit reaches ``state``.

        ``state`` is a value of ``prop`` ("active"), a set of them, or a predicate
        on the properties dict. Returns the properties that satisfied it; raises
        :class:`SandboxError` with the last seen values on timeout.
        """
        if callable(state):
            predicate: StatePredicate = state
            wanted = ["ActiveState", "SubState", "Result", "MainPID", "NRestarts", prop]
        else:
            allowed = {state} if isinstance(state, str) else set(state)

            def predicate(p: dict[str, str]) -> bool:
                return p.get(prop) in allowed

            wanted = ["ActiveState", "SubState", "Result", "LoadState", prop]
        deadline = time.monotonic() + timeout
        props: dict[str, str] = {}
        while True:
            props = self.show(unit, *([] if callable(state) else wanted))
            if predicate(props):
                return props
            if time.monotonic() > deadline:
                seen = {k: props.get(k, "?") for k in dict.fromkeys(wanted)}
                raise SandboxError(
                    f"{unit} did not reach {_describe(state)} in {timeout} s: {seen}"
                )
            time.sleep(_POLL)

    def main_pid(self, unit: str) -> int:
        """MainPID of ``unit`` as the sandbox sees it (namespace PID); 0 if none."""
        value = self.show(unit, "MainPID", "LoadState")
        if value.get("LoadState") == "not-found":
            raise UnitNotFoundError(f"unit {unit} is not loaded in the sandbox")
        return int(value.get("MainPID", "0") or 0)

    def kill_main(self, unit: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the unit's main process; returns the (namespace) PID hit."""
        pid = self.main_pid(unit)
        if pid <= 0:
            raise SandboxError(f"{unit} has no main process to signal")
        self.systemctl("kill", "--kill-who=main", f"--signal={int(sig)}", unit, check=True)
        return pid

    def host_pid(self, ns_pid: int) -> int:
        """Translate a PID inside the sandbox to the host's PID (for os.kill)."""
        if ns_pid <= 0:
            raise SandboxError(f"no such process in the sandbox: {ns_pid}")
        our_ns = str(Path(f"/proc/{self.init_pid}/ns/pid").readlink())
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if str((entry / "ns" / "pid").readlink()) != our_ns:
                    continue
                status = (entry / "status").read_text()
            except OSError:
                continue
            match = re.search(r"^NSpid:\s*(.*)$", status, re.MULTILINE)
            if match and int(match.group(1).split()[-1]) == ns_pid:
                return int(entry.name)
        raise SandboxError(f"no such process in the sandbox: {ns_pid}")

    def journal(self, unit: str, lines: int = 50) -> str:
        """The last ``lines`` journal lines of ``unit`` (stdout/stderr and manager messages)."""
        res = self.run(
            [
                "journalctl",
                "--no-pager",
                "--quiet",
                "-o",
                "short-precise",
                "-n",
                str(lines),
                f"_SYSTEMD_UNIT={unit}",
                "+",
                f"UNIT={unit}",
                "+",
                f"USER_UNIT={unit}",
            ]
        )
        return res.stdout

    def start_unprivileged_manager(self, uid: int = 65534) -> dict[str, str]:
        """Start a second user manager, as ``uid``, inside this (root, user-scope) sandbox.

        That is the manager an operator's ``install.sh --user`` meets: no
        CAP_SETPCAP, namespacing only through user namespaces. Its cgroup is
        delegated (chowned) as logind's user@UID.service would be. Returns the
        environment for ``run(..., user=uid, env=...)``, once it is "running".
        """
        if self.scope is not Scope.USER:
            raise SandboxError("an unprivileged manager needs a user-scope sandbox")
        runtime, home = f"/run/user/{uid}", f"/home/u{uid}"
        cgroups = " ".join(
            str(mount / self.cgroup_id / f"user-{uid}") for mount in _tracking_hierarchies()
        )
        env = {
            "XDG_RUNTIME_DIR": runtime,
            "HOME": home,
            "XDG_CONFIG_HOME": f"{home}/.config",
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus",
        }
        script = f"""set -e
mkdir -p {runtime} {home}/.config/systemd/user
chown -R {uid}:{uid} {runtime} {home}; chmod 700 {runtime}
for c in {cgroups}; do
    mkdir -p "$c"; chown -R {uid}:{uid} "$c"; echo $$ > "$c/cgroup.procs"
done
setsid setpriv --reuid {uid} --regid {uid} --clear-groups {SYSTEMD} --user \
    </dev/null >/dev/null 2>&1 &
"""
        self.run(["/bin/sh", "-c", script], env=env, check=True)
        deadline = time.monotonic() + DEFAULT_BOOT_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            res = self.run(["systemctl", "--user", "show", "-P", "SystemState"], env=env, user=uid)
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                return env
            time.sleep(_POLL)
        raise SandboxError(f"unprivileged user manager (uid {uid}) not running: {state!r}")

    def processes(self) -> list[int]:
        """Host PIDs of every process in the sandbox's PID namespace."""
        try:
            our_ns = str(Path(f"/proc/{self.init_pid}/ns/pid").readlink())
        except OSError:
            return []
        return _pids_in_ns(our_ns)


def as_user(user: int | str) -> list[str]:
    """argv prefix that drops to ``user`` (uid or name) with its primary group only."""
    import pwd

    try:
        entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        if isinstance(user, str):
            raise SandboxError(f"no such user {user!r}") from None
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
    return [
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--clear-groups",
        "--",
    ]


def _make_inaccessible_nodes(top: Path) -> None:
    """What PID 1 creates in /run/systemd/inaccessible: one mode-0 node per file type."""
    import socket

    top.mkdir(mode=0o755)
    (top / "dir").mkdir(mode=0)
    (top / "reg").touch(mode=0)
    os.mknod(top / "chr", 0o000 | 0o020000, os.makedev(0, 0))
    os.mknod(top / "blk", 0o000 | 0o060000, os.makedev(0, 0))
    os.mkfifo(top / "fifo", 0)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(top / "sock"))
    for name in ("dir", "reg", "chr", "blk", "fifo", "sock"):
        (top / name).chmod(0)


def _pids_in_ns(ns: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str((entry / "ns" / "pid").readlink()) == ns:
                    pids.append(int(entry.name))
    return pids


def _describe(state: object) -> str:
    if callable(state):
        return getattr(state, "__name__", "the predicate")
    if isinstance(state, str):
        return repr(state)
    return "one of " + ", ".join(sorted(map(repr, state)))  # type: ignore[call-overload]


def _base_env() -> dict[str, str]:
    """The caller's environment minus anything that points at another manager."""
    env = dict(os.environ)
    for var in (
        "DBUS_SESSION_BUS_ADDRESS",
        "DBUS_SYSTEM_BUS_ADDRESS",
        "XDG_RUNTIME_DIR",
        "SYSTEMD_PAGER",
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
    ):
        env.pop(var, None)
    env["SYSTEMD_PAGER"] = ""
    env["SYSTEMD_COLORS"] = "0"
    return env


def _tail(path: Path, limit: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return text[-limit:].replace("\n", " | ") or "(empty log)"


def _abort(
    launcher: subprocess.Popen[bytes], root: Path, cgroup_id: str, init_pid: int = 0
) -> None:
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
        time.sleep(_POLL)
    for mount, _ in _cgroup_mounts():
        _remove_cgroup_tree(mount / cgroup_id, deadline)
    shutil.rmtree(root, ignore_errors=True)


def _kill_cgroup_tree(cgroup_id: str) -> int:
    """SIGKILL every process in ``/CGROUP_ID`` of any hierarchy; returns how many."""
    hit = 0
    for mount, _ in _cgroup_mounts():
        for dirpath, _dirs, files in os.walk(mount / cgroup_id):
            if "cgroup.procs" not in files:
                continue
            with contextlib.suppress(OSError):
                for pid in Path(dirpath, "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                        hit += 1
    return hit


def start_user_sandbox(**kwargs: object) -> Sandbox:
    """Shorthand for ``Sandbox.start(Scope.USER, ...)``."""
    return Sandbox.start(Scope.USER, **kwargs)  # type: ignore[arg-type]


def start_system_sandbox(**kwargs: object) -> Sandbox:
    """Shorthand for ``Sandbox.start(Scope.SYSTEM, ...)``."""
    return Sandbox.start(Scope.SYSTEM, **kwargs)  # type: ignore[arg-type]


# --- probing hardening directives (the engine for `unitgen check --probe`) -----------

# [Service] keys that restrict a unit; removing one must never be needed to *run* it.
HARDENING_KEYS = frozenset(
    {
        "NoNewPrivileges",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateUsers",
        "PrivateNetwork",
        "PrivateIPC",
        "PrivateMounts",
        "ProtectHostname",
        "ProtectClock",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "RemoveIPC",
        "SystemCallArchitectures",
        "SystemCallFilter",
        "SystemCallErrorNumber",
        "UMask",
        "KeyringMode",
        "DevicePolicy",
        "DeviceAllow",
        "IPAddressDeny",
        "IPAddressAllow",
        "InaccessiblePaths",
        "ReadOnlyPaths",
        "TemporaryFileSystem",
        "DynamicUser",
    }
)


@dataclass(frozen=True)
class ProbeResult:
    """What starting one unit in a real manager showed."""

    unit: str
    started: bool
    status: str  # ExecMainStatus when it did not start ("226" = NAMESPACE, "218" = CAPABILITIES)
    culprits: tuple[str, ...]  # directive lines whose removal alone lets it start


def probe_units(
    units: Mapping[str, str],
    scope: Scope = Scope.USER,
    *,
    unprivileged: bool = False,
    timeout: float = 15.0,
) -> list[ProbeResult]:
    """Start each unit in a fresh sandbox; for each that fails, find the directives to blame.

    A unit that does not start is retried once per hardening directive with that
    one line removed (all variants at once, under other names); the lines whose
    removal makes it start are its culprits. ``unprivileged`` runs them under a
    non-root user manager (user scope only). Units must be plain (no templates).
    """
    results: list[ProbeResult] = []
    with Sandbox.start(scope) as sb:
        env: dict[str, str] = {}
        uid: int | None = None
        if unprivileged:
            uid = 65534
            env = sb.start_unprivileged_manager(uid)
        unit_dir = f"{env['XDG_CONFIG_HOME']}/systemd/user" if unprivileged else ""

        def install(name: str, text: str) -> None:
            if unprivileged:
                sb.run(["/bin/sh", "-c", f"cat > {unit_dir}/{name}"], input=text, user=uid)
            else:
                sb.install_units({name: text}, reload=False)

        def ctl(*args: str) -> subprocess.CompletedProcess[str]:
            if unprivileged:
                return sb.run(["systemctl", "--user", *args], env=env, user=uid)
            return sb.systemctl(*args)

        def outcome(name: str) -> tuple[bool, str]:
            deadline = time.monotonic() + timeout
            while True:
                res = ctl("show", "-p", "ActiveState", "-p", "ExecMainStatus", name)
                props = dict(line.split("=", 1) for line in res.stdout.split() if "=" in line)
                state, status = props.get("ActiveState", ""), props.get("ExecMainStatus", "0")
                if state == "active":
                    return True, "0"
                if state == "failed" or status != "0" or time.monotonic() > deadline:
                    return False, status
                time.sleep(_POLL)

        counter = iter(range(10**6))

        def trial(name: str, lines: list[str]) -> bool:
            vname = f"ugprobe{next(counter)}-{name}"
            install(vname, "\n".join(lines) + "\n")
            ctl("daemon-reload")
            ctl("start", "--no-block", vname)
            started = outcome(vname)[0]
            ctl("stop", "--no-block", vname)
            return started

        for name, text in units.items():
            install(name, text)
        ctl("daemon-reload")
        ctl("start", "--no-block", *units)
        for name, text in units.items():
            ok, status = outcome(name)
            culprits: tuple[str, ...] = ()
            if not ok:
                lines = text.splitlines()
                hardening = [
                    i
                    for i, line in enumerate(lines)
                    if line.split("=", 1)[0].strip() in HARDENING_KEYS
                ]

                def without(removed: set[int], lines: list[str] = lines) -> list[str]:
                    return [line for i, line in enumerate(lines) if i not in removed]

                removed = set(hardening)
                if trial(name, without(removed)):
                    # 1-minimal, in file order: put each directive back and keep it out
                    # only if the unit then fails. Directives interact (PrivateUsers=
                    # enables some and breaks others), so this is *a* sufficient set
                    # whose every member is needed given the rest, not the only one.
                    for i in hardening:
                        if trial(name, without(removed - {i})):
                            removed.discard(i)
                    culprits = tuple(lines[i].strip() for i in sorted(removed))
            results.append(ProbeResult(name, ok, status, culprits))
    return results
