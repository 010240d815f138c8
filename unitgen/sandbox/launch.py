"""Booting a sandbox: the namespace init, the manager, and the wait for "running"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
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
from unitgen.sandbox.procs import comm, ns_children, start_time
from unitgen.sandbox.reap import abort, reap_stale, tracking_hierarchies


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


def start_user(
    *,
    share: Iterable[Path],
    journal: bool,
    boot_timeout: float,
    die_with_parent: bool,
    host_like: bool,
) -> Booted:
    reason = probe(Scope.USER)
    if reason:
        raise SandboxError(f"cannot start the user sandbox: {reason}")
    reap_stale()
    root = Path(tempfile.mkdtemp(prefix=CGROUP_PREFIX))
    cgroup_id = root.name
    try:
        (root / "owner").write_text(f"{os.getpid()} {start_time(os.getpid())}\n")
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
        init_script.write_text(_init_script("user.sh"))
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
            SYSTEMD,
            JOURNALD,
            *shared,
        ]
        launcher = _launch(argv, root, inside_env, die_with_parent=die_with_parent)
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise SandboxError(f"cannot start the user sandbox in {root}: {exc}") from exc

    deadline = time.monotonic() + boot_timeout
    init_pid = 0
    while not init_pid:
        kids = ns_children(launcher.pid)
        if kids:
            init_pid = kids[0]
            break
        if launcher.poll() is not None or time.monotonic() > deadline:
            abort(launcher, root, cgroup_id)
            raise SandboxError(f"user sandbox did not start: {_tail(root / 'init.log')}")
        time.sleep(0.002)
    booted = Booted(
        Scope.USER,
        root,
        env,
        bus,
        home / ".config" / "systemd" / "user",
        launcher,
        init_pid,
        cgroup_id,
        inside_env,
        tuple(Path(p) for p in shared),
    )
    try:
        booted.unit_dir.mkdir(parents=True, exist_ok=True)
        _wait_running(booted, deadline)
    except BaseException:
        abort(launcher, root, cgroup_id, init_pid)
        raise
    return booted


def start_system(*, share: Iterable[Path], boot_timeout: float, die_with_parent: bool) -> Booted:
    reason = probe(Scope.SYSTEM)
    if reason:
        raise SandboxError(f"cannot start the system sandbox: {reason}")
    reap_stale()
    root = Path(tempfile.mkdtemp(prefix=CGROUP_PREFIX))
    cgroup_id = root.name
    try:
        (root / "owner").write_text(f"{os.getpid()} {start_time(os.getpid())}\n")
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
        init_script.write_text(_init_script("system.sh"))
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
        for nspawn_pid in ns_children(launcher.pid):
            kids = ns_children(nspawn_pid)
            if kids and comm(kids[0]) == "systemd":
                init_pid = kids[0]
        if init_pid:
            break
        if launcher.poll() is not None or time.monotonic() > deadline:
            abort(launcher, root, cgroup_id)
            raise SandboxError(f"system sandbox did not boot: {_tail(root / 'init.log')}")
        time.sleep(0.005)
    booted = Booted(
        Scope.SYSTEM,
        root,
        env,
        bus,
        root / "system-units",
        launcher,
        init_pid,
        cgroup_id,
        {},
        tuple(Path(p) for p in shared),
    )
    try:
        _wait_running(booted, deadline)
    except BaseException:
        abort(launcher, root, cgroup_id, init_pid)
        raise
    return booted


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
