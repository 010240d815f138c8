"""monit and supervisord next to systemd's own restart. Not a test.

Run (root; a disposable user manager is started for the systemd rows, monit and
supervisord run as plain processes under a child-subreaper harness):

    /opt/unitgen/bin/python bench/bench_supervisors.py --trials 60

Method (docs/listener.md, "Benchmarks"), the same as bench_listener.py latency:
the service is bench/stamp.c, a static C program that writes its CLOCK_MONOTONIC
start time to a FIFO first thing in main(). A trial reads the supervisor's idea
of the main PID, records CLOCK_MONOTONIC, sends SIGKILL to that PID and waits
for the new program's timestamp, then pauses 0.3 s plus a random 0..JITTER s
(``--jitter``, default 1.0). monit and supervisord act on 1 s cycles, and with a
fixed pause the kills lock to a phase of that cycle (the round takes about as
long each time), which biases their figures either way; a jitter of one whole
period makes the kill time uniform over the cycle, as a crash's would be.
All rows run in the same run, in alternation, each with its own FIFO:

* ``systemd RestartSec=0``      Restart=always, RestartSec=0 (the baseline for ratios)
* ``systemd RestartSec=100ms``  Restart=always and systemd's default RestartSec
* ``monit (set daemon 1)``      ``check process ... with pidfile``; the start program
                                is ``sh -c 'stamp FIFO & echo $! > PIDFILE'``: the stamp
                                program neither daemonizes nor writes a pidfile, and
                                monit waits for a start program to exit
* ``supervisord``               ``autorestart=true``, ``startsecs=0``; control socket on
                                a unix socket only; the PID comes from ``supervisorctl pid``
* ``generated unit``            a unit as ``unitgen render --user`` writes it
                                (Restart=on-failure, RestartSec=100ms, StartLimitBurst=3,
                                OnFailure=unitgen-recover@%n.service and the recovery unit),
                                with the daemon's own rendered ``unitgen-watch.service``
                                running in the same user manager. Each trial kills it until
                                systemd gives up: two rows, the kills systemd restarts
                                itself (RestartSec=100ms) and the kill refused by the start
                                limit (systemd gives up, ``unitgen watch`` restarts it; the
                                recovery unit is skipped by its condition). Told apart by
                                NRestarts after the new stamp: systemd's own restart counts
                                one, the daemon's (ResetFailedUnit + RestartUnit) sets it to 0.

monit and supervisord are the Debian packages (``apt-get install monit
supervisor``), run in the foreground (``monit -I``, ``nodaemon=true``) with
configs written to a temp dir, never their packaged services. Nothing binds an
inet socket: monit has no ``set httpd`` and supervisord only ``[unix_http_server]``.

Why the harness: PID 1 on these machines does not reap orphans promptly, and
monit's started programs are orphans (monit does not stay their parent). A
SIGKILLed one then stays a zombie, which monit's "is it running" check (the PID
still exists) counts as alive. So monit and supervisord are started by a small
harness process (``bench_supervisors.py _harness``) that makes itself a child
subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``) and reaps every child at once;
orphans land on it instead of PID 1. Teardown: SIGTERM to monit and supervisord,
then SIGKILL to whatever is still a child of the harness (orphans included),
until it has no children; the benchmark then checks that no process mentions
its temp dir.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

# Reused, not copied: the FIFO reader, the static build of stamp.c, the summary
# and table row of the listener benchmark, and MainPID -> host PID.
from bench_onfailure_skip import DAEMON, install_daemon  # noqa: E402
from listener.common import (  # noqa: E402
    Fifo,
    build_stamp,
    line,
    main_pid_host,
    render_generated,
    use_sandbox_env,
)

from unitgen.paths import Scope, paths_for  # noqa: E402
from unitgen.sandbox import Sandbox  # noqa: E402

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MONIT = "/usr/bin/monit"
SUPERVISORD = "/usr/bin/supervisord"
SUPERVISORCTL = "/usr/bin/supervisorctl"
STAMP_TIMEOUT = 15.0  # s; monit and supervisord poll once a second, so this is 10+ cycles

SD0 = "systemd RestartSec=0"
SD100 = "systemd RestartSec=100ms (default)"
MONIT_ROW = "monit (set daemon 1)"
SUPERVISORD_ROW = "supervisord (autorestart=true)"
GEN = "b-gen.service"
GEN_RESTART = "generated unit: kill -> running (systemd's Restart=, RestartSec=100ms)"
GEN_GIVEUP = "generated unit: kill at the start limit -> running (unitgen watch)"
GEN_KILLS = 10  # a trial with more kills than this never reached the start limit


# -- configs ----------------------------------------------------------------------------


def monit_config(work: Path, stamp: Path) -> str:
    """A monitrc: 1 s cycle, one pidfile check, no httpd (so nothing listens)."""
    pidfile = work / "stamp-monit.pid"
    fifo = work / "monit.fifo"
    return (
        "set daemon 1\n"
        f"set logfile {work}/monit.log\n"
        f"set pidfile {work}/monit.pid\n"
        f"set idfile {work}/monit.id\n"
        f"set statefile {work}/monit.state\n"
        f"check process stamp with pidfile {pidfile}\n"
        f"    start program = \"/bin/sh -c '{stamp} {fifo} & echo $! > {pidfile}'\"\n"
    )


def supervisord_config(work: Path, stamp: Path) -> str:
    """supervisord.conf: autorestart, control socket on a unix socket only."""
    sock = work / "supervisor.sock"
    return (
        "[unix_http_server]\n"
        f"file={sock}\n"
        "chmod=0700\n"
        "\n[supervisord]\n"
        "nodaemon=true\n"
        "user=root\n"
        f"logfile={work}/supervisord.log\n"
        f"pidfile={work}/supervisord.pid\n"
        f"childlogdir={work}\n"
        "\n[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        "\n[supervisorctl]\n"
        f"serverurl=unix://{sock}\n"
        "\n[program:stamp]\n"
        f"command={stamp} {work}/supervisord.fifo\n"
        "autorestart=true\n"
        # A kill soon after a start counts as a crash, not as a failed start with
        # its 1 s, 2 s, ... backoff: the analogue of StartLimitIntervalSec=0 on the
        # systemd units. It can only make supervisord faster, never slower.
        "startsecs=0\n"
        "startretries=1000000\n"
    )


# -- the child-subreaper harness (runs as its own process) -------------------------------


class _Stop(Exception):
    """Raised by the harness's SIGTERM handler to leave the reaping loop."""


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _children() -> list[int]:
    """Direct children of this process, orphans adopted as subreaper included."""
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def harness(commands: Sequence[Sequence[str]], output: str, log: Callable[[str], None]) -> int:
    """Be a child subreaper, start ``commands``, reap everything until SIGTERM; tear down.

    The commands' stdout and stderr go to the file ``output`` (monit -I repeats its
    log there). Prints ``ready PID...`` once the commands are started. Returns 0
    when teardown left no child behind.
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    # If the benchmark dies, so does the harness (and it tears down on the way).
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    started: dict[int, str] = {}
    orphans_reaped = 0
    try:
        with open(output, "ab") as out:
            for argv in commands:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
                started[proc.pid] = Path(argv[0]).name
        print("ready", *started, flush=True)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                signal.pause()
                continue
            if pid in started:
                log(f"harness: {started.pop(pid)} ({pid}) exited early, status {status}")
            else:
                orphans_reaped += 1
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for pid in started:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    # Let monit and supervisord stop cleanly first (supervisord stops its program).
    deadline = time.monotonic() + 10
    alive = set(started)
    while alive and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            alive.discard(pid)
        else:
            time.sleep(0.01)
    # Then anything still ours, adopted orphans (monit's programs) included.
    killed: set[int] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = _children()
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                continue
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            if not _children():
                break
        time.sleep(0.01)
    left = _children()
    print(
        f"harness: reaped {orphans_reaped} orphans while running; "
        f"SIGKILLed {len(killed)} at teardown; {len(left)} children left",
        flush=True,
    )
    return 1 if left else 0


class Harness:
    """The benchmark's handle on a running harness process."""

    def __init__(self, commands: Sequence[Sequence[str]], output: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_harness",
                json.dumps({"commands": commands, "output": str(output)}),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        if not first or first[0] != "ready":
            self.stop()
            raise RuntimeError(f"harness did not start: {first}")
        self.pids = [int(p) for p in first[1:]]

    def stop(self) -> str:
        """SIGTERM the harness (it tears down), wait; returns its last report line."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return out.strip().splitlines()[-1] if out.strip() else f"exit {self.proc.returncode}"


def leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (the temp dir), other than us."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{entry.name}: {cmd.strip()}")
    return found


# -- the benchmark ---------------------------------------------------------------------


def _stamp_exe_pid(pid: int, stamp: Path) -> int:
    """``pid`` if it is a running stamp program, else raise (a stale PID is no trial)."""
    exe = Path(f"/proc/{pid}/exe").readlink()
    if exe != stamp:
        raise RuntimeError(f"PID {pid} is {exe}, not {stamp}")
    return pid


def run(trials: int, jitter: float, logs: Path | None = None, raw: Path | None = None) -> None:
    for tool in (MONIT, SUPERVISORD, SUPERVISORCTL):
        if not Path(tool).exists():
            sys.exit(f"{tool} is missing: apt-get install -y monit supervisor")
    work = Path(tempfile.mkdtemp(prefix="unitgen-supervisors-"))
    harness_proc: Harness | None = None
    try:
        stamp = build_stamp(work)
        rows = {SD0: "b-sd0", SD100: "b-sd100", MONIT_ROW: "monit", SUPERVISORD_ROW: "supervisord"}
        fifos = {name: Fifo(work / f"{key}.fifo") for name, key in rows.items()}
        monitrc = work / "monitrc"
        monitrc.write_text(monit_config(work, stamp))
        monitrc.chmod(0o600)  # monit refuses a control file others can read
        supconf = work / "supervisord.conf"
        supconf.write_text(supervisord_config(work, stamp))
        harness_proc = Harness(
            [[MONIT, "-I", "-c", str(monitrc)], [SUPERVISORD, "-c", str(supconf)]],
            work / "supervisors.out",
        )
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            # The daemon and the generator see the sandbox's directories (policy, state).
            use_sandbox_env(sb)
            install_daemon(sb, work)
            sb.systemctl("start", DAEMON, check=True)
            gen_fifo = Fifo(work / f"{GEN}.fifo")
            gen_text = render_generated(
                work,
                GEN.removesuffix(".service"),
                stamp,
                work / f"{GEN}.fifo",
                paths_for(Scope.USER).policy_dir,
                keep_onfailure=True,
            )
            sb.install_units(work / "rendered-b-gen")  # with the recovery unit
            assert "OnFailure=unitgen-recover@" in gen_text
            head = "[Unit]\nStartLimitIntervalSec=0\n[Service]\n"
            sb.install_units(
                {
                    "b-sd0.service": f"{head}ExecStart={stamp} {work}/b-sd0.fifo\n"
                    "Restart=always\nRestartSec=0\n",
                    "b-sd100.service": f"{head}ExecStart={stamp} {work}/b-sd100.fifo\n"
                    "Restart=always\n",
                }
            )
            # Started after the last daemon-reload: here (systemd 252) the start-limit
            # count did not survive a reload, and the first trial's generated unit got
            # a third restart of systemd's own before its give-up.
            sb.systemctl("start", "b-sd0.service", "b-sd100.service", GEN, check=True)
            for name, fifo in {**fifos, GEN: gen_fifo}.items():
                if fifo.next_stamp(STAMP_TIMEOUT) is None:
                    raise RuntimeError(f"{name}: the stamp program never started")

            def supervisord_pid() -> int:
                out = subprocess.run(
                    [SUPERVISORCTL, "-c", str(supconf), "pid", "stamp"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                ).stdout
                return int(out.strip())

            main_pid: dict[str, Callable[[], int]] = {
                SD0: lambda: main_pid_host(sb, "b-sd0.service"),
                SD100: lambda: main_pid_host(sb, "b-sd100.service"),
                MONIT_ROW: lambda: int((work / "stamp-monit.pid").read_text()),
                SUPERVISORD_ROW: supervisord_pid,
            }
            generated = Generated(sb, gen_fifo, stamp)
            results = trial_loop(trials, jitter, fifos, main_pid, stamp, generated)
            load = os.getloadavg()
            recover_unit = sb.show(f"unitgen-recover@{GEN}.service", "ConditionResult", "NRestarts")
            daemon_state = sb.show(DAEMON, "ActiveState", "NRestarts")
        report = harness_proc.stop()
        harness_proc = None
        left = leftovers(str(work))
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            for name in ("monit.log", "supervisord.log", "supervisors.out"):
                if (work / name).exists():
                    shutil.copy(work / name, logs / name)
    finally:
        if harness_proc is not None:
            harness_proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(results[SD0]) if results[SD0] else None
    if raw is not None:
        raw.write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"\nkill -9 -> new process running (ms), {trials} trials, alternating, one run, "
        f"pause 0.3 s + uniform(0, {jitter}) s\n"
    )
    print("| path | min | median | p95 | p99 | max | n | vs RestartSec=0 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in results:
        print(line(name, results[name], base))
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"generated unit: systemd's own restarts before each give-up: "
        f"{sorted(set(generated.systemd_restarts))}; give-ups {len(results[GEN_GIVEUP])}; "
        f"recovery unit at the end: {recover_unit}; daemon: {daemon_state}"
    )
    print(report)
    print(f"processes left mentioning {work}: {len(left)}")
    for row in left:
        print("  " + row)


class Generated:
    """The generated unit's part of a trial: kill it until systemd gives up."""

    def __init__(self, sb: Sandbox, fifo: Fifo, stamp: Path) -> None:
        self.sb = sb
        self.fifo = fifo
        self.stamp = stamp
        self.systemd_restarts: list[int] = []

    def trial(self, trial: int, jitter: float, restart: list[float], giveup: list[float]) -> None:
        """One kill after another, each followed by the trial's pause; a kill whose
        restart left NRestarts at 0 was not systemd's: the start limit was hit and
        the daemon restarted the unit. That ends the trial."""
        for kills in range(GEN_KILLS):
            try:
                pid = _stamp_exe_pid(main_pid_host(self.sb, GEN), self.stamp)
            except (OSError, ValueError, RuntimeError) as exc:
                print(f"trial {trial}: {GEN}: no main PID ({exc}); skipped", file=sys.stderr)
                return
            self.fifo.drain()
            t_kill = time.monotonic_ns()
            os.kill(pid, signal.SIGKILL)
            ts = self.fifo.next_stamp(STAMP_TIMEOUT)
            if ts is None:
                print(f"trial {trial}: {GEN}: no restart within {STAMP_TIMEOUT} s", file=sys.stderr)
                return
            took = (ts - t_kill) / 1e6
            by_systemd = int(self.sb.show(GEN, "NRestarts")["NRestarts"]) > 0
            time.sleep(0.3 + random.uniform(0, jitter))
            if by_systemd:
                restart.append(took)
                continue
            giveup.append(took)
            self.systemd_restarts.append(kills)
            return
        print(f"trial {trial}: {GEN}: systemd never gave up", file=sys.stderr)


def trial_loop(
    trials: int,
    jitter: float,
    fifos: dict[str, Fifo],
    main_pid: dict[str, Callable[[], int]],
    stamp: Path,
    generated: Generated,
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in fifos}
    results[GEN_RESTART] = []
    results[GEN_GIVEUP] = []
    for trial in range(trials):
        generated.trial(trial, jitter, results[GEN_RESTART], results[GEN_GIVEUP])
        for name, fifo in fifos.items():
            try:
                pid = _stamp_exe_pid(main_pid[name](), stamp)
            except (OSError, ValueError, RuntimeError) as exc:
                print(f"trial {trial}: {name}: no main PID ({exc}); skipped", file=sys.stderr)
                fifo.next_stamp(STAMP_TIMEOUT)
                continue
            fifo.drain()
            t_kill = time.monotonic_ns()
            os.kill(pid, signal.SIGKILL)
            ts = fifo.next_stamp(STAMP_TIMEOUT)
            if ts is None:
                print(
                    f"trial {trial}: {name}: no restart within {STAMP_TIMEOUT} s", file=sys.stderr
                )
                continue
            results[name].append((ts - t_kill) / 1e6)
            time.sleep(0.3 + random.uniform(0, jitter))
    return results


def cli() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "_harness":
        spec = json.loads(sys.argv[2])
        sys.exit(harness(spec["commands"], spec["output"], lambda m: print(m, file=sys.stderr)))
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument(
        "--jitter", type=float, default=1.0, help="random extra pause, 0..JITTER s (default 1)"
    )
    parser.add_argument("--raw", type=Path, help="write every sample (ms) here as JSON")
    parser.add_argument("--logs", type=Path, help="copy monit's and supervisord's logs here")
    args = parser.parse_args()
    run(args.trials, args.jitter, args.logs, args.raw)


if __name__ == "__main__":
    cli()
