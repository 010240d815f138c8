"""Who may call the mutating methods of org.unitgen.Recovery1.

The bus policy file (units/org.unitgen.Recovery1.conf) is the first gate on
the system bus; this is the second, and the only one on a session bus or
under a relaxed policy. The rule: the caller's uid, as the bus daemon
vouches for it through ``org.freedesktop.DBus.GetConnectionUnixUser``, must
be root or the daemon's own uid. Anything that prevents an answer (the
caller has already disconnected, the bus refuses, the call times out) is a
denial: the check fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["LOOKUP_TIMEOUT", "AccessPolicy", "Decision", "caller_uid"]

DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
# A bus daemon that cannot say who a caller is within this long is treated as "no".
LOOKUP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    uid: int | None  # None when the bus could not tell
    why: str  # one line, for the error reply and the log


async def caller_uid(bus: Any, message_cls: Any, error_type: Any, sender: str) -> int | None:
    """The uid behind the unique name ``sender``, or None if the bus cannot say.

    ``message_cls`` and ``error_type`` are the chosen library's ``Message`` and
    ``MessageType.ERROR``, so this works on dbus-next and dbus-fast alike.
    """
    msg = message_cls(
        destination=DBUS_NAME,
        path=DBUS_PATH,
        interface=DBUS_NAME,
        member="GetConnectionUnixUser",
        signature="s",
        body=[sender],
    )
    try:
        reply = await asyncio.wait_for(bus.call(msg), LOOKUP_TIMEOUT)
    except Exception as exc:
        log.warning("uid lookup for %s failed: %s", sender, type(exc).__name__)
        return None
    if reply is None or reply.message_type == error_type:
        # NameHasNoOwner: the caller left before we could ask about it.
        return None
    body = list(reply.body)
    if len(body) != 1 or not isinstance(body[0], int) or isinstance(body[0], bool):
        return None
    return int(body[0])


class AccessPolicy:
    """Root and the daemon's own uid may mutate; everyone else may only read."""

    def __init__(self, allowed_uids: Iterable[int] | None = None) -> None:
        self.allowed_uids = frozenset(
            {0, os.geteuid()} if allowed_uids is None else set(allowed_uids)
        )

    async def check(
        self, bus: Any, message_cls: Any, error_type: Any, sender: str | None, what: str
    ) -> Decision:
        """Decide whether ``sender`` may do ``what`` (e.g. ``"Reset nginx.service"``)."""
        if not sender:
            # A peer-to-peer connection has no bus daemon to vouch for the caller.
            return Decision(False, None, f"{what}: caller has no bus name, cannot verify it")
        uid = await caller_uid(bus, message_cls, error_type, sender)
        if uid is None:
            return Decision(False, None, f"{what}: cannot verify caller {sender}")
        if uid in self.allowed_uids:
            return Decision(True, uid, f"{what}: uid {uid} allowed")
        return Decision(
            False, uid, f"{what}: uid {uid} may not call this; only root or the daemon's user"
        )
