"""Both gates in front of Reset and Recover: the system-bus policy file and the daemon's check.

The bus here is a real dbus-daemon running the host's own
/usr/share/dbus-1/system.conf plus units/org.unitgen.Recovery1.conf, exactly
what install.sh sets up; callers other than root run as uid 65534.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dbus_next import Message, MessageType
from eventstream_helpers import (
    NOBODY,
    RELAXED_POLICY,
    FakeBackend,
    PrivateBus,
    as_nobody,
    connect,
    disconnect,
    private_bus,
)

from handlers.access import AccessPolicy
from handlers.dbus_api import BUS_NAME, INTERFACE, OBJECT_PATH, RecoveryService
from handlers.events import Event, EventKind

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "units" / "org.unitgen.Recovery1.conf"


@pytest.fixture
def system_bus() -> Iterator[PrivateBus]:
    with private_bus(policy=POLICY.read_text()) as bus:
        yield bus


@pytest.fixture(params=["next", "fast"])
def lib_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def daemon(
    system_bus: PrivateBus, lib_name: str
) -> AsyncIterator[tuple[RecoveryService, FakeBackend]]:
    backend = FakeBackend()
    service = RecoveryService(backend)
    bus = await connect(lib_name, system_bus.address)
    try:
        await service.attach(bus)  # as root: the policy lets root own the name
        yield service, backend
    finally:
        await service.close()
        await disconnect(bus)


def dbus_send(address: str, member: str, *args: str, interface: str = INTERFACE) -> list[str]:
    return [
        "dbus-send",
        f"--bus={address}",
        "--print-reply",
        f"--dest={BUS_NAME}",
        OBJECT_PATH,
        f"{interface}.{member}",
        *args,
    ]


async def nobody(argv: list[str], env: dict[str, str] | None = None) -> Any:
    return await asyncio.to_thread(as_nobody, argv, env)


async def reload_config(address: str) -> None:
    bus = await connect("next", address)
    try:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="ReloadConfig",
            )
        )
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    finally:
        await disconnect(bus)


@pytest.mark.asyncio
async def test_policy_lets_others_read_but_not_reset_or_recover(
    daemon: tuple[RecoveryService, FakeBackend], system_bus: PrivateBus
) -> None:
    _, backend = daemon
    for member in ("Reset", "Recover"):
        res = await nobody(dbus_send(system_bus.address, member, "string:web.service"))
        assert res.returncode != 0
        assert "org.freedesktop.DBus.Error.AccessDenied" in res.stderr
        # The bus daemon refused it: the message never reached unitgen.
        assert "Rejected send message" in res.stderr, res.stderr
    res = await nobody(dbus_send(system_bus.address, "Status"))
    assert res.returncode == 0, res.stderr
    res = await nobody(dbus_send(system_bus.address, "History", "string:web.service"))
    assert res.returncode == 0, res.stderr
    res = await nobody(
        dbus_send(system_bus.address, "Introspect", interface="org.freedesktop.DBus.Introspectable")
    )
    assert res.returncode == 0 and "IncidentOpened" in res.stdout
    assert backend.calls == [("status", None), ("history", "web.service")]


@pytest.mark.asyncio
async def test_only_root_may_own_the_name(system_bus: PrivateBus) -> None:
    res = await nobody(
        [
            "dbus-send",
            f"--bus={system_bus.address}",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            f"string:{BUS_NAME}",
            "uint32:4",
        ]
    )
    assert res.returncode != 0
    assert "AccessDenied" in res.stderr and "not allowed to own" in res.stderr, res.stderr


@pytest.mark.asyncio
async def test_others_receive_the_signals(
    daemon: tuple[RecoveryService, FakeBackend], system_bus: PrivateBus
) -> None:
    service, _ = daemon
    env = {"PYTHONPATH": str(REPO), "HOME": "/nonexistent"}
    argv = [
        sys.executable, "-m", "unitgen", "events", "--json", "--count", "1",
        "--address", system_bus.address,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        ready = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"following" in ready, ready
        service.emit(Event(EventKind.RECOVERED, "web.service", "i1", {"attempts": 1}))
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    line = json.loads(out)
    assert line["event"] == "Recovered" and line["details"] == {"attempts": 1}


@pytest.mark.asyncio
async def test_with_the_policy_relaxed_the_daemon_still_denies(
    daemon: tuple[RecoveryService, FakeBackend], system_bus: PrivateBus
) -> None:
    """Defence in depth: a policy file lost or loosened does not open Reset to everyone."""
    _, backend = daemon
    system_bus.policy.write_text(RELAXED_POLICY)
    await reload_config(system_bus.address)
    for member in ("Reset", "Recover"):
        res = await nobody(dbus_send(system_bus.address, member, "string:web.service"))
        assert res.returncode != 0
        assert "org.freedesktop.DBus.Error.AccessDenied" in res.stderr
        # This time it is unitgen's own answer, not the bus daemon's.
        assert "Rejected send message" not in res.stderr
        assert f"uid {NOBODY} may not call this" in res.stderr, res.stderr
    assert backend.calls == []
    # Root is still served.
    res = await asyncio.to_thread(
        subprocess.run,
        dbus_send(system_bus.address, "Reset", "string:web.service"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert backend.calls == [("reset", "web.service")]


@pytest.mark.asyncio
async def test_the_daemons_own_uid_is_allowed_besides_root() -> None:
    policy = AccessPolicy()
    assert policy.allowed_uids == {0, os.geteuid()}
    narrow = AccessPolicy(allowed_uids=[1234])
    decision = await narrow.check(None, Message, MessageType.ERROR, None, "Reset x.service")
    assert not decision.allowed and decision.uid is None
    assert "cannot verify" in decision.why
