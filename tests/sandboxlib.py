"""Helpers behind the sandbox fixtures in conftest.py, importable by any test.

The rule they implement: a test that needs a real systemd skips, with the
reason, where no sandbox can start -- except under ``CI=true``, where it fails,
because CI must never go green with the systemd tests skipped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from unitgen.errors import SandboxError
from unitgen.paths import Scope
from unitgen.sandbox import Sandbox, probe


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI=true."""
    if in_ci():
        pytest.fail(f"sandbox unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(f"sandbox unavailable: {reason}")


def start_sandbox(scope: Scope, share: Iterable[Path] = (), **kwargs: object) -> Sandbox:
    """Start a sandbox or skip/fail the calling test with the reason."""
    reason = probe(scope)
    if reason:
        unavailable(reason)
    try:
        return Sandbox.start(scope, share=share, **kwargs)  # type: ignore[arg-type]
    except SandboxError as exc:
        unavailable(str(exc))


async def open_bus(sandbox: Sandbox, *, negotiate_unix_fd: bool = False) -> object:
    """A connected dbus-next MessageBus to the sandbox's manager bus.

    Prefer the ``sandbox_bus`` fixture, which disconnects it at teardown.
    """
    from dbus_next import BusType
    from dbus_next.aio import MessageBus

    bus_type = BusType.SESSION if sandbox.scope is Scope.USER else BusType.SYSTEM
    bus = MessageBus(
        bus_address=sandbox.bus_address, bus_type=bus_type, negotiate_unix_fd=negotiate_unix_fd
    )
    return await bus.connect()


async def close_bus(bus: Any) -> None:
    """Disconnect a dbus-next MessageBus and really close its socket.

    dbus-next 0.2.3's ``disconnect()`` only shuts the socket down; the socket
    and its file object stay open until garbage collection, which under
    ``filterwarnings = error`` surfaces as an unraisable ResourceWarning in a
    later, unrelated test.
    """
    bus.disconnect()
    with contextlib.suppress(Exception):
        await bus.wait_for_disconnect()
    for attr in ("_stream", "_sock"):
        handle = getattr(bus, attr, None)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()


def start_unprivileged_manager(sb: Any, uid: int = 65534) -> dict[str, str]:
    """See :meth:`unitgen.sandbox.Sandbox.start_unprivileged_manager`."""
    env: dict[str, str] = sb.start_unprivileged_manager(uid)
    return env
