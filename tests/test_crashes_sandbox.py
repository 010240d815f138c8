"""Every crash seen, on the real manager: three quick crashes that systemd fixes itself.

`unitgen watch` runs as the daemon it is in production, against a user manager. The
unit has Restart=on-failure and crashes three times in a row; systemd restarts it
each time and the listener stands down each time, yet the event stream carries three
``Crashed`` signals, Prometheus counts three restarts by systemd, and the service's
``alert_on = { restarts = 3 }`` sends exactly one flapping alert, with a digest of the
three crashes, to a real webhook receiver.
"""

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
from pathlib import Path
from typing import IO, Any

from receivers import Receiver

from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _readline(stream: IO[str], deadline: float) -> str:
    """One line from a pipe by a deadline (raw fd reads: no line lost in a buffer)."""
    import select

    fd = stream.fileno()
    buf = _BUFFERS.setdefault(fd, b"")
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        assert left > 0, "no line before the deadline"
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, "stream ended"
            buf += chunk
    line, _, _BUFFERS[fd] = buf.partition(b"\n")
    return line.decode()


_BUFFERS: dict[int, bytes] = {}


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _status_ok(sb: Sandbox) -> bool:
    return (
        subprocess.run(
            ["busctl", f"--address={sb.bus_address}", "call", "org.unitgen.Recovery1",
             "/org/unitgen/Recovery1", "org.unitgen.Recovery1", "Status"],
            capture_output=True, timeout=30, check=False,
        ).returncode
        == 0
    )  # fmt: skip


