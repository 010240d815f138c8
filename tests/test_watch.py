"""`unitgen watch` command line: bad input is exit 2 with one line, before any connection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

UNITGEN = str(Path(sys.executable).with_name("unitgen"))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--max-concurrency", "0"], "--max-concurrency"),
        (["--unit", "a/b.service"], "--unit"),
        (["--unit", ""], "--unit"),
        (["--metrics-listen", "not-an-address"], "--metrics-listen"),
        (["--metrics-listen", "8.8.8.8:9464"], "--metrics-listen"),
    ],
)
def test_bad_input_exits_2_without_traceback(argv: list[str], needle: str, tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        # Nothing to connect to: the error must come before any bus is tried.
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/nobus",
        "XDG_RUNTIME_DIR": str(tmp_path),
    }
    res = subprocess.run(
        [UNITGEN, "watch", "--user", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_unreachable_bus_keeps_retrying_then_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import time

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/nobus",
        "XDG_RUNTIME_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [UNITGEN, "watch", "--user", "--no-health"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 30
    lines: list[str] = []
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if sum("reconnecting" in x for x in lines) >= 2:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + rest
    text = "".join(lines) + rest
    assert "cannot connect to the session bus" in text
    assert "Traceback" not in text
