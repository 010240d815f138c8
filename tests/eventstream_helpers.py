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

    @property
    def env(self) -> dict[str, str]:
        return {"DBUS_SESSION_BUS_ADDRESS": self.address}


@contextlib.contextmanager
def private_bus(timeout: float = 10.0) -> Iterator[PrivateBus]:
    """A dbus-daemon on a socket any local uid may reach; killed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="unitgen-bus-"))
    directory.chmod(0o755)  # so a test can connect as another uid
    config = directory / "bus.conf"
    config.write_text(_CONFIG.format(socket=directory / "bus"))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
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
        yield PrivateBus(line.decode().strip(), directory, proc)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()


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
