"""``unitgen sandbox``: run a command against a disposable real systemd."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from types import FrameType

HELP = "run a command against a disposable real systemd"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start a disposable systemd (a user manager, or with --system a booted container), "
        "run CMD inside it with the environment set so that plain `systemctl --user` "
        "(or `systemctl`) talks to it, then tear everything down. Exits with CMD's status."
    )
    parser.add_argument(
        "--system", action="store_true", help="boot a systemd-nspawn container instead"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after CMD (or without one) keep the sandbox until SIGINT/SIGTERM; "
        "prints its environment for clients on the host",
    )
    parser.add_argument("--shell", action="store_true", help="run an interactive shell inside")
    parser.add_argument("--no-journal", action="store_true", help="user mode: skip journald")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def run(args: argparse.Namespace) -> int:
    from unitgen.errors import UsageError
    from unitgen.paths import Scope
    from unitgen.sandbox import Sandbox

    cmd: list[str] = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if args.shell:
        if cmd:
            raise UsageError("give either --shell or a command, not both")
        cmd = [os.environ.get("SHELL") or "/bin/bash", "-i"]
    if not cmd and not args.keep:
        raise UsageError("nothing to run: give -- CMD..., --shell or --keep")

    scope = Scope.SYSTEM if args.system else Scope.USER
    # Signals first: a SIGTERM during boot must still tear down.
    handled = (signal.SIGTERM, signal.SIGHUP) + (() if args.shell else (signal.SIGINT,))
    previous = {s: signal.signal(s, _raise_stop) for s in handled}
    if args.shell:
        # ^C belongs to the interactive shell, not to us.
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    sb: Sandbox | None = None
    code = 0
    try:
        sb = Sandbox.start(scope, journal=not args.no_journal)
        if args.keep or args.json:
            _describe(sb, args.json)
        if cmd:
            code = _run_inside(sb, cmd)
        if args.keep:
            print("unitgen: sandbox kept; SIGINT or SIGTERM ends it", file=sys.stderr)
            threading.Event().wait()
    except _Stop as stop:
        code = 128 + stop.signum
    finally:
        # Block the handled signals during teardown so a second ^C cannot cut it short.
        for s in handled:
            signal.signal(s, signal.SIG_IGN)
        try:
            if sb is not None:
                sb.close()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return code


def _run_inside(sb: object, cmd: list[str]) -> int:
    from unitgen.sandbox import Sandbox

    assert isinstance(sb, Sandbox)
    env = {**os.environ, **sb.inside_env()}
    proc = subprocess.Popen(sb.command(cmd), env=env)
    try:
        returncode = proc.wait()
    except _Stop:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    return 128 - returncode if returncode < 0 else returncode


def _describe(sb: object, as_json: bool) -> None:
    from unitgen.sandbox import Sandbox

    assert isinstance(sb, Sandbox)
    if as_json:
        print(
            json.dumps(
                {
                    "scope": sb.scope.value,
                    "root": str(sb.root),
                    "bus_address": sb.bus_address,
                    "unit_dir": str(sb.unit_dir),
                    "init_pid": sb.init_pid,
                    "env": sb.env,
                }
            ),
            flush=True,
        )
        return
    print(f"unitgen: {sb.scope.value} sandbox in {sb.root}", file=sys.stderr)
    print(f"unitgen: enter it with: {shlex.join(sb.command(['bash']))}", file=sys.stderr)
    for key, value in sorted(sb.env.items()):
        print(f"export {key}={shlex.quote(value)}")
    sys.stdout.flush()
