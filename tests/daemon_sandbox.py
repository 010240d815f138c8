"""The `unitgen watch` daemon as the real system-scope unit in a booted container.

Shared by the tests that attack it from outside (flood, bus restart).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
UNITGEN = Path(sys.executable).with_name("unitgen")
DAEMON = "unitgen-watch.service"
BUS_POLICY = "org.unitgen.Recovery1.conf"


def install_system_daemon(sb: Sandbox, tmp_path: Path, units: dict[str, str]) -> None:
    """Render units/unitgen-watch.toml for this venv, install it with ``units`` and the policy."""
    spec = (REPO / "units" / "unitgen-watch.toml").read_text()
    spec = spec.replace("/usr/local/bin/unitgen", str(UNITGEN))
    spec = spec.replace('"watch"]', '"watch", "--verbose"]')
    # Only for this test machine: the venv's interpreter may live under /root
    # (pyenv), which ProtectHome=yes hides. Production Pythons live in /usr.
    spec = spec.replace('"DynamicUser",', '"DynamicUser",\n    "ProtectHome",')
    (tmp_path / "watch.toml").write_text(spec)
    out = tmp_path / "rendered"
    res = subprocess.run(
        [
            str(UNITGEN),
            "render",
            str(tmp_path / "watch.toml"),
            "--out",
            str(out),
            "--policy-dir",
            "/etc/unitgen/policy.d",
            "--unitgen-bin",
            str(UNITGEN),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "UNITGEN_SCOPE": "system"},
        check=False,
    )
    assert res.returncode == 0, res.stderr
    files = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    files.update(units)
    sb.install_units(files)
    sb.install_bus_policy(BUS_POLICY, (REPO / "units" / BUS_POLICY).read_text())


def write_policy(sb: Sandbox, unit: str, **recovery: Any) -> None:
    policy_dir = Path(sb.env["UNITGEN_POLICY_DIR"])
    policy_dir.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {"unit": unit, "version": 1}
    if recovery:
        body["recovery"] = recovery
    (policy_dir / f"{unit}.json").write_text(json.dumps(body))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s")
        time.sleep(0.02)


def history(sb: Sandbox, unit: str) -> list[dict[str, Any]]:
    """``unitgen history --json UNIT`` against the sandbox's state directory."""
    res = subprocess.run(
        [str(UNITGEN), "history", "--json", unit],
        capture_output=True,
        text=True,
        env={**sb.env, "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    return list(data) if isinstance(data, list) else list(data.get("incidents", []))
