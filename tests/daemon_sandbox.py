"""The `unitgen watch` daemon installed as its real unit in a sandbox, either scope.

Shared by the tests that run the daemon as systemd runs it: rendered from
units/unitgen-watch.toml with the project's generator, next to generated units.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unitgen.paths import Scope
from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
UNITGEN = Path(sys.executable).with_name("unitgen")
DAEMON = "unitgen-watch.service"
BUS_POLICY = "org.unitgen.Recovery1.conf"


def install_daemon(
    sb: Sandbox,
    tmp_path: Path,
    units: Mapping[str, str] | None = None,
    *,
    specs: Mapping[str, str] | None = None,
    verbose: bool = True,
    watchdog: str | None = None,
) -> Path:
    """Render units/unitgen-watch.toml for this venv in ``sb``'s scope, and ``specs``
    (file name -> TOML) as generated units; install them with ``units`` (name -> text).

    In system scope the D-Bus policy install.sh installs goes in too, so the daemon
    may own org.unitgen.Recovery1. Returns the directory of rendered files.
    """
    system = sb.scope is Scope.SYSTEM
    spec = (REPO / "units" / "unitgen-watch.toml").read_text()
    spec = spec.replace("/usr/local/bin/unitgen", str(UNITGEN))
    if watchdog is not None:
        spec = spec.replace('watchdog = "30s"', f'watchdog = "{watchdog}"')
    if verbose:
        spec = spec.replace('"watch"]', '"watch", "--verbose"]')
    if system:
        # Only for this test machine: the venv's interpreter may live under /root
        # (pyenv), which ProtectHome=yes hides. Production Pythons live in /usr.
        spec = spec.replace('"DynamicUser",', '"DynamicUser",\n    "ProtectHome",')
        scope_args: list[str] = []
        # Rendered here, read in the container at /etc/unitgen/policy.d: written to a
        # directory of the test's, then moved to where the container sees that path
        # (never the host's /etc).
        policy_dir = str(tmp_path / "policy.d")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "UNITGEN_SCOPE": "system"}
    else:
        scope_args = ["--user"]
        policy_dir = sb.env["UNITGEN_POLICY_DIR"]
        env = {**sb.env, "PATH": "/usr/bin:/bin"}
    out = tmp_path / "rendered"
    for name, text in {"watch.toml": spec, **(specs or {})}.items():
        (tmp_path / name).write_text(text)
        res = subprocess.run(
            [
                str(UNITGEN),
                "render",
                str(tmp_path / name),
                *scope_args,
                "--out",
                str(out),
                "--policy-dir",
                policy_dir,
                "--unitgen-bin",
                str(UNITGEN),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert res.returncode == 0, res.stderr
    files = {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*")) if p.is_file()}
    if system:
        inside = "/etc/unitgen/policy.d"
        files = {name: text.replace(policy_dir, inside) for name, text in files.items()}
        target = sb.to_host(inside)
        target.mkdir(parents=True, exist_ok=True)
        for policy in Path(policy_dir).glob("*.json"):
            (target / policy.name).write_text(policy.read_text())
    files.update(units or {})
    sb.install_units(files)
    if system:
        sb.install_bus_policy(BUS_POLICY, (REPO / "units" / BUS_POLICY).read_text())
    return out


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


# The user sandbox's %t seen inside: the daemon's listening marker.
USER_LISTENING = "/run/user/0/unitgen-watch/listening"


# A spec's head sending every alert to one webhook whose URL is in ``{url_file}``
# (format with hook_url_file's path); the test's services follow it.
HOOK_SPEC = """
[defaults]
hardening = "off"
alerts = ["hook"]

[alert.hook]
type = "webhook"
url_file = "{url_file}"
timeout = "2s"
retries = 0
"""


def hook_url_file(tmp_path: Path, url: str) -> Path:
    """A webhook URL in a 0600 file, as a spec's `url_file` wants it."""
    url_file = tmp_path / "hook.url"
    url_file.write_text(url + "\n")
    url_file.chmod(0o600)
    return url_file


def start_listening(sb: Sandbox) -> None:
    """Start the installed daemon (user scope) and wait for its listening marker."""
    sb.systemctl("start", DAEMON, check=True)
    until(lambda: sb.run(["test", "-e", USER_LISTENING]).returncode == 0, 20, "listening")
