"""A private dbus-daemon for the event-stream tests, and a fake recovery backend.

The exporter needs a real bus daemon (match rules, GetConnectionUnixUser,
policy) but not a real systemd, so these tests start a bare ``dbus-daemon``
of their own: milliseconds, no root, no namespaces. Its policy lets any uid
connect, which is what the in-daemon access check must then stand up to.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOBODY = 65534

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@dataclass
class PrivateBus:
    address: str
    directory: Path
    process: subprocess.Popen[bytes]
    policy: Path  # only used by system-like buses

    @property
    def env(self) -> dict[str, str]:
        return {"DBUS_SESSION_BUS_ADDRESS": self.address}


# The host's real system-bus configuration plus one policy file: what a machine
# with unitgen installed runs, on a socket of our own.
_SYSTEM_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <include>/usr/share/dbus-1/system.conf</include>
  <include>{policy}</include>
</busconfig>
"""

RELAXED_POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy context="default">
    <allow own="org.unitgen.Recovery1"/>
    <allow send_destination="org.unitgen.Recovery1"/>
    <allow receive_sender="org.unitgen.Recovery1"/>
  </policy>
</busconfig>
"""


@contextlib.contextmanager
def private_bus(timeout: float = 10.0, policy: str | None = None) -> Iterator[PrivateBus]:
    """A dbus-daemon on a socket any local uid may reach; killed at exit.

    Without ``policy``: a session-type bus that lets anyone do anything. With
    ``policy`` (the text of a policy file): the host's system.conf plus that
    file, i.e. the real system-bus policy. The file is ``PrivateBus.policy``,
    readable by the daemon's own user, so a test may rewrite it and call
    ReloadConfig.
    """
    directory = Path(tempfile.mkdtemp(prefix="unitgen-bus-"))
    directory.chmod(0o755)  # so a test can connect as another uid
    config = directory / "bus.conf"
    socket_path = directory / "bus"
    argv = ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"]
    if policy is None:
        config.write_text(_CONFIG.format(socket=socket_path))
    else:
        policy_path = directory / "policy.conf"
        policy_path.write_text(policy)
        policy_path.chmod(0o644)
        config.write_text(_SYSTEM_CONFIG.format(policy=policy_path))
        argv += ["--nopidfile", f"--address=unix:path={socket_path}"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # it complains it may not raise its fd limit
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError("dbus-daemon did not start")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError("dbus-daemon closed its stdout")
                line += chunk
        yield PrivateBus(line.decode().strip(), directory, proc, directory / "policy.conf")
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()


def as_nobody(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def connect(lib_name: str, address: str) -> Any:
    """A connected MessageBus of the named library ("next" or "fast")."""
    if lib_name == "next":
        from dbus_next.aio import MessageBus
    else:
        from dbus_fast.aio import MessageBus
    return await MessageBus(bus_address=address).connect()


async def disconnect(bus: Any) -> None:
    bus.disconnect()
    with contextlib.suppress(Exception):
        await bus.wait_for_disconnect()
    # dbus-next shuts its socket down without closing it (ResourceWarning otherwise).
    for attr in ("_sock", "_stream"):
        obj = getattr(bus, attr, None)
        if obj is not None:
            with contextlib.suppress(Exception):
                obj.close()


@dataclass
class FakeBackend:
    """Records calls and answers like the engine would; exceptions on request."""

    statuses: list[dict[str, Any]] = field(default_factory=list)
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    calls: list[tuple[str, str | None]] = field(default_factory=list)
    fail_with: BaseException | None = None

    async def recover(self, unit: str, trigger: str) -> dict[str, Any]:
        self.calls.append(("recover", unit))
        if self.fail_with is not None:
            raise self.fail_with
        return {"unit": unit, "result": "recovered", "attempts": 1, "trigger": trigger}

    def reset(self, unit: str) -> None:
        self.calls.append(("reset", unit))
        if self.fail_with is not None:
            raise self.fail_with

    def status(self, unit: str | None) -> list[dict[str, Any]]:
        self.calls.append(("status", unit))
        if self.fail_with is not None:
            raise self.fail_with
        return self.statuses

    async def history(self, unit: str) -> list[dict[str, Any]]:
        self.calls.append(("history", unit))
        if self.fail_with is not None:
            raise self.fail_with
        return self.histories.get(unit, [])
