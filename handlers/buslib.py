"""The two D-Bus libraries behind :mod:`handlers.bus` and :mod:`handlers.dbus_api`.

dbus-next and dbus-fast share an API (``MessageBus``, ``Message``, ``call``,
``add_message_handler``, ``Variant``, ``MessageType``): :class:`BusLibrary` is
that surface, resolved once. ``UNITGEN_DBUS=next|fast`` forces one; otherwise
dbus-fast is used when it is installed, because it parses systemd's signals an
order of magnitude faster (measured by the listener benchmark's ``flood`` mode,
recorded in docs/listener.md).

The exported interface (:mod:`handlers.dbus_api`) is handed a connected bus and
takes the library from it: :func:`library_of` gives that library with its
``service`` module (``ServiceInterface``, ``method``, ``signal``), and
:func:`dbus_types` declares a method's D-Bus signature the way both read it.

Two library defects are contained here rather than worked around by callers:

* Both libraries' writers (``_MessageWriter.write_callback``) loop over queued
  messages calling ``sock.send`` on the non-blocking socket until the queue is
  empty, and treat anything it raises, EAGAIN included, as the end of the
  connection (a known dbus-next bug; dbus-fast inherited the writer). A burst of
  replies faster than the bus daemon reads (a flood of method calls) so cost us
  the connection, the bus name and the systemd subscription. :func:`guard_writes`
  gives the writer a socket whose ``send`` reports EAGAIN as "0 bytes written":
  the writer then keeps the message and waits for the socket to be writable,
  which it already does after a partial write.
* The socket of a connection that failed, or that was disconnected, is not
  always closed: dbus-next opens it in the constructor and leaves it open when
  the constructor's connect or the handshake fails, and never closes it after
  ``disconnect()``; dbus-fast before 5.0 opened it in the constructor too.
  :func:`open_bus` therefore creates the object in two steps (``__new__``, then
  ``__init__``), so it holds the object before anything can fail, and on any
  failure gives it to :func:`release_transport`, the one place that closes a
  library's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from unitgen.errors import SystemdError, UsageError

log = logging.getLogger(__name__)

__all__ = [
    "BusLibrary",
    "ServiceLibrary",
    "choose_library",
    "consume_send",
    "dbus_types",
    "guard_writes",
    "library_of",
    "load_library",
    "open_bus",
    "release_transport",
    "service_library",
    "unwrap",
]

_F = TypeVar("_F", bound=Callable[..., Any])


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


# -- the exported interface's side ----------------------------------------------------


@dataclass(frozen=True)
class ServiceLibrary:
    """One library's top module (``Message``, ``Variant``, ``DBusError``, ...) and its
    ``service`` module, for exporting an interface."""

    root: ModuleType
    service: ModuleType

    def __getattr__(self, name: str) -> Any:
        return getattr(self.root, name)


@functools.cache
def service_library(root_name: str) -> ServiceLibrary:
    return ServiceLibrary(
        root=importlib.import_module(root_name),
        service=importlib.import_module(f"{root_name}.service"),
    )


def library_of(bus: Any) -> ServiceLibrary:
    """dbus-next or dbus-fast, whichever ``bus`` comes from."""
    root_name = type(bus).__module__.split(".", 1)[0]
    if root_name not in ("dbus_next", "dbus_fast"):
        raise TypeError(f"expected a dbus-next or dbus-fast MessageBus, got {type(bus)!r}")
    return service_library(root_name)


def dbus_types(*args: str, returns: str = "") -> Callable[[_F], _F]:
    """Declare a method's D-Bus signature without putting it in Python's annotations.

    Both libraries read the D-Bus types from ``__annotations__``; writing them
    there by hand keeps the Python signature type-checkable by mypy.
    """

    def apply(fn: _F) -> _F:
        params = [p for p in inspect.signature(fn).parameters if p != "self"]
        if len(params) != len(args):
            raise TypeError(f"{fn.__name__}: {len(params)} parameters, {len(args)} D-Bus types")
        annotations: dict[str, str] = dict(zip(params, args, strict=True))
        if returns:
            annotations["return"] = returns
        fn.__annotations__ = annotations
        return fn

    return apply


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


# -- the socket -----------------------------------------------------------------------


async def open_bus(lib: BusLibrary, address: str | None, bus_type: Any, timeout: float) -> Any:  # noqa: ASYNC109 - the connect's own deadline
    """A connected library MessageBus whose writer survives a full socket buffer.

    Whatever fails (the constructor's connect, the handshake, ``Hello``, the
    deadline, a cancellation) closes the socket before the error propagates.
    """
    raw = lib.MessageBus.__new__(lib.MessageBus)
    try:
        raw.__init__(bus_address=address, bus_type=bus_type)
        await asyncio.wait_for(raw.connect(), timeout)
    except BaseException:
        release_transport(raw)
        raise
    guard_writes(raw)
    return raw


def release_transport(raw: Any) -> None:
    """Close a library MessageBus's socket, connected, half-built or disconnected.

    The loop's reader and writer on it go first (a failed handshake may leave
    them), then the buffered stream (dbus-next's ``makefile``, which holds the
    descriptor too), then the socket. Closing twice is harmless.
    """
    sock = getattr(raw, "_sock", None)
    fd = _fileno(sock)
    if fd >= 0:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing registered
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
    for attr in ("_stream", "_sock"):
        obj = getattr(raw, attr, None)
        if obj is not None:
            with contextlib.suppress(Exception):
                obj.close()


def _fileno(sock: Any) -> int:
    try:
        return int(sock.fileno())
    except Exception:
        return -1


# -- writes ---------------------------------------------------------------------------


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
