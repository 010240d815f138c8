"""200 of 1,000 watched units need one service that dies: grouped against per-unit.

A user sandbox runs 1,000 watched units: ``db.service``, 200 ``app@N.service``
that ``Requires=`` and ``After=`` it, and 799 idle ``idle@N.service``. The service
holds the write end of a FIFO every app reads, so killing it fails all 200 at the
same moment (EOF, exit 3), as clients of a dead database do. Each round starts a
fresh ``unitgen watch --user`` (fresh history), kills the service, and measures
until every unit is active again and the alerts have settled:

* time to all active (kill -> the last of the 201 active, polled every 50 ms);
* ladder restarts issued (the history's ``restart`` rows);
* listener CPU (utime + stime of the daemon from the kill to the end of the settle);
* alerts sent (POSTs at a local webhook receiver, firing and resolved).

"today" is the daemon from a ``git archive`` of ``--baseline`` (default: the
merge base with ``main``), "grouped" this checkout; they alternate, round by round.

``--generated`` measures the path generated units take instead: the same
scenario rendered by ``unitgen render --user`` from a spec the bench writes
(``gdb`` and a ``gapp@`` template that ``requires`` it, ``restart`` on-failure,
the default strict hardening, OnFailure= to the recovery unit), installed beside
the hand-written set, both watched by this checkout's daemon. Rounds alternate
between killing ``db.service`` (hand-written) and ``gdb.service`` (generated).
systemd's own restarts (its "Scheduled restart job" journal lines) are counted
beside the ladder's, split into the cause and its dependents: with Restart=
systemd restarts first, and the ladder takes over only when it gives up.

    /opt/unitgen/bin/python bench/bench_correlation.py --rounds 2
    /opt/unitgen/bin/python bench/bench_correlation.py --generated --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from unitgen.paths import Scope  # noqa: E402
from unitgen.sandbox import Sandbox  # noqa: E402

DB = "db.service"
GEN_DB = "gdb.service"
GEN_APP = "gapp@"
# systemd's own restarts, counted two ways: the manager logs this line when Restart=
# schedules one (a journal may drop lines under a burst), and NRestarts grows by one
# (but a start not by Restart=, as the ladder's, resets it).
SCHEDULED = "Scheduled restart job"
SETTLE = 8.0  # seconds after all are active: resolutions (a group lingers 5 s) go out
RUNNER = (
    "import sys; sys.path.insert(0, sys.argv[1]); import unitgen; "
    "assert unitgen.__file__.startswith(sys.argv[1]), unitgen.__file__; "
    "from unitgen.cli import main; sys.exit(main(sys.argv[2:]))"
)


class Hook:
    """A webhook receiver counting what it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    hook.bodies.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _active(sb: Sandbox, pattern: str) -> int:
    res = sb.systemctl("list-units", "--no-legend", "--plain", "--state=active", pattern)
    return len([line for line in res.stdout.splitlines() if line.strip()])


def _policies(policy_dir: Path) -> None:
    policy_dir.mkdir(parents=True, exist_ok=True)
    for unit in (DB, "app@.service", "idle@.service"):
        body = {
            "unit": unit,
            "version": 1,
            "recovery": {"min_uptime": 0.5},
            "alerts": [{"name": "hook", "type": "webhook", "url_env": "BENCH_HOOK"}],
        }
        (policy_dir / f"{unit}.json").write_text(json.dumps(body))


