"""The checks of the spec's string values: each returns what was expected, or None.

The key table (``unitgen.speckeys``) hands these to its nodes (a ``Text``, a
command's program, a table's key names), which report the returned phrase at
the key as "expected ...". Each checks one string on its own.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from unitgen.hardening import known_directive_names
from unitgen.specnodes import did_you_mean
from unitgen.sysroots import is_system_root, normalized
from unitgen.unitnames import (
    UnitNameKind,
    managed_unit_problem,
    reserved_name_problem,
    unit_name_problem,
)

__all__ = [
    "CAPABILITIES",
    "NAME_MAX",
    "PATH_MAX",
    "absolute_path",
    "alert_name",
    "capability_name",
    "cleanup_root",
    "credential_name",
    "dependency_unit",
    "directive_name",
    "email_address",
    "env_name",
    "host_port",
    "http_url",
    "label_name",
    "optional_absolute_path",
    "override_unit",
    "relative_directory",
    "secret_env",
    "secret_file",
    "service_name",
    "smtp_host",
    "user_or_group",
]


def _show(value: str) -> str:
    """A value quoted for a one-line message, shortened if long."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


PATH_MAX = 4095  # bytes, without the NUL
NAME_MAX = 255


def absolute_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"an absolute path (starting with '/'), got {_show(value)}"
    if "/../" in value + "/":
        return f"an absolute path without '..' components, got {_show(value)}"
    if len(value) <= NAME_MAX // 4:
        return None  # even at 4 bytes a character, no component or total can be too long
    parts = value.split("/")
    if len(value.encode()) > PATH_MAX:
        return f"a path of at most {PATH_MAX} bytes"
    if any(len(p.encode()) > NAME_MAX for p in parts):
        return f"a path whose components are at most {NAME_MAX} bytes each"
    return None


def cleanup_root(value: str) -> str | None:
    problem = absolute_path(value)
    if problem is None and is_system_root(value):
        # The ladder deletes old files there as root; handlers/cleanup.py refuses the
        # same list at run time (unitgen/sysroots.py).
        return (
            f"a service's own directory, not the system directory {normalized(value)!r} "
            "(cleanup deletes old files there)"
        )
    return problem


def optional_absolute_path(value: str) -> str | None:
    # systemd's EnvironmentFile= takes a leading '-' for "ignore if missing".
    problem = absolute_path(value[1:] if value.startswith("-") else value)
    return (
        None
        if problem is None
        else problem.replace("an absolute path", "an absolute path (optionally '-'-prefixed)", 1)
    )


def relative_directory(value: str) -> str | None:
    if not value:
        return "a directory name, got an empty string"
    if value.startswith("/"):
        where = "a name relative to systemd's base directory (like 'api')"
        return f"{where}, got the absolute {_show(value)}"
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return (
            f"a relative directory name without empty, '.' or '..' components, got {_show(value)}"
        )
    if len(value.encode()) > PATH_MAX or any(len(p.encode()) > NAME_MAX for p in parts):
        return "a shorter directory name"
    return None


_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,30}")


def user_or_group(value: str) -> str | None:
    # systemd accepts a numeric id or a name it would accept in its strict mode.
    if value.isascii() and value.isdigit():
        return None if int(value) < 2**32 - 1 and len(value) <= 10 else "a valid numeric id"
    if _USER.fullmatch(value):
        return None
    rule = "letters, digits, '_', '-', at most 31"
    return f"a user or group name like 'api' ({rule}), got {_show(value)}"


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_name(value: str) -> str | None:
    if _ENV_NAME.fullmatch(value) and len(value) <= 256:
        return None
    return f"an environment variable name like 'API_PORT', got {_show(value)}"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def alert_name(value: str) -> str | None:
    if _NAME.fullmatch(value):
        return None
    return f"an alert name of letters, digits, '_', '.', '-' (at most 64), got {_show(value)}"


def service_name(value: str) -> str | None:
    # managed_unit_problem is the rule unitgen recover, the locks and the D-Bus API
    # apply too: a service that renders is one the ladder can recover.
    problem = managed_unit_problem(f"{value}.service")
    if problem is not None:
        return (
            f"a service name that makes a valid unit name {_show(value + '.service')} ({problem})"
        )
    return reserved_name_problem(f"{value}.service")


