"""The whole stream for real: `unitgen watch` recovers a killed unit in a user manager and
independent consumers (`unitgen events`, busctl, a Prometheus scrape) see it happen."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Lines:
    """Lines from a pipe, each by a deadline.

    Reads the raw fd: select() on a buffered text stream followed by readline()
    loses lines that arrived in the same chunk as the previous one (they sit in
    Python's buffer while select() waits for the pipe), which made this test flaky.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._fd = stream.fileno()
        self._buf = b""

    def readline(self, deadline: float) -> str:
        import select

        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no line before the deadline")
            ready, _, _ = select.select([self._fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self._fd, 65536)
                assert chunk, "stream ended"
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode() + "\n"


def _busctl(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["busctl", f"--address={sb.bus_address}", "--json=short", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def daemon(fresh_user_sandbox: Sandbox) -> Iterator[tuple[Sandbox, str, int, dict[str, str]]]:
    sb = fresh_user_sandbox
    unit = f"ug-ev-{uuid.uuid4().hex[:8]}.service"
    env = {**os.environ, **sb.env, "PYTHONPATH": str(REPO)}
    policy_dir = Path(sb.env["UNITGEN_POLICY_DIR"])
    policy_dir.mkdir(parents=True, exist_ok=True)
    (policy_dir / f"{unit}.json").write_text(json.dumps({"unit": unit, "version": 1}))
    sb.install_units({unit: "[Service]\nExecStart=/bin/sleep infinity\nRestart=no\n"})
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "unitgen", "watch", "--user", "--no-health",
         "--metrics-listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while _busctl(sb, "call", "org.unitgen.Recovery1", "/org/unitgen/Recovery1",
                      "org.unitgen.Recovery1", "Status").returncode != 0:  # fmt: skip
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon never owned org.unitgen.Recovery1"
            time.sleep(0.05)
        yield sb, unit, port, env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        sb.systemctl("stop", unit)


def test_a_killed_unit_is_seen_recovering_by_independent_consumers(
    daemon: tuple[Sandbox, str, int, dict[str, str]],
) -> None:
    sb, unit, port, env = daemon
    consumer = subprocess.Popen(
        [sys.executable, "-m", "unitgen", "events", "--user", "--json", "--unit", unit],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert consumer.stderr is not None and consumer.stdout is not None
        deadline = time.monotonic() + 60
        out, err = _Lines(consumer.stdout), _Lines(consumer.stderr)
        assert "(running)" in err.readline(deadline)
        sb.systemctl("start", unit, check=True)
        sb.wait_for(unit, "active", timeout=15)
        sb.kill_main(unit, signal.SIGKILL)
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["event"] not in ("Recovered", "GaveUp"):
            seen.append(json.loads(out.readline(deadline)))
    finally:
        consumer.terminate()
        consumer.wait(timeout=20)
        for stream in (consumer.stdout, consumer.stderr):
            if stream is not None:
                stream.close()
    # The crash itself comes first, once, handed to the ladder (Restart=no).
    crash, *seen = seen
    assert crash["event"] == "Crashed" and crash["incident_id"] == ""
    assert crash["details"]["restarted_by"] == "ladder"
    assert crash["details"]["unit_result"] == "signal"
    assert crash["details"]["exit_code"] == "killed" and crash["details"]["exit_status"] == 9
    kinds = [e["event"] for e in seen]
    assert "Crashed" not in kinds
    # Diagnosis decides whether there is an incident at all, so its StepStarted comes
    # first, with no incident id yet; everything after IncidentOpened carries the id.
    assert seen[0]["event"] == "StepStarted" and seen[0]["details"]["step"] == "diagnosing"
    assert seen[0]["incident_id"] == ""
    assert kinds[1] == "IncidentOpened" and kinds[-1] == "Recovered", kinds
    assert "StepFinished" in kinds and kinds.count("IncidentOpened") == 1
    incident = seen[1]["incident_id"]
    assert incident and all(e["incident_id"] == incident for e in seen[1:])
    assert seen[1]["details"]["classification"] == "signal"  # it was a SIGKILL
    assert all(e["unit"] == unit for e in seen)
    sb.wait_for(unit, "active", timeout=15)

    # The read-only methods over the same bus, typed for busctl.
    res = _busctl(sb, "call", "org.unitgen.Recovery1", "/org/unitgen/Recovery1",
                  "org.unitgen.Recovery1", "History", "s", unit)  # fmt: skip
    assert res.returncode == 0, res.stderr
    reply = json.loads(res.stdout)
    assert reply["type"] == "aa{sv}"
    (record,) = reply["data"][0]
    assert record["incident_id"]["data"] == incident

    # And the fleet's view: a real scrape of the daemon's loopback port.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert re.search(
        rf'^unitgen_incidents_total\{{unit="{re.escape(unit)}",reason="[^"]+"\}} 1$', text, re.M
    )
    assert f'unitgen_unit_state{{unit="{unit}",state="ok"}} 1' in text
    count = "unitgen_recovery_duration_seconds_count"
    assert f'{count}{{unit="{unit}",outcome="recovered"}} 1' in text
