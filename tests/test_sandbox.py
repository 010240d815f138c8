"""The user-manager sandbox: it is a real systemd, and it leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import sandboxlib

from unitgen.errors import SandboxError
from unitgen.paths import Scope
from unitgen.sandbox import CGROUP_PREFIX, Sandbox

SERVICE = "[Unit]\nDescription={desc}\n[Service]\nExecStart={cmd}\n"


def _mountinfo() -> set[str]:
    # Mount IDs are unique per mount; compare the (id, mount point) pairs.
    return {
        " ".join(line.split()[i] for i in (0, 4))
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    }


def _sandbox_cgroups() -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PREFIX}*")] + list(
        Path("/sys/fs/cgroup").glob(f"{CGROUP_PREFIX}*")
    )


# --- skip / fail policy ------------------------------------------------------


def test_unavailable_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no unshare here"):
        sandboxlib.unavailable("no unshare here")


def test_unavailable_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: not root"):
        sandboxlib.unavailable("not root")


@pytest.mark.parametrize(
    ("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)]
)
def test_start_sandbox_obeys_probe(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(sandboxlib, "probe", lambda scope: "missing: unshare")
    with pytest.raises(outcome, match="missing: unshare"):
        sandboxlib.start_sandbox(Scope.USER)


def test_start_failure_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(sandboxlib, "probe", lambda scope: None)

    def boom(*args: Any, **kwargs: Any) -> Sandbox:
        raise SandboxError("nspawn said no")

    monkeypatch.setattr(Sandbox, "start", boom)
    with pytest.raises(pytest.fail.Exception, match="nspawn said no"):
        sandboxlib.start_sandbox(Scope.SYSTEM)


def test_probe_reports_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from unitgen.sandbox import launch

    monkeypatch.setattr(launch.os, "geteuid", lambda: 1000)
    reason = launch.probe(Scope.USER)
    assert reason is not None and "root" in reason


# --- it is a real systemd ------------------------------------------------------


def test_manager_runs_units_and_restarts(user_sandbox: Sandbox, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    user_sandbox.install_units(
        {
            "ug-t-restart.service": "[Service]\n"
            f"ExecStart=/bin/sh -c 'echo x >> {marker}; exec sleep 600'\n"
            "Restart=on-failure\nRestartSec=100ms\n"
        }
    )
    user_sandbox.systemctl("start", "ug-t-restart.service", check=True)
    first = user_sandbox.wait_for("ug-t-restart.service", "active")
    assert first["SubState"] == "running"
    pid = user_sandbox.kill_main("ug-t-restart.service", signal.SIGKILL)
    props = user_sandbox.wait_for(
        "ug-t-restart.service",
        lambda p: p["ActiveState"] == "active" and p["NRestarts"] == "1",
        timeout=10,
    )
    assert int(props["MainPID"]) not in (0, pid)
    # Active (Type=simple) is the fork, not the shell's first line: give it a deadline.
    deadline = time.monotonic() + 10
    while marker.read_text() != "x\nx\n" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text() == "x\nx\n"  # tmp_path is shared into the sandbox
    user_sandbox.systemctl("stop", "ug-t-restart.service", check=True)


def test_host_pid_translation(user_sandbox: Sandbox) -> None:
    user_sandbox.install_units(
        {"ug-t-pid.service": SERVICE.format(desc="pid", cmd="/bin/sleep 600")}
    )
    user_sandbox.systemctl("start", "ug-t-pid.service", check=True)
    user_sandbox.wait_for("ug-t-pid.service", "active")
    ns_pid = user_sandbox.main_pid("ug-t-pid.service")
    host_pid = user_sandbox.host_pid(ns_pid)
    assert host_pid != ns_pid
    assert Path(f"/proc/{host_pid}/cmdline").read_bytes().split(b"\0")[0] == b"/bin/sleep"
    os.kill(host_pid, signal.SIGTERM)
    props = user_sandbox.wait_for("ug-t-pid.service", {"inactive", "failed"})
    assert props["ActiveState"] in ("inactive", "failed")
    with pytest.raises(SandboxError):
        user_sandbox.host_pid(999_999)


def test_wait_for_times_out_with_last_state(user_sandbox: Sandbox) -> None:
    user_sandbox.install_units({"ug-t-never.service": SERVICE.format(desc="n", cmd="/bin/true")})
    with pytest.raises(SandboxError, match=r"ug-t-never\.service did not reach 'active'.*inactive"):
        user_sandbox.wait_for("ug-t-never.service", "active", timeout=0.2)


def test_journal_has_unit_output(user_sandbox: Sandbox) -> None:
    user_sandbox.install_units(
        {
            # journald attributes a stdout line to its unit by reading the writer's
            # cgroup when it processes the line: a process already gone by then leaves
            # a line with no unit fields (a host's journald does the same). So the
            # service stays until its line is stored.
            "ug-t-log.service": SERVICE.format(
                desc="log",
                cmd="/bin/sh -c 'echo ug-hello-42; "
                "until journalctl -q -o cat MESSAGE=ug-hello-42 | grep -q .; "
                "do sleep 0.02; done; exit 3'",
            )
        }
    )
    user_sandbox.systemctl("start", "ug-t-log.service")
    user_sandbox.wait_for("ug-t-log.service", "failed")
    # The service's stdout reaches journald over a stream socket, read on its own
    # schedule: the manager's "Failed" line (native protocol) can be stored first.
    deadline = time.monotonic() + 10
    while "ug-hello-42" not in (text := user_sandbox.journal("ug-t-log.service")):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert "status=3" in text


def test_host_side_systemctl_with_env(user_sandbox: Sandbox) -> None:
    res = subprocess.run(
        ["systemctl", "--user", "show", "-P", "Version"],
        env={**os.environ, **user_sandbox.env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert res.stdout.strip().startswith(("252", "253", "254", "255", "256", "257"))


def test_env_points_into_root(user_sandbox: Sandbox) -> None:
    for key in (
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "XDG_STATE_HOME",
        "UNITGEN_STATE_DIR",
        "UNITGEN_RUN_DIR",
        "UNITGEN_POLICY_DIR",
        "HOME",
    ):
        assert Path(user_sandbox.env[key]).is_relative_to(user_sandbox.root), key
    assert user_sandbox.env["UNITGEN_SCOPE"] == "user"
    assert user_sandbox.unit_dir.is_relative_to(user_sandbox.root)


def test_install_units_rejects_escaping_names(user_sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError):
        user_sandbox.install_units({"../evil.service": "[Service]\n"}, reload=False)


@pytest.mark.asyncio
async def test_bus_fixture_talks_to_sandbox(user_sandbox: Sandbox, sandbox_bus: Any) -> None:
    bus = await sandbox_bus(user_sandbox)
    intro = await bus.introspect("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
    proxy = bus.get_proxy_object("org.freedesktop.systemd1", "/org/freedesktop/systemd1", intro)
    manager = proxy.get_interface("org.freedesktop.DBus.Properties")
    state = await manager.call_get("org.freedesktop.systemd1.Manager", "SystemState")
    assert state.value in ("running", "degraded")


# --- it leaves nothing behind ---------------------------------------------------


def test_teardown_is_total(tmp_path_factory: pytest.TempPathFactory) -> None:
    mounts_before = _mountinfo()
    sb = sandboxlib.start_sandbox(Scope.USER, share=[tmp_path_factory.getbasetemp()])
    # A double-forked daemon and a PrivateTmp unit: the hardest things to clean up.
    sb.install_units(
        {
            "ug-t-ptmp.service": "[Service]\nPrivateTmp=yes\nExecStart=/bin/sleep 600\n",
        }
    )
    sb.systemctl("start", "ug-t-ptmp.service", check=True)
    sb.wait_for("ug-t-ptmp.service", "active")
    sb.run(["/bin/sh", "-c", "setsid sleep 600 >/dev/null 2>&1 < /dev/null &"], check=True)
    procs = sb.processes()
    assert len(procs) >= 4  # init, journald, manager, dbus, sleep...
    assert any(p.name.startswith("systemd-private-") for p in (sb.root / "tmp").iterdir())
    root, cg = sb.root, sb.cgroup_id
    assert any(p.name == cg for p in _sandbox_cgroups())
    sb.close()
    sb.close()  # idempotent
    assert not root.exists()
    assert not [p for p in procs if Path(f"/proc/{p}").exists()]
    assert not [p for p in _sandbox_cgroups() if p.name == cg]
    assert _mountinfo() == mounts_before
    assert not list(Path("/tmp").glob("systemd-private-*ug-t-ptmp*"))
    with pytest.raises(SandboxError, match="closed"):
        sb.run(["true"])


def test_fresh_sandboxes_are_isolated(fresh_user_sandbox: Sandbox, user_sandbox: Sandbox) -> None:
    fresh_user_sandbox.install_units(
        {"ug-t-iso.service": SERVICE.format(desc="i", cmd="/bin/sleep 600")}
    )
    fresh_user_sandbox.systemctl("start", "ug-t-iso.service", check=True)
    fresh_user_sandbox.wait_for("ug-t-iso.service", "active")
    other = user_sandbox.show("ug-t-iso.service", "LoadState")
    assert other["LoadState"] == "not-found"
    assert fresh_user_sandbox.cgroup_id != user_sandbox.cgroup_id


# --- the 226/NAMESPACE finding (docs/sandbox.md) ----------------------------------

NEEDS_INACCESSIBLE_NODES = [
    "ProtectHome=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelLogs=yes",
    "InaccessiblePaths=/root",
]


def _start_each(sb: Sandbox, directives: list[str]) -> dict[str, dict[str, str]]:
    names = {d: f"ug-t-ns{i}.service" for i, d in enumerate(directives)}
    sb.install_units({n: f"[Service]\n{d}\nExecStart=/bin/sleep 600\n" for d, n in names.items()})
    for name in names.values():
        sb.systemctl("start", name)
    return {d: sb.wait_for(n, {"active", "failed"}) for d, n in names.items()}


def test_without_pid1_nodes_these_directives_die_with_226(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with sandboxlib.start_sandbox(Scope.USER, host_like=False) as sb:
        results = _start_each(sb, [*NEEDS_INACCESSIBLE_NODES, "ProtectSystem=strict"])
        statuses = {
            d: sb.show(f"ug-t-ns{i}.service", "ExecMainStatus")["ExecMainStatus"]
            for i, d in enumerate(NEEDS_INACCESSIBLE_NODES)
        }
    assert {d: r["ActiveState"] for d, r in results.items()} == {
        **dict.fromkeys(NEEDS_INACCESSIBLE_NODES, "failed"),
        "ProtectSystem=strict": "active",
    }
    assert set(statuses.values()) == {"226"}


def test_with_pid1_nodes_the_same_directives_work(fresh_user_sandbox: Sandbox) -> None:
    results = _start_each(fresh_user_sandbox, NEEDS_INACCESSIBLE_NODES)
    assert {d: r["ActiveState"] for d, r in results.items()} == dict.fromkeys(
        NEEDS_INACCESSIBLE_NODES, "active"
    )


def test_code_inside_imports_the_same_unitgen_as_the_host(user_sandbox: Sandbox) -> None:
    """A checkout under /tmp (CI's fresh clone) stays visible past the private /tmp."""
    import sys

    import handlers
    import unitgen

    res = user_sandbox.run(
        [
            sys.executable,
            "-c",
            "import unitgen, handlers; print(unitgen.__file__, handlers.__file__)",
        ],
        check=True,
    )
    assert res.stdout.split() == [unitgen.__file__, handlers.__file__]


def test_reap_stale_waits_for_a_dead_sandboxs_cgroup_and_keeps_what_it_cannot_remove(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGKILLed owner's sandbox: the cgroup may still be emptying when we look."""
    import tempfile
    import uuid

    from unitgen.sandbox import probe
    from unitgen.sandbox import reap as sbmod

    reason = probe(Scope.USER)
    if reason:
        sandboxlib.unavailable(reason)
    mounts = [m for m, _ in sbmod.cgroup_mounts() if sbmod.is_cgroup2(m)]
    if not mounts:
        sandboxlib.unavailable("no cgroup2 hierarchy mounted")
    name = f"{CGROUP_PREFIX}reaptest-{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.gettempdir()) / name
    root.mkdir()
    (root / "owner").write_text("999999999 0\n")  # an owner that does not exist
    cgroup = mounts[0] / name
    cgroup.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (cgroup / "cgroup.procs").write_text(str(sleeper.pid))
        monkeypatch.setattr(sbmod, "STALE_EXIT_WAIT", 0.2)
        # A process that does not exit: nothing removed, the root kept for next time.
        assert root not in sbmod.reap_stale()
        assert root.exists() and cgroup.exists()
        sleeper.kill()
        sleeper.wait(10)
        # It exited: both go.
        assert root in sbmod.reap_stale()
        assert not root.exists() and not cgroup.exists()
    finally:
        sleeper.kill()
        sleeper.wait(10)
        with contextlib.suppress(OSError):
            cgroup.rmdir()
        shutil.rmtree(root, ignore_errors=True)


def test_bus_policy_only_by_file_name_and_only_in_a_system_sandbox(user_sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="system sandbox"):
        user_sandbox.install_bus_policy("org.example.conf", "<busconfig/>")
