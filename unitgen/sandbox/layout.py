"""Fixed names every part of the sandbox agrees on: the host's systemd binaries, the
sandbox's inside layout, and the environment its processes start from."""

from __future__ import annotations

import os

SYSTEMD = "/lib/systemd/systemd"
JOURNALD = "/lib/systemd/systemd-journald"
USER_BUS_SOCKET_UNIT = "/usr/lib/systemd/user/dbus.socket"
CGROUP_PREFIX = "unitgen-sandbox-"
# Where the user sandbox's HOME and runtime dir appear inside (ROOT/home, ROOT/run).
INSIDE_HOME = "/home/sandbox"
INSIDE_RUNTIME = "/run/user/0"
DEFAULT_BOOT_TIMEOUT = 20.0
POLL = 0.01  # seconds between state polls; each is a systemctl show (docs/sandbox.md)


def base_env() -> dict[str, str]:
    """The caller's environment minus anything that points at another manager."""
    env = dict(os.environ)
    for var in (
        "DBUS_SESSION_BUS_ADDRESS",
        "DBUS_SYSTEM_BUS_ADDRESS",
        "XDG_RUNTIME_DIR",
        "SYSTEMD_PAGER",
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
    ):
        env.pop(var, None)
    env["SYSTEMD_PAGER"] = ""
    env["SYSTEMD_COLORS"] = "0"
    return env
