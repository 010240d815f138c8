"""The path generated units take: systemd restarts them until its start limit gives up,
and then the running listener daemon takes over by itself; the OnFailure= unit is skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from daemon_sandbox import install_daemon

from unitgen.sandbox import Sandbox

UNITGEN = Path(sys.executable).with_name("unitgen")
DAEMON = "unitgen-watch.service"
UNIT = "giveup.service"

# As a user would write it (the reproduction in docs/listener.md): systemd's own
# restarts first, the ladder with no backoff and no minimum uptime once systemd gives up.
SPEC = """
[service.giveup]
exec = ["/bin/sleep", "infinity"]
hardening = "off"
restart = { policy = "on-failure", delay = "100ms", burst = 3, interval = "1min" }
recovery = { min_uptime = "0s", backoff = { base = "0s" } }
"""


def _history(sb: Sandbox) -> list[dict[str, Any]]:
    res = subprocess.run(
        [str(UNITGEN), "history", "--user", "--json", UNIT],
        capture_output=True,
        text=True,
        env={**sb.env, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    return data if isinstance(data, list) else data.get("incidents", [])


def test_start_limit_give_up_is_taken_over_by_the_listener_not_the_handoff(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    out = install_daemon(sb, tmp_path, specs={"giveup.toml": SPEC})
    text = (out / UNIT).read_text()
    assert "Restart=on-failure" in text and "StartLimitBurst=3" in text, text
    assert "OnFailure=unitgen-recover@%n.service" in text, text
    sb.systemctl("start", DAEMON, check=True)
    sb.systemctl("start", UNIT, check=True)
    pids = []
    for n in (1, 2, 3):
        sb.wait_for(UNIT, lambda p: p.get("SubState") == "running", 10)
        pids.append(sb.kill_main(UNIT))
        if n < 3:
            sb.wait_for(
                UNIT,
                lambda p, n=n: p.get("SubState") == "running" and p.get("NRestarts") == str(n),
                10,
            )
    # The third death exhausts StartLimitBurst=3; the ladder starts it again.
    props = sb.wait_for(
        UNIT,
        lambda p: p.get("SubState") == "running" and p.get("MainPID") not in ("0", str(pids[-1])),
        15,
    )
    assert "repeated too quickly" in sb.journal(UNIT, 100)
    recover = f"unitgen-recover@{UNIT}.service"
    # The OnFailure= unit was skipped by its condition (the daemon's marker): no
    # process started, nothing failed; the listener had taken the give-up over.
    sb.wait_for(recover, "no", 10, prop="ConditionResult")
    skipped = sb.show(recover, "ExecMainStartTimestamp", "InvocationID")
    assert skipped == {"ExecMainStartTimestamp": "", "InvocationID": ""}, skipped
    assert "unmet condition check" in sb.journal(recover, 100)
    incidents = _history(sb)
    # One incident, opened by the listener at systemd's give-up.
    assert [i["source"] for i in incidents] == ["listener"], incidents
    assert incidents[0]["classification"] == "start-limit-hit", incidents
    restarts = [a for a in incidents[0]["attempts"] if "restart" in str(a.get("action", ""))]
    assert len(restarts) == 1, incidents
    assert props["NRestarts"] == "0", props  # a manual start (the ladder's), not systemd's
