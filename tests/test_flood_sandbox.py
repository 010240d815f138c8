"""A local user floods the daemon's D-Bus API while a unit needs recovering.

In the booted container with the shipped bus policy: uid 65534 may call
History, so it sends 500 of them at once over 25 connections, round after
round. The daemon must answer the excess with LimitsExceeded, keep its
connection and its name, log no traceback, and still recover a unit killed
during the flood (the latency ratio is measured in bench/bench_flood.py; here
only a generous deadline).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_sandbox import DAEMON, REPO, install_daemon, write_policy

from handlers.dbus_api import BUS_NAME
from unitgen.paths import Scope
from unitgen.sandbox import as_user

FLOOD = Path(__file__).with_name("flood_client.py")


@pytest.mark.sandbox
@pytest.mark.system
def test_flood_from_an_unprivileged_user_neither_disconnects_nor_delays_recovery(
    tmp_path: Path,
) -> None:
    from sandboxlib import start_sandbox

    sb = start_sandbox(Scope.SYSTEM, share=[REPO, tmp_path])
    flood: subprocess.Popen[str] | None = None
    try:
        unit = "flooded.service"
        write_policy(sb, unit, max_attempts=50, window=600.0, min_uptime=0.5)
        install_daemon(sb, tmp_path, {unit: "[Service]\nExecStart=/bin/sleep infinity\n"})
        sb.systemctl("start", DAEMON, check=True)
        sb.systemctl("start", unit, check=True)
        flood = subprocess.Popen(
            [
                *as_user("nobody"),
                sys.executable,
                str(FLOOD),
                sb.bus_address,
                "--connections=25",
                "--calls=500",
                "--rounds=20",
                "--timeout=20",
                "--member=History",
                f"--arg={unit}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert flood.stderr is not None
        assert flood.stderr.readline().strip() == "flooding"
        first = sb.main_pid(unit)
        killed = time.monotonic()
        sb.kill_main(unit)
        sb.wait_for(
            unit,
            lambda p: (
                p.get("ActiveState") == "active" and p.get("MainPID") not in ("0", str(first))
            ),
            10,
        )
        recovered_in = time.monotonic() - killed
        out, err = flood.communicate(timeout=120)
        assert flood.returncode == 0, err
        outcomes = json.loads(out)["outcomes"]
        # Served up to the limits, the rest refused at once; none left unanswered.
        assert outcomes.get("org.freedesktop.DBus.Error.LimitsExceeded", 0) > 0, outcomes
        assert outcomes.get("ok", 0) > 0, outcomes
        assert set(outcomes) <= {"ok", "org.freedesktop.DBus.Error.LimitsExceeded"}, outcomes
        journal = sb.journal(DAEMON, 2000)
        assert "bus connection ended" not in journal, journal
        assert "bus connection lost" not in journal, journal
        assert "Traceback" not in journal, journal
        assert "refused" in journal, journal
        # Still the same process, still the owner of its name.
        assert sb.show(DAEMON, "NRestarts")["NRestarts"] == "0"
        owner = sb.run(["busctl", "--system", "status", BUS_NAME])
        assert owner.returncode == 0, owner.stderr
        assert recovered_in < 10, journal
        # The shipped policy lets anyone page through the history too.
        page = subprocess.run(
            [
                *as_user("nobody"),
                "dbus-send",
                f"--bus={sb.bus_address}",
                "--print-reply",
                f"--dest={BUS_NAME}",
                "/org/unitgen/Recovery1",
                "org.unitgen.Recovery1.HistoryPage",
                f"string:{unit}",
                "uint32:0",
                "uint32:5",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert page.returncode == 0, page.stderr
        assert "incident_id" in page.stdout, page.stdout
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.communicate()
        sb.close()
