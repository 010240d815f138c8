"""Start-up grace and health gates on a real user manager.

A slow starter (its port opens seconds after systemd calls it active) with a
``start_period`` is never restarted, while the same unit without one is
restarted by the ladder; and with ``health.gate`` a dependent ordered
``After=`` it starts only once the probe passes, even past ``TimeoutStartSec=``
thanks to ``EXTEND_TIMEOUT_USEC``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from daemon_sandbox import DAEMON, UNITGEN, history, install_daemon, until

from unitgen.sandbox import Sandbox

# Opens its port only after DELAY seconds, then accepts for ever.
SLOW_SERVER = (
    "import socket, sys, time; time.sleep(float(sys.argv[2])); "
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(16); "
    "[s.accept()[0].close() for _ in iter(int, 1)]"
)
# Exits 0 only if the port already accepts: what a dependent needs at its start.
NEEDS_PORT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service(name: str, port: int, delay: float, health: str, extra: str = "") -> str:
    argv = json.dumps(["/usr/bin/python3", "-c", SLOW_SERVER, str(port), str(delay)])
    return (
        f'[service.{name}]\nexec = {argv}\nhardening = "off"\n{extra}'
        f'health = {{ tcp = "127.0.0.1:{port}", {health} }}\n'
    )


def _render(sb: Sandbox, tmp_path: Path, spec: str) -> None:
    (tmp_path / "spec.toml").write_text(spec)
    out = tmp_path / "rendered"
    res = subprocess.run(
        [
            str(UNITGEN),
            "render",
            str(tmp_path / "spec.toml"),
            "--user",
            "--out",
            str(out),
            "--policy-dir",
            sb.env["UNITGEN_POLICY_DIR"],
            "--unitgen-bin",
            str(UNITGEN),
        ],
        capture_output=True,
        text=True,
        env={**sb.env, "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    sb.install_units(out)


def _ladder_restarts(sb: Sandbox, unit: str) -> list[object]:
    return [
        a
        for inc in history(sb, unit)
        for a in inc.get("attempts", [])
        if "restart" in str(a.get("action", ""))
    ]


def test_gate_orders_a_dependent_after_health_past_the_start_timeout(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    port = _free_port()
    # The port opens after 4 s, TimeoutStartSec= is 2 s: only EXTEND_TIMEOUT_USEC from
    # the gate (accepted with NotifyAccess=exec) keeps the start from timing out.
    spec = _service(
        "gated",
        port,
        4.0,
        'gate = true, start_period = "30s", start_interval = "200ms"',
        extra='timeout_start = "2s"\n',
    )
    _render(sb, tmp_path, spec)
    dependent = (
        "[Unit]\nRequires=gated.service\nAfter=gated.service\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        f'ExecStart=/usr/bin/python3 -c "{NEEDS_PORT}" {port}\n'
    )
    sb.install_units({"dependent.service": dependent})
    started = time.monotonic()
    res = sb.systemctl("start", "dependent.service", timeout=60)
    took = time.monotonic() - started
    try:
        why = sb.journal("gated.service", 40) + sb.journal("dependent.service")
        assert res.returncode == 0, why
        assert took >= 3.5, took  # it did wait for the port
        gated = sb.show("gated.service", "ActiveState", "NRestarts", "NotifyAccess")
        assert gated == {"ActiveState": "active", "NRestarts": "0", "NotifyAccess": "exec"}
        assert sb.show("dependent.service", "ActiveState")["ActiveState"] == "active"
        assert "healthy after" in sb.journal("gated.service", 40)
    finally:
        sb.systemctl("stop", "dependent.service", "gated.service")


def test_gate_that_never_passes_fails_the_start(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    port = _free_port()
    spec = _service(
        "never",
        port,
        3600.0,
        'gate = true, start_period = "2s", start_interval = "200ms"',
        extra='restart = { policy = "no" }\n',
    )
    _render(sb, tmp_path, spec)
    res = sb.systemctl("start", "never.service", timeout=60)
    assert res.returncode != 0
    props = sb.show("never.service", "ActiveState", "Result")
    assert props == {"ActiveState": "failed", "Result": "exit-code"}, props
    assert "not healthy within start_period 2s" in sb.journal("never.service", 40)


def test_never_healthy_gated_unit_trips_the_start_limit(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    port = _free_port()
    # Each start fails its gate after about 1 s; 3 such starts do not fit in 2 s, so
    # with StartLimitIntervalSec=2s systemd would restart it for ever. The renderer
    # widens the window to hold them, and the limit trips.
    spec = _service(
        "hopeless",
        port,
        3600.0,
        'gate = true, start_period = "1s", start_interval = "200ms", timeout = "300ms"',
        extra='restart = { policy = "on-failure", delay = "100ms", burst = 3, interval = "2s" }\n',
    )
    _render(sb, tmp_path, spec)
    unit = "hopeless.service"
    assert sb.show(unit, "StartLimitIntervalUSec")["StartLimitIntervalUSec"] == "5s"
    sb.systemctl("start", "--no-block", unit, check=True)
    try:
        until(
            lambda: "Start request repeated too quickly" in sb.journal(unit, 80),
            30,
            "the start limit tripped",
        )
    finally:
        sb.systemctl("stop", unit)


def test_slow_starter_with_start_period_is_never_restarted(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    graced, eager = _free_port(), _free_port()
    probe = 'interval = "300ms", timeout = "300ms", failures = 2, start_interval = "300ms"'
    spec = _service("graced", graced, 5.0, f'{probe}, start_period = "30s"')
    # The behaviour without a start period: failures count from the first probe.
    spec += _service("eager", eager, 5.0, f"{probe}, start_period = 0")
    install_daemon(sb, tmp_path, specs={"spec.toml": spec})
    try:
        sb.systemctl("start", DAEMON, check=True)
        sb.wait_for(DAEMON, "active", 15)
        sb.systemctl("start", "graced.service", "eager.service", check=True)
        first = sb.show("graced.service", "InvocationID")["InvocationID"]
        # The eager twin is restarted by the ladder before its port ever opens...
        try:
            until(lambda: _ladder_restarts(sb, "eager.service"), 30, "eager restarted")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sb.journal(DAEMON, 80)}") from None
        # ...while the graced one opens its port and stays healthy, on its first run.
        until(lambda: _accepts(graced), 30, "graced port open")
        until(lambda: "graced.service: started" in sb.journal(DAEMON, 400), 10, "started")
        props = sb.show("graced.service", "ActiveState", "NRestarts", "InvocationID")
        assert props == {"ActiveState": "active", "NRestarts": "0", "InvocationID": first}
        assert _ladder_restarts(sb, "graced.service") == []
        assert "graced.service: unhealthy" not in sb.journal(DAEMON, 400)
    finally:
        sb.systemctl("stop", DAEMON, "graced.service", "eager.service")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return False
    return True
