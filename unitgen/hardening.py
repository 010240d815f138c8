"""Hardening profiles as data: which sandboxing directives each profile sets.

A profile is an ordered tuple of :class:`Directive`. Each carries the oldest
systemd that understands it (older versions are rendered without it rather
than with a key systemd would warn about), whether it can work under a user
manager, and a note; the ones known to break real programs say how in
``breaks``. docs/hardening.md is generated from the same data by reading it,
so the two cannot drift apart in substance.

Escape hatches, per service in the spec:

* ``hardening.disable = ["MemoryDenyWriteExecute"]`` drops single directives
  (every line of that name, so ``SystemCallFilter`` drops both of its lines);
* ``hardening.read_write_paths = ["/srv/data"]`` adds ``ReadWritePaths=`` for a
  program that must write outside its State/Logs/Cache/RuntimeDirectory;
* ``hardening.capabilities = ["CAP_NET_BIND_SERVICE"]`` keeps only those
  capabilities (``CapabilityBoundingSet=``, set by the renderer over the profile's);
* ``hardening = "standard"`` (or ``minimal``/``off``) picks a milder profile.

Measured with ``systemd-analyze security --offline=yes`` (systemd 252) on a
``python3 -m http.server`` unit, system scope: strict 1.1 (with no user, User=
or DynamicUser=), standard 3.7-4.2, minimal 7.8-8.7, off 8.4-9.6; user scope:
strict 2.0 (docs/hardening.md).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from unitgen.model import HardeningProfile
from unitgen.paths import Scope

__all__ = [
    "EXPOSURE_CEILING",
    "PROFILES",
    "RECOVER_HARDENING",
    "Directive",
    "HardeningProfile",
    "directives_for",
    "filter_directives",
    "known_directive_names",
]


@dataclass(frozen=True)
class Directive:
    name: str
    value: str
    min_version: int
    note: str
    breaks: str = ""  # programs this is known to break, and what to do about it
    user_scope: bool = True  # False: left out of units for a user manager (see note)


# Why three directives are left out for a user manager: they work by bind-mounting
# systemd's "inaccessible" nodes (/run/systemd/inaccessible/{dir,reg,sock,...}) over
# /home, /proc/kcore, /proc/kmsg and friends. PID 1 creates those nodes at boot; a
# user manager without a system manager under it (our sandbox, containers) has none,
# and the unit dies with 226/NAMESPACE. Where they do exist, an unprivileged user
# manager still gains little: ProtectHome would hide the unit's own
# ~/.local/state/NAME, and /proc/sys and the kernel log are not writable by a user.
_USER_SCOPE_NOTE = "left out in user scope: needs /run/systemd/inaccessible from PID 1"

_STRICT: tuple[Directive, ...] = (
    Directive(
        "NoNewPrivileges", "yes", 187, "setuid binaries and file caps cannot raise privileges"
    ),
    Directive(
        "CapabilityBoundingSet",
        "",
        209,
        "no capabilities at all, even as root",
        breaks="daemons that bind ports below 1024 or change user themselves: disable it, "
        "or use a port above 1024",
    ),
    Directive("AmbientCapabilities", "", 229, "no inherited capabilities"),
    Directive(
        "ProtectSystem",
        "strict",
        232,
        "the whole file system is read-only except the unit's own directories",
        breaks="writes outside State/Logs/Cache/RuntimeDirectory: add read_write_paths",
    ),
    Directive(
        "ProtectHome",
        "yes",
        214,
        "/home, /root and /run/user are inaccessible. " + _USER_SCOPE_NOTE,
        breaks="programs with data in /home: disable it, or pick 'standard', where "
        "ProtectHome=read-only leaves /home readable",
        user_scope=False,
    ),
    Directive("PrivateTmp", "yes", 183, "a private /tmp and /var/tmp"),
    Directive("PrivateDevices", "yes", 209, "a minimal /dev without physical devices"),
    Directive(
        "PrivateUsers",
        "yes",
        232,
        "a user namespace mapping only root and the service user",
        breaks="services that chown to other users or need real capabilities on the host "
        "(setuid helpers, file servers): disable it",
    ),
    Directive("PrivateMounts", "yes", 239, "mounts do not propagate to or from the host"),
    Directive("ProtectHostname", "yes", 242, "cannot change the hostname"),
    Directive("ProtectClock", "yes", 245, "cannot set the clock"),
    Directive(
        "ProtectKernelTunables",
        "yes",
        232,
        "/proc/sys, /sys and friends are read-only. " + _USER_SCOPE_NOTE,
        user_scope=False,
    ),
    Directive("ProtectKernelModules", "yes", 232, "cannot load kernel modules"),
    Directive(
        "ProtectKernelLogs",
        "yes",
        244,
        "cannot read or write the kernel log. " + _USER_SCOPE_NOTE,
        user_scope=False,
    ),
    Directive("ProtectControlGroups", "yes", 232, "the cgroup tree is read-only"),
    Directive("ProtectProc", "invisible", 247, "other users' processes are invisible in /proc"),
    Directive(
        "ProcSubset",
        "pid",
        247,
        "/proc shows processes only, no /proc/cpuinfo, /proc/meminfo and the like",
        breaks="programs that read /proc/meminfo or /proc/cpuinfo (JVMs, some runtimes "
        "sizing their heap or thread pools): disable it",
    ),
    Directive(
        "RestrictAddressFamilies",
        "AF_UNIX AF_INET AF_INET6",
        211,
        "only local and IP sockets",
        breaks="programs that need netlink (interface lookups) or packet sockets: disable it",
    ),
    Directive("RestrictNamespaces", "yes", 233, "cannot create namespaces (containers)"),
    Directive("LockPersonality", "yes", 235, "cannot change the execution domain"),
    Directive(
        "MemoryDenyWriteExecute",
        "yes",
        231,
        "no memory that is both writable and executable",
        breaks="JIT compilers: Java, Node.js, PHP with opcache.jit, LuaJIT, PyPy: disable it",
    ),
    Directive("RestrictRealtime", "yes", 231, "no realtime scheduling"),
    Directive("RestrictSUIDSGID", "yes", 242, "cannot create setuid/setgid files"),
    Directive("RemoveIPC", "yes", 232, "System V / POSIX IPC objects are removed at stop"),
    Directive("SystemCallArchitectures", "native", 209, "no 32-bit compatibility syscalls"),
    Directive(
        "SystemCallFilter",
        "@system-service",
        231,
        "only the system calls ordinary services use",
        breaks="without SystemCallErrorNumber=EPERM a filtered call kills the process with "
        "SIGSYS; with it, the call fails and well-written programs carry on",
    ),
    Directive(
        "SystemCallFilter",
        "~@privileged @resources",
        231,
        "no privileged calls, no changing resource limits or priorities",
        breaks="programs that raise their own RLIMIT_NOFILE or nice level: set limits.nofile "
        "in the spec instead, or disable SystemCallFilter",
    ),
    Directive(
        "SystemCallErrorNumber", "EPERM", 209, "a filtered call fails with EPERM, not SIGSYS"
    ),
    Directive("UMask", "0077", 1, "new files are private to the service user"),
    Directive("KeyringMode", "private", 235, "a private kernel keyring"),
    Directive("DevicePolicy", "closed", 1, "only the standard pseudo devices"),
)

# standard: what most packaged daemons (nginx, redis, postgres) tolerate, including
# ones that start as root and drop privileges themselves, so capabilities stay.
_STANDARD_NAMES = (
    "NoNewPrivileges",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectHostname",
    "ProtectClock",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "RestrictNamespaces",
    "LockPersonality",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "SystemCallArchitectures",
)
_MINIMAL_NAMES = ("PrivateTmp", "ProtectKernelModules", "ProtectControlGroups")


def _pick(names: Iterable[str]) -> tuple[Directive, ...]:
    wanted = set(names)
    return tuple(d for d in _STRICT if d.name in wanted)


_STANDARD: tuple[Directive, ...] = (
    Directive(
        "ProtectSystem",
        "full",
        214,
        "/usr, /boot and /etc are read-only; /var and /run stay writable",
    ),
    Directive(
        "ProtectHome",
        "read-only",
        214,
        "/home, /root and /run/user are read-only. " + _USER_SCOPE_NOTE,
        user_scope=False,
    ),
    *_pick(_STANDARD_NAMES),
    Directive(
        "RestrictAddressFamilies",
        "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        211,
        "local, IP and netlink sockets",
    ),
    Directive(
        "SystemCallFilter",
        "@system-service",
        231,
        "only the system calls ordinary services use",
    ),
    Directive(
        "SystemCallErrorNumber", "EPERM", 209, "a filtered call fails with EPERM, not SIGSYS"
    ),
)

_MINIMAL: tuple[Directive, ...] = (
    Directive("ProtectSystem", "full", 214, "/usr, /boot and /etc are read-only"),
    *_pick(_MINIMAL_NAMES),
)

PROFILES: dict[HardeningProfile, tuple[Directive, ...]] = {
    "strict": _STRICT,
    "standard": _STANDARD,
    "minimal": _MINIMAL,
    "off": (),
}

# What `unitgen check` holds each profile to when no --max-exposure is given: the
# goal for strict, and for the milder ones a ceiling a little above what they score
# on a plain daemon (docs/hardening.md has the measurements). A user manager can't
# use three of strict's directives (see _USER_SCOPE_NOTE), which costs 0.9 points.
EXPOSURE_CEILING: dict[Scope, dict[HardeningProfile, float]] = {
    Scope.SYSTEM: {"strict": 1.5, "standard": 5.0, "minimal": 9.0, "off": 10.0},
    Scope.USER: {"strict": 2.0, "standard": 5.5, "minimal": 9.5, "off": 10.0},
}

# The recovery unit (unitgen-recover@.service) runs as root because it must ask the
# manager to restart units over the bus, run validate commands (`nginx -t`, which
# opens the daemon's logs), and delete stale pid files and temp files wherever the
# spec names them. So it keeps: root and its capabilities, a writable /var, /run,
# /tmp and /srv (ProtectSystem=full, no PrivateTmp: the stale files it removes live
# in the real /tmp), IP sockets (alerts, HTTP probes) and the bus socket. It loses
# everything a recovery never needs: kernel tunables, modules and logs, devices,
# namespaces, realtime, SUID creation, 32-bit syscalls, writable /usr, /boot, /etc.
RECOVER_HARDENING: tuple[Directive, ...] = (
    Directive("ProtectSystem", "full", 214, "/usr, /boot and /etc read-only"),
    Directive(
        "ProtectHome",
        "read-only",
        214,
        "/home readable (validate commands may read configs there). " + _USER_SCOPE_NOTE,
        user_scope=False,
    ),
    # The standard profile but for PrivateTmp (the stale files it removes live in the
    # real /tmp), plus the address-family allow-list.
    *_pick(
        (*(name for name in _STANDARD_NAMES if name != "PrivateTmp"), "RestrictAddressFamilies")
    ),
)

# Set by the renderer, not the profile: DynamicUser= when the spec names no user.
DYNAMIC_USER_NOTE = (
    "strict, system scope, no user and no dynamic_user in the spec: DynamicUser=yes, "
    "a throw-away UID per run (StateDirectory= keeps data across runs); "
    'disable with hardening.disable = ["DynamicUser"]'
)


INACCESSIBLE_DIR = "/run/systemd/inaccessible"


def needs_inaccessible_nodes() -> frozenset[str]:
    """Directives that bind-mount PID 1's inaccessible nodes (left out in user scope)."""
    return frozenset(d.name for d in _STRICT + _STANDARD + RECOVER_HARDENING if not d.user_scope)


