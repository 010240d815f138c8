"""The listening marker's own logic (handlers/listening.py); systemd's side of it is
proven in tests/test_listening_sandbox.py."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from handlers.listening import ListeningMarker
from unitgen.paths import LISTENING_DIR, LISTENING_MARKER, Scope, listening_marker


def test_marker_is_a_link_to_this_process_and_dangles_once_its_process_is_gone(
    tmp_path: Path,
) -> None:
    marker = ListeningMarker(tmp_path / "rt" / "listening")
    marker.set()
    assert marker.path.is_symlink() and marker.path.exists()
    assert os.readlink(marker.path) == f"/proc/{os.getpid()}"
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = ListeningMarker(tmp_path / "rt2" / "listening", pid=dead.pid)
    gone.set()
    # What ConditionPathExists= sees: lexists, but not exists.
    assert gone.path.is_symlink() and not gone.path.exists()


def test_set_twice_replaces_and_close_keeps_it_cleared(tmp_path: Path) -> None:
    marker = ListeningMarker(tmp_path / "listening")
    marker.set()
    marker.set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listening"]  # no temp left
    marker.clear()
    assert not marker.path.is_symlink() and not marker.present
    marker.clear()  # idempotent
    marker.set()
    marker.close()
    marker.set()  # a connection finishing its reconcile during the stop
    assert not marker.path.is_symlink() and not marker.present and marker.used


def test_an_unwritable_directory_only_costs_speed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    marker = ListeningMarker(blocker / "listening")  # parent is a file
    with caplog.at_level(logging.WARNING, logger="handlers.listening"):
        marker.set()
    assert not marker.present and not marker.used
    assert "OnFailure= units will run" in caplog.text


def test_marker_path_is_systemds_percent_t_of_the_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert listening_marker(Scope.USER) == Path("/run/user/1234", LISTENING_DIR, LISTENING_MARKER)
    assert listening_marker(Scope.SYSTEM) == Path("/run/unitgen-watch/listening")
