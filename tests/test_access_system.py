"""In the booted system sandbox: the policy file on a real system bus, a non-root caller,
and structured entries in a real system journald.

The exporter runs in the test process as root, connected to the container's
system bus; the non-root caller is uid 65534 (nobody) on the same bus.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from eventstream_helpers import RELAXED_POLICY, FakeBackend, connect, disconnect

from handlers.dbus_api import BUS_NAME, INTERFACE, OBJECT_PATH, RecoveryService
from unitgen.sandbox import Sandbox, as_user

REPO = Path(__file__).resolve().parents[1]
POLICY = (REPO / "units" / "org.unitgen.Recovery1.conf").read_text()
INSTALLED = "/etc/dbus-1/system.d/org.unitgen.Recovery1.conf"


def _install_policy(sb: Sandbox, text: str | None) -> None:
    """Put (or, with None, remove) the policy file in the container and reload the bus."""
    sb.install_bus_policy(INSTALLED.rsplit("/", 1)[1], text)


@pytest.fixture
def policy_installed(system_sandbox: Sandbox) -> Iterator[Sandbox]:
    _install_policy(system_sandbox, POLICY)
    try:
        yield system_sandbox
    finally:
        _install_policy(system_sandbox, None)


@pytest_asyncio.fixture
async def daemon(policy_installed: Sandbox) -> AsyncIterator[tuple[RecoveryService, FakeBackend]]:
    backend = FakeBackend()
    service = RecoveryService(backend)
    bus = await connect("fast", policy_installed.bus_address)
    try:
        await service.attach(bus)
        yield service, backend
    finally:
        await service.close()
        await disconnect(bus)


def _call_as_nobody(sb: Sandbox, member: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        *as_user("nobody"),
        "dbus-send",
        f"--bus={sb.bus_address}",
        "--print-reply",
        f"--dest={BUS_NAME}",
        OBJECT_PATH,
        f"{INTERFACE}.{member}",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.asyncio
async def test_non_root_reset_is_denied_by_policy_then_by_the_daemon(
    daemon: tuple[RecoveryService, FakeBackend], policy_installed: Sandbox
) -> None:
    sb = policy_installed
    _, backend = daemon
    # Layer 1: the bus policy refuses; unitgen never sees the call.
    res = await asyncio.to_thread(_call_as_nobody, sb, "Reset", "string:web.service")
    assert res.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in res.stderr
    assert "Rejected send message" in res.stderr, res.stderr
    res = await asyncio.to_thread(_call_as_nobody, sb, "Status")
    assert res.returncode == 0, res.stderr
    assert backend.calls == [("status", None)]
    # Layer 2: with the policy relaxed, the daemon's own uid check refuses.
    await asyncio.to_thread(_install_policy, sb, RELAXED_POLICY)
    res = await asyncio.to_thread(_call_as_nobody, sb, "Reset", "string:web.service")
    assert res.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in res.stderr
    assert "Rejected send message" not in res.stderr
    assert "may not call this" in res.stderr, res.stderr
    assert backend.calls == [("status", None)]


_WRITER = """
import sys
from handlers.events import Event, EventKind
from handlers.journal import JournalSink
sink = JournalSink()
sink.emit(Event(EventKind.GAVE_UP, sys.argv[2], sys.argv[1], {"reason": "budget", "attempts": 5}))
sink.close()
print(sink.sent, sink.fallbacks, sink.dropped)
"""


def test_system_journald_indexes_the_fields_and_journalctl_u_finds_them(
    system_sandbox: Sandbox, tmp_path: Path
) -> None:
    # The container shares the host's /usr (so /usr/bin/python3) and pytest's temp dir;
    # the journal sink needs nothing beyond these three modules.
    pkg = tmp_path / "handlers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("events.py", "public_fields.py", "journal.py"):
        shutil.copy(REPO / "handlers" / name, pkg / name)
    incident = uuid.uuid4().hex
    unit = f"ug-ev-{incident[:8]}.service"
    res = system_sandbox.run(
        ["/usr/bin/python3", "-c", _WRITER, incident, unit], env={"PYTHONPATH": str(tmp_path)}
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1", "0", "0"]
    entries: list[dict[str, Any]] = []
    by_unit = ""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        out = system_sandbox.run(
            ["journalctl", "--no-pager", "-o", "json", f"UNITGEN_INCIDENT={incident}"]
        )
        entries = [json.loads(line) for line in out.stdout.splitlines()]
        by_unit = system_sandbox.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout
        if entries and by_unit:
            break
        time.sleep(0.05)  # journald indexes asynchronously; polled with a deadline
    assert len(entries) == 1
    assert entries[0]["UNITGEN_EVENT"] == "GaveUp"
    assert entries[0]["UNITGEN_UNIT"] == unit
    assert entries[0]["UNITGEN_REASON"] == "budget"
    assert entries[0]["_UID"] == "0"
    # OBJECT_SYSTEMD_UNIT from root: `journalctl -u UNIT` shows unitgen's entry.
    assert f"{unit}: gave up (budget)" in by_unit
