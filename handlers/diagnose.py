"""Read a failed unit from systemd and classify the failure.

Reading is one GetAll per interface (Unit, Service) through the bus layer;
classifying is a pure function of those properties and the trigger, tested
without systemd. The journal is read with ``journalctl`` in a subprocess,
concurrently with the rest of the ladder, so it never delays a restart; where
there is no journal (a bare user manager) the diagnosis says so instead.

"Is systemd about to restart it itself?" is the question that keeps the ladder
from being a second actor. Yes when: SubState is ``auto-restart`` (or
``failed-before-auto-restart`` on 254+), a start/restart job is queued, or the
unit sits in ``failed`` while its ``Restart=`` setting covers this result and
the start limit was not hit: systemd 252 broadcasts ``failed`` just before it
moves to ``auto-restart``, so that case is settled by a short bounded wait.

The listener's decision (systemd 252, proven in tests/test_listener_sandbox.py)
------------------------------------------------------------------------------
:func:`decide` answers it for the listener over a :class:`UnitView`, built from
what the signals carried. On 252, ``service_enter_dead()`` sets ``failed`` and
then, in the same call, ``auto-restart``; systemd answers no method call in
between. So on a ``failed`` signal one round trip (:attr:`Action.ASK`, the
properties of :data:`STATE_NOW`) settles it: ``auto-restart`` (or anything but
``failed``) means systemd is restarting it, or already has; still ``failed``
means systemd gave up and the ladder takes over.

Three give-ups need no round trip, because the signals already say systemd will
not restart the unit: ``Restart=no``; a ``Result`` the unit's ``Restart=`` does
not cover (both only without ``RestartForceExitStatus=``); and the start limit,
``auto-restart`` -> ``dead`` -> ``failed`` of the invocation last seen in
``auto-restart``: systemd's restart job was refused, and the failed signal still
names that job (sent while the job is removed), so it is not a restart under way.

What the diagnosis needs travels with the signals (:data:`SERVICE_LIVE`,
:data:`UNIT_LIVE`), plus what changes only with a reload (:data:`STATIC`), read
once with the first failure (:attr:`Action.READ`); a view holding all of
:data:`SNAPSHOT` is the diagnosis's input, and the ladder makes no read of its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from handlers.bus import Expectation, UnitInfo

__all__ = [
    "RESTARTING_SUBSTATES",
    "SERVICE_LIVE",
    "SERVICE_STATIC",
    "SNAPSHOT",
    "STATE_NOW",
    "STATIC",
    "UNIT_LIVE",
    "UNIT_STATIC",
    "Action",
    "Basis",
    "Decision",
    "Diagnosis",
    "SystemdClient",
    "UnitView",
    "classify",
    "decide",
    "diagnosis_from",
    "invocation_hex",
    "job_queued",
    "read_journal",
    "restart_covers",
    "restart_pending",
    "restart_reached",
    "systemd_would_restart",
]

log = logging.getLogger(__name__)

JOURNAL_LINES = 20
JOURNAL_TIMEOUT = 3.0
# How long a `failed` unit whose Restart= covers the result may take to show
# `auto-restart`: PID 1 does both in one pass, so this is generous.
SETTLE_TIMEOUT = 0.5

CLASSES = (
    "exit-code",
    "signal",
    "core-dump",
    "timeout",
    "oom-kill",
    "start-limit-hit",
    "watchdog",
    "resources",
    "dependency",
    "health",
    "unknown",
)

RESTARTING_SUBSTATES = frozenset({"auto-restart", "failed-before-auto-restart"})

# What the diagnosis needs that systemd's signals carry: the Service interface's
# signal comes first, then the Unit interface's, from the same state.
SERVICE_LIVE = ("Result", "ExecMainCode", "ExecMainStatus", "NRestarts", "MainPID")
UNIT_LIVE = ("ActiveState", "SubState", "InvocationID", "Job")
# What it needs that changes only with a reload: the Unit interface's come with its
# GetAll, the Service interface's are read one Get each (or with its GetAll).
UNIT_STATIC = ("LoadState", "Requires", "BindsTo", "Wants", "After")
SERVICE_STATIC = ("Restart", "RestartForceExitStatus", "PIDFile", "StateDirectory", "LogsDirectory")
STATIC = (*UNIT_STATIC, *SERVICE_STATIC)
# A view with all of these is the diagnosis's input: the ladder reads nothing itself.
SNAPSHOT = (*SERVICE_LIVE, *UNIT_LIVE, "LoadState")
# The round trip that settles whether systemd is restarting the unit.
STATE_NOW = UNIT_LIVE
# Which results each Restart= setting restarts on (systemd.service(5), table 2).
_ABNORMAL = frozenset({"signal", "core-dump", "timeout", "watchdog"})
_RESTART_COVERS: dict[str, Callable[[str], bool]] = {
    "no": lambda r: False,
    "always": lambda r: True,
    "on-success": lambda r: r == "success",
    "on-failure": lambda r: r != "success",
    "on-abnormal": lambda r: r in _ABNORMAL,
    "on-watchdog": lambda r: r == "watchdog",
    "on-abort": lambda r: r in ("signal", "core-dump"),
}


@runtime_checkable
class SystemdClient(Protocol):
    """Every call the recovery engine makes on systemd; :class:`handlers.bus.SystemdBus`
    provides it, and the tests' fakes implement all of it (tests/test_systemd_client.py).
    """

    # True when wait_for() reads only the ``interfaces`` it is given. A client that
    # always reads everything (a test fake) says False, and the engine then calls
    # wait_for() with the three leading arguments alone.
    selects_interfaces: bool

    async def unit_properties(self, name: str) -> dict[str, Any]: ...

    async def get_property(
        self, name: str, prop: str, interface: str = "org.freedesktop.systemd1.Unit"
    ) -> Any: ...

    async def list_units(
        self, patterns: Sequence[str] = (), states: Sequence[str] = ()
    ) -> list[UnitInfo]: ...

    async def reset_failed(self, name: str) -> None: ...

    async def restart(self, name: str, mode: str = "replace") -> str: ...

    async def reset_and_restart(
        self, name: str, mode: str = "replace"
    ) -> tuple[str, Exception | None]: ...

    async def unpin(self, name: str) -> None: ...

    def expect_changes(self, name: str) -> Expectation | None:
        """Collect ``name``'s changes from now on, for a wait_for(since=...); None: cannot."""
        ...

    def forget(self, expectation: Expectation) -> None: ...

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109 -- mirrors SystemdBus.wait_for
        interfaces: Iterable[str] = (
            "org.freedesktop.systemd1.Unit",
            "org.freedesktop.systemd1.Service",
        ),
        *,
        since: Expectation | None = None,
        initial: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Diagnosis:
    unit: str
    load_state: str
    active_state: str
    sub_state: str
    result: str
    exec_main_code: int
    exec_main_status: int
    n_restarts: int
    main_pid: int
    pidfile: str
    invocation_id: str
    control_group: str
    restart_setting: str
    job_queued: bool
    requires: tuple[str, ...]
    binds_to: tuple[str, ...]
    wants: tuple[str, ...]
    after: tuple[str, ...]
    state_directories: tuple[str, ...]
    logs_directories: tuple[str, ...]
    classification: str

    @property
    def found(self) -> bool:
        return self.load_state not in ("not-found", "bad-setting", "error", "masked")

    @property
    def failed(self) -> bool:
        return self.active_state == "failed"

    @property
    def active(self) -> bool:
        return self.active_state in ("active", "reloading")

    def summary(self) -> str:
        code = f", status {self.exec_main_status}" if self.exec_main_code else ""
        return (
            f"{self.unit}: {self.active_state}/{self.sub_state}, result {self.result}"
            f"{code}, {self.n_restarts} restarts by systemd, classified {self.classification}"
        )


