"""What the OnFailure= unit costs at a start-limit give-up while `unitgen watch` listens.

The path users take: generated units (Restart=on-failure, RestartSec=100ms,
StartLimitBurst=3, OnFailure=unitgen-recover@%n.service), the daemon running as
its own rendered unit in a user sandbox (so its listening marker is where the
recovery unit's ConditionPathExists= looks, in the manager's namespaces). Each
round starts UNITS instances of a template, kills FAIL of them three times at
once (systemd restarts them twice, the third death hits the start limit in all),
and reads systemd's own timestamps: first give-up (InactiveEnterTimestamp of
the failed state) -> last of FAIL active again (ActiveEnterTimestamp), plus the
CPU the whole sandbox used (its cgroup's cpu.stat) from the third kill until no
recovery unit is running. Three variants in the same run, alternating:

* ``skip``: the rendered recovery unit (skipped by its condition while the daemon listens);
* ``run``: the same unit without ConditionPathExists= (every give-up starts the oneshot);
* ``none``: no OnFailure= at all.

    /opt/unitgen/bin/python bench/bench_onfailure_skip.py [--units 1000] [--fail 200] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unitgen.paths import Scope, paths_for
from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
UNITGEN = str(Path(sys.executable).with_name("unitgen"))
DAEMON = "unitgen-watch.service"
SPEC = """
[service.s]
exec = ["/bin/sleep", "infinity"]
hardening = "off"
restart = { policy = "on-failure", delay = "100ms", burst = 3, interval = "1min" }
recovery = { min_uptime = "0s", backoff = { base = "0s" } }
"""
VARIANTS = ("skip", "run", "none")


def render(sb: Sandbox, spec: Path, out: Path, policy_dir: Path) -> None:
    subprocess.run(
        [
            *(UNITGEN, "render", str(spec), "--user", "--out", str(out)),
            *("--policy-dir", str(policy_dir), "--unitgen-bin", UNITGEN),
        ],
        env={**sb.env, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )


def install_daemon(sb: Sandbox, work: Path) -> None:
    """Install the daemon's own rendered unit (units/unitgen-watch.toml, this venv's
    unitgen) in ``sb``: run in the manager, its listening marker is where the
    recovery units' ConditionPathExists= looks. Start it with ``DAEMON``."""
    daemon = (REPO / "units" / "unitgen-watch.toml").read_text()
    (work / "watch.toml").write_text(daemon.replace("/usr/local/bin/unitgen", UNITGEN))
    out = work / "rendered-watch"
    render(sb, work / "watch.toml", out, paths_for(Scope.USER).policy_dir)
    sb.install_units(out)


def install(sb: Sandbox, work: Path) -> None:
    paths = paths_for(Scope.USER)
    install_daemon(sb, work)
    (work / "s.toml").write_text(SPEC)
    out = work / "rendered"
    render(sb, work / "s.toml", out, paths.policy_dir)
    text = (out / "s.service").read_text()
    recover = (out / "unitgen-recover@.service").read_text()
    assert "ConditionPathExists=!%t/unitgen-watch/listening" in recover
    plain = "".join(ln for ln in recover.splitlines(True) if "ConditionPathExists" not in ln)
    units = {
        "unitgen-recover-run@.service": plain,
        "skip@.service": text,
        "run@.service": text.replace("unitgen-recover@", "unitgen-recover-run@"),
        "none@.service": "".join(
            ln for ln in text.splitlines(True) if not ln.startswith("OnFailure")
        ),
    }
    policy = json.loads((paths.policy_dir / "s.service.json").read_text())
    for variant in VARIANTS:
        policy["unit"] = f"{variant}@.service"
        (paths.policy_dir / f"{variant}@.service.json").write_text(json.dumps(policy))
    sb.install_units(out)
    sb.install_units(units)


def show(sb: Sandbox, units: list[str], *props: str) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for i in range(0, len(units), 200):
        res = sb.systemctl("show", "-p", ",".join(props), *units[i : i + 200], check=True)
        for block in res.stdout.strip().split("\n\n"):
            rows.append(dict(ln.split("=", 1) for ln in block.splitlines() if "=" in ln))
    return rows


def wait_all(sb: Sandbox, units: list[str], ok: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = show(sb, units, "SubState", "NRestarts")
        if all(f"{r['SubState']}/{r['NRestarts']}" == ok for r in rows):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"not all {ok} in {timeout} s: {rows[:3]}")
        time.sleep(0.05)


def cgroup_cpu(sb: Sandbox) -> float:
    """CPU seconds of everything in the sandbox: its top cgroup's usage."""
    pid = sb.host_pid(sb.main_pid(DAEMON))
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    path = next(ln for ln in lines if ln.startswith("0::")).removeprefix("0::")
    top = "/".join(path.split("/")[:2])
    root = Path("/sys/fs/cgroup/unified")  # the cgroup2 hierarchy of a hybrid host
    if not root.is_dir():
        root = Path("/sys/fs/cgroup")
    for line in (root / top.lstrip("/") / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) / 1e6
    raise SystemExit("no cpu.stat")


def recovering(sb: Sandbox) -> bool:
    res = sb.systemctl("list-units", "--no-legend", "--state=activating,active", "unitgen-recover*")
    return bool(res.stdout.strip())


def one_round(sb: Sandbox, variant: str, tag: str, units: int, fail: int) -> tuple[float, float]:
    names = [f"{variant}@{tag}-{i}.service" for i in range(units)]
    victims = names[:: max(1, units // fail)][:fail]
    for i in range(0, len(names), 200):
        sb.systemctl("start", *names[i : i + 200], check=True, timeout=300)
    for n in (1, 2):
        sb.systemctl("kill", "--signal=KILL", *victims, check=True)
        wait_all(sb, victims, f"running/{n}", 120)
        time.sleep(0.5)
    cpu0 = cgroup_cpu(sb)
    sb.systemctl("kill", "--signal=KILL", *victims, check=True)
    wait_all(sb, victims, "running/0", 300)
    while recovering(sb):
        time.sleep(0.05)
    cpu = cgroup_cpu(sb) - cpu0
    rows = show(sb, victims, "InactiveEnterTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    first = min(int(r["InactiveEnterTimestampMonotonic"]) for r in rows)
    last = max(int(r["ActiveEnterTimestampMonotonic"]) for r in rows)
    for i in range(0, len(names), 200):
        sb.systemctl("stop", *names[i : i + 200], check=True, timeout=300)
    return (last - first) / 1e6, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--fail", type=int, default=200)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unitgen-onfailure-"))
    try:
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            for key, value in sb.env.items():
                os.environ[key] = value
            install(sb, work)
            sb.systemctl("start", DAEMON, check=True)
            got: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
            for rep in range(args.reps):
                order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    took, cpu = one_round(sb, variant, str(rep), args.units, args.fail)
                    got[variant].append((took, cpu))
                    print(
                        f"rep {rep} {variant:5} give-up -> last active {took:7.3f} s, "
                        f"sandbox CPU {cpu:6.2f} s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(t for t, _ in got["none"])
    print(
        f"\n{args.fail} of {args.units} generated units at their start limit at once, "
        f"median of {args.reps}:"
    )
    for variant in VARIANTS:
        took = statistics.median(t for t, _ in got[variant])
        cpu = statistics.median(c for _, c in got[variant])
        print(
            f"  {variant:5} first give-up -> last active {took:7.3f} s "
            f"({took / base:5.2f}x none), sandbox CPU {cpu:6.2f} s"
        )


if __name__ == "__main__":
    main()
