"""Probing hardening directives: the engine behind `unitgen check --probe`.

Each unit is started in a real manager. For one that does not start, variants
without some of its hardening directives (``unitgen.hardening.known_directive_names``)
are started too, to name the directives to blame.

When a unit has started is systemd's to say, not ours to guess: a ``Type=simple``
unit is "active" as soon as the manager has forked its main process, before that
process has applied the unit's hardening and exec'd the binary, so a failure
there (226/NAMESPACE, 218/CAPABILITIES, 203/EXEC) follows a moment after
"active". The probe therefore runs simple units as ``Type=exec`` (a drop-in; the
unit file is untouched), which the manager reports started only once execve()
succeeded, and lets ``systemctl start`` wait for the start jobs to end: when it
returns, every outcome is settled.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import count

from unitgen.errors import SandboxError
from unitgen.hardening import known_directive_names
from unitgen.paths import Scope
from unitgen.sandbox.client import Sandbox

# The directives the probe may blame: every one unitgen renders.
HARDENING_KEYS = known_directive_names()

# Types the manager reports started at fork(), before the exec can fail.
_STARTED_AT_FORK = frozenset({"simple", "idle"})
EXEC_DROPIN = "unitgen-probe-exec.conf"
_EXEC_DROPIN_TEXT = "[Service]\nType=exec\n"
UNPRIVILEGED_UID = 65534


@dataclass(frozen=True)
class ProbeResult:
    """What starting one unit in a real manager showed."""

    unit: str
    started: bool
    status: str  # ExecMainStatus when it did not start ("226" = NAMESPACE, "218" = CAPABILITIES)
    culprits: tuple[str, ...]  # directive lines whose removal alone lets it start


class ProbeManager:
    """The manager units are probed in: the sandbox's own, or an unprivileged one in it."""

    def __init__(self, sb: Sandbox, *, unprivileged: bool = False) -> None:
        self._sb = sb
        self._uid: int | None = None
        self._env: dict[str, str] = {}
        self._unit_dir = ""
        if unprivileged:
            self._uid = UNPRIVILEGED_UID
            self._env = sb.start_unprivileged_manager(UNPRIVILEGED_UID)
            self._unit_dir = f"{self._env['XDG_CONFIG_HOME']}/systemd/user"

    def install(self, name: str, text: str) -> None:
        """Write unit file ``name`` (or ``NAME.d/FILE``); the caller reloads."""
        if self._uid is None:
            self._sb.install_units({name: text}, reload=False)
            return
        dest = f"{self._unit_dir}/{name}"
        script = f"mkdir -p {shlex.quote(dest.rsplit('/', 1)[0])} && cat > {shlex.quote(dest)}"
        self._sb.run(["/bin/sh", "-c", script], input=text, user=self._uid, check=True)

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        if self._uid is None:
            return self._sb.systemctl(*args, timeout=timeout)
        return self._sb.run(
            ["systemctl", "--user", *args], env=self._env, user=self._uid, timeout=timeout
        )

    def show(self, unit: str, *props: str) -> dict[str, str]:
        res = self.ctl("show", unit, "--property=" + ",".join(props))
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def starts_at_fork(self, unit: str) -> bool:
        """Whether the manager calls ``unit`` started before its exec (its Type, as loaded)."""
        return self.show(unit, "Type").get("Type", "") in _STARTED_AT_FORK

    def install_exec_dropin(self, unit: str) -> None:
        self.install(f"{unit}.d/{EXEC_DROPIN}", _EXEC_DROPIN_TEXT)


def settle(mgr: ProbeManager, units: Iterable[str], timeout: float) -> dict[str, tuple[bool, str]]:
    """Start ``units``; once their start jobs have ended, (started, ExecMainStatus) of each.

    ``systemctl start`` waits for the jobs (the manager's JobRemoved signals), so
    there is nothing to poll. A job still running after ``timeout`` leaves its
    unit activating, which counts as not started, like one no longer active by then.
    """
    names = list(units)
    # A timeout leaves the slow units activating, which the show below finds.
    with contextlib.suppress(SandboxError):
        mgr.ctl("start", *names, timeout=timeout)
    outcome: dict[str, tuple[bool, str]] = {}
    for name in names:
        props = mgr.show(name, "ActiveState", "ExecMainStatus")
        started = props.get("ActiveState") == "active"
        status = props.get("ExecMainStatus", "0")
        outcome[name] = (started, status)
    return outcome


def probe_units(
    units: Mapping[str, str],
    scope: Scope = Scope.USER,
    *,
    unprivileged: bool = False,
    timeout: float = 15.0,
) -> list[ProbeResult]:
    """Start each unit in a fresh sandbox; for each that fails, find the directives to blame.

    A unit that does not start is first started with all of its hardening
    directives removed; if that starts, each directive is put back in turn and
    kept out only if the unit then fails (variants run under other names). The
    lines kept out are its culprits. ``unprivileged`` runs them under a non-root
    user manager (user scope only). Units must be plain (no templates).
    """
    results: list[ProbeResult] = []
    known = known_directive_names()
    with Sandbox.start(scope) as sb:
        mgr = ProbeManager(sb, unprivileged=unprivileged)
        for name, text in units.items():
            mgr.install(name, text)
        mgr.ctl("daemon-reload")
        at_fork = {name for name in units if mgr.starts_at_fork(name)}
        for name in at_fork:
            mgr.install_exec_dropin(name)
        if at_fork:
            mgr.ctl("daemon-reload")
        outcomes = settle(mgr, units, timeout)
        counter = count()

        def trial(name: str, lines: list[str]) -> bool:
            vname = f"ugprobe{next(counter)}-{name}"
            mgr.install(vname, "\n".join(lines) + "\n")
            if name in at_fork:
                mgr.install_exec_dropin(vname)
            mgr.ctl("daemon-reload")
            started = settle(mgr, [vname], timeout)[vname][0]
            mgr.ctl("stop", "--no-block", vname)
            return started

        for name, text in units.items():
            ok, status = outcomes[name]
            culprits: tuple[str, ...] = ()
            if not ok:
                lines = text.splitlines()
                hardening = [
                    i for i, line in enumerate(lines) if line.split("=", 1)[0].strip() in known
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
