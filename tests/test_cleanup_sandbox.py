"""Cleanup against real units in the disposable systemd user manager.

remove_stale_pidfile with a real unit's cgroup, and the ladder's cleanup steps
run by ``unitgen recover`` next to a bind mount.

The unit's cgroup comes from systemd's ControlGroup property and the check
runs inside the sandbox's namespaces, as the recovery handler would.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

from policyfiles import private_paths, write_policy
from test_recovery_sandbox import QUICK

from unitgen.model import Cleanup, Disk, Threshold
from unitgen.policy import Policy
from unitgen.sandbox import Sandbox

SLEEPER = """\
[Service]
Type=simple
ExecStart=/bin/sleep 300
"""

CHECK = """
import json, os, sys
from handlers.cleanup import remove_stale_pidfile
path, cgroup = sys.argv[1], sys.argv[2]
report = remove_stale_pidfile(path, unit_cgroup=cgroup)
print(json.dumps({
    "removed": [r.reason for r in report.removed],
    "refused": report.refused,
    "exists": os.path.exists(path),
}))
"""


def check_inside(sb: Sandbox, pidfile: Path, cgroup: str) -> dict[str, object]:
    res = sb.run([sys.executable, "-c", CHECK, str(pidfile), cgroup], check=True)
    result: dict[str, object] = json.loads(res.stdout)
    return result


def test_pidfile_of_a_real_unit(user_sandbox: Sandbox, tmp_path: Path) -> None:
    name = f"ugpid-{uuid.uuid4().hex[:8]}.service"
    other = f"ugpid-other-{uuid.uuid4().hex[:8]}.service"
    user_sandbox.install_units({name: SLEEPER, other: SLEEPER})
    try:
        user_sandbox.systemctl("start", name, other, check=True)
        props = user_sandbox.wait_for(name, "active")
        cgroup = user_sandbox.show(name, "ControlGroup")["ControlGroup"]
        assert cgroup.endswith(f"/{name}")
        main_pid = user_sandbox.main_pid(name)
        other_pid = user_sandbox.main_pid(other)
        assert main_pid > 0 and other_pid > 0, props
        pidfile = tmp_path / "svc.pid"

        # The unit's own main process: the PID file is current and must stay.
        pidfile.write_text(f"{main_pid}\n")
        kept = check_inside(user_sandbox, pidfile, cgroup)
        assert kept == {"removed": [], "refused": [], "exists": True}

        # The PID now belongs to another unit's process (PID reuse): stale.
        pidfile.write_text(f"{other_pid}\n")
        reused = check_inside(user_sandbox, pidfile, cgroup)
        assert reused["exists"] is False
        assert reused["removed"] == [
            f"stale PID file: process {other_pid} belongs to {cgroup[: -len(name)]}{other}"
        ]

        # The unit stopped: its old main PID is dead, the PID file is stale.
        user_sandbox.systemctl("stop", name, check=True)
        user_sandbox.wait_for(name, {"inactive", "failed"})
        pidfile.write_text(f"{main_pid}\n")
        dead = check_inside(user_sandbox, pidfile, cgroup)
        assert dead["exists"] is False
        assert dead["removed"] == [f"stale PID file: process {main_pid} is not running"]
    finally:
        user_sandbox.systemctl("stop", name, other)


# --- the ladder's cleanup step, run by `unitgen recover` in a private mount namespace -------

UNITGEN = str(Path(sys.executable).with_name("unitgen"))
OLD = "200101010000"  # touch -t: far older than any older_than used here


def recover_in_namespace(
    sb: Sandbox, tmp_path: Path, unit: str, prelude: str, after: str = ""
) -> subprocess.CompletedProcess[str]:
    """``unitgen recover --json UNIT`` after ``prelude`` (mounts), then ``after``, all in one
    private mount namespace: the mounts never leave it, and neither do the files on a tmpfs."""
    env = {
        **os.environ,
        **sb.env,
        "UNITGEN_POLICY_DIR": str(tmp_path / "policy"),
        "UNITGEN_STATE_DIR": str(tmp_path / "state"),
        "UNITGEN_RUN_DIR": str(tmp_path / "run"),
    }
    env.pop("MONITOR_UNIT", None)
    command = " ".join(shlex.quote(a) for a in [UNITGEN, "recover", "--user", "--json", unit])
    script = f"set -e\n{prelude}\nrc=0\n{command} || rc=$?\n{after}\nexit $rc\n"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _stop(sb: Sandbox, unit: str) -> None:
    sb.systemctl("stop", unit)
    sb.systemctl("reset-failed", unit)


def test_ladder_temp_cleanup_does_not_cross_a_bind_mount(
    user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = user_sandbox
    unit = f"ugmnt-{uuid.uuid4().hex[:8]}.service"
    temp = tmp_path / "temp"
    (temp / "mnt").mkdir(parents=True)
    stale = temp / "stale.lock"
    canary = tmp_path / "outside" / "keep.log"
    canary.parent.mkdir()
    for path in (stale, canary):
        path.write_text("old")
        os.utime(path, (1e9, 1e9))
    # Starts only once the stale lock is gone: only the cleanup level can make it start.
    sb.install_units(
        {
            unit: (
                f"[Service]\nType=exec\nExecStartPre=/bin/sh -c 'test ! -e {stale}'\n"
                "ExecStart=/bin/sleep infinity\n"
            )
        }
    )
    cleanup = Cleanup(temp=(str(temp),), older_than=60.0)
    write_policy(private_paths(tmp_path), Policy(unit=unit, recovery=QUICK, cleanup=cleanup))
    try:
        sb.systemctl("start", "--no-block", unit)
        sb.wait_for(unit, "failed", timeout=20)
        # Same filesystem on both sides: st_dev cannot tell this mount point.
        prelude = f"mount --bind {shlex.quote(str(canary.parent))} {shlex.quote(str(temp))}/mnt"
        res = recover_in_namespace(sb, tmp_path, unit, prelude)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["state"] == "recovered", out
        assert not stale.exists()
        assert canary.read_text() == "old"
        assert f"cleanup refused {temp}/mnt: mount point, not crossed" in out["notes"], out
        assert sb.show(unit, "ActiveState")["ActiveState"] == "active"
    finally:
        _stop(sb, unit)


def test_ladder_free_space_does_not_cross_a_bind_mount(
    user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = user_sandbox
    unit = f"ugmnt-{uuid.uuid4().hex[:8]}.service"
    sb.install_units({unit: "[Service]\nExecStart=/bin/false\n"})
    small = tmp_path / "small"
    small.mkdir()
    cache, outside = small / "cache", small / "outside"
    disk = Disk(paths=(str(small),), min_free=Threshold(percent=20.0), cleanup=(str(cache),))
    write_policy(private_paths(tmp_path), Policy(unit=unit, recovery=QUICK, disk=disk))
    left = tmp_path / "left"
    s, c, o = (shlex.quote(str(p)) for p in (small, cache, outside))
    # A 1 MiB tmpfs: the big old canary outside the cleanup root would free enough space,
    # and it is reachable from the root through a bind mount of that same tmpfs.
    prelude = (
        f"mount -t tmpfs -o size=1m tmpfs {s}\nmkdir {c} {o} {c}/mnt\n"
        f"head -c 600000 /dev/zero > {o}/big\nhead -c 350000 /dev/zero > {s}/fill || true\n"
        f"touch -t {OLD} {o}/big\nmount --bind {o} {c}/mnt"
    )
    after = f"ls {o} > {shlex.quote(str(left))}"
    try:
        sb.systemctl("start", "--no-block", unit)
        sb.wait_for(unit, "failed", timeout=20)
        res = recover_in_namespace(sb, tmp_path, unit, prelude, after)
        out = json.loads(res.stdout)
        assert left.read_text().split() == ["big"], (out, res.stderr)
        assert res.returncode == 1, res.stderr
        assert out["state"] == "gave-up" and out["reason"].startswith("disk"), out
        assert "freed 0 bytes from the cleanup directories" in out["notes"], out
    finally:
        _stop(sb, unit)
