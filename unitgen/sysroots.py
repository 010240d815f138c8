"""The system directories cleanup never empties: one list for the spec check and the ladder.

``cleanup.temp`` and ``disk.cleanup`` name directories whose old files the
recovery ladder deletes as root. The directories below hold the operating
system or are shared by every program, so deleting "old files" there breaks
the machine rather than freeing a service's space. Only these exact
directories are refused: ``/var/tmp/api`` is fine, ``/var/tmp`` is not.
The spec check (unitgen/specvalues.py) refuses them at ``check``/``render``
time, and handlers/cleanup.py refuses them again when a policy reaches the
ladder, so a policy written by hand or by an older unitgen is covered too.
"""

from __future__ import annotations

import os

__all__ = ["SYSTEM_ROOTS", "is_system_root", "normalized"]

SYSTEM_ROOTS = frozenset(
    {
        "/",
        # The top level of the file system hierarchy (hier(7), file-hierarchy(7)).
        "/bin",
        "/boot",
        "/dev",
        "/efi",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        # Their system-wide subdirectories: every service's data sits below these.
        "/usr/bin",
        "/usr/include",
        "/usr/lib",
        "/usr/lib32",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/libx32",
        "/usr/local",
        "/usr/sbin",
        "/usr/share",
        "/usr/src",
        "/var/backups",
        "/var/cache",
        "/var/lib",
        "/var/local",
        "/var/lock",
        "/var/log",
        "/var/mail",
        "/var/opt",
        "/var/run",
        "/var/spool",
        "/var/tmp",
        "/run/user",
        "/run/lock",
    }
)


def normalized(path: str) -> str:
    """``path`` with '.', empty components and (lexically) '..' removed, as cleanup opens it."""
    return "/" + "/".join(c for c in os.path.normpath(path).split("/") if c)


def is_system_root(path: str) -> bool:
    """Whether the absolute ``path`` is one of :data:`SYSTEM_ROOTS` (after normalizing)."""
    return normalized(path) in SYSTEM_ROOTS
