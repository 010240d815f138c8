"""The real ``systemd-analyze verify`` and ``security --offline=yes`` on rendered units.

``verify`` exits 0 on unknown keys and many other mistakes and only complains
on stderr, so every stderr line about one of our files or units is an error.
Lines about units we did not render (a vendor unit's own warnings, loaded as a
dependency) are kept apart as notes: they are not ours to fix.

The rendered directory is put first on the unit search path
(``SYSTEMD_UNIT_PATH=DIR:``, the trailing colon keeps the default path), so
``OnFailure=unitgen-recover@%n.service`` resolves to the recovery template
rendered beside the units, and a drop-in is verified together with the
vendor's unit it modifies.

``security`` prints an "Overall exposure level" from 0.0 to 10.0; its own
``--threshold`` takes 0 to 100 (ten times that), so we parse the figure and
compare it ourselves.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unitgen.errors import SystemdError
from unitgen.paths import Scope

__all__ = ["VerifyReport", "exposure", "verify"]

_TIMEOUT = 120.0
_EXPOSURE = re.compile(r"Overall exposure level for \S+:\s*([0-9]+(?:\.[0-9]+)?)")


@dataclass
class VerifyReport:
    errors: dict[str, list[str]] = field(default_factory=dict)  # unit -> stderr lines
    notes: list[str] = field(default_factory=list)  # lines about units not ours
    returncode: int = 0


def _run(argv: Sequence[str], directory: Path, scope: Scope) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["SYSTEMD_UNIT_PATH"] = f"{directory}:"
    env["SYSTEMD_COLORS"] = "0"
    env["SYSTEMD_PAGER"] = ""
    scope_args = ["--user"] if scope is Scope.USER else []
    with tempfile.TemporaryDirectory(prefix="unitgen-analyze-") as runtime:
        if scope is Scope.USER and not env.get("XDG_RUNTIME_DIR", "").startswith("/"):
            # A user-mode analyze needs a runtime dir to exist, even offline.
            env["XDG_RUNTIME_DIR"] = runtime
        try:
            return subprocess.run(
                ["systemd-analyze", *scope_args, *argv],
                env=env,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SystemdError(f"systemd-analyze {argv[0]} could not run: {exc}") from exc


def _target(directory: Path, name: str) -> str:
    """What to hand systemd-analyze: the file, or for a drop-in the unit it modifies."""
    if ".d/" in name:
        return name.split(".d/", 1)[0]
    return str(directory / name)


def _owner(line: str, directory: Path, names: Iterable[str]) -> str | None:
    for name in names:
        unit = name.split(".d/", 1)[0]
        if line.startswith((f"{directory}/{name}:", f"{directory}/{unit}", f"{unit}:")):
            return name
        # A drop-in for a unit that is not installed: verify names only the unit.
        if name != unit and line.startswith(f"Unit {unit} not found"):
            return name
        # A template is reported by the instance verify made of it (unitgen-recover@i).
        if "@." in unit:
            prefix = unit.split("@.", 1)[0] + "@"
            if line.startswith(prefix) or line.startswith(f"{directory}/{prefix}"):
                return name
    return None


def verify(directory: Path, names: Sequence[str], scope: Scope) -> VerifyReport:
    """Run ``systemd-analyze verify`` on the rendered files ``names`` under ``directory``."""
    res = _run(["verify", "--man=no", *(_target(directory, n) for n in names)], directory, scope)
    report = VerifyReport(returncode=res.returncode)
    for line in res.stderr.splitlines():
        if not line.strip():
            continue
        owner = _owner(line, directory, names)
        # The directory is check's temporary one: the file name is what the operator knows.
        line = line.replace(f"{directory}/", "")
        if owner is None:
            report.notes.append(line)
        else:
            report.errors.setdefault(owner, []).append(line)
    if res.returncode != 0 and not report.errors:
        # A failure we could not pin on a unit is still a failure.
        report.errors.setdefault("(verify)", []).extend(report.notes or [f"exit {res.returncode}"])
    return report


def exposure(directory: Path, name: str, scope: Scope) -> float:
    """The "Overall exposure level" of one rendered unit (or drop-in's unit)."""
    res = _run(["security", "--offline=yes", _target(directory, name)], directory, scope)
    match = _EXPOSURE.search(res.stdout)
    if match is None:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise SystemdError(
            f"systemd-analyze security {name}: no exposure level in its output"
            + (f" ({detail[-1][:120]})" if detail else "")
        )
    return float(match.group(1))
