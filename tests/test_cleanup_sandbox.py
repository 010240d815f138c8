"""remove_stale_pidfile against a real unit in the disposable systemd user manager.

The unit's cgroup comes from systemd's ControlGroup property and the check
runs inside the sandbox's namespaces, as the recovery handler would.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

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
