"""Imported Debian units behave like the vendor's: same daemon, same settings, serving.

In the booted container over the host's /usr, /etc and /var (overlaid), the
rendered unit replaces the vendor's (/etc/systemd/system wins over /lib) and
goes through what ``unitgen harden`` asks of a unit: start, stay up, pass the
probe, survive its ExecReload= and pass again. The properties the import
carries must read the same from systemd for both.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from sandboxlib import unavailable

from unitgen import systemd_version
from unitgen.harden import Bench, HardenOptions, parse_probe
from unitgen.importunits import import_unit, to_toml
from unitgen.paths import Scope
from unitgen.render import RenderOptions, render
from unitgen.sandbox import Sandbox, probe
from unitgen.specfile import parse_spec

pytestmark = [pytest.mark.sandbox, pytest.mark.system]

CASES = {
    "nginx.service": "http://127.0.0.1/",
    "redis-server.service": "cmd /usr/bin/redis-cli -h 127.0.0.1 ping",
}
# What the import carries, as systemd reads it back.
SAME = (
    "Type",
    "User",
    "Group",
    "PIDFile",
    "Restart",
    "LimitNOFILE",
    "RuntimeDirectory",
    "ProtectSystem",
    "ProtectHome",
    "PrivateUsers",
    "PrivateTmp",
    "CapabilityBoundingSet",
    "NoNewPrivileges",
    "MemoryDenyWriteExecute",
    "RestrictAddressFamilies",
    "SystemCallFilter",
    "ReadWritePaths",
    "WantedBy",
)


def _argv(exec_property: str) -> str:
    return exec_property.split("argv[]=", 1)[1].split(" ;", 1)[0] if exec_property else ""


def _run(unit: str, probe_arg: str, unit_dir: Path | None) -> dict[str, str]:
    with Sandbox.start(Scope.SYSTEM, host_var=True) as sb:
        bench = Bench(sb, unit, parse_probe(probe_arg), HardenOptions())
        bench.load(unit_dir or Path("/nonexistent"))
        verdict = bench.judge(time.time(), probe_window=15.0)
        assert verdict.ok, verdict.reason
        props = sb.show(unit, *SAME, "ExecStart", "ExecReload", "FragmentPath")
        sb.systemctl("stop", unit)
        return props


@pytest.mark.parametrize("unit", sorted(CASES))
def test_imported_unit_serves_like_the_vendors(unit: str, tmp_path: Path) -> None:
    reason = probe(Scope.SYSTEM)
    if reason:
        unavailable(reason)
    vendor = Path("/lib/systemd/system") / unit
    if not vendor.exists():
        unavailable(f"{unit} is not installed (install.sh installs it)")
    spec = parse_spec(to_toml([import_unit(vendor)]), "imported.toml")
    options = dataclasses.replace(
        RenderOptions(systemd_version=systemd_version.resolve(None)),
        policy_dir=tmp_path / "policy",
    )
    rendered = tmp_path / "units"
    rendered.mkdir()
    for name, text in render(spec, options).items():
        (rendered / name).write_text(text)
    before = _run(unit, CASES[unit], None)
    after = _run(unit, CASES[unit], rendered)
    assert before["FragmentPath"] == str(vendor)
    assert after["FragmentPath"] == f"/etc/systemd/system/{unit}"
    for key in SAME:
        if key == "ReadWritePaths":
            # The '-' (ignore if missing) is listed as not carried; the paths are.
            vendor_paths = [w.removeprefix("-") for w in before[key].split()]
            assert after[key].split() == vendor_paths
            continue
        assert after[key] == before[key], key
    assert _argv(after["ExecStart"]) == _argv(before["ExecStart"])
    assert _argv(after.get("ExecReload", "")) == _argv(before.get("ExecReload", ""))


def test_timesyncd_runs_where_its_lost_condition_would_have_skipped_it(tmp_path: Path) -> None:
    """The difference an import cannot avoid, shown rather than hidden.

    Debian's systemd-timesyncd.service has ConditionVirtualization=!container, so in
    the container the vendor's unit is skipped. The spec has no conditions: the
    import lists that line, and the rendered unit really runs there (Type=notify,
    its watchdog, User=systemd-timesync, CAP_SYS_TIME bounding set).
    """
    reason = probe(Scope.SYSTEM)
    if reason:
        unavailable(reason)
    unit = "systemd-timesyncd.service"
    vendor = Path("/lib/systemd/system") / unit
    imported = import_unit(vendor)
    assert any(u.line == "Unit: ConditionVirtualization=!container" for u in imported.unrepresented)
    spec = parse_spec(to_toml([imported]), "imported.toml")
    options = dataclasses.replace(
        RenderOptions(systemd_version=systemd_version.resolve(None)),
        policy_dir=tmp_path / "policy",
    )
    rendered = tmp_path / "units"
    rendered.mkdir()
    for name, text in render(spec, options).items():
        (rendered / name).write_text(text)
    for unit_dir, active, condition in ((None, "inactive", "no"), (rendered, "active", "yes")):
        with Sandbox.start(Scope.SYSTEM, host_var=True) as sb:
            bench = Bench(sb, unit, None, HardenOptions(settle=1.0))
            bench.load(unit_dir or Path("/nonexistent"))
            bench.judge(time.time(), probe_window=1.0)
            props = sb.show(unit, "ActiveState", "ConditionResult", "User")
            assert props == {
                "ActiveState": active,
                "ConditionResult": condition,
                "User": "systemd-timesync",
            }
