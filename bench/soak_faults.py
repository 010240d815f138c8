"""Fault injectors for the chaos soak (bench/soak.py), one small function each.

Every injector takes the soak's :class:`World` and a target unit, does one
thing to the real sandbox, and returns an :class:`Expect`: what must be seen
before the step counts as settled (the unit restarted, the daemon replaced).
They never wait with bare sleeps: every wait is a poll with a deadline.

The services run ``chaos.sh`` (written by :func:`chaos_script`): its
``ExecStartPre=`` half logs each start and performs start-up faults; its
``ExecStart=`` half polls a control file for run-time faults (exit codes,
memory). The unit name comes from the process's own cgroup, so one script
serves templates too (unitgen escapes ``%`` in argv, so ``%i`` cannot be used).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from unitgen.sandbox import Sandbox

DAEMON = "unitgen-watch.service"

CHAOS = r"""#!/bin/sh
# chaos.sh pre|run CONTROL_BASE
unit=$(sed -n 's|^0::.*/||p' /proc/self/cgroup)
d="$2/$unit"
mkdir -p "$d"
case "$1" in
pre)
    echo "$(date +%s.%N)" >> "$d/starts"
    rm -f "$d/sick"
    if [ -e "$d/hang" ]; then rm -f "$d/hang"; exec sleep 3600; fi
    exit 0
    ;;
esac
while :; do
    if [ -e "$d/cmd" ]; then
        c=$(cat "$d/cmd"); rm -f "$d/cmd"
        case "$c" in
        exit\ *) exit "${c#exit }" ;;
        oom) ulimit -v 1048576; exec /usr/bin/python3 -c 'b = []
while True: b.append(bytearray(8 << 20))' ;;
        esac
    fi
    sleep 0.2
done
"""


def chaos_script(path: Path) -> Path:
    path.write_text(CHAOS)
    path.chmod(0o755)
    return path


class Webhook:
    """The alert endpoint: records every request; ``mode`` picks the answer.

    ``ok`` 200; ``500``; ``hang`` (holds the request ``hang_for`` seconds);
    ``redirect`` (307 to another host, 127.0.0.2, where nothing listens).
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.hang_for = 15.0
        self.requests: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with hook._lock:
                    hook.requests.append((self.path, body))
                    mode = hook.mode
                if mode == "hang":
                    hook._stop.wait(hook.hang_for)
                status, extra = 200, {}
                if mode == "500":
                    status = 500
                elif mode == "redirect":
                    status, extra = 307, {"Location": f"http://127.0.0.2:{hook.port}{self.path}"}
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                # The client may have given up on a hanging answer: that is the point.
                with contextlib.suppress(OSError):
                    self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, secret: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token={secret}"

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@dataclass
class World:
    """What the injectors act on."""

    sb: Sandbox
    control: Path  # chaos.sh's CONTROL_BASE
    database: Path
    disk: Path  # the small tmpfs (a declared disk.paths entry), as seen inside
    disk_cleanup: Path  # its declared cleanup directory
    webhook: Webhook
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)

    def unit_dir(self, unit: str) -> Path:
        d = self.control / unit
        d.mkdir(parents=True, exist_ok=True)
        return d


@dataclass
class Expect:
    """What settles a step. ``restarted``: units whose InvocationID must change;
    ``daemon_replaced``: the daemon's MainPID must change; ``undo``: run once settled."""

    restarted: tuple[str, ...] = ()
    daemon_replaced: bool = False
    undo: Callable[[], None] | None = None
    note: str = ""


def poll(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout:g} s")
        time.sleep(step)


def _open_incident(world: World, unit: str) -> bool:
    from handlers.store import Store

    store = Store.reader(world.database)
    if store is None:
        return False
    try:
        inc = store.last_incident(unit)
        return inc is not None and inc.state == "open"
    except Exception:
        return False
    finally:
        store.close()


def _mid_incident(world: World, unit: str) -> None:
    """Fail ``unit`` and return once its incident is open (or after 5 s: the
    fault then lands just after the incident, which the soak also survives)."""
    world.sb.kill_main(unit)
    try:
        poll(lambda: _open_incident(world, unit), 5, f"{unit}'s incident open", step=0.01)
    except TimeoutError:
        world.log(f"  (no open incident of {unit} seen within 5 s; injecting anyway)")


def _control(world: World, unit: str, command: str) -> None:
    tmp = world.unit_dir(unit) / "cmd.tmp"
    tmp.write_text(command)
    tmp.rename(world.unit_dir(unit) / "cmd")


# -- faults of a service -----------------------------------------------------------


def kill9(world: World, unit: str) -> Expect:
    world.sb.kill_main(unit)
    return Expect(restarted=(unit,))


