"""The one function every value passes through on its way into a unit file.

systemd's unit-file parser has several grammars, and a value that is safe in
one is an injection in another. :func:`quote` knows them by *kind* and the
templates use it as the Jinja filter ``q``: ``{{ svc.exec | q("exec") }}``.
A test greps the templates for any ``{{ ... }}`` without it.

Rules followed (checked against systemd 252 with ``systemctl show`` and by
running the argv; tests/test_quoting_sandbox.py repeats that):

* The file is read line by line; ``\\n``, ``\\r`` and NUL end a line, so they are
  refused everywhere, even though the spec validator refuses them first.
* A line ending in an odd number of backslashes continues on the next line, so
  a raw (unquoted) value may not end in a backslash.
* ``%`` starts a specifier in every directive we emit that expands them
  (Description, Exec*, Environment, paths, names); ``%%`` is a literal ``%``.
* ``Exec*=`` lines are split into words, unquoted and C-unescaped, then ``$VAR``
  and ``${VAR}`` are expanded (``$$`` is a literal ``$``); a lone ``;`` separates
  commands. Every word is double-quoted with ``\\`` and ``"`` escaped, ``$``
  doubled and a lone ``;`` written as ``\\;``.
* ``Environment=`` words are unquoted and C-unescaped, but not ``$``-expanded.
* List directives (ReadWritePaths, StateDirectory, ...) unquote words and drop
  the backslash of any escape; double quotes with ``\\`` and ``"`` escaped work.
* Leading and trailing whitespace of a raw value is stripped by systemd.

Values systemd cannot represent faithfully raise :class:`RenderError` rather
than being silently changed, except surrounding whitespace in free text
(Description), which systemd strips anyway and which :func:`unquote` strips too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Literal

from unitgen.errors import RenderError

__all__ = ["KINDS", "Kind", "quote", "unquote"]

Kind = Literal[
    "exec", "env", "text", "path", "paths", "dirs", "units", "name", "literal", "key", "directives"
]
KINDS: tuple[Kind, ...] = (
    "exec",
    "env",
    "text",
    "path",
    "paths",
    "dirs",
    "units",
    "name",
    "literal",
    "key",
    "directives",
)

_LINE_BREAKER = re.compile("[\n\r\x00]")
# What systemd strips around a value (its WHITESPACE minus the line breakers).
_BLANK = " \t"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# systemd.unit(5): ASCII letters, digits, ":-_.\" and "@"; the full check is the validator's.
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]{1,255}")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,255}\$?")
# Literals are produced by unitgen itself (durations, sizes, profile values), never
# free text, so a narrow alphabet is enough and keeps anything clever out.
_LITERAL = re.compile(r"[A-Za-z0-9_@~%.:+/=, -]*")
_DIRECTIVE = re.compile(r"[A-Z][A-Za-z0-9]*")


def _check(value: object, kind: str) -> str:
    if not isinstance(value, str):
        raise RenderError(f"quote({kind}): expected a string, got {type(value).__name__}")
    bad = _LINE_BREAKER.search(value)
    if bad is not None:
        raise RenderError(
            f"quote({kind}): value {_short(value)} contains {bad.group()!r}, "
            "which would end the line in a unit file"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RenderError(f"quote({kind}): value {_short(value)} is not valid UTF-8") from exc
    return value


def _short(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def _no_trailing_backslash(value: str, kind: str) -> str:
    if value.endswith("\\"):
        raise RenderError(
            f"quote({kind}): value {_short(value)} ends with a backslash, "
            "which systemd reads as a line continuation"
        )
    return value


def _dq(value: str, *, dollar: bool = False) -> str:
    """Double-quote one word for systemd's word splitter."""
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if dollar:
        out = out.replace("$", "$$")
    return f'"{out}"'