def _str(props: Mapping[str, Any], key: str) -> str:
    value = props.get(key)
    return value if isinstance(value, str) else ""


def _int(props: Mapping[str, Any], key: str) -> int:
    value = props.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value


def _names(props: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = props.get(key)
    if not isinstance(value, list | tuple):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def invocation_hex(value: object) -> str:
    """An InvocationID as the history keeps it: D-Bus's ``ay`` (bytes, or a list of
    ints) as hex, a string as it is; "" for anything else."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, list):
        with contextlib.suppress(TypeError, ValueError):
            return bytes(value).hex()
        return ""
    return value if isinstance(value, str) else ""


def job_queued(props: Mapping[str, Any]) -> bool:
    job = props.get("Job")
    # Job is (id, path); (0, "/") means none.
    if isinstance(job, list | tuple) and job:
        first = job[0]
        return isinstance(first, int) and first != 0
    return False


def restart_reached(props: Mapping[str, Any]) -> bool:
    """A restart sent before its sender lost track of it got to systemd: the unit has a
    job queued, or is starting, up or reloading (the Unit interface's state suffices)."""
    return props.get("ActiveState") in ("active", "activating", "reloading") or job_queued(props)


def classify(
    props: Mapping[str, Any],
    *,
    trigger_result: str = "",
    failed_dependencies: Sequence[str] = (),
    health_failed: bool = False,
) -> str:
    """One of :data:`CLASSES` for this failure."""
    if failed_dependencies:
        return "dependency"
    if health_failed and _str(props, "ActiveState") in ("active", "reloading"):
        # Running but failing its probe: Result still describes an earlier run.
        return "health"
    result = trigger_result or _str(props, "Result")
    if result in ("oom-kill", "core-dump", "signal", "timeout", "watchdog", "start-limit-hit"):
        return result
    if result == "resources":
        return "resources"
    if result == "exit-code":
        return "exit-code"
    # ExecMainCode: CLD_EXITED=1, CLD_KILLED=2, CLD_DUMPED=3.
    code = _int(props, "ExecMainCode")
    if code == 3:
        return "core-dump"
    if code == 2:
        return "signal"
    if code == 1 and _int(props, "ExecMainStatus") != 0:
        return "exit-code"
    if health_failed:
        return "health"
    return "unknown"


def diagnosis_from(
    unit: str,
    props: Mapping[str, Any],
    *,
    trigger_result: str = "",
    failed_dependencies: Sequence[str] = (),
    health_failed: bool = False,
) -> Diagnosis:
    # The state as the decision reads it: the two never disagree on what a key means.
    view = UnitView.of(props)
    return Diagnosis(
        unit=unit,
        load_state=_str(props, "LoadState"),
        active_state=view.active_state,
        sub_state=view.sub_state,
        result=view.result,
        exec_main_code=_int(props, "ExecMainCode"),
        exec_main_status=_int(props, "ExecMainStatus"),
        n_restarts=_int(props, "NRestarts"),
        main_pid=_int(props, "MainPID"),
        pidfile=_str(props, "PIDFile"),
        invocation_id=view.invocation,
        control_group=_str(props, "ControlGroup"),
        restart_setting=view.restart,
        job_queued=view.job_queued,
        requires=_names(props, "Requires"),
        binds_to=_names(props, "BindsTo"),
        wants=_names(props, "Wants"),
        after=_names(props, "After"),
        state_directories=_names(props, "StateDirectory"),
        logs_directories=_names(props, "LogsDirectory"),
        classification=classify(
            props,
            trigger_result=trigger_result,
            failed_dependencies=failed_dependencies,
            health_failed=health_failed,
        ),
    )


def restart_covers(restart: str, result: str) -> bool | None:
    """Whether ``Restart=restart`` restarts after ``result``; None for a setting unknown here."""
    covers = _RESTART_COVERS.get(restart)
    return None if covers is None else covers(result)


def restart_pending(props: Mapping[str, Any]) -> bool:
    """systemd is visibly restarting the unit right now (no guessing)."""
    return UnitView.of(props).restart_pending


def systemd_would_restart(props: Mapping[str, Any]) -> bool:
    """A `failed` unit whose Restart= covers its result: systemd is about to act."""
    return UnitView.of(props).restart_due


# -- the decision ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitView:
    """A unit as far as :func:`decide` needs it: its state, its Restart= settings,
    where the view came from, and the invocation last seen in ``auto-restart``."""

    active_state: str = ""
    sub_state: str = ""
    invocation: str = ""  # hex
    job_queued: bool = False
    result: str = ""
    restart: str = ""  # Restart=; "" when not read
    restart_forced: bool = False  # RestartForceExitStatus= names a status or a signal
    settings_known: bool = False  # the reload-only properties (STATIC) were read
    complete: bool = False  # every property of SNAPSHOT is known
    signalled: bool = False  # the Service interface's live properties came with signals
    answered: bool = False  # systemd's state read after the failure, not the signals
    # The invocation last seen in ``auto-restart``: a ``failed`` of that same invocation
    # means systemd's own restart job was refused (the start limit) and it gave up.
    last_auto_restart: str = ""

    @classmethod
    def of(
        cls,
        props: Mapping[str, Any],
        *,
        settings_known: bool = True,
        signalled: bool = False,
        answered: bool = True,
        last_auto_restart: str = "",
    ) -> UnitView:
        """The view of ``props`` (systemd's property names, values unwrapped)."""
        return cls(
            active_state=_str(props, "ActiveState"),
            sub_state=_str(props, "SubState"),
            invocation=invocation_hex(props.get("InvocationID")),
            job_queued=job_queued(props),
            result=_str(props, "Result"),
            restart=_str(props, "Restart"),
            restart_forced=_forced(props.get("RestartForceExitStatus")),
            settings_known=settings_known,
            complete=all(key in props for key in SNAPSHOT),
            signalled=signalled,
            answered=answered,
            last_auto_restart=last_auto_restart,
        )

    @property
    def failed(self) -> bool:
        return self.active_state == "failed"

    @property
    def restart_pending(self) -> bool:
        """systemd is visibly restarting the unit right now (no guessing)."""
        if self.sub_state in RESTARTING_SUBSTATES:
            return True
        return self.job_queued and self.active_state != "active"

    @property
    def restart_due(self) -> bool:
        """Failed, and Restart= covers the result: systemd is about to restart it."""
        if not self.failed or self.result in ("", "start-limit-hit"):
            return False
        return restart_covers(self.restart or "no", self.result) is True

    @property
    def restart_excluded(self) -> bool:
        """systemd will not restart the unit after this result, whatever the timing.

        ``Restart=no``, or a ``Result`` the unit's ``Restart=`` does not cover (or the
        start limit), with no ``RestartForceExitStatus=``, which would restart it anyway.
        ``RestartPreventExitStatus=`` only ever stops a restart, so a result it covers
        is left to systemd's answer.
        """
        if self.restart_forced:
            return False
        if self.restart == "no":
            return True
        if not self.restart or not self.result:
            return False
        return (
            self.result == "start-limit-hit" or restart_covers(self.restart, self.result) is False
        )

    @property
    def start_limit(self) -> bool:
        """Failed in the invocation last seen in auto-restart: the restart job was refused."""
        return self.failed and bool(self.invocation) and self.invocation == self.last_auto_restart


def _forced(value: object) -> bool:
    # (exit codes, signals); ([], []) is none.
    return isinstance(value, list | tuple) and any(value)


class Action(Enum):
    """What the listener does with a unit it was told about."""

    READ = "read"  # its settings are unknown: read it; the read is decision and diagnosis
    ASK = "ask"  # systemd may be restarting it: ask for STATE_NOW, the answer decides
    STAND_DOWN = "stand-down"  # systemd restarted it, or is restarting it
    LEAVE = "leave"  # not failed and nothing restarting it (stopped): nothing to do
    RECOVER = "recover"  # failed, and systemd gave up: the ladder's turn


class Basis(Enum):
    """What the decision rests on."""

    UNREAD = "unread"  # nothing read since the last (re)connect or reload
    MAY_RESTART = "may-restart"  # Restart= may cover the result: only systemd can say
    START_LIMIT = "start-limit"  # auto-restart, then failed, one invocation: job refused
    NO_RESTART = "no-restart"  # Restart= excludes this result: the signals suffice
    ANSWERED = "answered"  # systemd's state, read after its own decision


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    basis: Basis
    # The trigger's Result where the unit's own is not the story: at the start limit it
    # keeps the crash's value (systemd only overwrites a success).
    result: str = ""
    # The view's Job is the refused restart job (sent while it was removed): none is queued.
    job_refused: bool = False
    # READ: the Service interface's keys to Get one by one (() reads its GetAll);
    # ASK: the Unit interface's properties to Get.
    reads: tuple[str, ...] = ()

    @property
    def without_read(self) -> bool:
        """Decided on the signals alone."""
        return self.basis in (Basis.START_LIMIT, Basis.NO_RESTART)


def decide(view: UnitView) -> Decision:
    """Is systemd restarting the unit, and what must be read to know and to diagnose."""
    if not view.answered:
        if not view.settings_known:
            # Seen failing in signals, only the static keys are missing: a few Gets of
            # the Service interface cost less than its GetAll; otherwise the GetAll.
            return Decision(
                Action.READ, Basis.UNREAD, reads=SERVICE_STATIC if view.signalled else ()
            )
        if view.complete:
            if view.start_limit:
                return Decision(
                    Action.RECOVER, Basis.START_LIMIT, result="start-limit-hit", job_refused=True
                )
            if view.restart_excluded:
                return _on_state(view, Basis.NO_RESTART)
        return Decision(Action.ASK, Basis.MAY_RESTART, reads=STATE_NOW)
    return _on_state(view, Basis.ANSWERED)


def _on_state(view: UnitView, basis: Basis) -> Decision:
    """The unit's state is systemd's final word: act on it."""
    if not view.failed:
        if view.sub_state == "auto-restart" or view.active_state in ("activating", "active"):
            return Decision(Action.STAND_DOWN, basis)
        return Decision(Action.LEAVE, basis)
    return Decision(Action.RECOVER, basis, result="start-limit-hit" if view.start_limit else "")


async def read_journal(unit: str, *, user: bool, lines: int = JOURNAL_LINES) -> tuple[str, ...]:
    """The unit's last journal lines, or one line saying why there are none."""
    # Imported here: the journal is read after RestartUnit, off the start-up path.
    from handlers.procs import run_command

    selector = ["--user-unit", unit] if user else ["-u", unit]
    argv = ["journalctl", *selector, "-n", str(lines), "-o", "cat", "--no-pager", "-q"]
    result = await run_command(argv, timeout=JOURNAL_TIMEOUT, max_output=16 * 1024)
    if not result.ok:
        return (f"(journal unavailable: {result.describe()})",)
    text = [ln for ln in result.output_tail.splitlines() if ln.strip()]
    if not text:
        return ("(journal has no lines for this unit: no journald, or nothing logged)",)
    return tuple(text[-lines:])


async def settle(client: SystemdClient, unit: str, props: dict[str, Any]) -> dict[str, Any]:
    """If systemd looks about to restart ``unit``, wait (bounded) to see it do so."""
    if not systemd_would_restart(props):
        return props

    def moved(p: dict[str, Any]) -> bool:
        return restart_pending(p) or _str(p, "ActiveState") != "failed"

    try:
        return await client.wait_for(unit, moved, SETTLE_TIMEOUT)
    except TimeoutError:
        return props
    except Exception as exc:
        # SystemdError on timeout from the bus layer: the unit stayed failed, as read.
        log.debug("settle %s: %s", unit, exc)
        return props