def exit_code(world: World, unit: str, code: int = 3) -> Expect:
    """Exit with ``code``; on an ``on-abnormal`` or ``no`` unit Restart= does not cover it."""
    _control(world, unit, f"exit {code}")
    return Expect(restarted=(unit,), note=f"exit {code}")


def hang_start(world: World, unit: str) -> Expect:
    """The next start hangs in ExecStartPre= past TimeoutStartSec=; the one after passes."""
    (world.unit_dir(unit) / "hang").write_text("")
    world.sb.kill_main(unit)
    return Expect(restarted=(unit,))


def memory_max(world: World, unit: str) -> Expect:
    """Allocate until MemoryMax= has the kernel OOM-kill the service."""
    _control(world, unit, "oom")
    return Expect(restarted=(unit,))


def dependency_death(world: World, unit: str) -> Expect:
    """``unit`` is a dependency (Restart=no) of another service: kill -9 it."""
    world.sb.kill_main(unit)
    return Expect(restarted=(unit,))


def health_fail(world: World, unit: str) -> Expect:
    """The unit's health probe starts failing (chaos.sh clears it on the next start)."""
    (world.unit_dir(unit) / "sick").write_text("")
    return Expect(restarted=(unit,))


def full_disk(world: World, unit: str) -> Expect:
    """Fill the declared tmpfs with an old file in its declared cleanup directory,
    then fail the unit: the ladder must clean it up and restart."""
    target = world.disk_cleanup / "filler.bin"
    world.sb.run(
        [
            "sh",
            "-c",
            f"dd if=/dev/zero of={target} bs=64k 2>/dev/null; touch -d '2 days ago' {target}",
        ],
        timeout=30,
    )
    world.sb.kill_main(unit)
    return Expect(restarted=(unit,))


# -- faults of the daemon, the manager, the bus, the state, the webhook -------------


def _daemon_pid(world: World) -> int:
    return world.sb.main_pid(DAEMON)


def daemon_kill9_mid_incident(world: World, unit: str) -> Expect:
    _mid_incident(world, unit)
    world.sb.systemctl("kill", "--signal=KILL", DAEMON, check=True)
    return Expect(restarted=(unit,), daemon_replaced=True)


def daemon_reload_mid_incident(world: World, unit: str) -> Expect:
    _mid_incident(world, unit)
    world.sb.systemctl("daemon-reload", check=True)
    return Expect(restarted=(unit,))


def daemon_reexec_mid_incident(world: World, unit: str) -> Expect:
    _mid_incident(world, unit)
    world.sb.systemctl("daemon-reexec", check=True, timeout=60)
    return Expect(restarted=(unit,))


def daemon_sigstop(world: World, unit: str) -> Expect:
    """SIGSTOP the daemon past its WatchdogSec=, with a unit failing meanwhile."""
    world.sb.systemctl("kill", "--signal=SIGSTOP", DAEMON, check=True)
    world.sb.kill_main(unit)
    return Expect(restarted=(unit,), daemon_replaced=True)


def bus_restart_mid_incident(world: World, unit: str) -> Expect:
    _mid_incident(world, unit)
    world.sb.systemctl("restart", "dbus.service", check=True)
    return Expect(restarted=(unit,))


def _chattr(flag: str, paths: list[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        subprocess.run(["chattr", flag, *existing], check=False, capture_output=True)


def readonly_db(world: World, unit: str) -> Expect:
    """The state database (and its directory) turn immutable: even root cannot write."""
    directory = world.database.parent
    files = [directory, *directory.glob(world.database.name + "*")]
    _chattr("+i", files)
    world.sb.kill_main(unit)

    def undo() -> None:
        _chattr("-i", files)
        # A daemon that found its database unwritable keeps history in memory for the
        # rest of its life; the operator's fix includes restarting it.
        world.sb.systemctl("restart", DAEMON, check=True, timeout=60)

    return Expect(restarted=(unit,), undo=undo)


def _webhook(mode: str) -> Callable[[World, str], Expect]:
    def inject(world: World, unit: str) -> Expect:
        world.webhook.mode = mode
        world.sb.kill_main(unit)

        def undo() -> None:
            world.webhook.mode = "ok"

        return Expect(restarted=(unit,), undo=undo, note=f"webhook {mode}")

    inject.__name__ = f"webhook_{mode}"
    return inject


webhook_hang = _webhook("hang")
webhook_500 = _webhook("500")
webhook_redirect = _webhook("redirect")


def memory_max_enforced(sb: Sandbox, unit: str) -> bool:
    """Whether systemd enforces ``unit``'s MemoryMax=: it needs the memory controller
    on the unified hierarchy. A user manager on a hybrid host (memory on cgroup v1)
    has none, and ``MemoryCurrent`` reads ``[not set]``."""
    value = sb.show(unit, "MemoryCurrent").get("MemoryCurrent", "")
    return value.isdigit()