def test_three_quick_crashes_systemd_fixes_give_three_crashed_and_one_flapping_alert(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    unit = f"ug-flap-{uuid.uuid4().hex[:8]}.service"
    counter = tmp_path / "starts"
    # Exits 3 on its first three runs, then stays up: three crashes systemd restarts.
    script = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        "[ $n -le 3 ] && exit 3; exec sleep infinity"
    )
    sb.install_units(
        {
            unit: "[Unit]\nStartLimitBurst=10\nStartLimitIntervalSec=60\n"
            f"[Service]\nExecStart=/bin/sh -c '{script}'\nRestart=on-failure\nRestartSec=200ms\n"
        }
    )
    policy_dir = Path(sb.env["UNITGEN_POLICY_DIR"])
    policy_dir.mkdir(parents=True, exist_ok=True)
    hook = {"name": "ops", "type": "webhook", "url_env": "UG_TEST_HOOK", "retries": 1}
    policy = {"unit": unit, "version": 1, "alerts": [hook],
              "alert_on": {"restarts": 3, "within": 600.0}}  # fmt: skip
    (policy_dir / f"{unit}.json").write_text(json.dumps(policy))
    port = _free_port()
    with Receiver() as receiver:
        env = {**os.environ, **sb.env, "PYTHONPATH": str(REPO), "UG_TEST_HOOK": receiver.url()}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "unitgen", "watch", "--user", "--no-health",
             "--metrics-listen", f"127.0.0.1:{port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        consumer: subprocess.Popen[str] | None = None
        try:
            deadline = time.monotonic() + 40
            while not _status_ok(sb):
                assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
                assert time.monotonic() < deadline, "the daemon never owned its bus name"
                time.sleep(0.05)
            consumer = subprocess.Popen(
                [sys.executable, "-m", "unitgen", "events", "--user", "--json", "--unit", unit],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert consumer.stdout is not None and consumer.stderr is not None
            assert "(running)" in _readline(consumer.stderr, time.monotonic() + 30)

            sb.systemctl("start", unit, check=False)  # the first run fails at once
            deadline = time.monotonic() + 40
            crashed: list[dict[str, Any]] = []
            others: list[str] = []
            while len(crashed) < 3:
                event = json.loads(_readline(consumer.stdout, deadline))
                if event["event"] == "Crashed":
                    crashed.append(event)
                else:
                    others.append(event["event"])
            sb.wait_for(
                unit, lambda p: p.get("SubState") == "running" and p.get("NRestarts") == "3", 20
            )
            # The alert went out with the third crash; wait for it (by deadline).
            (alert,) = receiver.wait_for(1, timeout=20)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                metrics = r.read().decode()
        finally:
            if consumer is not None:
                _stop(consumer)
            # A clean stop drains the alert sends still running: nothing is in flight.
            _stop(daemon)
            sb.systemctl("stop", unit)
        requests = list(receiver.requests)

    # Three crashes, each reported once, each left to systemd: no ladder ran.
    assert others == [], others
    assert [e["details"]["restarted_by"] for e in crashed] == ["systemd"] * 3
    assert [e["details"]["n_restarts"] for e in crashed] == [0, 1, 2]
    assert all(e["details"]["unit_result"] == "exit-code" for e in crashed)
    assert all(e["details"]["exit_status"] == 3 for e in crashed)
    assert all(e["details"]["exit_code"] == "exited" for e in crashed)
    assert len({e["details"]["invocation_id"] for e in crashed}) == 3
    assert re.search(
        rf'^unitgen_unit_restarts_total\{{unit="{re.escape(unit)}",by="systemd"\}} 3$',
        metrics,
        re.M,
    ), metrics
    assert f'unitgen_unit_restarts_total{{unit="{unit}",by="ladder"}}' not in metrics
    # Three crashes, three reports: none for the runs systemd started after them.
    assert 'unitgen_events_total{event="Crashed"} 3\n' in metrics, metrics

    # Exactly one flapping alert, with the digest of the three crashes.
    assert len(requests) == 1, [r.body for r in requests]
    body = json.loads(alert.body)
    assert body["status"] == "firing" and body["level"] == "flapping"
    assert body["unit"] == unit and body["reason"] == "flapping"
    digest = body["digest"]
    assert [d["exit_status"] for d in digest] == [3, 3, 3]
    assert [d["result"] for d in digest] == ["exit-code"] * 3
    assert [d["n_restarts"] for d in digest] == [0, 1, 2]
    assert "crashed 3 times within 10min" in body["summary"]


_WRITER = """
import sys
from handlers.events import Event, EventKind
from handlers.flapping import Crash
from handlers.journal import JournalSink
sink = JournalSink()
crash = Crash(1.7e9, "exit-code", "exited", 3, 2, "systemd")
sink.emit(Event(EventKind.CRASHED, sys.argv[1], "", crash.fields("ab" * 16), crash.at))
sink.close()
print(sink.sent, sink.fallbacks, sink.dropped)
"""


def test_real_journald_stores_a_crash_under_its_message_id(user_sandbox: Sandbox) -> None:
    from handlers.events import EventKind
    from handlers.journal import MESSAGE_IDS

    unit = f"ug-crash-{uuid.uuid4().hex[:8]}.service"
    res = user_sandbox.run([sys.executable, "-c", _WRITER, unit], env={"PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1", "0", "0"]
    message_id = MESSAGE_IDS[EventKind.CRASHED]
    deadline = time.monotonic() + 10
    while True:
        out = user_sandbox.run(
            ["journalctl", "--no-pager", "-o", "json", f"MESSAGE_ID={message_id}",
             f"UNITGEN_UNIT={unit}"]
        )  # fmt: skip
        if out.stdout.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling journald with a deadline; it indexes asynchronously
    (entry,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert entry["UNITGEN_EVENT"] == "Crashed"
    assert entry["UNITGEN_UNIT_RESULT"] == "exit-code"
    assert entry["UNITGEN_EXIT_CODE"] == "exited"
    assert entry["UNITGEN_EXIT_STATUS"] == "3"
    assert entry["UNITGEN_N_RESTARTS"] == "2"
    assert entry["UNITGEN_RESTARTED_BY"] == "systemd"
    assert entry["UNITGEN_INVOCATION_ID"] == "ab" * 16
    assert (
        entry["MESSAGE"]
        == f"{unit}: crashed (exit-code, status 3, 2 restarts); systemd restarts it"
    )
