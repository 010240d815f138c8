"""The marker that makes systemd skip the OnFailure= oneshot while the daemon is up.

Every generated unit has ``OnFailure=unitgen-recover@%n.service``. With the
listener daemon following systemd, that oneshot has nothing to do: the listener
took the failure over on the signal, milliseconds before a Python process could
start. So the recovery unit carries
``ConditionPathExists=!%t/unitgen-watch/listening``, which PID 1 evaluates
without forking anything; an unmet condition is a skip, not a failure.

The daemon keeps that marker only while it can see failures: from the end of a
connection's first reconciliation (every failure before it is either in that
reconciliation or reaches the oneshot) to the moment the connection is lost or
the daemon is told to stop. Two things make a dead daemon's marker vanish
without its help:

* it lives in the daemon unit's ``RuntimeDirectory=``, which systemd removes
  whenever the unit stops: a crash, kill -9, a watchdog kill of a hung daemon,
  and each automatic restart (no ``RuntimeDirectoryPreserve=``);
* it is a symlink to ``/proc/PID`` of the daemon. ConditionPathExists= follows
  symlinks, so once the process is gone the link dangles and counts as
  missing. That covers what systemd does not remove: a runtime directory that
  is not on tmpfs (systemd refuses to empty one), a daemon started by hand.

What the daemon had not finished when the marker goes is picked up again:

* after a crash, kill -9 or watchdog kill, by the next daemon (systemd's
  ``Restart=always``, or the daemon unit's own OnFailure= recovery, which runs
  because the marker went with the daemon): its start-up reconciliation queues
  every failed watched unit and adopts an incident whose owner died;
* on a clean stop, by the daemon itself: once its ladders are cancelled and its
  locks released, :func:`hand_over_failed` starts the recovery unit of every
  watched unit still failed without a closed incident for that failure, and
  those oneshots run the ladder (no marker, no daemon to hand to).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from unitgen.errors import UnitgenError

if TYPE_CHECKING:
    from handlers.bus import SystemdBus
    from handlers.watchset import WatchSet

log = logging.getLogger(__name__)


class ListeningMarker:
    """Sets and clears the marker; once closed (the daemon is stopping) it stays clear."""

    def __init__(self, path: Path, pid: int | None = None) -> None:
        self.path = path
        self._target = f"/proc/{os.getpid() if pid is None else pid}"
        self._closed = False
        self.present = False
        self.used = False  # ever set: some OnFailure= unit may have been skipped

    def set(self) -> None:
        """Create (or re-point) the marker. Synchronous on purpose: a few tmpfs
        metadata operations, ordered with clear() without any await in between."""
        if self._closed:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._target)
            tmp.replace(self.path)
        except OSError as exc:
            # Only costs speed: the OnFailure= oneshot runs and hands its failure over.
            log.warning("cannot create %s: %s; OnFailure= units will run", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        if not self.present:
            log.info("listening: OnFailure= recovery units are skipped while %s exists", self.path)
        self.present = True
        self.used = True

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove %s: %s", self.path, exc)  # noqa: TRY400 - no traceback
            return
        if self.present:
            log.info("not listening: OnFailure= recovery units run again")
        self.present = False

    def close(self) -> None:
        """Clear for good: called first thing on SIGTERM, before the teardown."""
        self._closed = True
        self.clear()


async def hand_over_failed(bus: SystemdBus, watch: WatchSet, database: Path) -> list[str]:
    """On a clean stop: start the recovery unit of every watched unit whose failure
    this daemon had not finished, since systemd skipped it while the marker stood.

    Called after the marker is gone, so the recovery units run (their condition
    holds) and take the per-unit lock once this process has let go of it. A unit
    whose failed invocation has a closed incident (recovered, or given up on) is
    left alone: the ladder's verdict stands, as it would without the daemon.
    """
    from handlers.diagnose import invocation_hex
    from handlers.handoff import handled_incident
    from unitgen.unitnames import recovery_instance

    patterns = watch.patterns()
    if not patterns:
        return []
    rows = await bus.list_units(patterns, states=["failed"])
    started: list[str] = []
    for row in rows:
        if row.name not in watch:
            continue
        try:
            invocation = invocation_hex(await bus.get_property(row.name, "InvocationID"))
            closed = await asyncio.to_thread(handled_incident, database, row.name, invocation)
            if closed is not None:
                continue
            await bus.start(recovery_instance(row.name))
        except UnitgenError as exc:
            log.warning("handing %s to its recovery unit failed: %s", row.name, exc)
            continue
        started.append(row.name)
    if started:
        log.info("stopping: handed %s to the OnFailure= fallback", ", ".join(started))
    return started
