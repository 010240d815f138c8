"""The main job, end to end, against a real systemd: ``./install.sh --demo`` runs this.

1. boots a disposable systemd (a ``systemd-nspawn -b`` container over the host's /usr;
   see docs/sandbox.md), because this machine need not run systemd as PID 1;
2. renders ``examples/demo.toml`` with unitgen *inside* it, straight into
   /etc/systemd/system and /etc/unitgen/policy.d, as on a real host;
3. enables and starts the units, checks that they serve (HTTP 200, Redis PONG);
4. shows them running with their ``systemd-analyze security --offline`` exposure;
5. kills the web server's main process and shows systemd bring it back;
6. tears the container down (``--keep`` leaves it running until Ctrl-C).

Run by hand: ``/opt/unitgen/bin/python examples/demo.py [--user] [--keep]``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading
import time
from pathlib import Path

from unitgen.paths import Scope
from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
UNITS = ["demo-web.service", "demo-cache.service"]
FETCH = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/', timeout=5).status)"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(text: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"   {line}")
    sys.stdout.flush()


def exposure(sb: Sandbox, unit: str) -> str:
    path = sb.show(unit, "FragmentPath")["FragmentPath"]
    res = sb.run(["systemd-analyze", "security", "--no-pager", "--offline=yes", path])
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", res.stdout)
    return f"{found.group(1)} {found.group(2)}" if found else "?"


def serves(sb: Sandbox, timeout: float = 10.0) -> tuple[str, str]:
    """Ask both daemons, retrying until they answer or the deadline passes.

    Type=exec units are "active" once exec'd, a moment before they listen.
    """
    deadline = time.monotonic() + timeout
    while True:
        web = sb.run(["/usr/bin/python3", "-c", FETCH]).stdout.strip() or "no answer"
        cache = sb.run(["/usr/bin/redis-cli", "-p", "6390", "ping"]).stdout.strip() or "no answer"
        if (web, cache) == ("200", "PONG") or time.monotonic() > deadline:
            return web, cache
        time.sleep(0.1)


def demo(sb: Sandbox, spec: Path) -> int:
    unitgen = str(Path(sys.executable).parent / "unitgen")
    user = ["--user"] if sb.scope is Scope.USER else []
    inside_units = "/etc/systemd/system" if sb.scope is Scope.SYSTEM else str(sb.unit_dir)
    policy = "/etc/unitgen/policy.d" if sb.scope is Scope.SYSTEM else sb.env["UNITGEN_POLICY_DIR"]

    step(f"unitgen check {spec.name}: validate, systemd-analyze verify, exposure gate")
    show(sb.run([unitgen, "check", *user, str(spec)]).stdout)

    step(f"unitgen render {spec.name} into {inside_units}")
    res = sb.run(
        [unitgen, "render", *user, str(spec), "--out", inside_units, "--policy-dir", policy]
    )
    show(res.stdout + res.stderr)
    if res.returncode != 0:
        return res.returncode

    step("systemctl daemon-reload && systemctl enable --now " + " ".join(UNITS))
    sb.daemon_reload()
    res = sb.systemctl("enable", "--now", *UNITS)
    show(res.stdout + res.stderr)
    for unit in UNITS:
        sb.wait_for(unit, {"active", "failed"}, timeout=30)

    step("running units, with their exposure (systemd-analyze security --offline=yes)")
    print(f"   {'UNIT':22} {'STATE':16} {'MAIN PID':>8}  {'USER':10} EXPOSURE")
    ok = True
    for unit in UNITS:
        props = sb.show(unit, "ActiveState", "SubState", "MainPID")
        pid = props["MainPID"]
        owner = "-"
        if pid != "0":
            owner = sb.run(["stat", "-c", "%U", f"/proc/{pid}"]).stdout.strip() or "-"
        state = f"{props['ActiveState']}/{props['SubState']}"
        ok = ok and props["ActiveState"] == "active"
        print(f"   {unit:22} {state:16} {pid:>8}  {owner:10} {exposure(sb, unit)}")
    web, cache = serves(sb)
    print(f"   GET http://127.0.0.1:8080/ -> {web};  redis-cli -p 6390 ping -> {cache}")
    ok = ok and (web, cache) == ("200", "PONG")

    step("kill -9 the web server's main process: systemd restarts it (Restart=on-failure)")
    before = sb.kill_main("demo-web.service", signal.SIGKILL)
    props = sb.wait_for(
        "demo-web.service",
        lambda p: p["ActiveState"] == "active" and p["MainPID"] not in ("0", str(before)),
        timeout=30,
    )
    show(
        f"main PID {before} killed; now {props['MainPID']}, "
        f"NRestarts={props['NRestarts']}, serving: {serves(sb)[0]}"
    )
    step("journal of demo-web.service")
    show(sb.journal("demo-web.service", lines=8))
    print()
    print("demo: OK" if ok else "demo: FAILED (see above)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", action="store_true", help="use a user manager instead")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox until Ctrl-C")
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "demo.toml")
    parser.add_argument("--prefix", help=argparse.SUPPRESS)  # passed by install.sh
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scope = Scope.USER if args.user else Scope.SYSTEM
    spec = args.spec.resolve()
    kind = "user manager" if args.user else "booted systemd-nspawn container"
    step(f"starting a disposable systemd: {kind}")
    started = time.monotonic()
    with Sandbox.start(scope, share=[REPO, spec.parent]) as sb:
        show(
            f"{sb.systemctl('is-system-running').stdout.strip()} after "
            f"{time.monotonic() - started:.2f} s (root {sb.root})"
        )
        code = demo(sb, spec)
        if args.keep:
            print(f"\nkept; enter it with: {' '.join(sb.command(['bash']))}")
            print("Ctrl-C tears it down")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    step("sandbox torn down: no processes, mounts, cgroups or files left")
    return code


if __name__ == "__main__":
    from unitgen.errors import UnitgenError

    try:
        sys.exit(main())
    except UnitgenError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
