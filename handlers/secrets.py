"""Secrets for outbound I/O: where they are read from, and how they are kept out of text.

Alert URLs (a Slack webhook URL *is* its credential) and SMTP passwords live in
a file or an environment variable, never in the spec or the rendered policy.
They are read at the moment they are needed, so rotating a file takes effect
on the next alert without restarting anything.

The other half of this module is redaction. requests, urllib3 and smtplib put
whole URLs (path, query, userinfo) into their exception text and debug logs.
Nothing from those libraries is ever shown verbatim: callers describe an
endpoint with :func:`endpoint` (``host:port`` only) and a failure with
:func:`describe_exception` (class name and errno text only), and
:func:`install_log_redaction` strips request paths from urllib3's debug lines.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Mapping
from urllib.parse import urlsplit

from unitgen.errors import AlertError

__all__ = [
    "credential_file",
    "describe_exception",
    "endpoint",
    "install_log_redaction",
    "read_secret",
]

log = logging.getLogger(__name__)

# A secret file larger than this is not a URL or a password: refuse, don't slurp.
_MAX_SECRET_BYTES = 64 * 1024


def read_secret(
    *,
    owner: str,
    key_file: str,
    key_env: str,
    file: str | None,
    env_name: str | None,
    environ: Mapping[str, str],
) -> str:
    """The secret from ``file`` or from ``environ[env_name]``, whitespace-stripped.

    ``owner`` (e.g. ``"alert ops"``) and the key names only make the error
    message say where to look; the message names the file or variable, never
    its content. Raises :class:`AlertError`.
    """
    if file is not None:
        data = _read_regular_file(owner, key_file, file)
        if len(data) > _MAX_SECRET_BYTES:
            raise AlertError(f"{owner}: {key_file} {file}: larger than {_MAX_SECRET_BYTES} bytes")
        try:
            value = data.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise AlertError(f"{owner}: {key_file} {file}: not UTF-8 text") from exc
        if not value:
            raise AlertError(f"{owner}: {key_file} {file}: file is empty")
        return value
    if env_name is not None:
        value = environ.get(env_name, "").strip()
        if not value:
            raise AlertError(f"{owner}: {key_env} {env_name}: variable is unset or empty")
        return value
    raise AlertError(f"{owner}: neither {key_file} nor {key_env} is set")


def credential_file(owner: str, key: str, name: str, environ: Mapping[str, str]) -> str:
    """Where systemd put credential ``name`` for this process (LoadCredential=).

    systemd copies the credential into a private, non-swappable directory only
    this unit can read and names it in ``$CREDENTIALS_DIRECTORY``; the source file
    itself can then be readable by root alone.
    """
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory.startswith("/"):
        raise AlertError(
            f"{owner}: {key} {name}: $CREDENTIALS_DIRECTORY is not set; the unit needs "
            f"LoadCredential={name}:PATH (unitgen render adds it to the recovery unit "
            "and the listener)"
        )
    return f"{directory.rstrip('/')}/{name}"


def _read_regular_file(owner: str, key: str, file: str) -> bytes:
    def cannot(exc: OSError) -> AlertError:
        reason = exc.strerror or type(exc).__name__
        return AlertError(f"{owner}: {key} {file}: cannot read ({reason})")

    # O_NONBLOCK: opening a FIFO planted at the path must not hang; it is refused below.
    # Symlinks are followed on purpose: mounted secrets (Kubernetes, systemd
    # credentials) are usually symlinks into a private directory.
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise cannot(exc) from exc
    try:
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise cannot(exc) from exc
        if not stat.S_ISREG(mode):
            raise AlertError(f"{owner}: {key} {file}: not a regular file")
        if mode & stat.S_IROTH:
            log.warning("%s: %s %s is readable by every user; chmod o-r it", owner, key, file)
        try:
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", closefd=False) as fh:
                return fh.read(_MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise cannot(exc) from exc
    finally:
        os.close(fd)


def endpoint(url: str) -> str:
    """``host:port`` of ``url``: what may appear in logs and errors about it.

    Userinfo, path, query and fragment are dropped, because any of them may
    carry the token. A URL that does not parse yields a fixed placeholder
    rather than any part of the input.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<unparsable url>"
    if not host:
        return "<url without host>"
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port is not None else shown


def _root_oserror(exc: BaseException) -> OSError | None:
    """The innermost OSError with an errno under a library's wrapping, if any.

    requests wraps urllib3's MaxRetryError, which keeps its cause in
    ``.reason``; urllib3 wraps the socket error via ``__cause__``/``__context__``.
    """
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        cur = stack.pop()
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        stack.extend([cur.__cause__, cur.__context__, getattr(cur, "reason", None)])
        stack.extend(a for a in cur.args if isinstance(a, BaseException))
    return None


def describe_exception(exc: BaseException) -> str:
    """``ConnectionError (connection refused)``: safe text for a library exception.

    Only the class name and the operating system's description of the errno
    are used; the exception's own message is never looked at, because that is
    where requests and urllib3 put the URL.
    """
    name = type(exc).__name__
    root = _root_oserror(exc)
    if root is not None and root.errno is not None:
        code = errno.errorcode.get(root.errno, str(root.errno))
        return f"{name} ({os.strerror(root.errno).lower()}, {code})"
    return name


class _RedactRequestPath(logging.Filter):
    """Replaces the request path in urllib3's ``"POST /path HTTP/1.1" 200`` debug line.

    The path of a Slack webhook URL is its secret, and urllib3 logs it at DEBUG
    whenever the application enables debug logging.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and a.startswith("/") for a in args):
            record.args = tuple(
                "/<redacted>" if isinstance(a, str) and a.startswith("/") else a for a in args
            )
        return True


_FILTER = _RedactRequestPath()


def install_log_redaction() -> None:
    """Attach the path redaction to urllib3's loggers; idempotent."""
    for name in ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
