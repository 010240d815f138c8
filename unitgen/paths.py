"""Where unitgen keeps things, for the system manager and for a user manager.

One place decides every path, so the OnFailure= unit, the listener and the CLI
always agree on the state database, the lock directory and the policy files.
Each path can be moved with an environment variable, which is how the rendered
recovery unit and the test sandboxes point the handler at private copies.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path


class Scope(enum.Enum):
    """Which systemd manager unitgen talks to."""

    SYSTEM = "system"
    USER = "user"


def detect_scope(user: bool | None = None) -> Scope:
    """``--user`` wins; then ``UNITGEN_SCOPE``; then root means system."""
    if user is not None:
        return Scope.USER if user else Scope.SYSTEM
    env = os.environ.get("UNITGEN_SCOPE", "")
    if env in ("user", "system"):
        return Scope(env)
    return Scope.SYSTEM if os.geteuid() == 0 else Scope.USER


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    # The XDG spec says relative values are invalid and must be ignored.
    if value and Path(value).is_absolute():
        return Path(value)
    return Path.home() / fallback


def _runtime_dir() -> Path:
    value = os.environ.get("XDG_RUNTIME_DIR")
    if value and Path(value).is_absolute():
        return Path(value)
    return Path(f"/run/user/{os.geteuid()}")


# The listener daemon's own RuntimeDirectory= (units/unitgen-watch.toml) and the marker
# it keeps there while it follows systemd. The recovery unit is skipped by
# ConditionPathExists=!%t/LISTENING_DIR/LISTENING_MARKER (docs/listener.md,
# "OnFailure= while the daemon is up"), so both sides take the names from here.
LISTENING_DIR = "unitgen-watch"
LISTENING_MARKER = "listening"


def listening_marker(scope: Scope) -> Path:
    """Where the daemon keeps its marker: systemd's %t of the scope, then the two names."""
    root = Path("/run") if scope is Scope.SYSTEM else _runtime_dir()
    return root / LISTENING_DIR / LISTENING_MARKER


@dataclass(frozen=True)
class Paths:
    """The directories of one scope."""

    scope: Scope
    policy_dir: Path  # rendered recovery policies, one JSON file per unit
    state_dir: Path  # SQLite history
    run_dir: Path  # locks and other volatile state; root-only in system scope
    unit_dir: Path  # where install.sh puts unit files

    @property
    def lock_dir(self) -> Path:
        return self.run_dir / "locks"

    @property
    def database(self) -> Path:
        return self.state_dir / "history.sqlite3"


def paths_for(scope: Scope) -> Paths:
    if scope is Scope.SYSTEM:
        policy = Path("/etc/unitgen/policy.d")
        state = Path("/var/lib/unitgen")
        run = Path("/run/unitgen")
        units = Path("/etc/systemd/system")
    else:
        config = _xdg("XDG_CONFIG_HOME", ".config")
        policy = config / "unitgen" / "policy.d"
        state = _xdg("XDG_STATE_HOME", ".local/state") / "unitgen"
        run = _runtime_dir() / "unitgen"
        units = config / "systemd" / "user"
    return Paths(
        scope=scope,
        policy_dir=Path(os.environ.get("UNITGEN_POLICY_DIR") or policy),
        state_dir=Path(os.environ.get("UNITGEN_STATE_DIR") or state),
        run_dir=Path(os.environ.get("UNITGEN_RUN_DIR") or run),
        unit_dir=units,
    )
