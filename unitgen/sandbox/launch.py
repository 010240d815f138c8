"""Booting a sandbox: the namespace init, the manager, and the wait for "running"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from unitgen.errors import SandboxError
from unitgen.paths import Scope
from unitgen.sandbox.layout import (
    CGROUP_PREFIX,
    INSIDE_HOME,
    INSIDE_RUNTIME,
    JOURNALD,
    POLL,
    SYSTEMD,
    USER_BUS_SOCKET_UNIT,
    base_env,
)
from unitgen.sandbox.procs import comm, ns_children
from unitgen.sandbox.reap import abort, reap_stale, record_owner, tracking_hierarchies


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
    if not tracking_hierarchies():
        return "no systemd-usable cgroup hierarchy is mounted under /sys/fs/cgroup"
    return None


def _launch(
    argv: list[str], root: Path, env: Mapping[str, str], *, die_with_parent: bool
) -> subprocess.Popen[bytes]:
    """Start the namespace init with its output in ``root/init.log``."""
    if die_with_parent:
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
    child_env = {
        **base_env(),
        **env,
        "UNITGEN_SANDBOX_CGROUPS": " ".join(str(p) for p in tracking_hierarchies()),
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


def _tail(path: Path, limit: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return text[-limit:].replace("\n", " | ") or "(empty log)"


@dataclass(frozen=True)
class Booted:
    """A sandbox whose manager reports "running": what :class:`Sandbox` wraps."""

    scope: Scope
    root: Path
    env: dict[str, str]
    bus_address: str
    unit_dir: Path
    launcher: subprocess.Popen[bytes]
    init_pid: int  # host PID of the namespace's PID 1
    cgroup_id: str
    inside_env: dict[str, str]
    shared: tuple[Path, ...]  # host paths bound at the same path inside


def _init_script(name: str) -> str:
    """The text of ``init/NAME``, shipped as package data next to this module."""
    return resources.files("unitgen.sandbox").joinpath("init", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class _Plan:
    """What one scope prepared in ROOT, and how its namespace init is started."""

    env: dict[str, str]
    inside_env: dict[str, str]
    bus_address: str
    unit_dir: Path
    unshare: tuple[str, ...]  # the namespaces unshare makes
    script: str  # init/NAME, run by /bin/sh inside them
    script_args: tuple[str, ...]
    shared: tuple[Path, ...]
    find_init: Callable[[int], int]  # launcher PID -> host PID of PID 1, or 0 while none


def boot(
    scope: Scope,
    *,
    share: Iterable[Path],
    journal: bool,
    boot_timeout: float,
    die_with_parent: bool,
    host_like: bool,
    host_var: bool = False,
) -> Booted:
    """Start a sandbox of ``scope`` and wait until its manager reports "running".

    The one boot path of both kinds; what differs (the files in ROOT, the
    namespaces, the init script, where PID 1 appears) is the scope's _Plan.
    Whatever fails after ROOT exists removes everything again.
    """
    what = f"{scope.value} sandbox"
    reason = probe(scope)
    if reason:
        raise SandboxError(f"cannot start the {what}: {reason}")
    reap_stale()
    root = Path(tempfile.mkdtemp(prefix=CGROUP_PREFIX))
    cgroup_id = root.name
    try:
        record_owner(root)
        shared = [str(Path(p).resolve()) for p in share]
        if scope is Scope.SYSTEM:
            plan = _plan_system(root, cgroup_id, shared, host_var=host_var)
        else:
            plan = _plan_user(root, cgroup_id, shared, journal=journal, host_like=host_like)
        init_script = root / "init.sh"
        init_script.write_text(_init_script(plan.script))
        argv = [
            "unshare",
            *plan.unshare,
            "--kill-child=SIGKILL",
            "--",
            "/bin/sh",
            str(init_script),
            *plan.script_args,
        ]
        launcher = _launch(argv, root, plan.inside_env, die_with_parent=die_with_parent)
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise SandboxError(f"cannot start the {what} in {root}: {exc}") from exc

    deadline = time.monotonic() + boot_timeout
    init_pid = 0
    while not init_pid:
        init_pid = plan.find_init(launcher.pid)
        if init_pid:
            break
        if launcher.poll() is not None or time.monotonic() > deadline:
            abort(launcher, root, cgroup_id)
            raise SandboxError(f"{what} did not start: {_tail(root / 'init.log')}")
        time.sleep(0.002)
    booted = Booted(
        scope,
        root,
        plan.env,
        plan.bus_address,
        plan.unit_dir,
        launcher,
        init_pid,
        cgroup_id,
        plan.inside_env,
        plan.shared,
    )
    try:
        booted.unit_dir.mkdir(parents=True, exist_ok=True)
        _wait_running(booted, deadline)
    except BaseException:
        abort(launcher, root, cgroup_id, init_pid)
        raise
    return booted


def _plan_user(
    root: Path, cgroup_id: str, shared: list[str], *, journal: bool, host_like: bool
) -> _Plan:
    """A user manager as PID 1's child in a private mount and PID namespace (init/user.sh)."""
    runtime = root / "run"
    home = root / "home"
    for sub in ("run", "home", "tmp", "var-tmp"):
        (root / sub).mkdir(mode=0o700)
    for sub in (".config", ".local/state", ".local/share", ".cache"):
        (home / sub).mkdir(mode=0o700, parents=True)
    (root / "tmp").chmod(0o1777)
    (root / "var-tmp").chmod(0o1777)
    # Host-side clients get a runtime dir holding only the bus: the manager
    # refuses private-socket peers from outside its PID namespace (their PID
    # does not map, so getpeercred() says ENODATA), and systemctl, finding
    # $XDG_RUNTIME_DIR/systemd/private, would try it and fail at random.
    client_runtime = root / "client-run"
    client_runtime.mkdir(mode=0o700)
    (client_runtime / "bus").symlink_to(runtime / "bus")
    if host_like:
        _make_inaccessible_nodes(root / "inaccessible")
    # The private /tmp and /var/tmp would hide the interpreter or the work tree
    # of an editable install living there (a CI clone under /tmp, say).
    for code in _code_roots():
        hidden = any(Path(code).is_relative_to(t) for t in ("/tmp", "/var/tmp"))
        if hidden and not any(Path(code).is_relative_to(p) for p in shared):
            shared.append(code)

    def first_child(launcher_pid: int) -> int:
        # unshare --fork -> the init script, PID 1 of the new namespace
        kids = ns_children(launcher_pid)
        return kids[0] if kids else 0

    return _Plan(
        env={**_user_env(str(home), str(runtime)), "XDG_RUNTIME_DIR": str(client_runtime)},
        inside_env=_user_env(INSIDE_HOME, INSIDE_RUNTIME),
        bus_address=f"unix:path={runtime}/bus",
        unit_dir=home / ".config" / "systemd" / "user",
        unshare=("--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private"),
        script="user.sh",
        script_args=(
            str(root),
            cgroup_id,
            "1" if journal else "0",
            SYSTEMD,
            JOURNALD,
            *shared,
        ),
        shared=tuple(Path(p) for p in shared),
        find_init=first_child,
    )


