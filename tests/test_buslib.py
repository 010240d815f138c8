"""The library seam: a connection that fails, or is closed, leaves no socket open.

The peers are real unix sockets: none at all (dbus-next's constructor then fails
with its socket open), one that refuses the authentication, one that never
answers (the connect's deadline), and the sandbox's real bus for a clean close.
The descriptors are counted in /proc/self/fd, with the failure still held (its
traceback keeps the library's objects alive) and no garbage collection between.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from handlers import bus as busmod
from handlers.bus import SystemdBus
from unitgen.errors import SystemdError
from unitgen.paths import Scope
from unitgen.sandbox import Sandbox

LIBS = ["next", "fast"]


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


class Peer:
    """A unix socket that answers the D-Bus handshake the way ``mode`` says."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.mode = mode
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.answered = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if self.mode == "silent":
            return  # keeps the connection open and says nothing
        await reader.readuntil(b"\r\n")  # "\0AUTH EXTERNAL <uid>\r\n"
        writer.write(b"REJECTED EXTERNAL\r\n")
        await writer.drain()
        self.answered.set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            await writer.wait_closed()
        self.writers.clear()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture
async def peer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Peer]:
    p = Peer(tmp_path / "bus", request.param)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def _failed_connect(address: str, lib: str) -> pytest.ExceptionInfo[SystemdError]:
    with pytest.raises(SystemdError, match="cannot connect") as failed:
        await SystemdBus.connect(Scope.USER, address=address, library=lib)
    return failed


@pytest.mark.asyncio
@pytest.mark.parametrize("lib", LIBS)
async def test_no_socket_left_when_nothing_listens(tmp_path: Path, lib: str) -> None:
    before = _fds()
    failed = await _failed_connect(f"unix:path={tmp_path}/nobus", lib)
    assert _fds() - before == set()
    assert failed.value.__cause__ is not None  # the library's error, kept for the log


@pytest.mark.asyncio
@pytest.mark.parametrize("peer", ["refuse"], indirect=True)
@pytest.mark.parametrize("lib", LIBS)
async def test_no_socket_left_when_the_handshake_is_refused(peer: Peer, lib: str) -> None:
    before = _fds()
    failed = await _failed_connect(f"unix:path={peer.path}", lib)
    assert peer.answered.is_set()
    await peer.close()  # our end of the peer's connections, counted apart
    assert _fds() - before == set()
    assert "AuthError" in str(failed.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("peer", ["silent"], indirect=True)
@pytest.mark.parametrize("lib", LIBS)
async def test_no_socket_left_when_the_connect_times_out(
    peer: Peer, lib: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(busmod, "CALL_TIMEOUT", 0.2)
    before = _fds()
    failed = await _failed_connect(f"unix:path={peer.path}", lib)
    await peer.close()
    assert _fds() - before == set()
    assert "TimeoutError" in str(failed.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("lib", LIBS)
async def test_close_releases_the_socket(user_sandbox: Sandbox, lib: str) -> None:
    before = _fds()
    bus = await SystemdBus.connect(Scope.USER, address=user_sandbox.bus_address, library=lib)
    assert len(_fds() - before) >= 1
    await bus.close()
    assert _fds() - before == set()
