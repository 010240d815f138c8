"""The one boundary between unitgen and systemd's D-Bus API.

Written once against the API that dbus-next and dbus-fast share, resolved by
:mod:`handlers.buslib`, so the ladder, the OnFailure= path and the listener never
import either library; the waits for a unit's state are :mod:`handlers.waiters`.

Every library error is translated here: callers see :class:`SystemdError`, or
:class:`UnitNotFoundError` for a unit systemd does not know, or
:class:`BusConnectionLostError` for a call the connection ended under.

The libraries' writers and their sockets are contained in :mod:`handlers.buslib`.
One more defect is contained here rather than worked around by callers:

* Once a library's connection has ended, a call on it registers a reply handler
  that nothing will ever run: the call waits out its whole timeout (dbus-next),
  or writes to a closed descriptor (dbus-fast). :class:`SystemdBus` refuses
  calls once the connection is gone and fails every call and wait in flight at
  once (:class:`BusConnectionLostError`), so nothing waits on a dead connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# The library seam's names that callers know from here are re-exported.
from handlers.buslib import BusLibrary as BusLibrary
from handlers.buslib import choose_library as choose_library
from handlers.buslib import consume_send as consume_send
from handlers.buslib import guard_writes as guard_writes
from handlers.buslib import load_library as load_library
from handlers.buslib import open_bus, release_transport
from handlers.buslib import unwrap as unwrap
from handlers.deadlines import Deadlines
from handlers.waiters import Expectation as Expectation
from handlers.waiters import Waiters, apply_until
from unitgen.errors import BusConnectionLostError, SystemdError, UnitNotFoundError
from unitgen.paths import Scope

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
ROOT_PATH = "/org/freedesktop/systemd1"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"

NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
ALREADY_SUBSCRIBED = "org.freedesktop.systemd1.AlreadySubscribed"

# D-Bus's own default reply timeout; a call that takes longer is a hung manager.
CALL_TIMEOUT = 25.0
# Capping calls in flight keeps the socket's send buffer from filling, on either
# library; guard_writes() covers what fills it anyway.
MAX_CALLS_IN_FLIGHT = 32

SignalCallback = Callable[[Any], None]


# -- object paths -------------------------------------------------------------------


def _is_label_char(ch: str, first: bool) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z") or (not first and "0" <= ch <= "9")


def bus_label_escape(label: str) -> str:
    """systemd's ``bus_label_escape``: unit name -> one object-path element."""
    if not label:
        return "_"
    out: list[str] = []
    for i, ch in enumerate(label):
        if _is_label_char(ch, i == 0):
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def bus_label_unescape(label: str) -> str:
    """The inverse of :func:`bus_label_escape`."""
    if label == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(label):
        ch = label[i]
        if ch == "_" and _is_hex(label[i + 1 : i + 3]):
            raw.append(int(label[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(ch.encode("utf-8"))
            i += 1
    return raw.decode("utf-8", errors="replace")


def _is_hex(s: str) -> bool:
    return len(s) == 2 and all(c in "0123456789abcdefABCDEF" for c in s)


def unit_path(name: str) -> str:
    return f"{UNIT_PATH_PREFIX}/{bus_label_escape(name)}"


def unit_from_path(path: str) -> str | None:
    """The unit name an object path stands for, or None if it is not a unit path."""
    prefix = UNIT_PATH_PREFIX + "/"
    if not path.startswith(prefix) or "/" in path[len(prefix) :]:
        return None
    return bus_label_unescape(path[len(prefix) :])


# -- values ---------------------------------------------------------------------------


def unit_properties_rule(interface: str = UNIT) -> str:
    """PropertiesChanged of one interface (Unit by default) of every unit."""
    return match_rule(
        type="signal",
        sender=SYSTEMD,
        interface=PROPERTIES,
        member="PropertiesChanged",
        path_namespace=UNIT_PATH_PREFIX,
        arg0=interface,
    )


def turned_active(body: Any) -> bool:
    """Whether a PropertiesChanged body is the Unit interface saying ActiveState=active."""
    interface, changed = body[0], body[1]
    if interface != UNIT:
        return False
    value = changed.get("ActiveState")
    return value is not None and value.value == "active"


def match_rule(**keys: str) -> str:
    """A D-Bus match rule; values are quoted the way the spec requires."""
    parts = []
    for key, val in keys.items():
        escaped = val.replace("'", "'\\''")
        parts.append(f"{key}='{escaped}'")
    return ",".join(parts)


# Signals systemd's manager object sends that the listener wants; PropertiesChanged
# is matched separately, under the unit namespace, for the Unit interface only.
_MANAGER_SIGNALS = ("UnitNew", "UnitRemoved", "JobRemoved", "Reloading")


def signal_rules() -> list[str]:
    """The listener's narrow AddMatch rules: nothing else systemd says reaches it."""
    rules = [unit_properties_rule(), unit_properties_rule(SERVICE)]
    rules.extend(
        match_rule(
            type="signal",
            sender=SYSTEMD,
            interface=MANAGER,
            path=ROOT_PATH,
            member=member,
        )
        for member in _MANAGER_SIGNALS
    )
    # systemd's reexec drops and re-takes its bus name; that is a gap too.
    rules.append(
        match_rule(
            type="signal",
            sender=DBUS_NAME,
            interface=DBUS_NAME,
            member="NameOwnerChanged",
            arg0=SYSTEMD,
        )
    )
    return rules


@dataclass(frozen=True)
class UnitInfo:
    """One row of ListUnitsByPatterns."""

    name: str
    description: str
    load_state: str
    active_state: str
    sub_state: str
    path: str
    job_id: int


class SystemdBus:
    """A connection to one systemd manager (the system one, or a user manager)."""

    # wait_for() and unit_properties() take ``interfaces``: the ladder reads only the
    # Unit interface (~100 properties) where it needs nothing of the Service one (~200).
    selects_interfaces = True

    def __init__(self, bus: Any, lib: BusLibrary, scope: Scope) -> None:
        self._bus = bus
        self.lib = lib
        self.scope = scope
        self._callbacks: list[SignalCallback] = []
        self._waits = Waiters()
        self._matches: dict[str, int] = {}
        self._subscribed = False
        self._closed = False
        self._seq = 0  # counts every incoming message, to order replies against signals
        self._calls = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)
        self._deadlines = Deadlines()
        self._gone = asyncio.Event()
        bus.add_message_handler(self._dispatch)
        # The library's disconnect future must never be cancelled (awaiting it from
        # a task that gets cancelled would cancel it for everyone), so exactly one
        # task awaits it, and everyone else waits on an Event.
        self._gone_task = asyncio.ensure_future(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        try:
            await self._bus.wait_for_disconnect()
        except Exception as exc:
            log.info("bus connection ended: %s", type(exc).__name__)
        finally:
            self._lost()

    def _lost(self) -> None:
        """The connection is gone: fail every call and wait in flight, now."""
        self._gone.set()
        self._deadlines.expire_all()
        self._waits.lose(self._seq)

    # -- connection ----------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        scope: Scope,
        address: str | None = None,
        library: str | BusLibrary | None = None,
    ) -> SystemdBus:
        """The session bus for user scope, the system bus for system scope.

        ``address`` overrides both; otherwise the library reads
        ``DBUS_SESSION_BUS_ADDRESS`` / ``DBUS_SYSTEM_BUS_ADDRESS`` itself.
        """
        if isinstance(library, BusLibrary):
            lib = library
        elif library is None:
            lib = choose_library()
        else:
            lib = load_library(library)
        if address is None and scope is Scope.USER:
            address = os.environ.get("DBUS_SESSION_BUS_ADDRESS") or None
            if address is None:
                raise SystemdError("user scope: DBUS_SESSION_BUS_ADDRESS is not set")
        bus_type = lib.BusType.SESSION if scope is Scope.USER else lib.BusType.SYSTEM
        try:
            raw = await open_bus(lib, address, bus_type, CALL_TIMEOUT)
        except Exception as exc:
            where = "session" if scope is Scope.USER else "system"
            raise SystemdError(
                f"cannot connect to the {where} bus ({type(exc).__name__}: {exc})"
            ) from exc
        return cls(raw, lib, scope)

    @property
    def connected(self) -> bool:
        return (
            not self._closed
            and not self._gone.is_set()
            and bool(getattr(self._bus, "connected", False))
        )

    @property
    def raw(self) -> Any:
        """The library's MessageBus, for exporting objects on the same connection."""
        return self._bus

    @property
    def unique_name(self) -> str | None:
        name = getattr(self._bus, "unique_name", None)
        return str(name) if name else None

    async def wait_disconnected(self) -> None:
        """Returns when the connection is gone, for whatever reason."""
        await self._gone.wait()

    async def close(self) -> None:
        """The one teardown path: drop handlers, disconnect, release the socket."""
        if self._closed:
            return
        self._closed = True
        self._callbacks.clear()
        self._deadlines.close()
        with contextlib.suppress(Exception):
            self._bus.remove_message_handler(self._dispatch)
        with contextlib.suppress(Exception):
            self._bus.disconnect()
        await asyncio.wait({self._gone_task}, timeout=2.0)
        if not self._gone_task.done():
            self._gone_task.cancel()
            await asyncio.gather(self._gone_task, return_exceptions=True)
        # dbus-next shuts the socket down but never closes it (a ResourceWarning later).
        release_transport(self._bus)

    # -- calls ---------------------------------------------------------------------

    async def call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        interface: str = MANAGER,
        path: str = ROOT_PATH,
        destination: str = SYSTEMD,
        what: str = "",
        serial_hook: Callable[[int], None] | None = None,
        timeout: float = CALL_TIMEOUT,  # noqa: ASYNC109 - a per-call reply timeout
        reply: bool = True,
    ) -> list[Any]:
        """One method call; the reply's body, or a translated error.

        ``reply=False`` sends the call with NO_REPLY_EXPECTED and returns [] at
        once: systemd then sends no reply at all (sd-bus honours the flag), which
        saves the reply's marshalling in systemd, its routing in dbus-daemon and
        its dispatch here. Only for calls whose refusal changes nothing for us.
        Calls on one connection are still handled in the order they were sent.
        """
        if self._closed:
            raise BusConnectionLostError(f"{member}{_for(what)}: the bus connection is closed")
        msg = self.lib.Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
            flags=self.lib.MessageFlag.NONE if reply else self.lib.MessageFlag.NO_REPLY_EXPECTED,
        )
        msg.serial = self._bus.next_serial()
        if serial_hook is not None:
            serial_hook(msg.serial)
        if not reply:
            self._check_alive(member, what)
            try:
                sent = self._bus.send(msg)
            except Exception as exc:
                raise BusConnectionLostError(
                    f"{member}{_for(what)}: bus connection failed ({type(exc).__name__})"
                ) from exc
            sent.add_done_callback(consume_send)
            return []
        # One timer for every call's deadline (handlers/deadlines.py), not an
        # asyncio.timeout each: that was a large share of a call's cost (docs/listener.md).
        deadline = self._deadlines.add(timeout)
        try:
            async with self._calls:
                # Checked after the wait for a slot: the connection may have gone meanwhile.
                self._check_alive(member, what)
                answer = await self._bus.call(msg)
        except asyncio.CancelledError as exc:
            if self._deadlines.timed_out(deadline):
                if self._gone.is_set():
                    raise BusConnectionLostError(
                        f"{member}{_for(what)}: bus connection failed (lost while in flight)"
                    ) from exc
                raise SystemdError(f"{member}{_for(what)}: no reply in {timeout:g}s") from exc
            raise
        except BusConnectionLostError:
            raise
        except Exception as exc:
            raise BusConnectionLostError(
                f"{member}{_for(what)}: bus connection failed ({type(exc).__name__})"
            ) from exc
        finally:
            self._deadlines.discard(deadline)
        if answer is None:
            # The library ends a call with neither reply nor error only when its
            # connection ended under it.
            raise BusConnectionLostError(f"{member}{_for(what)}: bus connection failed (no reply)")
        if answer.message_type == self.lib.MessageType.ERROR:
            text = answer.body[0] if answer.body and isinstance(answer.body[0], str) else ""
            error = _translate(answer.error_name or "", text, member, what)
            raise error
        return list(answer.body)

    def _check_alive(self, member: str, what: str) -> None:
        # The library's connection may have ended before our watcher task ran.
        if self._gone.is_set() or getattr(self._bus, "_disconnected", False):
            raise BusConnectionLostError(
                f"{member}{_for(what)}: bus connection failed (connection lost)"
            )

    async def add_match(self, rule: str) -> None:
        """AddMatch, reference-counted so shared rules are added once."""
        count = self._matches.get(rule, 0)
        if count == 0:
            await self.call(
                "AddMatch",
                "s",
                [rule],
                interface=DBUS_NAME,
                path=DBUS_PATH,
                destination=DBUS_NAME,
            )
        self._matches[rule] = count + 1

    async def remove_match(self, rule: str) -> None:
        count = self._matches.get(rule, 0)
        if count <= 0:
            return
        if count == 1:
            del self._matches[rule]
            if self.connected:
                with contextlib.suppress(SystemdError):
                    await self.call(
                        "RemoveMatch",
                        "s",
                        [rule],
                        interface=DBUS_NAME,
                        path=DBUS_PATH,
                        destination=DBUS_NAME,
                    )
        else:
            self._matches[rule] = count - 1

    # -- systemd ------------------------------------------------------------------

    async def subscribe(self, *, force: bool = False) -> None:
        """Manager.Subscribe: without it systemd sends this client no unit signals.

        ``force`` subscribes again after systemd re-executed (it forgets clients).
        """
        if self._subscribed and not force:
            return
        try:
            await self.call("Subscribe")
        except SystemdError as exc:
            if ALREADY_SUBSCRIBED not in str(exc):
                raise
        self._subscribed = True

    async def load_unit(self, name: str) -> str:
        """LoadUnit (not GetUnit): works for units systemd has not loaded yet."""
        (path,) = await self.call("LoadUnit", "s", [name], what=name)
        return str(path)

    async def unit_properties(
        self,
        name: str,
        interfaces: Iterable[str] = (UNIT, SERVICE),
        *,
        path: str | None = None,
        service_keys: Sequence[str] = (),
    ) -> dict[str, Any]:
        """GetAll on each interface, merged, Variants unwrapped.

        A unit systemd cannot find still has properties (``LoadState=not-found``);
        use :meth:`require_unit` where that must be an error. An interface the
        unit does not have (Service on a timer) is skipped.

        With ``service_keys``, the Service interface is read as one Get per key
        instead of a GetAll of its ~200 properties (ExecStart= and friends, which
        systemd marshals and we unmarshal for nothing). For the five keys the
        listener asks once the signals brought the rest, that costs less of our CPU
        and about half the wall time; each Get has a price of its own, so past about
        ten keys they cost more than the GetAll they replace (docs/listener.md,
        "Figures behind the code's choices").
        """
        ifaces = tuple(interfaces)
        keys = tuple(service_keys) if SERVICE in ifaces else ()
        if keys:
            ifaces = tuple(i for i in ifaces if i != SERVICE)
        if path is None:
            # LoadUnit and the reads are sent together, the reads to the path
            # LoadUnit will name: systemd answers in order (the unit is loaded
            # first; a read on a unit path loads it anyway), so this costs one
            # round trip instead of three. An alias resolves to another path:
            # then read again there.
            guessed = unit_path(name)
            loaded, *replies = await asyncio.gather(
                self.load_unit(name),
                *self._reads(name, guessed, ifaces, keys),
                return_exceptions=True,
            )
            if isinstance(loaded, BaseException):
                raise loaded
            if loaded == guessed:
                return self._merge(replies)
            path = loaded
        # Sent together, answered in order: one round trip for all of them.
        replies = await asyncio.gather(*self._reads(name, path, ifaces, keys))
        return self._merge(list(replies))

    def _reads(
        self, name: str, path: str, ifaces: tuple[str, ...], keys: tuple[str, ...]
    ) -> list[Awaitable[Any]]:
        """A GetAll per interface, then a Service Get per key; errors are returned."""
        reads: list[Awaitable[Any]] = [
            self._get_all(name, path, iface, return_errors=True) for iface in ifaces
        ]
        for key in keys:
            reads.append(self._get_one(name, path, SERVICE, key))
        return reads

    async def _get_one(self, name: str, path: str, iface: str, key: str) -> Any:
        try:
            (value,) = await self.call(
                "Get", "ss", [iface, key], interface=PROPERTIES, path=path, what=name
            )
        except SystemdError as exc:
            return exc
        return {key: value}

    async def _get_all(
        self, name: str, path: str, iface: str, *, return_errors: bool = False
    ) -> Any:
        try:
            (values,) = await self.call(
                "GetAll", "s", [iface], interface=PROPERTIES, path=path, what=name
            )
        except SystemdError as exc:
            if return_errors:
                return exc
            raise
        return values

    @staticmethod
    def _merge(replies: list[Any]) -> dict[str, Any]:
        """Replies merged; an interface or property the unit lacks is skipped."""
        props: dict[str, Any] = {}
        for values in replies:
            if isinstance(values, BaseException):
                text = str(values)
                if "UnknownInterface" in text or "InvalidArgs" in text or "UnknownProperty" in text:
                    continue
                raise values
            props.update(unwrap(values))
        return props

    async def get_property(self, name: str, prop: str, interface: str = UNIT) -> Any:
        """One property of a loaded unit (Properties.Get), unwrapped: the cheapest round trip."""
        (value,) = await self.call(
            "Get", "ss", [interface, prop], interface=PROPERTIES, path=unit_path(name), what=name
        )
        return unwrap(value)

    async def require_unit(self, name: str) -> dict[str, Any]:
        """Like :meth:`unit_properties`, but a unit without a unit file is an error."""
        props = await self.unit_properties(name)
        if props.get("LoadState") == "not-found":
            raise UnitNotFoundError(f"unit {name}: systemd has no such unit")
        return props

    async def reset_failed(self, name: str) -> None:
        await self.call("ResetFailedUnit", "s", [name], what=name)

    async def restart(self, name: str, mode: str = "replace") -> str:
        (job,) = await self.call("RestartUnit", "ss", [name, mode], what=name)
        return str(job)

    async def reset_and_restart(
        self, name: str, mode: str = "replace"
    ) -> tuple[str, SystemdError | None]:
        """RefUnit, ResetFailedUnit, RestartUnit, sent at once; the caller unpins later.

        systemd handles one connection's calls in order, so the reset (failed
        state, start-limit counter) still comes first and the restart leaves a
        round trip earlier. Unpinned, the reset leaves an inactive unit nothing
        references; systemd 252 garbage-collects it before it reads the restart
        (UnitRemoved, then UnitNew) and RestartUnit loads it again from disk, a
        unit-file parse per recovery. The pin stays until :meth:`unpin`, which the
        caller sends once the restart has been seen through: an UnrefUnit in the
        same batch delayed the new process about as much as the unload it prevents
        (docs/listener.md, "Figures behind the code's choices"). Returns the
        restart's job and the reset's refusal, if any; a refused pin changes
        nothing else.
        """
        # The pin asks for no reply: a refused pin (the unit is gone) changes nothing.
        await self.call("RefUnit", "s", [name], what=name, reply=False)
        reset, job = await asyncio.gather(
            self.reset_failed(name),
            self.restart(name, mode),
            return_exceptions=True,
        )
        for outcome in (job, reset):
            if isinstance(outcome, BaseException) and not isinstance(outcome, SystemdError):
                raise outcome
        if isinstance(job, BaseException):
            raise job
        return str(job), reset if isinstance(reset, SystemdError) else None

    async def unpin(self, name: str) -> None:
        """Drop the pin of :meth:`reset_and_restart` (systemd drops it if we disconnect)."""
        with contextlib.suppress(SystemdError):
            await self.call("UnrefUnit", "s", [name], what=name, reply=False)

    async def start(self, name: str, mode: str = "replace") -> str:
        (job,) = await self.call("StartUnit", "ss", [name, mode], what=name)
        return str(job)

    async def stop(self, name: str, mode: str = "replace") -> str:
        (job,) = await self.call("StopUnit", "ss", [name, mode], what=name)
        return str(job)

    async def kill(self, name: str, who: str = "main", signal: int = 9) -> None:
        await self.call("KillUnit", "ssi", [name, who, signal], what=name)

    async def list_units(
        self, patterns: Sequence[str] = (), states: Sequence[str] = ()
    ) -> list[UnitInfo]:
        """ListUnitsByPatterns: loaded units whose names match any glob."""
        (rows,) = await self.call("ListUnitsByPatterns", "asas", [list(states), list(patterns)])
        return [
            UnitInfo(
                name=r[0],
                description=r[1],
                load_state=r[2],
                active_state=r[3],
                sub_state=r[4],
                path=r[6],
                job_id=int(r[7]),
            )
            for r in rows
        ]

    def expect_changes(self, name: str) -> Expectation | None:
        """Start collecting ``name``'s Unit-interface changes now, before an action.

        For a wait after a call whose effect is known in advance (the ladder's
        restart): ``wait_for(..., since=expectation, initial=state_before)`` then
        starts from ``initial`` and applies every change made after this point,
        with no LoadUnit and no GetAll (two calls systemd would otherwise answer
        while it starts the unit). Only on a connection that already follows every
        unit's Unit interface (the listener's); None elsewhere. A returned
        expectation not handed to wait_for must be given to :meth:`forget`.
        """
        if (
            self._matches.get(unit_properties_rule(), 0) <= 0
            or not self._subscribed
            or self._gone.is_set()
        ):
            return None
        return Expectation(self._waits.add(unit_path(name), (UNIT,)))

    def forget(self, expectation: Expectation) -> None:
        self._waits.drop(expectation.waiter)

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109 - the ladder's API names a plain timeout
        interfaces: Iterable[str] = (UNIT, SERVICE),
        *,
        since: Expectation | None = None,
        initial: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Wait until ``predicate(properties)`` holds, driven by PropertiesChanged.

        The match rule and the waiter exist before the first GetAll, so a change
        between the read and the wait cannot be missed; signals that arrived
        before the GetAll reply are older than it and are dropped. With ``since``
        (from :meth:`expect_changes`) and ``initial``, nothing is read: the Unit
        interface's changes since the expectation are applied to ``initial``.
        """
        if since is not None and initial is not None:
            deadline = asyncio.get_running_loop().time() + timeout
            try:
                return await apply_until(
                    name, since.waiter, predicate, timeout, deadline, dict(initial), self._gone
                )
            finally:
                self._waits.drop(since.waiter)
        if since is not None:
            self.forget(since)
        ifaces = tuple(interfaces)
        path = await self.load_unit(name)
        await self.subscribe()
        rule = match_rule(
            type="signal",
            sender=SYSTEMD,
            path=path,
            interface=PROPERTIES,
            member="PropertiesChanged",
        )
        # A listener on this connection already gets every unit's PropertiesChanged
        # of the interfaces it follows: a wait on those needs no rule of its own
        # (two fewer calls per wait).
        covered = all(self._matches.get(unit_properties_rule(i), 0) > 0 for i in ifaces)
        waiter = self._waits.add(path, ifaces)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if not covered:
                await self.add_match(rule)
            props, seen = await self._snapshot(name, path, ifaces)
            return await apply_until(
                name, waiter, predicate, timeout, deadline, props, self._gone, seen
            )
        finally:
            self._waits.drop(waiter)
            if not self._closed and not covered:
                with contextlib.suppress(SystemdError):
                    await self.remove_match(rule)

    async def _snapshot(
        self, name: str, path: str, interfaces: tuple[str, ...]
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """GetAll per interface, and the arrival number of each interface's reply."""
        props: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for iface in interfaces:
            serials: list[int] = []
            try:
                (values,) = await self.call(
                    "GetAll",
                    "s",
                    [iface],
                    interface=PROPERTIES,
                    path=path,
                    what=name,
                    serial_hook=self._waits.watch_reply(serials),
                )
            except SystemdError as exc:
                if "UnknownInterface" in str(exc) or "InvalidArgs" in str(exc):
                    continue
                raise
            finally:
                for s in serials:
                    seen[iface] = self._waits.replies.pop(s, 0)
            props.update(unwrap(values))
        return props, seen

    # -- signals -------------------------------------------------------------------

    def add_signal_callback(self, callback: SignalCallback) -> Callable[[], None]:
        """Call ``callback(message)`` for every signal; returns the remover.

        Callbacks run on the loop inside the library's reader: they must be quick
        and must not block. An exception is logged and does not stop the others.
        """
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def _dispatch(self, msg: Any) -> None:
        self._seq += 1
        mtype = msg.message_type
        if mtype != self.lib.MessageType.SIGNAL:
            replies = self._waits.replies
            serial = msg.reply_serial
            if serial in replies:
                replies[serial] = self._seq
            return
        if self._waits.by_path and msg.member == "PropertiesChanged":
            self._waits.deliver(self._seq, msg.path, msg.body)
        for callback in list(self._callbacks):
            try:
                callback(msg)
            except Exception:
                log.exception("signal callback %r failed on %s", callback, msg.member)


def _for(what: str) -> str:
    return f" ({what})" if what else ""


def _translate(error_name: str, text: str, member: str, what: str) -> SystemdError:
    # systemd's messages name the unit and say what is wrong in one line; keep the
    # first line only so a multi-line reply cannot break the one-line rule.
    first = text.splitlines()[0] if text else ""
    if error_name == NO_SUCH_UNIT:
        unit = what or "unit"
        return UnitNotFoundError(f"unit {unit}: systemd has no such unit ({first})")
    return SystemdError(f"{member}{_for(what)}: {error_name}: {first}")
