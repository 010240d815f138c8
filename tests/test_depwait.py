"""DependencyWaits on its own: who waits for what, and when a dependent is resumed.

The real path (systemd refusing a restart, the ladder bringing the dependency back)
is tests/test_refused_dependents_sandbox.py."""

from __future__ import annotations

from types import SimpleNamespace

from handlers import bus as busmod
from handlers.depwait import DependencyWaits


class Queue:
    def __init__(self) -> None:
        self.put: list[tuple[str, str]] = []

    def __call__(self, unit: str, reason: str) -> None:
        self.put.append((unit, reason))


def _changed(active: str, interface: str = busmod.UNIT) -> list[object]:
    return [interface, {"ActiveState": SimpleNamespace(value=active)}, []]


def test_a_dependent_is_resumed_once_when_the_last_of_its_dependencies_is_active() -> None:
    queue = Queue()
    waits = DependencyWaits(queue)
    waits.wait("app.service", ["db.service", "cache.service"])
    assert "app.service" in waits and queue.put == []
    waits.signal("db.service", _changed("activating"))
    waits.signal("db.service", _changed("active", busmod.SERVICE))  # not the Unit interface
    waits.signal("db.service", _changed("active"))
    assert queue.put == []  # cache is still down
    waits.signal("cache.service", _changed("active"))
    assert queue.put == [("app.service", "dependency-back")]
    assert "cache.service is active again" in waits.reason("app.service")
    assert waits.reason("app.service") == ""  # once
    waits.signal("cache.service", _changed("active"))
    assert queue.put == [("app.service", "dependency-back")]
    assert "app.service" not in waits and waits.dependencies == {}


def test_nothing_down_any_more_resumes_at_once() -> None:
    queue = Queue()
    waits = DependencyWaits(queue)
    waits.wait("app.service", ["app.service"])  # itself is never its own dependency
    assert queue.put == [("app.service", "dependency-back")]


def test_a_dependent_that_started_or_failed_meanwhile_is_forgotten() -> None:
    queue = Queue()
    waits = DependencyWaits(queue)
    waits.wait("a.service", ["db.service"])
    waits.wait("b.service", ["db.service"])
    waits.forget("a.service")
    waits.active("db.service")
    assert queue.put == [("b.service", "dependency-back")]
    assert waits.reason("a.service") == ""


def test_waiting_again_replaces_what_it_waited_for() -> None:
    queue = Queue()
    waits = DependencyWaits(queue)
    waits.wait("app.service", ["old.service"])
    waits.wait("app.service", ["db.service"])
    waits.active("old.service")
    assert queue.put == []
    waits.active("db.service")
    assert queue.put == [("app.service", "dependency-back")]
