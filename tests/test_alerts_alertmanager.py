"""Alertmanager alerts against a real Alertmanager (Debian's prometheus-alertmanager).

Proves the v2 semantics the payload relies on: a firing alert is active and
stays so (endsAt in the future), an escalation with the same labels updates
the same alert (same fingerprint), and "resolved" with endsAt in the past
removes it from the active alerts, leaving other incidents alone.

Skipped when the binary is missing, failed instead under CI=true
(install.sh --dev installs it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from receivers import closed_port
from sandboxlib import in_ci

from handlers.alerts import ALERTMANAGER_FIRING_TTL, Alert, Alerter, AlertTarget

BINARY = "prometheus-alertmanager"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which(BINARY)
    if binary is None:
        message = f"{BINARY} not installed (install.sh --dev installs it)"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    d = tmp_path_factory.mktemp("alertmanager")
    (d / "am.yml").write_text("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
    base = f"http://127.0.0.1:{closed_port()}"
    log_file = (d / "am.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={d / 'am.yml'}",
            f"--storage.path={d / 'data'}",
            f"--web.listen-address={base.removeprefix('http://')}",
            "--cluster.listen-address=",  # no gossip: a single, private instance
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    log_file.close()  # the child has its own copy
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (d / "am.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"alertmanager did not become ready:\n{log}")
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def active(base: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = _get(f"{base}/api/v2/alerts?active=true")
    return [a for a in alerts if a["labels"].get("alertname") == "UnitgenRecovery"]


def send(base: str, alert: Alert) -> None:
    target = AlertTarget.from_mapping(
        {"name": "am", "type": "alertmanager", "url_env": "AM_URL", "labels": {"team": "sre"}}
    )
    (d,) = asyncio.run(Alerter([target], env={"AM_URL": base}).send(alert))
    assert d.ok, d.error


def incident(incident_id: str, **over: Any) -> Alert:
    fields: dict[str, Any] = {
        "unit": "api.service",
        "incident_id": incident_id,
        "level": "restart",
        "status": "firing",
        "reason": "exit-code",
        "summary": "api.service failed",
        "attempts": 1,
        "started_at": time.time() - 30,
        "ended_at": None,
        "host": "node1",
        "labels": {},
    }
    fields.update(over)
    return Alert(**fields)


def test_firing_escalation_resolved_in_real_alertmanager(alertmanager: str) -> None:
    started = time.time() - 30
    send(alertmanager, incident("inc-a", started_at=started))
    send(alertmanager, incident("inc-b", started_at=started, unit="db.service"))
    (a,) = [x for x in active(alertmanager) if x["labels"]["incident"] == "inc-a"]
    assert a["status"]["state"] == "active"
    assert a["labels"] == {
        "alertname": "UnitgenRecovery",
        "unit": "api.service",
        "instance": "node1",
        "incident": "inc-a",
        "reason": "exit-code",
        "severity": "critical",
        "team": "sre",
    }
    ends = datetime.fromisoformat(a["endsAt"].replace("Z", "+00:00")).timestamp()
    assert ends > time.time() + ALERTMANAGER_FIRING_TTL - 3600

    # Escalation: same labels, so Alertmanager updates the one alert it has.
    send(alertmanager, incident("inc-a", started_at=started, level="gave-up", attempts=5))
    (escalated,) = [x for x in active(alertmanager) if x["labels"]["incident"] == "inc-a"]
    assert escalated["fingerprint"] == a["fingerprint"]
    assert escalated["annotations"]["level"] == "gave-up"
    assert escalated["annotations"]["attempts"] == "5"

    # Resolved: endsAt now, so it leaves the active alerts; the other incident stays.
    send(
        alertmanager,
        incident(
            "inc-a", started_at=started, status="resolved", level="gave-up", ended_at=time.time()
        ),
    )
    deadline = time.monotonic() + 10
    while any(x["labels"]["incident"] == "inc-a" for x in active(alertmanager)):
        assert time.monotonic() < deadline, "resolved alert still active"
        time.sleep(0.05)
    assert [x["labels"]["incident"] for x in active(alertmanager)] == ["inc-b"]
