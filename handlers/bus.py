"""The one boundary between unitgen and systemd's D-Bus API.

Written once against the API that dbus-next and dbus-fast share (``MessageBus``,
``Message``, ``call``, ``add_message_handler``, ``Variant``, ``MessageType``), so
the ladder, the OnFailure= path and the listener never import either library.
``UNITGEN_DBUS=next|fast`` forces one; otherwise dbus-fast is used when it is
installed, because it parses systemd's signals an order of magnitude faster
(measured by the listener benchmark's ``flood`` mode, recorded in docs/listener.md).

Every library error is translated here: callers see :class:`SystemdError`, or
:class:`UnitNotFoundError` for a unit systemd does not know, or
:class:`BusConnectionLostError` for a call the connection ended under.

Two library defects are contained here rather than worked around by callers:

* Both libraries' writers (``_MessageWriter.write_callback``) loop over queued
  messages calling ``sock.send`` on the non-blocking socket until the queue is
  empty, and treat anything it raises, EAGAIN included, as the end of the
  connection (python-dbus-next#153; dbus-fast inherited the writer). A burst of
  replies faster than the bus daemon reads (a flood of method calls) so cost us
  the connection, the bus name and the systemd subscription. :func:`guard_writes`
  gives the writer a socket whose ``send`` reports EAGAIN as "0 bytes written":
  the writer then keeps the message and waits for the socket to be writable,
  which it already does after a partial write.
* Once a library's connection has ended, a call on it registers a reply handler
  that nothing will ever run: the call waits out its whole timeout (dbus-next),
  or writes to a closed descriptor (dbus-fast). :class:`SystemdBus` refuses
  calls once the connection is gone and fails every call and wait in flight at
  once (:class:`BusConnectionLostError`), so nothing waits on a dead connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handlers.deadlines import Deadlines
from unitgen.errors import BusConnectionLostError, SystemdError, UnitNotFoundError, UsageError
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


@dataclass(frozen=True)
class BusLibrary:
    """The shared surface of dbus-next and dbus-fast, resolved once."""

    name: str  # "next" or "fast"
    MessageBus: Any
    Message: Any
    MessageType: Any
    MessageFlag: Any
    Variant: Any
    BusType: Any


_MODULES = {"next": "dbus_next", "fast": "dbus_fast"}
_loaded: dict[str, BusLibrary] = {}
# The Variant classes of every library loaded so far, for unwrap().
_VARIANTS: tuple[type, ...] = ()
_VARIANT_TYPES: set[type] = set()


def load_library(name: str) -> BusLibrary:
    """Import dbus-next (``next``) or dbus-fast (``fast``)."""
    if name in _loaded:
        return _loaded[name]
    if name not in _MODULES:
        raise UsageError(f"UNITGEN_DBUS={name!r}: expected 'next' or 'fast'")
    module = _MODULES[name]
    try:
        top = importlib.import_module(module)
        aio = importlib.import_module(f"{module}.aio")
    except ImportError as exc:
        raise SystemdError(f"UNITGEN_DBUS={name}: {module} is not installed") from exc
    lib = BusLibrary(
        name=name,
        MessageBus=aio.MessageBus,
        Message=top.Message,
        MessageType=top.MessageType,
        MessageFlag=top.MessageFlag,
        Variant=top.Variant,
        BusType=top.BusType,
    )
    _loaded[name] = lib
    global _VARIANTS
    _VARIANTS = (*_VARIANTS, lib.Variant)
    _VARIANT_TYPES.add(lib.Variant)
    return lib


def choose_library(env: Mapping[str, str] | None = None) -> BusLibrary:
    """``UNITGEN_DBUS`` forces a library; else dbus-fast if installed, else dbus-next."""
    forced = (os.environ if env is None else env).get("UNITGEN_DBUS", "").strip()
    if forced:
        return load_library(forced)
    try:
        return load_library("fast")
    except SystemdError:
        return load_library("next")


class _SendWithoutEagain:
    """A socket whose ``send`` says "0 bytes written" where the kernel says EAGAIN.

    Only ``send`` is changed: the writers call ``sendmsg`` only to pass file
    descriptors, which unitgen never negotiates. Everything else is the socket's.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def send(self, data: Any) -> int:
        try:
            return int(self._sock.send(data))
        except (BlockingIOError, InterruptedError):
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def guard_writes(raw: Any) -> bool:
    """Make a connected library MessageBus's writer survive a full socket buffer.

    Idempotent. False (and a warning) if the library's writer is not what this
    expects, e.g. a future release compiled it; the connection then works as
    the library made it.
    """
    writer: Any = getattr(raw, "_writer", None)
    sock = getattr(writer, "sock", None)
    if sock is None:
        log.warning("D-Bus library writer not recognised; EAGAIN will end the connection")
        return False
    if isinstance(sock, _SendWithoutEagain):
        return True
    try:
        writer.sock = _SendWithoutEagain(sock)
    except (AttributeError, TypeError):
        log.warning("D-Bus library writer not recognised; EAGAIN will end the connection")
        return False
    return True


