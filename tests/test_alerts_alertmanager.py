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
from pathlib import Path
from typing import Any

import pytest
from receivers import HangingServer, closed_port
from sandboxlib import in_ci

from handlers.alertkeeper import AlertKeeper
from handlers.alertmodel import ALERTMANAGER_FIRING_TTL, ENDS_AFTER_INTERVALS
from handlers.alerts import Alert, Alerter, AlertTarget

BINARY = "prometheus-alertmanager"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class Instance:
    """One real Alertmanager on a fixed address, which can be stopped and started again."""

    def __init__(self, binary: str, d: Path) -> None:
        self.binary, self.d = binary, d
        (d / "am.yml").write_text(
            "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n"
        )
        self.base = f"http://127.0.0.1:{closed_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log_file = (self.d / "am.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.d / 'am.yml'}",
                f"--storage.path={self.d / 'data'}",
                f"--web.listen-address={self.base.removeprefix('http://')}",
                "--cluster.listen-address=",  # no gossip: a single, private instance
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        log_file.close()  # the child has its own copy
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/-/ready", timeout=1).close()
                return
            except (urllib.error.URLError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.d / "am.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"alertmanager did not become ready:\n{log}")
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _binary() -> str:
    binary = shutil.which(BINARY)
    if binary is None:
        message = f"{BINARY} not installed (install.sh --dev installs it)"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    am = Instance(_binary(), tmp_path_factory.mktemp("alertmanager"))
    am.start()
    try:
        yield am.base
    finally:
        am.stop()


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
    # endsAt a few resend intervals ahead (not a day), and the link back to unitgen.
    ends = datetime.fromisoformat(a["endsAt"].replace("Z", "+00:00")).timestamp()
    assert abs(ends - (time.time() + ALERTMANAGER_FIRING_TTL)) < 30
    assert ALERTMANAGER_FIRING_TTL == ENDS_AFTER_INTERVALS * 60.0 == 240.0
    assert a["generatorURL"] == "unitgen://node1/api.service?incident=inc-a"

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


def _ids(base: str) -> list[str]:
    return sorted(x["labels"]["incident"] for x in active(base))


def test_an_ha_cluster_gets_it_at_every_live_member_despite_dead_and_hanging_ones(
    alertmanager: str,
) -> None:
    target = AlertTarget.from_mapping(
        {"name": "am", "type": "alertmanager", "url_env": "AM_URLS", "timeout": 1.0,
         "retries": 1, "generator_url": "https://grafana.example.org/d/unitgen"}
    )  # fmt: skip
    with HangingServer() as hanging:
        dead = f"http://127.0.0.1:{closed_port()}"
        # One URL a line (or comma-separated): the cluster's members.
        urls = f"{dead}\n{hanging.url()},\n{alertmanager}/"
        alerter = Alerter([target], env={"AM_URLS": urls})
        started = time.monotonic()
        (d,) = asyncio.run(alerter.send(incident("inc-ha", unit="ha.service")))
        took = time.monotonic() - started
    # The live member took it: a delivery, naming the two that did not.
    assert d.ok and d.error is not None, d
    assert "refused" in d.error.lower() or "connect" in d.error.lower(), d.error
    assert f"127.0.0.1:{hanging.port}" in d.error
    assert took <= target.time_bound() + 1.0
    (a,) = [x for x in active(alertmanager) if x["labels"]["incident"] == "inc-ha"]
    assert a["generatorURL"] == "https://grafana.example.org/d/unitgen"


def test_an_alertmanager_restart_mid_incident_loses_nothing(
    tmp_path: Path,
) -> None:
    """Alertmanager keeps alerts in memory: restarted, it knows none until the next
    re-send, which the keeper makes every resend_interval."""
    am = Instance(_binary(), tmp_path)
    am.start()
    # The spec allows 30 s to 3 min; the runtime takes any interval, so the test is short.
    interval = 2.0
    target = AlertTarget(
        name="am", type="alertmanager", timeout=2.0, retries=0, send_resolved=True,
        url_env="AM_URL", resend_interval=interval,
    )  # fmt: skip

    async def scenario() -> None:
        keeper = AlertKeeper()
        alerter = Alerter([target], env={"AM_URL": am.base}, keeper=keeper)
        try:
            (d,) = await alerter.send(incident("inc-r", unit="restarted.service"))
            assert d.ok, d.error
            assert _ids(am.base) == ["inc-r"]
            assert len(keeper) == 1

            sent = keeper.resends
            am.stop()
            am.start()
            if _ids(am.base):  # only if a re-send came in between: the restart forgot it
                assert keeper.resends > sent
            else:
                sent = keeper.resends
            deadline = time.monotonic() + 5 * interval
            while _ids(am.base) != ["inc-r"]:
                assert time.monotonic() < deadline, "the alert never came back"
                await asyncio.sleep(0.1)
            assert keeper.resends > sent
            (back,) = active(am.base)
            ends = datetime.fromisoformat(back["endsAt"].replace("Z", "+00:00")).timestamp()
            assert ends <= time.time() + ENDS_AFTER_INTERVALS * interval + 1

            # Resolved: sent once, and no longer re-sent.
            (r,) = await alerter.send(
                incident("inc-r", unit="restarted.service", status="resolved",
                         ended_at=time.time())
            )  # fmt: skip
            assert r.ok, r.error
            assert len(keeper) == 0
            deadline = time.monotonic() + 10
            while _ids(am.base):
                assert time.monotonic() < deadline, "resolved alert still active"
                await asyncio.sleep(0.1)
        finally:
            await keeper.aclose()

    try:
        asyncio.run(scenario())
    finally:
        am.stop()