def generated_spec(fifo: Path) -> str:
    """The spec an operator writes for the scenario: the service and its dependents.

    ``restart`` and hardening are left as an operator leaves them: the policy
    and the profile's defaults. The FIFO must live where the strict profile still
    shows it (not /tmp: PrivateTmp=); opening a FIFO for writing works on the
    read-only ProtectSystem= view.
    """
    app = GEN_APP.removesuffix("@")
    return f"""\
[alert.hook]
type = "webhook"
url_env = "BENCH_HOOK"

[defaults]
alerts = ["hook"]

[service.{GEN_DB.removesuffix(".service")}]
description = "bench: the service every client needs"
exec = ["/bin/sh", "-c", {json.dumps(f"exec 3<>{fifo}; exec sleep infinity")}]
restart = {{ policy = "on-failure" }}
recovery = {{ min_uptime = "0.5s" }}

[service."{app}@"]
description = "bench: a client of {GEN_DB}"
exec = ["/bin/sh", "-c", {json.dumps(f"read x < {fifo}; exit 3")}]
requires = ["{GEN_DB}"]
after = ["{GEN_DB}"]
restart = {{ policy = "on-failure" }}
recovery = {{ min_uptime = "0.5s" }}
"""


def _render(work: Path, fifo: Path, policy_dir: Path) -> Path:
    """Render the generated set with this checkout's generator; return its unit directory."""
    spec = work / "generated.toml"
    spec.write_text(generated_spec(fifo))
    out = work / "rendered"
    subprocess.run(
        [
            *(sys.executable, "-c", RUNNER, str(REPO), "render", "--user", str(spec)),
            *("--out", str(out), "--policy-dir", str(policy_dir)),
            *("--unitgen-bin", str(Path(sys.executable).with_name("unitgen"))),
        ],
        check=True,
        capture_output=True,
    )
    return out


def scheduled_restarts(journal_json: str) -> dict[str, int]:
    """Restarts systemd scheduled, by unit, from ``journalctl -o json`` lines."""
    out: dict[str, int] = {}
    for line in journal_json.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        message = entry.get("MESSAGE")
        unit = entry.get("USER_UNIT") or entry.get("UNIT")
        if isinstance(message, str) and SCHEDULED in message and isinstance(unit, str):
            out[unit] = out.get(unit, 0) + 1
    return out


def n_restarts(show: str) -> dict[str, int]:
    """NRestarts by unit, from ``systemctl show -p Id,NRestarts`` output."""
    out: dict[str, int] = {}
    for block in show.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in props and props.get("NRestarts", "").isdigit():
            out[props["Id"]] = int(props["NRestarts"])
    return out


def _n_restarts(sb: Sandbox, db: str, app: str) -> tuple[int, int]:
    res = sb.systemctl("show", "-p", "Id,NRestarts", db, f"{app}*", check=True, timeout=120)
    counts = n_restarts(res.stdout)
    return counts.get(db, 0), sum(n for unit, n in counts.items() if unit.startswith(app))


def _systemd_restarts(sb: Sandbox, since: float) -> dict[str, int]:
    res = sb.run(
        ["journalctl", "--no-pager", "--quiet", "-o", "json", f"--since=@{int(since)}"],
        timeout=120,
    )
    return scheduled_restarts(res.stdout)