def _user_env(home: str, runtime: str) -> dict[str, str]:
    """A user session's environment, for HOME and XDG_RUNTIME_DIR as seen by its reader."""
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


def _plan_system(root: Path, cgroup_id: str, shared: list[str], *, host_var: bool = False) -> _Plan:
    """A booted systemd-nspawn container over the host's /usr (init/system.sh)."""
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
        *_host_var(root, host_var),
        *binds,
        "--setenv=SYSTEMD_LOG_LEVEL=info",
        "-b",
    ]

    def container_systemd(launcher_pid: int) -> int:
        # unshare -> (sh exec'd into) nspawn -> the container's systemd; nspawn
        # forks helpers first, so only a child named systemd is PID 1.
        for nspawn_pid in ns_children(launcher_pid):
            kids = ns_children(nspawn_pid)
            if kids and comm(kids[0]) == "systemd":
                return kids[0]
        return 0

    return _Plan(
        env={
            "DBUS_SYSTEM_BUS_ADDRESS": bus,
            "UNITGEN_SCOPE": "system",
            "UNITGEN_STATE_DIR": str(skel / "var" / "lib" / "unitgen"),
            "UNITGEN_RUN_DIR": str(root / "run-unitgen"),
            "UNITGEN_POLICY_DIR": str(root / "etc-unitgen" / "policy.d"),
        },
        inside_env={},
        bus_address=bus,
        unit_dir=root / "system-units",
        unshare=("--mount", "--propagation", "private"),
        script="system.sh",
        script_args=(cgroup_id, *nspawn),
        shared=tuple(Path(p) for p in shared),
        find_init=container_systemd,
    )


def _host_var(root: Path, wanted: bool) -> list[str]:
    """nspawn arguments that make the host's /var the container's, writes kept in ROOT."""
    if not wanted:
        return []
    upper = root / "var-upper"
    upper.mkdir()
    # The journal would otherwise copy the host's journal files up at its first write.
    return [f"--overlay=/var:{upper}:/var", "--tmpfs=/var/log/journal"]


def _wait_running(booted: Booted, deadline: float) -> None:
    # Over the bus, not the private socket: the manager refuses private-socket
    # peers from another PID namespace, and the bus is what clients will use.
    # systemd1 appears on the socket-activated bus only after dbus.service is up.
    bus_socket = Path(booted.bus_address.removeprefix("unix:path="))
    last = ""
    while time.monotonic() < deadline:
        if booted.launcher.poll() is not None:
            raise SandboxError(f"sandbox exited while booting: {_tail(booted.root / 'init.log')}")
        if bus_socket.exists():
            last = _system_state(booted.bus_address)
            if last in ("running", "degraded"):
                return
        time.sleep(POLL)
    raise SandboxError(
        f"{booted.scope.value} manager not running after boot timeout (last state: {last!r})"
    )


def _system_state(bus_address: str) -> str:
    res = subprocess.run(
        [
            "busctl",
            f"--address={bus_address}",
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