def _words(value: object, kind: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise RenderError(f"quote({kind}): expected a list of strings")
    return [_check(v, kind) for v in value]


def quote(value: object, kind: str) -> str:
    """See :func:`_quote`; the fixed values of the profiles repeat, so they are cached."""
    if kind in ("literal", "key") and type(value) is str:
        return _quote_cached(value, kind)
    if kind == "directives" and isinstance(value, tuple):
        return _quote_cached(value, kind)
    return _quote(value, kind)


@functools.lru_cache(maxsize=4096)
def _quote_cached(value: str | tuple[object, ...], kind: str) -> str:
    return _quote(value, kind)


def _quote(value: object, kind: str) -> str:
    """``value`` spelled so systemd reads back exactly ``value``, for directive ``kind``.

    Kinds: ``exec`` (argv list), ``env`` (a (KEY, value) pair), ``text`` (free
    text, Description), ``path`` (one absolute path, a whole-line value),
    ``paths`` (absolute paths, a list directive), ``dirs`` (relative directory
    names for State/Logs/...Directory), ``units`` (unit names), ``name``
    (user/group), ``literal`` (numbers, durations, sizes and the fixed values of
    the hardening profiles), ``key`` (a directive name) and ``directives`` (a
    block of ``key=literal`` lines, one per pair).
    """
    if kind == "exec":
        argv = _words(value, kind)
        if not argv or not argv[0].startswith("/"):
            # An unquoted prefix character (-@:+!) on argv[0] changes how systemd runs it.
            raise RenderError(f"quote(exec): argv[0] must be an absolute path, got {argv[:1]!r}")
        return " ".join("\\;" if w == ";" else _dq(w, dollar=True) for w in argv)
    if kind == "env":
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise RenderError("quote(env): expected a (KEY, value) pair")
        key, val = (_check(v, kind) for v in value)
        if not _ENV_KEY.fullmatch(key):
            raise RenderError(f"quote(env): {_short(key)} is not a valid environment name")
        return _dq(f"{key}={val}")
    if kind == "text":
        stripped = _check(value, kind).strip(_BLANK)
        return _no_trailing_backslash(stripped, kind).replace("%", "%%")
    if kind == "path":
        path = _check(value, kind)
        # "-/x": systemd's "ignore if missing" prefix (EnvironmentFile=, WorkingDirectory=).
        if not path.removeprefix("-").startswith("/"):
            raise RenderError(f"quote(path): {_short(path)} is not an absolute path")
        if path != path.strip(_BLANK):
            raise RenderError(f"quote(path): {_short(path)} has surrounding whitespace")
        return _no_trailing_backslash(path, kind).replace("%", "%%")
    if kind == "paths":
        paths = _words(value, kind)
        for p in paths:
            # "-/x" is systemd's "ignore if missing" prefix; the rest must be absolute.
            if not p.removeprefix("-").startswith("/"):
                raise RenderError(f"quote(paths): {_short(p)} is not an absolute path")
        return " ".join(_dq(p) for p in paths)
    if kind == "dirs":
        dirs = _words(value, kind)
        for d in dirs:
            if not d or d.startswith("/") or ":" in d:
                # ":" would make systemd read SOURCE:SYMLINK.
                raise RenderError(f"quote(dirs): {_short(d)} must be a relative name without ':'")
        return " ".join(_dq(d) for d in dirs)
    if kind == "units":
        units = _words(value, kind)
        for u in units:
            if not _UNIT.fullmatch(u):
                raise RenderError(f"quote(units): {_short(u)} is not a valid unit name")
        return " ".join(units)
    if kind == "name":
        name = _check(value, kind)
        if not _USER.fullmatch(name):
            raise RenderError(f"quote(name): {_short(name)} is not a valid user or group name")
        return name
    if kind == "literal":
        text = (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )
        lit = _check(text, kind)
        if not _LITERAL.fullmatch(lit):
            raise RenderError(f"quote(literal): {_short(lit)} has characters a literal may not")
        return lit
    if kind == "directives":
        # A block of "Key=literal" lines (hardening, limits): every key and value is
        # checked as its own kind; the block is cached since profiles repeat.
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise RenderError("quote(directives): expected (key, value) pairs")
        lines = []
        for pair in value:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise RenderError("quote(directives): expected (key, value) pairs")
            lines.append(f"{quote(pair[0], 'key')}={quote(pair[1], 'literal')}")
        return "\n".join(lines)
    if kind == "key":
        key = _check(value, kind)
        if not _DIRECTIVE.fullmatch(key):
            raise RenderError(f"quote(key): {_short(key)} is not a directive name")
        return key
    raise RenderError(f"quote: unknown kind {kind!r}, expected one of {', '.join(KINDS)}")


# -- the inverse, as systemd reads it; used by tests and by `unitgen diff` users ---------


def _split_words(text: str, kind: str) -> list[str]:
    """systemd's extract_first_word with UNQUOTE|CUNESCAPE for the escapes we emit."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return words
        word: list[str] = []
        quote_char: str | None = None
        while i < n:
            c = text[i]
            if quote_char is None and c in " \t":
                break
            if c == "\\":
                if i + 1 >= n:
                    raise RenderError(f"unquote({kind}): dangling backslash")
                word.append(text[i + 1])
                i += 2
                continue
            if quote_char is None and c in "\"'":
                quote_char = c
            elif c == quote_char:
                quote_char = None
            else:
                word.append(c)
            i += 1
        if quote_char is not None:
            raise RenderError(f"unquote({kind}): unterminated quote")
        words.append("".join(word))


def _unpercent(text: str, kind: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "%":
            if text[i + 1 : i + 2] != "%":
                raise RenderError(f"unquote({kind}): specifier %{text[i + 1 : i + 2]} in value")
            out.append("%")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def unquote(text: str, kind: str) -> object:
    """What systemd makes of ``text`` for ``kind``: the inverse of :func:`quote`.

    Covers exactly the spellings :func:`quote` emits (the escapes ``\\\\``, ``\\"``
    and ``\\;``), which is all a round-trip test needs.
    """
    if kind == "exec":
        argv = [_unpercent(w, kind) for w in _split_words(text, kind)]
        return tuple(w.replace("$$", "$") for w in argv)
    if kind == "env":
        words = _split_words(text, kind)
        if len(words) != 1:
            raise RenderError(f"unquote(env): expected one assignment, got {len(words)}")
        key, sep, val = _unpercent(words[0], kind).partition("=")
        if not sep:
            raise RenderError("unquote(env): no '=' in assignment")
        return (key, val)
    if kind in ("text", "path"):
        return _unpercent(text.strip(_BLANK), kind)
    if kind in ("paths", "dirs"):
        return tuple(_unpercent(w, kind) for w in _split_words(text, kind))
    if kind == "units":
        return tuple(text.split())
    if kind in ("name", "literal", "key"):
        return text
    if kind == "directives":
        return tuple(tuple(line.split("=", 1)) for line in text.split("\n") if line)
    raise RenderError(f"unquote: unknown kind {kind!r}")