def known_directive_names() -> frozenset[str]:
    """Every name ``hardening.disable`` may list."""
    names = {d.name for profile in PROFILES.values() for d in profile}
    names.add("DynamicUser")
    return frozenset(names)


def filter_directives(
    directives: Iterable[Directive],
    *,
    disable: Iterable[str] = (),
    scope: Scope = Scope.SYSTEM,
    systemd_version: int,
) -> tuple[tuple[str, str], ...]:
    """(name, value) pairs of ``directives`` for this scope and systemd version."""
    dropped = set(disable)
    return tuple(
        (d.name, d.value)
        for d in directives
        if d.name not in dropped
        and d.min_version <= systemd_version
        and (scope is Scope.SYSTEM or d.user_scope)
    )


def directives_for(
    profile: HardeningProfile,
    *,
    disable: Iterable[str] = (),
    scope: Scope = Scope.SYSTEM,
    systemd_version: int,
) -> tuple[tuple[str, str], ...]:
    """(name, value) pairs of ``profile`` for this scope and systemd version."""
    return _directives_cached(profile, frozenset(disable), scope, systemd_version)


@functools.lru_cache(maxsize=256)
def _directives_cached(
    profile: HardeningProfile, disable: frozenset[str], scope: Scope, systemd_version: int
) -> tuple[tuple[str, str], ...]:
    # A thousand services share a handful of (profile, disable) combinations.
    return filter_directives(
        PROFILES[profile], disable=disable, scope=scope, systemd_version=systemd_version
    )
