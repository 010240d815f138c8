"""The exported D-Bus interface ``org.unitgen.Recovery1``: signals out, four methods in.

Name ``org.unitgen.Recovery1``, object ``/org/unitgen/Recovery1``, interface
``org.unitgen.Recovery1``; the trailing 1 is the version, and the contract is
``handlers/org.unitgen.Recovery1.xml`` (a test compares it with the live
introspection) and docs/events.md.

Every signal has the signature ``(s unit, s incident_id, t timestamp_usec,
a{sv} details)``; ``details`` carries only the allow-listed keys of
:mod:`handlers.public_fields`, so nothing secret reaches a bus monitor.

Methods:

* ``Status() -> aa{sv}``, ``History(s unit) -> aa{sv}`` and ``HistoryPage(s unit,
  u offset, u count) -> (aa{sv}, u)`` are open to anyone; their replies are
  bounded (20 incidents, 50 attempts each, ~64 KiB a page).
* ``Reset(s unit)`` and ``Recover(s unit) -> a{sv}`` mutate. They are claimed
  by a message handler that runs before the library's dispatch, asks the bus
  daemon for the caller's uid (``GetConnectionUnixUser``) and only then runs
  the method (:mod:`handlers.access`). The uid lookup is itself a bus call, so
  the handler returns ``True`` at once ("handled, reply follows") and replies
  from a task; dispatch of other messages never waits for it. The ``@method``
  bodies of these two are reachable only if that handler is missing, and then
  they refuse: the check fails closed.

The same handler claims the reads, so every call of these methods is admitted
against a pool first (:mod:`handlers.admission`): a few per connection, a few
overall, reads and mutating calls apart. The excess is answered at once with
``org.freedesktop.DBus.Error.LimitsExceeded``; nothing waits in a queue that a
flood from any local user could fill.

Errors never carry a Python traceback (dbus-next puts one into replies of
methods that raise): every failure becomes an ``org.unitgen.Recovery1.Error.*``
or ``org.freedesktop.DBus.Error.*`` reply with a one-line message.

The module is written once against what dbus-next and dbus-fast share; the
library is taken from the bus object handed to :meth:`RecoveryService.attach`
(:func:`handlers.buslib.library_of`). The backend's records become the replies'
D-Bus values in :mod:`handlers.dbus_values`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol

from handlers.access import AccessPolicy
from handlers.admission import Limits, Pool, RefusalLog
from handlers.bus import consume_send, guard_writes
from handlers.buslib import ServiceLibrary, dbus_types, library_of, service_library
from handlers.busnames import BUS_NAME, INTERFACE, OBJECT_PATH
from handlers.dbus_values import as_records, reply_text, vardict
from handlers.events import Event, EventKind
from handlers.public_fields import public_details
from handlers.tasks import report_failure
from unitgen.errors import (
    AccessDeniedError,
    LockBusyError,
    SystemdError,
    UnitgenError,
    UnitNotFoundError,
)
from unitgen.unitnames import managed_unit_problem

log = logging.getLogger(__name__)

__all__ = [
    "BUS_NAME",
    "INTERFACE",
    "INTROSPECTION_XML",
    "OBJECT_PATH",
    "SIGNAL_SIGNATURE",
    "RecoveryBackend",
    "RecoveryService",
]

INTROSPECTION_XML = Path(__file__).with_name("org.unitgen.Recovery1.xml")
SIGNAL_SIGNATURE = "ssta{sv}"

ERROR_FAILED = f"{INTERFACE}.Error.Failed"
ERROR_INVALID_UNIT = f"{INTERFACE}.Error.InvalidUnit"
ERROR_NO_SUCH_UNIT = f"{INTERFACE}.Error.NoSuchUnit"
ERROR_BUSY = f"{INTERFACE}.Error.Busy"
ERROR_ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
ERROR_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ERROR_LIMITS = "org.freedesktop.DBus.Error.LimitsExceeded"

MUTATING = frozenset({"Reset", "Recover"})
# The arguments each served method takes (checked before anything is counted).
_SIGNATURES = {"Status": "", "History": "s", "HistoryPage": "suu", "Reset": "s", "Recover": "s"}
_USAGE = {"": "no arguments", "s": "one argument: s unit", "suu": "s unit, u offset, u count"}
# Calls in progress at once (handlers/admission.py); past these a caller is answered
# LimitsExceeded at once rather than queued. A client makes one call at a time;
# the OnFailure= hand-off is one Recover per connection.
READ_LIMITS = Limits(per_caller=2, overall=8)
MUTATING_LIMITS = Limits(per_caller=4, overall=256)
# A History reply: at most this many incidents, attempts per incident and bytes
# (estimated from the values, before marshalling); older ones are left out.
HISTORY_INCIDENTS = 20
HISTORY_ATTEMPTS = 50
MAX_REPLY_BYTES = 64 * 1024
# A History page is built once and served from memory this long (seconds), or
# until an event of its unit: a flood of the same call costs one history read.
HISTORY_CACHE_TTL = 1.0
HISTORY_CACHE_SIZE = 256
# Events waiting for the bus (a burst, or the gap of a reconnect); past this the oldest go.
MAX_QUEUE = 10_000
# Signals sent between two round trips to the bus daemon (see RecoveryService._pump).
SYNC_EVERY = 64
SYNC_TIMEOUT = 25.0
TRIGGER = "dbus"

_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class RecoveryBackend(Protocol):
    """What the exported methods call: the recovery engine, or the listener in front of it.

    Each method may be a plain function or a coroutine function. ``status``
    and ``history`` return records: a dataclass, a mapping, or an iterable of
    either (``status`` may also map unit names to records); ``recover``
    returns one record (or None).
    """

    def recover(self, unit: str, trigger: str) -> object: ...

    def reset(self, unit: str) -> object: ...

    def status(self, unit: str | None) -> object: ...

    def history(self, unit: str) -> object: ...


async def _resolve(value: object) -> object:
    if inspect.isawaitable(value):
        return await value
    return value


# -- the interface, once per library ---------------------------------------------------


@functools.cache
def _interface_class(root_name: str) -> type:
    """The ServiceInterface subclass for one library (each has its own base class)."""
    lib = service_library(root_name)
    method: Callable[[], _Decorator] = lib.service.method
    signal: Callable[[], _Decorator] = lib.service.signal

    class Recovery1(lib.service.ServiceInterface):  # type: ignore[misc,name-defined]
        def __init__(self, owner: RecoveryService) -> None:
            super().__init__(INTERFACE)
            self._owner = owner

        # Read-only: the library dispatches these; errors are made clean by _clean_errors.
        @method()
        @dbus_types(returns="aa{sv}")
        async def Status(self) -> list[dict[str, Any]]:
            return await self._owner._serve(lib, "Status", None)

        @method()
        @dbus_types("s", returns="aa{sv}")
        async def History(self, unit: str) -> list[dict[str, Any]]:
            return await self._owner._serve(lib, "History", unit)

        @method()
        @dbus_types("s", "u", "u", returns="aa{sv}u")
        async def HistoryPage(self, unit: str, offset: int, count: int) -> list[Any]:
            page, following = await self._owner._serve_page(lib, "HistoryPage", unit, offset, count)
            return [page, following]

        # Mutating: served by RecoveryService._on_message after the access check.
        @method()
        @dbus_types("s")
        def Reset(self, unit: str) -> None:
            raise lib.DBusError(ERROR_ACCESS_DENIED, "Reset: caller check did not run; refused")

        @method()
        @dbus_types("s", returns="a{sv}")
        def Recover(self, unit: str) -> dict[str, Any]:
            raise lib.DBusError(ERROR_ACCESS_DENIED, "Recover: caller check did not run; refused")

        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def IncidentOpened(self, unit: str, incident: str, ts: int, details: Any) -> list[Any]:
            return [unit, incident, ts, details]

        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def StepStarted(self, unit: str, incident: str, ts: int, details: Any) -> list[Any]:
            return [unit, incident, ts, details]

        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def StepFinished(self, unit: str, incident: str, ts: int, details: Any) -> list[Any]:
            return [unit, incident, ts, details]

        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def Escalated(self, unit: str, incident: str, ts: int, details: Any) -> list[Any]:
            return [unit, incident, ts, details]

        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def Recovered(self, unit: str, incident: str, ts: int, details: Any) -> list[Any]:
            return [unit, incident, ts, details]

        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def GaveUp(self, unit: str, incident: str, ts: int, details: Any) -> list[Any]:
            return [unit, incident, ts, details]

        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def HealthChanged(self, unit: str, incident: str, ts: int, details: Any) -> list[Any]:
            return [unit, incident, ts, details]

        # Interface revision 2 (busnames.INTERFACE_REVISION): incident groups and Crashed.
        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def GroupOpened(self, unit: str, group: str, ts: int, details: Any) -> list[Any]:
            return [unit, group, ts, details]

        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def GroupClosed(self, unit: str, group: str, ts: int, details: Any) -> list[Any]:
            return [unit, group, ts, details]

        @signal()
        @dbus_types("s", "s", "t", "a{sv}", returns=SIGNAL_SIGNATURE)
        def Crashed(self, unit: str, incident: str, ts: int, details: Any) -> list[Any]:
            return [unit, incident, ts, details]

    missing = {k.value for k in EventKind} - set(vars(Recovery1))
    if missing:  # an EventKind without a signal would be dropped silently
        raise RuntimeError(f"org.unitgen.Recovery1 lacks signals {sorted(missing)}")
    return Recovery1


# -- errors ----------------------------------------------------------------------------


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return reply_text(line)[:500]


def _error_for(member: str, exc: BaseException) -> tuple[str, str]:
    """The D-Bus error name and one-line message a failure is reported as."""
    if isinstance(exc, AccessDeniedError):
        return ERROR_ACCESS_DENIED, _first_line(str(exc)) or f"{member}: access denied"
    if isinstance(exc, UnitNotFoundError):
        return ERROR_NO_SUCH_UNIT, _first_line(str(exc))
    if isinstance(exc, LockBusyError):
        return ERROR_BUSY, _first_line(str(exc))
    if isinstance(exc, UnitgenError):
        return ERROR_FAILED, _first_line(str(exc)) or f"{member} failed"
    # A bug: the operator gets the traceback in the journal, the caller only this.
    return ERROR_FAILED, f"{member} failed: internal error ({type(exc).__name__}); see the log"


# -- the service -----------------------------------------------------------------------


class RecoveryService:
    """Exports org.unitgen.Recovery1 on a bus and publishes events as its signals.

    An :class:`~handlers.events.EventSink`: :meth:`emit` never blocks and never
    raises. Typical use in the daemon::

        service = RecoveryService(engine, on_drop=metrics.count_dropped)
        await service.attach(raw_bus)      # export, guard, then own the name
        fanout.add(service)
        ...
        await service.close()              # the one teardown path

    After a reconnect, ``await service.attach(new_bus)`` moves it to the new
    connection (the old one is detached first).
    """

    def __init__(
        self,
        backend: RecoveryBackend,
        *,
        access: AccessPolicy | None = None,
        on_drop: Callable[[str], None] | None = None,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self._backend = backend
        self._max_queue = max_queue
        self._queue: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._access = access or AccessPolicy()
        self._on_drop = on_drop
        self._bus: Any = None
        self._lib: ServiceLibrary | None = None
        self._iface: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reads = Pool(READ_LIMITS, "read")
        self.mutations = Pool(MUTATING_LIMITS, "mutating")
        self._refusals = RefusalLog()
        # unit -> (offset, count) -> (built at, page, next offset); by unit so that an
        # event drops its unit's pages without a scan of the others.
        self._pages: dict[str, dict[tuple[int, int], tuple[float, list[dict[str, Any]], int]]] = {}
        self._cached_pages = 0
        self.dropped = 0
        self.sent = 0

    # -- lifecycle -------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self._iface is not None

    async def attach(self, bus: Any, *, request_name: bool = True) -> None:
        """Export the object, install the access guard, then request the well-known name.

        The guard is in place before the name is owned, so no call can reach
        an unguarded method. Raises :class:`SystemdError` when the name is
        taken (another unitgen daemon) or the bus policy forbids owning it.
        """
        await self.detach()
        lib = library_of(bus)
        # A flood of callers must not cost the connection (see handlers/bus.py).
        guard_writes(bus)
        iface = _interface_class(lib.root.__name__)(self)
        self._loop = asyncio.get_running_loop()
        bus.add_message_handler(self._on_message)
        bus.export(OBJECT_PATH, iface)
        self._bus, self._lib, self._iface = bus, lib, iface
        if request_name:
            await self._request_name(bus, lib)
        # Only now: a signal sent before the name was ours would miss sender= matches.
        self._pump_task = self._loop.create_task(self._pump(bus, lib), name="dbus-signals")
        self._pump_task.add_done_callback(self._pump_done)

    def _pump_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Typically the bus went away; queued events wait for the next attach().
            log.warning("signal pump stopped: %s", type(task.exception()).__name__)

    async def _request_name(self, bus: Any, lib: ServiceLibrary) -> None:
        try:
            reply = await bus.request_name(BUS_NAME, lib.NameFlag.DO_NOT_QUEUE)
        except Exception as exc:
            await self.detach()
            raise SystemdError(
                f"cannot own {BUS_NAME}: {_first_line(str(exc)) or type(exc).__name__}"
            ) from exc
        if reply not in (lib.RequestNameReply.PRIMARY_OWNER, lib.RequestNameReply.ALREADY_OWNER):
            await self.detach()
            raise SystemdError(f"cannot own {BUS_NAME}: another process owns it ({reply.name})")

    async def detach(self) -> None:
        """Stop serving on the current bus; calls in progress finish or fail quietly.

        Events emitted meanwhile stay queued (up to ``max_queue``) for the next attach.
        """
        pump, self._pump_task = self._pump_task, None
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        bus, self._bus, self._iface = self._bus, None, None
        if bus is None:
            return
        try:
            bus.remove_message_handler(self._on_message)
            bus.unexport(OBJECT_PATH)
        except Exception as exc:
            log.debug("detach from bus: %s", type(exc).__name__)
        if getattr(bus, "connected", False):
            try:
                await asyncio.wait_for(bus.release_name(BUS_NAME), 2.0)
            except Exception as exc:
                log.debug("release %s: %s", BUS_NAME, type(exc).__name__)

    async def close(self) -> None:
        """Detach and cancel every call still in progress (a Recover's ladder included)."""
        await self.detach()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- events -> signals -----------------------------------------------------------

    def emit(self, event: Event) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self._loop
        if running is not None and (loop is None or running is loop):
            self._enqueue(event)
        elif loop is not None and not loop.is_closed():
            # From a worker thread: the queue and the bus belong to the loop.
            try:
                loop.call_soon_threadsafe(self._enqueue, event)
            except RuntimeError:
                self._drop("loop closed")
        else:
            self._drop("no event loop")

    def _enqueue(self, event: Event) -> None:
        if len(self._queue) >= self._max_queue:
            # Keep the newest: a consumer catching up wants the current state.
            self._queue.popleft()
            self._drop("queue full")
        self._queue.append(event)
        self._wake.set()
        # The unit's history may have changed: its cached pages go.
        dropped = self._pages.pop(event.unit, None)
        if dropped is not None:
            self._cached_pages -= len(dropped)

    async def _pump(self, bus: Any, lib: ServiceLibrary) -> None:
        """Send queued events as signals, with flow control.

        Both libraries write queued messages in a loop until the socket would
        block, and then treat EAGAIN as a broken connection (python-dbus-next
        #153; dbus-fast inherited the writer). A burst of signals, faster than
        the bus daemon reads, would so cost us the connection. After every
        :data:`SYNC_EVERY` signals the pump waits for a round trip to the bus
        daemon, which answers only once it has read everything before it, so
        never more than two such windows of signals are unwritten (~32 KiB,
        against a socket buffer of ~200 KiB).
        """
        since_sync = 0
        # One round trip stays in flight while the next window is sent (two windows
        # unwritten at most), so the pump is not idle for a whole round trip per window.
        pending: asyncio.Task[None] | None = None
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._send(bus, lib, self._queue.popleft())
                since_sync += 1
                if since_sync >= SYNC_EVERY:
                    since_sync = 0
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(self._sync(bus, lib))
        finally:
            if pending is not None:
                if not pending.done():
                    pending.cancel()
                elif not pending.cancelled():
                    pending.exception()  # retrieved: the pump's own failure is what is logged

    async def _sync(self, bus: Any, lib: ServiceLibrary) -> None:
        ping = lib.Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="GetId",
        )
        await asyncio.wait_for(bus.call(ping), SYNC_TIMEOUT)

    def _send(self, bus: Any, lib: ServiceLibrary, event: Event) -> None:
        try:
            details = {k: lib.Variant(_SIG[type(v)], v) for k, v in public_details(event).items()}
            ts = max(0, int(event.timestamp * 1_000_000))
            # The same message the exported interface's signal method would send,
            # built directly: the library's path re-verifies the body against the
            # signature and searches the exports, a quarter of our CPU per signal
            # (docs/listener.md). Marshalling still refuses a body that does not fit
            # the signature.
            msg = lib.Message.new_signal(
                OBJECT_PATH,
                INTERFACE,
                event.kind.value,
                SIGNAL_SIGNATURE,
                [event.unit, event.incident_id, ts, details],
            )
            bus.send(msg).add_done_callback(consume_send)
        except Exception as exc:
            log.warning("signal %s for %s not sent: %s", event.kind.value, event.unit, exc)
            self._drop("send failed")
            return
        self.sent += 1

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            try:
                self._on_drop("dbus")
            except Exception:
                log.exception("drop counter failed")
        log.debug("event not published on D-Bus: %s", why)

    # -- read-only methods (claimed by the handler; the library's dispatch is the fallback)

    async def _serve(
        self, lib: ServiceLibrary, member: str, unit: str | None, offset: int = 0, count: int = 0
    ) -> list[dict[str, Any]]:
        records, _next = await self._serve_page(lib, member, unit, offset, count)
        return records

    async def _serve_page(
        self, lib: ServiceLibrary, member: str, unit: str | None, offset: int = 0, count: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Status's records, or a page of History's with the offset of the next page."""
        task = asyncio.current_task()
        if task is not None:
            # dbus-next does not keep its own reference to a method's task.
            self._tasks.add(task)
        try:
            if unit is not None:
                self._check_unit_name(lib, member, unit)
            try:
                if member == "Status":
                    result = await _resolve(self._backend.status(None))
                    return [vardict(lib, r) for r in as_records(result)], 0
                assert unit is not None
                return await self._history(lib, unit, offset, count or HISTORY_INCIDENTS)
            except Exception as exc:
                if isinstance(exc, lib.DBusError):
                    raise
                name, text = _error_for(member, exc)
                if name == ERROR_FAILED and not isinstance(exc, UnitgenError):
                    log.exception("%s failed", member)
                raise lib.DBusError(name, text) from None
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _history(
        self, lib: ServiceLibrary, unit: str, offset: int, count: int
    ) -> tuple[list[dict[str, Any]], int]:
        key = (offset, count)
        now = asyncio.get_running_loop().time()
        cached = self._pages.get(unit, {}).get(key)
        if cached is not None and now - cached[0] < HISTORY_CACHE_TTL:
            return cached[1], cached[2]
        result = await _resolve(self._backend.history(unit))
        page, following = _history_page(lib, as_records(result), offset, count)
        if self._cached_pages >= HISTORY_CACHE_SIZE:
            self._pages.clear()
            self._cached_pages = 0
        pages = self._pages.setdefault(unit, {})
        self._cached_pages += key not in pages
        pages[key] = (now, page, following)
        return page, following

    @staticmethod
    def _check_unit_name(lib: ServiceLibrary, member: str, unit: str) -> None:
        problem = managed_unit_problem(unit)
        if problem:
            raise lib.DBusError(ERROR_INVALID_UNIT, _first_line(f"{member}: expected {problem}"))

    # -- mutating methods (claimed by the handler, served after the access check) -----

    def _on_message(self, msg: Any) -> Any:
        """Claim every call of the four methods before the library dispatches it.

        Runs inside the library's reader for each incoming message, so it only
        checks and counts: a call over a limit is answered at once, any other
        is served by a task that replies when it is done.
        """
        lib, bus = self._lib, self._bus
        if lib is None or bus is None:
            return None
        member = msg.member
        if (
            msg.message_type != lib.MessageType.METHOD_CALL
            or member not in _SIGNATURES
            or msg.path != OBJECT_PATH
            or msg.interface not in (INTERFACE, None)
        ):
            return None
        if msg.signature != _SIGNATURES[member]:
            wanted = _USAGE[_SIGNATURES[member]]
            return lib.Message.new_error(msg, ERROR_INVALID_ARGS, f"{member} takes {wanted}")
        pool = self.mutations if member in MUTATING else self.reads
        refused = pool.admit(msg.sender)
        if refused is not None:
            count = self._refusals.note()
            if count is not None:
                log.warning(
                    "refused %d call(s) over the limits, e.g. %s: %s",
                    count,
                    member,
                    refused,
                )
            return lib.Message.new_error(msg, ERROR_LIMITS, f"{member}: {refused}")
        serve = self._guarded(bus, lib, msg) if member in MUTATING else self._read(bus, lib, msg)
        self._spawn(self._counted(pool, msg.sender, serve), f"dbus-{member}")
        # True: handled here, the reply is sent when the check and the call are done.
        return True

    @staticmethod
    async def _counted(pool: Pool, caller: str | None, serve: Coroutine[Any, Any, None]) -> None:
        try:
            await serve
        finally:
            pool.release(caller)

    async def _read(self, bus: Any, lib: ServiceLibrary, msg: Any) -> None:
        member = msg.member
        unit = msg.body[0] if msg.body else None
        offset, count = (int(msg.body[1]), int(msg.body[2])) if member == "HistoryPage" else (0, 0)
        try:
            body, following = await self._serve_page(lib, member, unit, offset, count)
        except lib.DBusError as exc:
            reply = lib.Message.new_error(msg, exc.type, exc.text)
        else:
            if member == "HistoryPage":
                reply = lib.Message.new_method_return(msg, "aa{sv}u", [body, following])
            else:
                reply = lib.Message.new_method_return(msg, "aa{sv}", [body])
        self._reply(bus, lib, msg, reply)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        report_failure(task, log)

    async def _guarded(self, bus: Any, lib: ServiceLibrary, msg: Any) -> None:
        member: str = msg.member
        unit = msg.body[0]
        shown = unit if not managed_unit_problem(unit) else "(invalid unit name)"
        decision = await self._access.check(
            bus, lib.Message, lib.MessageType.ERROR, msg.sender, f"{member} {shown}"
        )
        if not decision.allowed:
            log.warning("denied: %s", decision.why)
            self._reply(
                bus, lib, msg, lib.Message.new_error(msg, ERROR_ACCESS_DENIED, decision.why)
            )
            return
        log.info("%s", decision.why)
        reply = await self._mutate(lib, msg, member, unit)
        self._reply(bus, lib, msg, reply)

    async def _mutate(self, lib: ServiceLibrary, msg: Any, member: str, unit: str) -> Any:
        problem = managed_unit_problem(unit)
        if problem:
            return lib.Message.new_error(
                msg, ERROR_INVALID_UNIT, _first_line(f"{member}: expected {problem}")
            )
        try:
            if member == "Reset":
                await _resolve(self._backend.reset(unit))
                return lib.Message.new_method_return(msg)
            result = await _resolve(self._backend.recover(unit, TRIGGER))
            records = as_records(result)
            outcome = vardict(lib, records[0]) if records else {}
            return lib.Message.new_method_return(msg, "a{sv}", [outcome])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            name, text = _error_for(member, exc)
            if name == ERROR_FAILED and not isinstance(exc, UnitgenError):
                log.exception("%s %s failed", member, unit)
            return lib.Message.new_error(msg, name, text)

    @staticmethod
    def _reply(bus: Any, lib: ServiceLibrary, msg: Any, reply: Any) -> None:
        if msg.flags & lib.MessageFlag.NO_REPLY_EXPECTED:
            return
        try:
            bus.send(reply)
        except Exception as exc:
            # The bus went away while we worked; the caller is gone with it.
            log.debug("reply to %s not sent: %s", msg.sender, type(exc).__name__)


_SIG: Mapping[type, str] = {bool: "b", int: "x", float: "d", str: "s"}


def _size(value: Any) -> int:
    """Roughly the bytes ``value`` marshals to: enough to keep a reply bounded."""
    if isinstance(value, str | bytes):
        return len(value) + 8
    if isinstance(value, Mapping):
        return sum(len(str(k)) + 8 + _size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_size(v) for v in value) + 4
    return 16


def _history_page(
    lib: ServiceLibrary,
    records: list[dict[str, Any]],
    offset: int = 0,
    count: int = HISTORY_INCIDENTS,
) -> tuple[list[dict[str, Any]], int]:
    """Incidents from ``offset`` on that fit the reply bounds, each with its newest
    attempts, and the offset of the next page (0: there is none)."""
    out: list[dict[str, Any]] = []
    budget = MAX_REPLY_BYTES
    offset = max(0, offset)
    end = offset + min(max(1, count), HISTORY_INCIDENTS)
    for record in records[offset:end]:
        attempts = record.get("attempts")
        if isinstance(attempts, list) and len(attempts) > HISTORY_ATTEMPTS:
            record = {
                **record,
                "attempts": attempts[-HISTORY_ATTEMPTS:],
                "attempts_left_out": len(attempts) - HISTORY_ATTEMPTS,
            }
        size = _size(record)
        if size > budget and out:
            break
        budget -= size
        out.append(vardict(lib, record))
    following = offset + len(out)
    return out, following if following < len(records) else 0