def override_unit(value: str) -> str | None:
    problem = managed_unit_problem(value, types=frozenset({"service"}))
    return reserved_name_problem(value) if problem is None else problem


def dependency_unit(value: str) -> str | None:
    return unit_name_problem(value, UnitNameKind.PLAIN | UnitNameKind.INSTANCE)


def directive_name(value: str) -> str | None:
    # Checked here as well as by the renderer so a typo is reported at its key,
    # with the other problems, instead of silently keeping the directive.
    known = known_directive_names()
    if value in known:
        return None
    hint = did_you_mean(value, sorted(known))
    example = "like 'MemoryDenyWriteExecute'"
    return f"a directive that a hardening profile sets, {example}, got {_show(value)}{hint}"


# Linux capability names as systemd 252 knows them (src/basic/cap-list, linux 5.9+).
CAPABILITIES = frozenset(
    {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    }
)


def capability_name(value: str) -> str | None:
    if value in CAPABILITIES:
        return None
    hint = did_you_mean(value.upper(), sorted(CAPABILITIES))
    return f"a Linux capability like 'CAP_DAC_OVERRIDE', got {_show(value)}{hint}"


def http_url(value: str) -> str | None:
    # A URL's path, query or userinfo may carry a token: messages name the scheme
    # and host at most, never the whole URL.
    netloc = value.split("//", 1)[1].split("/", 1)[0] if "//" in value else ""
    if "@" in netloc:
        return "a URL without user:password (credentials do not belong in the spec)"
    if re.search(r"\s", value):
        return "a URL without whitespace (write a space as %20)"
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return "an http:// or https:// URL with a valid host and port (the URL is not shown)"
    if parts.scheme not in ("http", "https"):
        return f"an http:// or https:// URL, got the scheme {parts.scheme or 'none'!r}"
    if not parts.hostname:
        return "an http:// or https:// URL with a host"
    return None


def host_port(value: str) -> str | None:
    what = f"'host:port' like '127.0.0.1:6379' or '[::1]:6379', got {_show(value)}"
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        return what
    if not 1 <= int(port) <= 65535 or len(port) > 5:
        return f"a port from 1 to 65535 in {_show(value)}"
    if host.startswith("["):
        if not host.endswith("]"):
            return what
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"an IPv6 address in brackets, got {host!r}"
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,253}", host):
        return what
    return None


def label_name(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) or value.startswith("__"):
        rule = "[A-Za-z_][A-Za-z0-9_]*, not '__'-prefixed"
        return f"a Prometheus label name ({rule}), got {_show(value)}"
    if value in ("alertname", "unit", "instance", "incident", "reason"):
        return f"a label name unitgen does not set itself, got the reserved {_show(value)}"
    return None


_ADDRESS = re.compile(r"[^\s<>@,;:\"]+@[^\s<>@,;:\"]+")


def email_address(value: str) -> str | None:
    return (
        None
        if _ADDRESS.fullmatch(value)
        else f"one plain e-mail address (user@host), got {_show(value)}"
    )


def smtp_host(value: str) -> str | None:
    if value and not re.search(r"[\s/]", value):
        return None
    return f"a host name or address, got {_show(value)}"


def _looks_like_a_secret(value: str) -> bool:
    return "://" in value or "@" in value or len(value) > 40


def secret_file(value: str) -> str | None:
    """Like absolute_path, but a wrong value is never echoed: it may be the secret itself."""
    if absolute_path(value) is None:
        return None
    if _looks_like_a_secret(value):
        return "the path of a file holding the secret, not the secret itself (value not shown)"
    return "an absolute path (starting with '/'); the value is not shown"


def secret_env(value: str) -> str | None:
    if env_name(value) is None:
        return None
    if _looks_like_a_secret(value):
        return "the name of a variable holding the secret, not the secret itself (value not shown)"
    return "an environment variable name like 'SLACK_URL'; the value is not shown"


_CREDENTIAL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def credential_name(value: str) -> str | None:
    """A systemd credential name: a plain file name (its value lives in a file, not here)."""
    if _CREDENTIAL.fullmatch(value):
        return None
    if _looks_like_a_secret(value):
        return "the name of a systemd credential holding the secret, not the secret itself"
    return "a credential name like 'ops-url' (letters, digits, '_', '.', '-'; at most 64)"
