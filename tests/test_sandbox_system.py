"""The booted nspawn sandbox: a real PID 1 and system bus, reachable from the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sandboxlib

from unitgen.paths import Scope
from unitgen.sandbox import CGROUP_PREFIX, Sandbox, as_user


def _busctl(sb: Sandbox, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = as_user(user) if user else []
    return subprocess.run(
        [*prefix, "busctl", f"--address={sb.bus_address}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_booted_container_has_systemd_as_pid1(system_sandbox: Sandbox) -> None:
    assert system_sandbox.run(["cat", "/proc/1/comm"], check=True).stdout.strip() == "systemd"
    state = system_sandbox.systemctl("is-system-running").stdout.strip()
    assert state in ("running", "degraded")
    assert system_sandbox.env["UNITGEN_SCOPE"] == "system"
    assert Path(system_sandbox.env["DBUS_SYSTEM_BUS_ADDRESS"].split("=", 1)[1]).is_socket()


def test_dynamic_user_unit_runs_unprivileged(system_sandbox: Sandbox) -> None:
    system_sandbox.install_units(
        {
            "ug-t-dyn.service": "[Service]\nDynamicUser=yes\nExecStart=/bin/sleep 600\n",
        }
    )
    system_sandbox.systemctl("start", "ug-t-dyn.service", check=True)
    system_sandbox.wait_for("ug-t-dyn.service", "active")
    pid = system_sandbox.main_pid("ug-t-dyn.service")
    status = system_sandbox.run(["cat", f"/proc/{pid}/status"], check=True).stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid_line.split()[1]) >= 61184  # systemd's DynamicUser= range
    host = system_sandbox.host_pid(pid)
    assert Path(f"/proc/{host}/cmdline").read_bytes().startswith(b"/bin/sleep")
    system_sandbox.systemctl("stop", "ug-t-dyn.service", check=True)


def test_bus_from_host_as_root_and_as_nobody(system_sandbox: Sandbox) -> None:
    prop = ["get-property", "org.freedesktop.systemd1", "/org/freedesktop/systemd1"]
    prop += ["org.freedesktop.systemd1.Manager", "Version"]
    as_root = _busctl(system_sandbox, *prop)
    as_nobody = _busctl(system_sandbox, *prop, user="nobody")
    assert as_root.returncode == 0 and as_root.stdout.startswith('s "'), as_root.stderr
    assert as_nobody.returncode == 0, as_nobody.stderr
    # Without polkit, only root may start units: the non-root caller is refused.
    start = ["call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1"]
    start += ["org.freedesktop.systemd1.Manager", "StartUnit", "ss", "ug-none.service", "replace"]
    refused = _busctl(system_sandbox, *start, user="nobody")
    assert refused.returncode != 0
    assert "denied" in refused.stderr.lower() or "interactive" in refused.stderr.lower()


@pytest.mark.asyncio
async def test_bus_fixture_reaches_system_bus(system_sandbox: Sandbox, sandbox_bus: Any) -> None:
    bus = await sandbox_bus(system_sandbox)
    intro = await bus.introspect("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
    proxy = bus.get_proxy_object("org.freedesktop.systemd1", "/org/freedesktop/systemd1", intro)
    props = proxy.get_interface("org.freedesktop.DBus.Properties")
    virt = await props.call_get("org.freedesktop.systemd1.Manager", "Virtualization")
    assert virt.value == "systemd-nspawn"


def test_system_teardown_is_total(tmp_path_factory: pytest.TempPathFactory) -> None:
    mounts_before = Path("/proc/self/mountinfo").read_text().splitlines()
    run_systemd_before = sorted(p.name for p in Path("/run/systemd").iterdir())
    sb = sandboxlib.start_sandbox(Scope.SYSTEM, share=[tmp_path_factory.getbasetemp()])
    sb.install_units({"ug-t-s.service": "[Service]\nPrivateTmp=yes\nExecStart=/bin/sleep 600\n"})
    sb.systemctl("start", "ug-t-s.service", check=True)
    sb.wait_for("ug-t-s.service", "active")
    procs, root, cg = sb.processes(), sb.root, sb.cgroup_id
    assert len(procs) >= 3
    sb.close()
    assert not root.exists()
    assert not [p for p in procs if Path(f"/proc/{p}").exists()]
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{cg}")) + list(Path("/sys/fs/cgroup").glob(cg))
    assert Path("/proc/self/mountinfo").read_text().splitlines() == mounts_before
    assert sorted(p.name for p in Path("/run/systemd").iterdir()) == run_systemd_before
    assert not list(Path("/sys/fs/cgroup/systemd").glob("init.scope/payload"))
    assert CGROUP_PREFIX in cg


def test_graceful_poweroff(tmp_path_factory: pytest.TempPathFactory) -> None:
    sb = sandboxlib.start_sandbox(Scope.SYSTEM)
    marker = tmp_path_factory.mktemp("poweroff") / "stopped"
    sb.close()  # a fresh one below shares the marker dir
    sb = sandboxlib.start_sandbox(Scope.SYSTEM, share=[marker.parent])
    sb.install_units(
        {
            "ug-t-stop.service": "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            "ExecStart=/bin/true\n"
            f"ExecStop=/bin/sh -c 'echo stopped > {marker}'\n"
        }
    )
    sb.systemctl("start", "ug-t-stop.service", check=True)
    sb.close(graceful=True)
    assert marker.read_text() == "stopped\n"
    assert os.path.exists(marker)


def test_the_venv_unitgen_runs_inside(system_sandbox: Sandbox) -> None:
    import sys

    import unitgen

    unitgen_bin = str(Path(sys.executable).parent / "unitgen")
    res = system_sandbox.run([unitgen_bin, "--version"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"unitgen {unitgen.__version__}"
