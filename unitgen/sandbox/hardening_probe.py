"""Probing hardening directives: the engine behind `unitgen check --probe`."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from unitgen.paths import Scope
from unitgen.sandbox.client import Sandbox
from unitgen.sandbox.layout import POLL

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
                time.sleep(POLL)

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