def _round(
    sb: Sandbox,
    work: Path,
    code: Path,
    hook: Hook,
    dependents: int,
    db: str = DB,
    app: str = "app@",
) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    run = Path(tempfile.mkdtemp(prefix="unitgen-bench-run-", dir="/dev/shm"))
    env = {
        **os.environ,
        **sb.env,
        "UNITGEN_STATE_DIR": str(state),
        "UNITGEN_RUN_DIR": str(run / "unitgen"),
        "BENCH_HOOK": hook.url,
    }
    log = (work / "watch.log").open("ab")
    daemon = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(code), "watch", "--user", "--no-health", "--no-export"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()
    try:
        # Ready once it has reconciled: the history database exists and a second passed.
        deadline = time.monotonic() + 60
        while not any(state.rglob("*.sqlite3")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)
        sent_before = len(hook.bodies)
        n_cause0, n_dependents0 = _n_restarts(sb, db, app)
        cpu0 = _cpu(daemon.pid)
        wall = time.time() - 1.0  # the journal's --since takes whole seconds
        killed = time.monotonic()
        sb.kill_main(db)
        while not (
            _active(sb, f"{app}*") == dependents
            and sb.show(db, "ActiveState")["ActiveState"] == "active"
        ):
            if time.monotonic() - killed > 180:
                raise RuntimeError("not all active again within 180 s")
            time.sleep(0.05)
        all_active = time.monotonic() - killed
        time.sleep(SETTLE)
        cpu = _cpu(daemon.pid) - cpu0
        n_cause, n_dependents = _n_restarts(sb, db, app)
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(run, ignore_errors=True)
    bodies = hook.bodies[sent_before:]
    (database,) = state.rglob("*.sqlite3")
    with sqlite3.connect(database) as conn:
        restarts = conn.execute("SELECT count(*) FROM attempts WHERE action = 'restart'").fetchone()
        cause = conn.execute(
            "SELECT count(*) FROM attempts WHERE action = 'restart' AND unit = ?", (db,)
        ).fetchone()
    by_systemd = _systemd_restarts(sb, wall)
    return {
        "all_active_s": all_active,
        "restarts": float(restarts[0]),
        "restarts_cause": float(cause[0]),
        "systemd_cause": float(by_systemd.get(db, 0)),
        "systemd_dependents": float(
            sum(n for unit, n in by_systemd.items() if unit.startswith(app))
        ),
        "nrestarts_cause": float(n_cause - n_cause0),
        "nrestarts_dependents": float(n_dependents - n_dependents0),
        "cpu_s": cpu,
        "alerts_firing": float(sum(b["status"] == "firing" for b in bodies)),
        "alerts_resolved": float(sum(b["status"] == "resolved" for b in bodies)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of each, alternating")
    p.add_argument("--dependents", type=int, default=200)
    p.add_argument("--units", type=int, default=1000, help="watched units in all")
    p.add_argument("--baseline", default="", help="git ref of today's code (default: merge base)")
    p.add_argument(
        "--generated",
        action="store_true",
        help="hand-written units against the generator's, both with this checkout's daemon",
    )
    args = p.parse_args()
    if args.generated:
        _main_generated(args)
        return
    baseline = (
        args.baseline
        or subprocess.run(
            ["git", "-C", str(REPO), "merge-base", "HEAD", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    work = Path(tempfile.mkdtemp(prefix="unitgen-corr-"))
    try:
        today = work / "today"
        today.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", baseline], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(today)], input=archive, check=True)
        fifo = work / "db.fifo"
        os.mkfifo(fifo)
        hook = Hook()
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            _policies(Path(sb.env["UNITGEN_POLICY_DIR"]))
            idle = args.units - args.dependents - 1
            sb.install_units(
                {
                    DB: f"[Service]\nExecStart=/bin/sh -c 'exec 3<>{fifo}; exec sleep infinity'\n",
                    "app@.service": f"[Unit]\nRequires={DB}\nAfter={DB}\n[Service]\n"
                    f"ExecStart=/bin/sh -c 'read x < {fifo}; exit 3'\n",
                    "idle@.service": "[Service]\nExecStart=/bin/sleep infinity\n",
                }
            )
            names = [DB] + [f"app@{i}.service" for i in range(args.dependents)]
            names += [f"idle@{i}.service" for i in range(idle)]
            for i in range(0, len(names), 200):
                sb.systemctl("start", *names[i : i + 200], check=True, timeout=300)
            load = os.getloadavg()
            results: dict[str, list[dict[str, float]]] = {"today": [], "grouped": []}
            for r in range(args.rounds):
                order = [("today", today), ("grouped", REPO)]
                if r % 2:
                    order.reverse()
                for name, code in order:
                    results[name].append(_round(sb, work, code, hook, args.dependents))
                    print(name, results[name][-1], file=sys.stderr)
        _table(results, args, baseline, load)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _main_generated(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="unitgen-corr-"))

    fifos = Path(tempfile.mkdtemp(prefix="unitgen-corr-", dir="/var/lib"))
    try:
        fifo, gen_fifo = work / "db.fifo", fifos / "gdb.fifo"
        os.mkfifo(fifo)
        os.mkfifo(gen_fifo)
        hook = Hook()
        with Sandbox.start(Scope.USER, share=[work, fifos]) as sb:
            policy_dir = Path(sb.env["UNITGEN_POLICY_DIR"])
            _policies(policy_dir)
            sb.install_units(_render(work, gen_fifo, policy_dir), reload=False)
            sb.install_units(
                {
                    DB: f"[Service]\nExecStart=/bin/sh -c 'exec 3<>{fifo}; exec sleep infinity'\n",
                    "app@.service": f"[Unit]\nRequires={DB}\nAfter={DB}\n[Service]\n"
                    f"ExecStart=/bin/sh -c 'read x < {fifo}; exit 3'\n",
                    "idle@.service": "[Service]\nExecStart=/bin/sleep infinity\n",
                }
            )
            idle = args.units - 2 * (args.dependents + 1)
            names = [DB, GEN_DB] + [f"app@{i}.service" for i in range(args.dependents)]
            names += [f"{GEN_APP}{i}.service" for i in range(args.dependents)]
            names += [f"idle@{i}.service" for i in range(idle)]
            for i in range(0, len(names), 200):
                res = sb.systemctl("start", *names[i : i + 200], timeout=300)
                if res.returncode:
                    sys.exit(f"{res.stderr.strip()}\n{sb.journal(GEN_DB)}")
            load = os.getloadavg()
            results: dict[str, list[dict[str, float]]] = {"hand-written": [], "generated": []}
            for r in range(args.rounds):
                order = [("hand-written", DB, "app@"), ("generated", GEN_DB, GEN_APP)]
                if r % 2:
                    order.reverse()
                for name, db, app in order:
                    results[name].append(
                        _round(sb, work, REPO, hook, args.dependents, db=db, app=app)
                    )
                    print(name, results[name][-1], file=sys.stderr)
            end = os.getloadavg()
        print(
            f"\n{args.dependents} of {args.units} watched units need {DB} (hand-written) or "
            f"{GEN_DB} (generated: {GEN_APP}N.service need it), {args.dependents} of each set "
            f"killed once a round; {args.rounds} round(s) each, alternating; daemon = this "
            f"checkout; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, "
            f"at the end {end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f}\n"
        )
        _rows(results, "hand-written", "generated")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(fifos, ignore_errors=True)


KEYS = [
    ("all_active_s", "time to all active (s)"),
    ("restarts", "ladder restarts issued"),
    ("restarts_cause", "... of them the dying service's"),
    ("systemd_cause", "systemd's own restarts of the dying service (journal)"),
    ("systemd_dependents", "systemd's own restarts of its dependents (journal)"),
    ("nrestarts_cause", "NRestarts growth, the dying service"),
    ("nrestarts_dependents", "NRestarts growth, its dependents"),
    ("cpu_s", "listener CPU, kill to settled (s)"),
    ("alerts_firing", "alerts sent: firing"),
    ("alerts_resolved", "alerts sent: resolved"),
]


def _rows(results: dict[str, list[dict[str, float]]], first: str, second: str) -> None:
    head = f"| measure | {first} (median; rounds) | {second} (median; rounds) |"
    print(f"{head} {second} / {first} |")
    print("|---|---|---|---|")
    for key, label in KEYS:
        xs, ys = [x[key] for x in results[first]], [x[key] for x in results[second]]
        a, b = statistics.median(xs), statistics.median(ys)
        ratio = f"{b / a:.2f}" if a else "-"
        each = ", ".join
        print(
            f"| {label} | {a:.3g} ({each(f'{x:.3g}' for x in xs)}) | "
            f"{b:.3g} ({each(f'{y:.3g}' for y in ys)}) | {ratio} |"
        )


def _table(
    results: dict[str, list[dict[str, float]]],
    args: argparse.Namespace,
    baseline: str,
    load: tuple[float, float, float],
) -> None:
    print(
        f"\n{args.dependents} of {args.units} watched units need {DB}, killed once a round; "
        f"{args.rounds} round(s) each, alternating; today = {baseline[:10]}; "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}\n"
    )
    _rows(results, "today", "grouped")


if __name__ == "__main__":
    main()
