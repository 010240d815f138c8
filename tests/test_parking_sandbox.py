"""Park, then resume, on a real user manager with the listener daemon running.

A database unit goes down for longer than every budget: its own ladder stops
(``after_give_up = "stop"``, one attempt), and its two dependents (generated
units with ``wants``/``after`` on it, so "park" by default) wait their
bounded dependency wait and park instead of giving up. (``wants``, not
``requires``: with Requires= systemd itself stops the dependents when the
database restarts, so they never fail.) The listener daemon is
restarted while they are parked. Then an operator brings the database back,
and both dependents are recovered within seconds, long before their slow
retry is due: the history says each resume came from the database becoming
active, not from the timer, and nothing started them while they were parked.

Before parking existed the dependents gave up (``dependency: ... down``) and
stayed failed until ``unitgen reset``: this test fails there at the first
"parked" wait.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daemon_sandbox import DAEMON, install_daemon, until

from unitgen.sandbox import Sandbox

UNITGEN = Path(sys.executable).with_name("unitgen")
DB = "pdb.service"
APPS = ("papp1.service", "papp2.service")
PARK_INTERVAL = 45.0  # long against the resume it must not explain (a few seconds)


def _spec(flag: Path, tmp: Path) -> str:
    loop = f"while test -e {flag}; do sleep 0.2; done; exit 1"
    apps = "".join(
        f"""
[service.{name.removesuffix(".service")}]
exec = ["/bin/sh", "-c", "echo x >> {tmp / name}.starts; {loop}"]
wants = ["{DB}"]
after = ["{DB}"]
hardening = "off"
restart = {{ policy = "on-failure", delay = "100ms", burst = 2, interval = "1min" }}
[service.{name.removesuffix(".service")}.recovery]
min_uptime = "0s"
start_timeout = "2s"
park_interval = "{PARK_INTERVAL:g}s"
backoff = {{ base = "0s" }}
"""
        for name in APPS
    )
    return f"""
[service.pdb]
exec = ["/bin/sh", "-c", "test -e {flag} || exit 1; exec sleep infinity"]
hardening = "off"
restart = {{ policy = "on-failure", delay = "100ms", burst = 2, interval = "1min" }}
[service.pdb.recovery]
max_attempts = 1
after_give_up = "stop"
min_uptime = "0s"
start_timeout = "3s"
backoff = {{ base = "0s" }}
{apps}"""


def _cli(sb: Sandbox, *args: str) -> str:
    res = subprocess.run(
        [str(UNITGEN), *args],
        capture_output=True,
        text=True,
        env={**sb.env, "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _status(sb: Sandbox) -> dict[str, dict[str, Any]]:
    rows = json.loads(_cli(sb, "status", "--user", "--json"))
    return {str(r["unit"]): r for r in rows}


def _incidents(sb: Sandbox, unit: str) -> list[dict[str, Any]]:
    data = json.loads(_cli(sb, "history", "--user", "--json", unit))
    return list(data) if isinstance(data, list) else list(data.get("incidents", []))


def _starts(tmp: Path, unit: str) -> int:
    path = tmp / f"{unit}.starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _parked(sb: Sandbox) -> bool:
    rows = _status(sb)
    return all(rows.get(a, {}).get("parked") for a in APPS)


def test_dependents_park_while_the_dependency_is_down_and_resume_when_it_is_back(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    flag = tmp_path / "db-up"
    flag.touch()
    install_daemon(sb, tmp_path, specs={"park.toml": _spec(flag, tmp_path)})
    sb.systemctl("start", DAEMON, check=True)
    for app in APPS:
        sb.systemctl("start", app, check=True)
        sb.wait_for(app, "active", 10)
    sb.wait_for(DB, "active", 10)

    # The database goes down and stays down: its restarts fail, its ladder stops,
    # and each dependent fails on its own (it exits once the database is gone).
    down_at = time.monotonic()
    flag.unlink()
    sb.kill_main(DB)
    try:
        until(lambda: _parked(sb), 60, "both dependents parked")
    except AssertionError:
        print(sb.journal(DAEMON, 300))
        print(json.dumps(_status(sb), indent=1))
        for u in (DB, *APPS):
            print(u, sb.show(u, "ActiveState", "SubState", "Result", "NRestarts"))
            print(json.dumps(_incidents(sb, u), indent=1))
        raise
    rows = _status(sb)
    for app in APPS:
        assert rows[app]["state"] == f"parked, waiting for {DB}", rows[app]
        assert rows[app]["parked"]["waiting_for"] == [DB], rows[app]
    assert "gave-up" in str(rows[DB]["state"]), rows[DB]
    text = _cli(sb, "status", "--user", APPS[0])
    assert f"parked, waiting for {DB}" in text, text
    before = {app: _starts(tmp_path, app) for app in APPS}
    n_restarts = {app: sb.show(app, "NRestarts")["NRestarts"] for app in APPS}

    # Parked state survives the listener: a new daemon takes the parked units over.
    sb.systemctl("restart", DAEMON, check=True)
    # Down for longer than every budget: the dependents' bounded wait (start_timeout
    # 2 s) and the database's one attempt are long over.
    until(lambda: time.monotonic() - down_at > 12, 30, "the outage to outlast the budgets")
    for app in APPS:
        assert sb.show(app, "ActiveState")["ActiveState"] == "failed"
        assert _starts(tmp_path, app) == before[app], "started while parked"
        assert sb.show(app, "NRestarts")["NRestarts"] == n_restarts[app], "systemd restarted it"
    next_retry = min(float(_status(sb)[a]["parked"]["next_retry"]) for a in APPS)

    # An operator brings the database back; nothing is done to the dependents.
    flag.touch()
    sb.systemctl("reset-failed", DB, check=True)
    back = time.time()
    sb.systemctl("start", DB, check=True)
    for app in APPS:
        sb.wait_for(app, "active", PARK_INTERVAL)
    recovered = time.time()
    assert recovered < next_retry, (recovered, next_retry)  # before any slow retry was due
    assert recovered - back < PARK_INTERVAL

    for app in APPS:
        assert _starts(tmp_path, app) == before[app] + 1, app
        incidents = _incidents(sb, app)
        inc = incidents[0]
        assert inc["state"] == "recovered", inc
        actions = [(a["action"], a["result"], a["reason"]) for a in inc["attempts"]]
        parks = [i for i, a in enumerate(actions) if a[0] == "park"]
        unparks = [i for i, a in enumerate(actions) if a[0] == "unpark"]
        restarts = [i for i, a in enumerate(actions) if a[0] == "restart"]
        assert parks and unparks, actions
        # Resumed by the database becoming active, and restarted once, after that.
        last_unpark = actions[unparks[-1]]
        assert last_unpark[1] == "parked", actions
        assert last_unpark[2].startswith(f"dependency-active: {DB} is active"), actions
        assert not any(a[2].startswith("timer") for a in actions if a[0] == "unpark"), actions
        assert len(restarts) == 1 and restarts[0] > unparks[-1], actions
        assert _status(sb)[app]["parked"] is None