def consume_send(fut: asyncio.Future[Any]) -> None:
    """Done callback of a no-reply send: a failed write is the connection's loss,
    which the disconnect path handles; retrieving it keeps asyncio from logging it."""
    if not fut.cancelled():
        fut.exception()


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


_SCALARS: frozenset[type] = frozenset({str, int, float, bool, bytes})


def unwrap(value: Any) -> Any:
    """Variants -> plain Python values, recursively (both libraries use ``.value``).

    A GetAll of a service carries ~300 properties, some of them long arrays of
    structs, and the ladder reads it on every incident; so an array whose first
    element is a plain scalar is returned as is (D-Bus arrays are homogeneous),
    which keeps this from touching every string of every ExecStart.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        # Inlined for the common a{sv} of scalars: one type test per property.
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if type(item) in _VARIANT_TYPES:
                item = item.value
            out[key] = item if type(item) in _SCALARS else unwrap(item)
        return out
    if kind is list:
        if not value or type(value[0]) in _SCALARS:
            return value
        return [unwrap(v) for v in value]
    if isinstance(value, _VARIANTS):
        return unwrap(getattr(value, "value", None))
    return value


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


def match_rule(**keys: str) -> str:
    """A D-Bus match rule; values are quoted the way the spec requires."""
    parts = []
    for key, val in keys.items():
        escaped = val.replace("'", "'\\''")
        parts.append(f"{key}='{escaped}'")
    return ",".join(parts)


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


# Put into every waiter's queue when the connection ends: wake it, to fail at once.
_LOST = "\0connection lost"


class _Waiter:
    __slots__ = ("interfaces", "path", "queue")

    def __init__(self, path: str, interfaces: tuple[str, ...]) -> None:
        self.path = path
        self.interfaces = interfaces  # only these interfaces' changes are queued
        # (arrival sequence, interface, changed, invalidated)
        self.queue: asyncio.Queue[tuple[int, str, dict[str, Any], list[str]]] = asyncio.Queue()


@dataclass(frozen=True)
class Expectation:
    """A unit's changes collected from a known point on (see SystemdBus.expect_changes)."""

    waiter: _Waiter


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
        self._waiters: dict[str, list[_Waiter]] = {}
        self._matches: dict[str, int] = {}
        self._subscribed = False
        self._closed = False
        self._seq = 0  # counts every incoming message, to order replies against signals
        self._reply_seq: dict[int, int] = {}  # serial of a watched call -> seq of its reply
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
        for waiters in list(self._waiters.values()):
            for waiter in waiters:
                waiter.queue.put_nowait((self._seq, _LOST, {}, []))

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
            raw = lib.MessageBus(bus_address=address, bus_type=bus_type)
            await asyncio.wait_for(raw.connect(), CALL_TIMEOUT)
            guard_writes(raw)
        except Exception as exc:
            _release_half_built_bus(exc)
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
        # dbus-next shuts the socket down but never closes it (a ResourceWarning
        # later); dbus-fast closes it itself, and closing twice is harmless.
        for attr in ("_stream", "_sock"):
            obj = getattr(self._bus, attr, None)
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()

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
        # asyncio.timeout each: that was ~20 of the ~95 us a call cost us.
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
        systemd marshals and we unmarshal for nothing). With five keys, what the
        listener asks once the signals brought the rest: 736-768 against 973-1067 us
        of our CPU per read, and about half the wall time (a unit read 8 at a time in
        the sandbox). Each Get costs ~90 us of ours, so eleven would cost more than
        the GetAll they replace.
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
        same batch delayed the new process by ~4 ms (median 18.7 against 14.9 ms
        from the calls to ExecMainStartTimestamp, 25 trials each, this sandbox),
        as much as the unload it prevents. Returns the restart's job and the
        reset's refusal, if any; a refused pin changes nothing else.
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
        waiter = _Waiter(unit_path(name), (UNIT,))
        self._waiters.setdefault(waiter.path, []).append(waiter)
        return Expectation(waiter)

    def forget(self, expectation: Expectation) -> None:
        self._drop_waiter(expectation.waiter)

    def _drop_waiter(self, waiter: _Waiter) -> None:
        waiters = self._waiters.get(waiter.path, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(waiter.path, None)

    async def _apply_until(
        self,
        name: str,
        waiter: _Waiter,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109 - only for the message
        deadline: float,
        props: dict[str, Any],
        seen: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Apply the waiter's queued changes to ``props`` until ``predicate`` holds.

        The waiter is handed only the interfaces it waits on. ``seen``: per
        interface, the arrival number of the GetAll reply ``props`` came from; a
        change that arrived before it is already in ``props``.
        """
        loop = asyncio.get_running_loop()
        while not predicate(props):
            if self._gone.is_set():
                raise BusConnectionLostError(f"unit {name}: bus connection lost while waiting")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SystemdError(
                    f"unit {name}: expected state not reached within {timeout:g}s "
                    f"(ActiveState={props.get('ActiveState')}, "
                    f"SubState={props.get('SubState')})"
                )
            try:
                # Queued already (a burst): no wait at all. Otherwise asyncio.timeout,
                # not wait_for, which wraps each get in a task of its own.
                item = waiter.queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    async with asyncio.timeout(remaining):
                        item = await waiter.queue.get()
                except TimeoutError:
                    continue
            seq, iface, changed, invalidated = item
            if iface == _LOST:
                raise BusConnectionLostError(f"unit {name}: bus connection lost while waiting")
            if seen is not None and seq <= seen.get(iface, 0):
                continue
            # systemd invalidates (names without values) only its large array
            # properties (ExecStart=, Conditions, ...), on every signal; reading
            # them again would double the calls of every wait, and no state
            # predicate needs them, so they are dropped rather than re-read.
            for key in invalidated:
                props.pop(key, None)
            props.update(changed)
        return props

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
                return await self._apply_until(
                    name, since.waiter, predicate, timeout, deadline, dict(initial)
                )
            finally:
                self._drop_waiter(since.waiter)
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
        waiter = _Waiter(path, ifaces)
        self._waiters.setdefault(path, []).append(waiter)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if not covered:
                await self.add_match(rule)
            props, seen = await self._snapshot(name, path, ifaces)
            return await self._apply_until(name, waiter, predicate, timeout, deadline, props, seen)
        finally:
            self._drop_waiter(waiter)
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
                    serial_hook=self._watch_reply(serials),
                )
            except SystemdError as exc:
                if "UnknownInterface" in str(exc) or "InvalidArgs" in str(exc):
                    continue
                raise
            finally:
                for s in serials:
                    seen[iface] = self._reply_seq.pop(s, 0)
            props.update(unwrap(values))
        return props, seen

    def _watch_reply(self, serials: list[int]) -> Callable[[int], None]:
        def hook(serial: int) -> None:
            serials.append(serial)
            self._reply_seq[serial] = 0

        return hook

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
            serial = msg.reply_serial
            if serial in self._reply_seq:
                self._reply_seq[serial] = self._seq
            return
        if self._waiters and msg.member == "PropertiesChanged":
            waiters = self._waiters.get(msg.path)
            if waiters:
                try:
                    iface, changed, invalidated = msg.body
                    # Unwrapped only for a waiter that wants this interface: a wait on
                    # the Unit interface skips the Service one's signal, sent with it.
                    wanting = [w for w in waiters if iface in w.interfaces]
                    item = (
                        (self._seq, str(iface), unwrap(changed), list(invalidated))
                        if wanting
                        else None
                    )
                except (ValueError, TypeError):
                    log.warning("malformed PropertiesChanged on %s", msg.path)
                else:
                    if item is not None:
                        for waiter in wanting:
                            waiter.queue.put_nowait(item)
        for callback in list(self._callbacks):
            try:
                callback(msg)
            except Exception:
                log.exception("signal callback %r failed on %s", callback, msg.member)


def _release_half_built_bus(exc: BaseException) -> None:
    """Close the socket of a MessageBus whose constructor or connect() failed.

    dbus-next opens the socket in ``__init__`` and leaves it open when the
    connect fails; the traceback (kept alive by ``raise ... from``) would hold
    it until garbage collection and a ResourceWarning.
    """
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        for attr in ("_stream", "_sock"):
            obj = getattr(owner, attr, None)
            if obj is not None and hasattr(obj, "close"):
                with contextlib.suppress(Exception):
                    obj.close()
        tb = tb.tb_next


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
