"""Every error unitgen raises on purpose.

The hierarchy, one base class for the project and, beside it, the builtin
each error is closest to, so callers may catch either::

    UnitgenError                       base: the CLI catches this and only this
    ├── SpecError(ValueError)          the spec file is wrong; carries every problem at once
    ├── RenderError(RuntimeError)      templates or the output directory failed us
    ├── SystemdError(RuntimeError)     systemd / D-Bus said no, or could not be reached
    │   ├── BusConnectionLostError(ConnectionError)   the bus connection ended mid-call
    │   └── UnitNotFoundError(LookupError)   systemd does not know the unit
    ├── SandboxError(RuntimeError)     the disposable systemd could not be started
    ├── PolicyError(ValueError)        a rendered recovery policy file is unreadable
    ├── CleanupRefusedError(PermissionError)   cleanup saw something unsafe and stopped
    ├── AlertError(ConnectionError)    an alert could not be delivered (never fatal to recovery)
    ├── StateError(RuntimeError)       the SQLite history could not be used
    ├── LockBusyError(BlockingIOError) another recovery of the same unit is running
    ├── AccessDeniedError(PermissionError)  a D-Bus caller is not allowed to do this
    └── UsageError(ValueError)         the command line itself is wrong

``tests/test_errors.py`` holds this drawing to the classes: add a new error here.

Errors from libraries (requests, dbus-next, sqlite3, OSError) are translated
at the boundary with ``raise ... from exc`` so the cause survives for
debugging, while the message stays one line and carries no secret.

Every error has an ``exit_code``: 2 for bad input (the operator must fix
something), 1 for a failure at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class UnitgenError(Exception):
    """Base class of every error unitgen raises on purpose."""

    exit_code: int = 1


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a spec: where it is and what was expected."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class SpecError(ValueError, UnitgenError):
    """The spec is invalid. Holds every problem found, so all are reported at once."""

    exit_code = 2

    def __init__(self, problems: Iterable[SpecProblem]) -> None:
        self.problems: tuple[SpecProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid spec")


class RenderError(RuntimeError, UnitgenError):
    """Rendering or writing the output failed; nothing was half-written."""


class SystemdError(RuntimeError, UnitgenError):
    """systemd or the bus refused a call, or could not be reached."""


class BusConnectionLostError(ConnectionError, SystemdError):
    """The bus connection ended before the call was answered (or before it was made)."""


class UnitNotFoundError(LookupError, SystemdError):
    """systemd has no such unit (bad input from the operator)."""

    exit_code = 2


class SandboxError(RuntimeError, UnitgenError):
    """The disposable systemd (user manager or container) could not be started."""


class PolicyError(ValueError, UnitgenError):
    """A rendered recovery policy file is missing a field or is not valid JSON."""

    exit_code = 2


class CleanupRefusedError(PermissionError, UnitgenError):
    """Cleanup met a symlink, a foreign owner, a mount point or a swapped directory."""


class AlertError(ConnectionError, UnitgenError):
    """An alert could not be delivered. Recovery goes on regardless."""


class StateError(RuntimeError, UnitgenError):
    """The incident history could not be read or written."""


class LockBusyError(BlockingIOError, UnitgenError):
    """Another recovery of the same unit holds its lock."""


class AccessDeniedError(PermissionError, UnitgenError):
    """A D-Bus caller may not call this method."""


class UsageError(ValueError, UnitgenError):
    """The command line itself is wrong (bad flag value, missing file)."""

    exit_code = 2
