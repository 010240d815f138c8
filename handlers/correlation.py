"""Incident groups: failures that share a cause the ladder can see, handled as one.

Pure bookkeeping on an injected monotonic clock; the engine
(:mod:`handlers.recovery`) tells the :class:`Correlator` what each run found,
and acts on what it answers. Nothing here waits: a run is never held to see
whether others will join it. A unit joins a group at the moment its own ladder
finds the cause (a dependency down at the dependency check, a full disk at the
resource check, a failed validate command, the same exit status as another
instance of its template), so a single failure pays nothing and an unrelated
unit is never delayed by a group.

Rules (docs/recovery.md, "Incident groups"):

* one group per cause while it is open; a unit belongs to one group at a time,
  the first cause its ladder found (dependencies are checked first, so a
  dependency wins over the exit status the dependency's loss caused);
* a group is *announced* (GroupOpened, one alert) once two units are involved:
  two members, or a member and the cause unit itself failing (a dependency our
  ladder is recovering). One member behind a dependency nobody recovers is an
  ordinary incident, alerted as today;
* a group closes when every member (and the cause unit) has finished its run;
  a unit that fails again after that starts a new group.

Also here: :class:`RestartRate`, the host-wide limit on ladder restarts per second.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "GROUP_RESTARTS_IN_FLIGHT",
    "GROUP_WINDOW",
    "Cause",
    "Correlator",
    "Group",
    "RestartRate",
    "cycle_text",
]

# How long after a group is announced its alert waits for further members, and how
# long after a failure another failure counts as "close together" (seconds).
GROUP_WINDOW = 1.0
# How long a group stays open once all its units are done: a unit whose failure the
# listener reaches late (systemd reports 200 failures over seconds under load) still
# joins it, and its resolution waits this long (seconds).
GROUP_LINGER = 5.0
# The longest a group's first alert waits for members to stop joining (seconds).
GROUP_ALERT_WAIT_MAX = 10.0
# How long a closed group's units' own late alerts (a give-up queued at the end of
# a run) still count as the group's (seconds); a new failure of the unit ends it.
COVERED_FOR = 60.0
# Restarts of one group's dependents in flight at once, once their cause is back.
GROUP_RESTARTS_IN_FLIGHT = 16

# Which cause a unit is grouped by when its ladder sees several; lower is stronger.
_STRENGTH = {"dependency": 0, "depends": 1, "disk": 2, "memory": 3, "config": 4, "exit-status": 5}

# Outcomes of a member's run, as the group's summary counts them.
RECOVERED = "recovered"
GAVE_UP = "gave-up"
WAITING = "waiting"  # gave up because its cause stayed down: it waits for the cause


@dataclass(frozen=True)
class Cause:
    """What several failures share. ``unit``: the dependency to recover first, if any."""

    kind: str  # dependency | depends | disk | memory | config | exit-status
    key: str  # the dependency's name, a mount point, the validate argv, template + status
    unit: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind} {self.key}"

    @property
    def strength(self) -> int:
        return _STRENGTH.get(self.kind, len(_STRENGTH))


@dataclass
class Group:
    id: str
    cause: Cause
    opened_at: float
    # unit -> its run's outcome ("" while it runs), in the order they joined
    members: dict[str, str] = field(default_factory=dict)
    cause_failed: bool = False  # the cause unit itself is being recovered by us
    cause_outcome: str = ""  # how the cause unit's run ended ("" while it runs)
    announced: bool = False
    closed_at: float | None = None

    @property
    def involved(self) -> int:
        return len(self.members) + (1 if self.cause_failed else 0)

    @property
    def done(self) -> bool:
        members_done = all(self.members.values())
        return members_done and (not self.cause_failed or bool(self.cause_outcome))

    def units(self) -> list[str]:
        """The cause unit (when it failed) first, then the members in the order they joined."""
        head = [self.cause.unit] if self.cause_failed and self.cause.unit else []
        return head + [u for u in self.members if u not in head]

    def with_outcome(self, outcome: str) -> list[str]:
        out = [u for u, o in self.members.items() if o == outcome]
        if self.cause_failed and self.cause_outcome == outcome and self.cause.unit not in out:
            out.insert(0, self.cause.unit)
        return out

    @property
    def recovered(self) -> bool:
        return self.done and self.involved == len(self.with_outcome(RECOVERED))


class Correlator:
    """Groups failures by cause; see the module's rules."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        window: float = GROUP_WINDOW,
        linger: float = GROUP_LINGER,
        prefix: str | None = None,
    ) -> None:
        self._clock = clock
        self.window = window
        self.linger = linger
        self._prefix = prefix if prefix is not None else f"g{os.getpid():x}"
        self._ids = itertools.count(1)
        self._open: dict[tuple[str, str], Group] = {}  # (kind, key) -> open group
        self._member_of: dict[str, Group] = {}  # unit -> the open group it is a member of
        self._quiet: dict[str, tuple[float, Group]] = {}  # group id -> (done since, group)
        self._failures: dict[str, float] = {}  # unit -> when its latest run began
        self._running: dict[str, int] = {}  # unit -> runs in progress
        # unit -> when the announced group that covered it closed: its own late alerts
        # (a give-up queued at its run's end) are still the group's.
        self._covered: dict[str, float] = {}
        self._pruned_at = float("-inf")

    # --- failures close together --------------------------------------------------------

    def began(self, unit: str) -> Group | None:
        """A run for ``unit`` began. Returns its dependents' group if this announced it.

        Every run is a possible cause: its dependents that find it down join it.
        """
        now = self._clock()
        self._failures[unit] = now
        self._covered.pop(unit, None)
        self._running[unit] = self._running.get(unit, 0) + 1
        if len(self._failures) > 2 * len(self._running) + 256:
            cutoff = now - self.window
            self._failures = {u: t for u, t in self._failures.items() if t >= cutoff}
        if now - self._pruned_at >= self.window / 4:
            self._pruned_at = now
            self._prune(now)
        group = self._group_for(Cause("dependency", unit, unit))
        group.cause_outcome = ""
        self._quiet.pop(group.id, None)
        if group.cause_failed:
            return None
        group.cause_failed = True
        return group if self._maybe_announce(group) else None

    def busy(self, unit: str) -> bool:
        """Another unit's run is in progress, or began within the window of ``unit``'s.

        Only then may an alert about ``unit`` be worth holding for a group: a lone
        failure's alert goes out exactly as without grouping.
        """
        if any(u != unit for u in self._running):
            return True
        at = self._failures.get(unit)
        if at is None:
            return False
        return any(u != unit and abs(t - at) <= self.window for u, t in self._failures.items())

    # --- groups ------------------------------------------------------------------------

    def join(self, unit: str, cause: Cause) -> tuple[Group, bool]:
        """``unit``'s ladder found ``cause``: its group, and whether it was announced just now.

        A unit already in a group stays there unless ``cause`` is stronger.
        """
        current = self._member_of.get(unit)
        if current is not None and cause.strength >= current.cause.strength:
            return current, False
        if current is not None:
            if current.announced:
                return current, False  # its alert already names it; it stays
            current.members.pop(unit, None)
        group = self._group_for(cause)
        group.members.setdefault(unit, "")
        self._quiet.pop(group.id, None)
        self._member_of[unit] = group
        return group, self._maybe_announce(group)

    def caused(self, dependency: str) -> Group | None:
        """The open group of units behind ``dependency`` whose own run we started or saw.

        A dependency that recovered moments ago still has it: a dependent that finds it
        active again joins, so its alert is the group's one.
        """
        group = self._open.get(("dependency", dependency))
        if group is None or not group.cause_failed:
            return None
        quiet = self._quiet.get(group.id)
        if quiet is not None and self._clock() - quiet[0] >= self.linger:
            return None  # over: whatever fails now is a new incident
        return group

    def group_of(self, unit: str) -> Group | None:
        """The announced open group ``unit`` is a member or the cause of."""
        group = self._member_of.get(unit)
        if group is not None and group.announced:
            return group
        group = self._open.get(("dependency", unit))
        if group is not None and group.announced:
            return group
        return None

    def finish(self, unit: str, outcome: str) -> list[Group]:
        """``unit``'s run ended with ``outcome``; the groups it made done (not yet closed)."""
        count = self._running.get(unit, 0) - 1
        if count > 0:
            self._running[unit] = count
        else:
            self._running.pop(unit, None)
        now = self._clock()
        touched: list[Group] = []
        group = self._member_of.get(unit)
        if group is not None and unit in group.members:
            group.members[unit] = outcome or GAVE_UP
            touched.append(group)
        own = self._open.get(("dependency", unit))
        if own is not None and own.cause_failed and count <= 0:
            own.cause_outcome = outcome or GAVE_UP
            touched.append(own)
        done = [g for g in touched if g.done]
        for g in done:
            self._quiet.setdefault(g.id, (now, g))
        return done

    def _prune(self, now: float) -> None:
        """Forget the groups that were never announced once quiet for the window."""
        for since, group in list(self._quiet.values()):
            if not group.announced and now - since >= self.linger:
                self._drop(group)

    def _drop(self, group: Group) -> None:
        self._open.pop((group.cause.kind, group.cause.key), None)
        self._quiet.pop(group.id, None)
        for member in group.members:
            if self._member_of.get(member) is group:
                del self._member_of[member]

    def close_due(self, *, now_all: bool = False) -> list[Group]:
        """Groups done and quiet for the linger (``now_all``: done at all): closed now."""
        now = self._clock()
        closed: list[Group] = []
        for since, group in list(self._quiet.values()):
            if (now - since < self.linger and not now_all) or not group.done:
                continue
            self._drop(group)
            group.closed_at = now
            if group.announced:
                for unit in group.units():
                    self._covered[unit] = now
            closed.append(group)
        if len(self._covered) > 4096:
            cutoff = now - COVERED_FOR
            self._covered = {u: t for u, t in self._covered.items() if t >= cutoff}
        return closed

    def pending_close(self) -> bool:
        """An announced group is done and waits out its window before it closes."""
        return any(g.announced for _since, g in self._quiet.values())

    def covered(self, unit: str) -> bool:
        """``unit``'s alerts are its group's: it is in an announced group, or was just now."""
        if self.group_of(unit) is not None:
            return True
        closed = self._covered.get(unit)
        return closed is not None and self._clock() - closed < COVERED_FOR

    def open_groups(self) -> list[Group]:
        return [g for g in self._open.values() if g.announced]

    def _group_for(self, cause: Cause) -> Group:
        key = (cause.kind, cause.key)
        group = self._open.get(key)
        if group is None:
            group = Group(f"{self._prefix}-{next(self._ids)}", cause, self._clock())
            self._open[key] = group
        return group

    @staticmethod
    def _maybe_announce(group: Group) -> bool:
        if group.announced or group.involved < 2:
            return False
        group.announced = True
        return True


def cycle_text(chain: list[str], again: str) -> str:
    """``a → b → a``: the dependency chain from where ``again`` first appears."""
    start = chain.index(again) if again in chain else 0
    return " → ".join([*chain[start:], again])


class RestartRate:
    """The host-wide limit on ladder restarts per second: at most ``per_second`` in any second.

    ``per_second`` 0 means no limit. A burst of up to ``per_second`` goes at once;
    the next one waits until the oldest of those is a second old. :meth:`delay`
    reserves a slot and says how long to wait for it; callers sleep that long.
    """

    def __init__(self, per_second: float, clock: Callable[[], float]) -> None:
        self.per_second = max(0.0, per_second)
        self._clock = clock
        self._slots: collections.deque[float] = collections.deque(
            maxlen=max(1, math.ceil(self.per_second))
        )

    def delay(self) -> float:
        if self.per_second <= 0:
            return 0.0
        now = self._clock()
        at = now
        if len(self._slots) == self._slots.maxlen:
            at = max(now, self._slots[0] + 1.0)
        self._slots.append(at)
        return at - now
