"""The host's handle on a running sandbox: run things inside, drive its manager.

:meth:`Sandbox.start` boots one (unitgen.sandbox.launch); everything else here is
what a test or a command does with it afterwards, until ``close()``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from unitgen.errors import SandboxError, UnitNotFoundError
from unitgen.paths import Scope
from unitgen.sandbox import launch
from unitgen.sandbox.layout import (
    DEFAULT_BOOT_TIMEOUT,
    INSIDE_HOME,
    INSIDE_RUNTIME,
    POLL,
    SYSTEMD,
    base_env,
)
from unitgen.sandbox.procs import comm, ns_children, pids_in_ns
from unitgen.sandbox.reap import abort, tracking_hierarchies

StatePredicate = Callable[[dict[str, str]], bool]


class Sandbox:
    """A running disposable systemd. Create with :meth:`start`; always ``close()``."""

    scope: Scope
    root: Path
    env: dict[str, str]
    bus_address: str
    unit_dir: Path

    def __init__(self, booted: launch.Booted) -> None:
        self.scope = booted.scope
        self.root = booted.root
        self.env = booted.env
        self.bus_address = booted.bus_address
        self.unit_dir = booted.unit_dir
        self._launcher = booted.launcher
        self.init_pid = booted.init_pid  # host PID of the namespace's PID 1
        self.cgroup_id = booted.cgroup_id
        self._closed = False
        self.shared = booted.shared  # host paths bound at the same path inside
        # What runs inside sees the manager's real runtime dir; env is for the host.
        self._inside_env = booted.inside_env
        namespaces = ["--mount", "--pid"]
        if self.scope is Scope.SYSTEM:
            namespaces = ["--mount", "--uts", "--ipc", "--net", "--pid"]
        self._nsenter = ["nsenter", f"--target={self.init_pid}", *namespaces]

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
        host_var: bool = False,
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
        ``host_var`` (system scope): the container's /var is the host's, overlaid
        so that what the container writes lands in ``root`` (installed daemons find
        their state and log directories; the host's /var is never written).
        """
        booted = launch.boot(
            scope,
            share=share,
            journal=journal,
            boot_timeout=boot_timeout,
            die_with_parent=die_with_parent,
            host_like=host_like,
            host_var=host_var,
        )
        return cls(booted)

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
                    if not any(comm(p) == "systemd" for p in ns_children(self.init_pid)):
                        break
                    time.sleep(POLL)
        self._closed = True
        abort(self._launcher, self.root, self.cgroup_id, self.init_pid)

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
        full_env = {**base_env(), **self._inside_env, **(env or {})}
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
            time.sleep(POLL)

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
            str(mount / self.cgroup_id / f"user-{uid}") for mount in tracking_hierarchies()
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
            time.sleep(POLL)
        raise SandboxError(f"unprivileged user manager (uid {uid}) not running: {state!r}")

    def processes(self) -> list[int]:
        """Host PIDs of every process in the sandbox's PID namespace."""
        try:
            our_ns = str(Path(f"/proc/{self.init_pid}/ns/pid").readlink())
        except OSError:
            return []
        return pids_in_ns(our_ns)


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


def _describe(state: object) -> str:
    if callable(state):
        return getattr(state, "__name__", "the predicate")
    if isinstance(state, str):
        return repr(state)
    return "one of " + ", ".join(sorted(map(repr, state)))  # type: ignore[call-overload]


def start_user_sandbox(**kwargs: object) -> Sandbox:
    """Shorthand for ``Sandbox.start(Scope.USER, ...)``."""
    return Sandbox.start(Scope.USER, **kwargs)  # type: ignore[arg-type]


def start_system_sandbox(**kwargs: object) -> Sandbox:
    """Shorthand for ``Sandbox.start(Scope.SYSTEM, ...)``."""
    return Sandbox.start(Scope.SYSTEM, **kwargs)  # type: ignore[arg-type]
