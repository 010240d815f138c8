"""Shared fixtures: a real, disposable systemd for the tests that need one.

Fixtures (see unitgen/sandbox/ for the Sandbox API):

``user_sandbox``        session scope: one user manager shared by many tests.
                        Use unique unit names; do not leave units running.
``fresh_user_sandbox``  function scope: a user manager of your own (~0.2 s).
``system_sandbox``      session scope: a booted systemd-nspawn container.
``fresh_system_sandbox`` function scope: a container of your own (~1 s).
``sandbox_bus``         async: ``bus = await sandbox_bus(sb)`` gives a connected
                        dbus-next ``MessageBus`` to ``sb``'s bus (the session bus
                        in user scope, the system bus in system scope); every
                        bus it handed out is disconnected at teardown.

Where a sandbox cannot start the test is skipped with the reason; under
``CI=true`` it fails instead (tests/sandboxlib.py). Tests using these
fixtures get the ``sandbox`` (and, for containers, ``system``) marker, so
``-m "not sandbox"`` runs the rest.

pytest's base temp dir is shared into every sandbox, so files under
``tmp_path`` can be named in ``ExecStart=``; the sandbox's own /tmp and
/var/tmp are private (``sb.root / "tmp"`` on the host).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from sandboxlib import close_bus, open_bus, start_sandbox

from unitgen.paths import Scope
from unitgen.sandbox import Sandbox

_USER_FIXTURES = {"user_sandbox", "fresh_user_sandbox"}
_SYSTEM_FIXTURES = {"system_sandbox", "fresh_system_sandbox"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & (_USER_FIXTURES | _SYSTEM_FIXTURES):
            item.add_marker(pytest.mark.sandbox)
        if names & _SYSTEM_FIXTURES:
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def user_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(Scope.USER, share=[tmp_path_factory.getbasetemp()])
    try:
        yield sb
    finally:
        sb.close()


@pytest.fixture
def fresh_user_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(Scope.USER, share=[tmp_path_factory.getbasetemp()])
    try:
        yield sb
    finally:
        sb.close()


@pytest.fixture(scope="session")
def system_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(Scope.SYSTEM, share=[tmp_path_factory.getbasetemp()])
    try:
        yield sb
    finally:
        sb.close()


@pytest.fixture
def fresh_system_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(Scope.SYSTEM, share=[tmp_path_factory.getbasetemp()])
    try:
        yield sb
    finally:
        sb.close()


@pytest_asyncio.fixture
async def sandbox_bus() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    opened: list[Any] = []

    async def connect(sandbox: Sandbox, **kwargs: Any) -> Any:
        bus = await open_bus(sandbox, **kwargs)
        opened.append(bus)
        return bus

    try:
        yield connect
    finally:
        for bus in opened:
            await close_bus(bus)
