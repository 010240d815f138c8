"""sd_notify(3) without libsystemd: READY=1, STATUS=, WATCHDOG=1 over $NOTIFY_SOCKET.

The protocol is one datagram per message on an AF_UNIX socket whose address
systemd passes in ``$NOTIFY_SOCKET``; a leading ``@`` names the abstract
namespace (a NUL byte on the wire). Sending never blocks: the socket is
non-blocking and a full queue drops the message, which systemd tolerates for
STATUS= and which the next WATCHDOG=1 ping makes up for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock and other forms are not used for user or system services


class Notifier:
    """Talks to systemd when run as a Type=notify service; a no-op otherwise."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _address(raw) if raw else None
        if raw and self._address is None:
            log.warning("NOTIFY_SOCKET has an unsupported address form; not notifying")
        self._sock: socket.socket | None = None
        self.watchdog_usec = _watchdog_usec(env)
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec, as sd_watchdog_enabled(3) recommends; None if off."""
        if not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True if it was sent."""
        if self._address is None:
            return False
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc.strerror or exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def watchdog_loop(self) -> None:
        """Ping at half WatchdogSec for as long as the event loop keeps running.

        Being a task on the listener's own loop is the point: a loop stuck in a
        blocking call stops the pings and systemd restarts the daemon.
        """
        interval = self.watchdog_interval
        if interval is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC, honoured only when WATCHDOG_PID is unset or names this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec)
