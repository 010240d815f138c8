"""Hostile input at the edges of the running daemon, on a real user manager.

* D-Bus method arguments: an empty name, a 10 kB name, a name with a newline,
  units that are not watched, non-service units. Each gets a one-line D-Bus
  error (or, for History of a unit with no history, an empty reply), never a
  traceback, and the daemon keeps serving on the same process and name.
  (500 concurrent calls from an unprivileged caller: tests/test_flood_sandbox.py;
  each name rule over D-Bus: tests/test_unitnames_dbus.py.)
* Secrets: the token in an alert URL never appears in the journal, the event
  stream's signals, ``status --json``, ``history --json`` or the metrics.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from daemon_sandbox import DAEMON, install_daemon, until
from receivers import Receiver

from unitgen.sandbox import Sandbox
from unitgen.sandbox.layout import base_env

UNITGEN = str(Path(sys.executable).with_name("unitgen"))
NAME = "org.unitgen.Recovery1"
PATH = "/org/unitgen/Recovery1"
SECRET = "tok-9d1e5f0c3b7a"

UNIT_SPEC = """
[defaults]
hardening = "off"
{alerts}
[service.edge]
exec = ["/bin/sleep", "infinity"]
restart = {{ policy = "no" }}
recovery = {{ min_uptime = "1s", backoff = {{ base = "0s" }} }}
"""


def _call(sb: Sandbox, method: str, *args: str) -> subprocess.CompletedProcess[str]:
    signature = "suu" if method == "HistoryPage" else ("s" if args else "")
    argv = ["busctl", "--user", "call", NAME, PATH, NAME, method]
    if signature:
        # "--" ends busctl's options: a name starting with "-" is an argument.
        argv = [*argv, signature, "--", *args]
    return sb.run(argv, timeout=30)


def _serving(sb: Sandbox) -> bool:
    return _call(sb, "Status").returncode == 0


@pytest.mark.parametrize(
    "name",
    ["", "a" * 10240, "a\nb.service", "-x.service", "notwatched.service", "foo.socket", "x.target"],
    ids=["empty", "10kB", "newline", "dash", "unwatched", "socket", "target"],
)
def test_hostile_unit_names_over_dbus(user_sandbox: Sandbox, tmp_path: Path, name: str) -> None:
    sb = user_sandbox
    install_daemon(sb, tmp_path, specs={"edge.toml": UNIT_SPEC.format(alerts="")})
    sb.systemctl("restart", DAEMON, check=True)
    until(lambda: _serving(sb), 20, "the daemon serving")
    pid = sb.main_pid(DAEMON)
    try:
        for method, args in (
            ("History", (name,)),
            ("HistoryPage", (name, "0", "5")),
            ("Reset", (name,)),
            ("Recover", (name,)),
        ):
            res = _call(sb, method, *args)
            out = (res.stdout + res.stderr).strip()
            if res.returncode == 0:
                # Only reads of a valid name of a unit with no history succeed: empty.
                assert method in ("History", "HistoryPage"), (method, out)
                assert out in ("aa{sv} 0", "aa{sv}u 0 0"), (method, out)
            else:
                assert out.startswith("Call failed: "), (method, out)
                assert "\n" not in out and len(out) < 400, (method, out)
            assert _serving(sb), (method, name[:20])
        assert sb.main_pid(DAEMON) == pid
        journal = sb.journal(DAEMON, 400)
        assert "Traceback" not in journal, journal
    finally:
        sb.systemctl("stop", DAEMON)


def test_an_alert_url_token_never_leaks(fresh_user_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = fresh_user_sandbox
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    with Receiver() as receiver:
        url_file = tmp_path / "hook.url"
        url_file.write_text(receiver.url(f"/hook?token={SECRET}") + "\n")
        url_file.chmod(0o600)
        alerts = f'alerts = ["hook"]\n[alert.hook]\ntype = "webhook"\nurl_file = "{url_file}"\n'
        install_daemon(sb, tmp_path, specs={"edge.toml": UNIT_SPEC.format(alerts=alerts)})
        sb.install_units(
            {
                f"{DAEMON}.d/metrics.conf": "[Service]\nExecStart=\n"
                f"ExecStart={UNITGEN} watch --verbose --metrics-textfile {metrics}/unitgen.prom\n"
            }
        )
        sb.systemctl("start", DAEMON, check=True)
        until(lambda: _serving(sb), 20, "the daemon serving")
        sb.systemctl("start", "edge.service", check=True)
        # -u: unbuffered, so the "following" line is seen before the kill.
        follower = subprocess.Popen(
            sb.command(
                [
                    "timeout",
                    "30",
                    sys.executable,
                    "-u",
                    "-m",
                    "unitgen",
                    "events",
                    "--user",
                    "--json",
                    "--count",
                    "6",
                ]
            ),
            env={**base_env(), **sb.inside_env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert follower.stderr is not None
            line = follower.stderr.readline()
            assert "following" in line, line
            sb.kill_main("edge.service")
            until(lambda: len(receiver.requests) >= 2, 30, "firing and resolved")
            out, err = follower.communicate(timeout=40)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.communicate()
        events = [out, err]
        # The token did reach the receiver: the test would see a leak.
        assert all(SECRET in r.path for r in receiver.requests)
        env = {**sb.env, "PATH": "/usr/bin:/bin"}
        outputs = {
            "journal": sb.run(["journalctl", "--no-pager", "-o", "verbose"], timeout=60).stdout,
            "events": "".join(events),
            "status": subprocess.run(
                [UNITGEN, "status", "--user", "--json"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            ).stdout,
            "history": subprocess.run(
                [UNITGEN, "history", "--user", "--json", "edge.service"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            ).stdout,
            "metrics": "".join(p.read_text() for p in metrics.glob("*.prom")),
        }
        assert "edge.service" in outputs["events"], outputs["events"][-2000:]
        assert "edge.service" in outputs["status"] and "edge.service" in outputs["history"]
        assert "unitgen_" in outputs["metrics"], outputs["metrics"][:500]
        for where, text in outputs.items():
            assert SECRET not in text, where
            assert "token=" not in text, where
