"""Load a spec file, validate all of it, and produce the typed model.

Reading is careful because the path comes from the operator: a directory, a
FIFO, a dangling symlink, an unreadable, huge, empty or non-UTF-8 file each
give one clear problem, never a traceback or a hang. Validation never stops at
the first problem: the key table (``unitgen.speckeys``) checks every key, and
the rules that span keys or services (alert references, ``user`` with
``dynamic_user``, dependency cycles, overrides of owned units) run on the raw
data so they still report when some unrelated key is wrong. Only a spec with
no problem at all becomes a :class:`unitgen.model.Spec`; otherwise one
:class:`SpecError` carries every problem.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from unitgen.errors import SpecError, SpecProblem
from unitgen.model import AlertConfig, Defaults, Hardening, Override, Service, Spec
from unitgen.speckeys import SPEC
from unitgen.specnodes import (
    FORBIDDEN_CHARS,
    INVALID,
    Collector,
    join_key,
    scan_strings,
)

__all__ = ["MAX_SPEC_BYTES", "load_spec", "parse_spec"]

# A thousand services take well under a megabyte; past this it is not a spec.
MAX_SPEC_BYTES = 8 * 1024 * 1024

_TOML_WHERE = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def load_spec(path: str | Path) -> Spec:
    """Read, validate and convert the spec at ``path``. Raises :class:`SpecError`."""
    source = str(path)
    return parse_spec(_read(source, _shown(source)), source)


def _shown(source: str) -> str:
    # The name goes into one-line messages; a newline in a file name must not split them.
    return FORBIDDEN_CHARS.sub(lambda m: f"\\x{ord(m.group(0)):02x}", source)


def _fail(source: str, message: str) -> SpecError:
    return SpecError([SpecProblem(source, "", message)])


def _read(path: str, source: str) -> str:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat refuses it below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except ValueError as exc:  # a NUL in the path
        raise _fail(source, "is not a usable file name (contains NUL)") from exc
    except OSError as exc:
        raise _fail(source, _open_problem(path, exc)) from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _fail(source, "is a directory; expected a TOML spec file")
        if not stat.S_ISREG(st.st_mode):
            raise _fail(
                source,
                "is not a regular file (a FIFO, socket or device); expected a TOML spec file",
            )
        if st.st_size > MAX_SPEC_BYTES:
            raise _fail(
                source, f"is {st.st_size} bytes; a spec may be at most {MAX_SPEC_BYTES} bytes"
            )
        try:
            data = _read_bounded(fd)
        except OSError as exc:
            raise _fail(source, f"cannot be read ({exc.strerror or type(exc).__name__})") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_SPEC_BYTES:  # it grew between fstat and read
        raise _fail(source, f"is larger than {MAX_SPEC_BYTES} bytes, the most a spec may be")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(
            source, f"is not UTF-8 text (invalid byte at offset {exc.start}); TOML must be UTF-8"
        ) from exc
    return text.removeprefix("\ufeff")


def _read_bounded(fd: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= MAX_SPEC_BYTES:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _open_problem(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        link = Path(path)
        if link.is_symlink():
            try:
                target = str(link.readlink())
            except OSError:
                target = "?"
            return f"is a symlink to {target!r}, which does not exist"
        return "does not exist"
    if exc.errno == errno.ELOOP:
        return "is a symlink loop (too many levels of symbolic links)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    if exc.errno == errno.ENOTDIR:
        return "does not exist (a parent is not a directory)"
    if exc.errno == errno.ENAMETOOLONG:
        return "is not a usable file name (too long)"
    return f"cannot be opened ({exc.strerror or type(exc).__name__})"


def parse_spec(text: str, source: str) -> Spec:
    """Validate and convert spec ``text``; ``source`` names it in every problem."""
    spec_path, source = source, _shown(source)
    if len(text) > MAX_SPEC_BYTES:
        raise _fail(source, f"is larger than {MAX_SPEC_BYTES} bytes, the most a spec may be")
    if not text.strip():
        raise _fail(
            source, 'is empty; expected at least one [service.NAME] or [override."UNIT"] table'
        )
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, _toml_problem(str(exc))) from exc
    except RecursionError as exc:
        raise _fail(source, "TOML syntax error: arrays or tables nested too deeply") from exc
    except ValueError as exc:
        # tomllib lets int()'s digit limit through: a 5,000-digit integer literal.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(source, f"TOML value cannot be read: {reason[:120]}") from exc
    out = Collector(source)
    if _MAY_HOLD_FORBIDDEN.search(text):
        scan_strings(raw, out)
    converted = SPEC.check(raw, "", out)
    _cross_checks(raw, out)
    if out.problems or converted is INVALID:
        # Node checks can only fail after recording a problem, so this is never empty.
        raise SpecError(out.problems or [SpecProblem(source, "", "invalid spec")])
    assert isinstance(converted, dict)
    return _build(converted, spec_path)


def _toml_problem(message: str) -> str:
    m = _TOML_WHERE.search(message)
    what = message[: m.start()] if m else message
    if m and m.group(1):
        return f"TOML syntax error at line {m.group(1)}, column {m.group(2)}: {what}"
    if m:
        return f"TOML syntax error at the end of the file: {what}"
    return f"TOML syntax error: {what}"


# -- every string, at any depth: specnodes.scan_strings -----------------------------

# How a forbidden character can get into a parsed TOML string: an escape (\n, \r,
# \b, \f, \uXXXX, \UXXXXXXXX), a raw line break inside a multi-line string, or a
# character TOML allows raw (U+0085, U+2028, U+2029; surrogates only via parse_spec's
# str). Raw controls elsewhere are TOML syntax errors. Text with none of these cannot
# hold a forbidden character, so the walk over every string is skipped for it.
_MAY_HOLD_FORBIDDEN = re.compile(
    r'\\[bfnruU]|"""|\'\'\'|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]'
)


# -- rules that span keys and services -----------------------------------------------


def _tables(raw: Mapping[str, Any], section: str) -> Iterator[tuple[str, dict[str, Any]]]:
    value = raw.get(section)
    if isinstance(value, dict):
        for name, table in value.items():
            if isinstance(name, str) and isinstance(table, dict):
                yield name, table


def _str_list(value: object) -> list[tuple[int, str]]:
    """The usable strings of a list; one with a forbidden character is already reported."""
    if isinstance(value, list):
        return [
            (i, v)
            for i, v in enumerate(value)
            if isinstance(v, str) and not FORBIDDEN_CHARS.search(v)
        ]
    return []


def _cross_checks(raw: Mapping[str, Any], out: Collector) -> None:
    services = dict(_tables(raw, "service"))
    overrides = dict(_tables(raw, "override"))
    if not services and not overrides:
        out.add("", 'defines no [service.NAME] or [override."UNIT"]: there is nothing to render')
    _check_alert_refs(raw, services, overrides, out)
    _check_alert_on_targets(raw, services, overrides, out)
    for name, table in services.items():
        if table.get("dynamic_user") is True and "user" in table:
            out.add(
                join_key(join_key("service", name), "user"),
                "user and dynamic_user = true exclude each other: drop user, "
                "or set dynamic_user = false to run as an existing user",
            )
    owned = {f"{name}.service": name for name in services}
    for unit in overrides:
        if unit in owned:
            out.add(
                join_key("override", unit),
                f"{unit} is rendered from [service.{owned[unit]}]; an override is only for "
                "units the spec does not own",
            )
    _check_cycles(services, out)


def _check_alert_refs(
    raw: Mapping[str, Any],
    services: Mapping[str, dict[str, Any]],
    overrides: Mapping[str, dict[str, Any]],
    out: Collector,
) -> None:
    alerts = raw.get("alert")
    known = sorted(alerts) if isinstance(alerts, dict) else []

    def check(key: str, names: object) -> None:
        for i, name in _str_list(names):
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            defined = ", ".join(known) if known else "none"
            out.add(
                f"{key}[{i}]", f"unknown alert {name!r}{hint} (defined [alert.NAME]: {defined})"
            )

    defaults = raw.get("defaults")
    if isinstance(defaults, dict):
        check("defaults.alerts", defaults.get("alerts"))
    for section, tables in (("service", services), ("override", overrides)):
        for name, table in tables.items():
            if "alerts" in table:
                check(join_key(join_key(section, name), "alerts"), table["alerts"])


def _check_alert_on_targets(
    raw: Mapping[str, Any],
    services: Mapping[str, dict[str, Any]],
    overrides: Mapping[str, dict[str, Any]],
    out: Collector,
) -> None:
    """A flapping alert with no target to go to is a mistake, not a choice."""
    defaults = raw.get("defaults")
    inherited = defaults.get("alerts", []) if isinstance(defaults, dict) else []
    for section, tables in (("service", services), ("override", overrides)):
        for name, table in tables.items():
            if "alert_on" in table and not table.get("alerts", inherited):
                out.add(
                    join_key(join_key(section, name), "alert_on"),
                    "needs an alert target: this unit's alerts (or defaults.alerts) is empty",
                )


_EDGE_KEYS = ("requires", "binds_to", "after")


def _check_cycles(services: Mapping[str, dict[str, Any]], out: Collector) -> None:
    """Report each loop over requires/binds_to/after (and before, reversed) once."""
    unit_of = {name: f"{name}.service" for name in services}
    name_of = {unit: name for name, unit in unit_of.items()}
    # edges[a] = {b: key}: a needs b first; key says where the operator wrote it.
    edges: dict[str, dict[str, str]] = {name: {} for name in services}
    for name, table in services.items():
        base = join_key("service", name)
        for field in _EDGE_KEYS:
            for i, unit in _str_list(table.get(field)):
                if unit in name_of:
                    edges[name].setdefault(name_of[unit], f"{join_key(base, field)}[{i}]")
        for i, unit in _str_list(table.get("before")):
            if unit in name_of:
                edges[name_of[unit]].setdefault(name, f"{join_key(base, 'before')}[{i}]")
    for component in _strongly_connected(edges):
        start = min(component)
        if len(component) == 1 and start not in edges[start]:
            continue
        path = _cycle_path(start, component, edges)
        shown = " -> ".join(unit_of[n] for n in path)
        out.add(
            edges[path[0]][path[1]],
            f"dependency cycle: {shown} (requires, binds_to, after and before "
            "among the spec's services must not loop)",
        )


def _strongly_connected(edges: Mapping[str, Mapping[str, str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: a 1,000-service chain must not hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[set[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                result.append(component)
    return result


def _cycle_path(
    start: str, component: set[str], edges: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """A shortest loop from ``start`` back to itself inside its component (BFS)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(edges[node]):
                if child == start:
                    path = [start]
                    while node != start:
                        path.append(node)
                        node = previous[node]
                    return [start, *reversed(path[1:]), start]
                if child in component and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError("a strongly connected component always loops")  # pragma: no cover


# -- the typed model -----------------------------------------------------------------


def _build(converted: Mapping[str, Any], source: str) -> Spec:
    d = converted.get("defaults", {})
    defaults = Defaults(**d)
    alerts = {
        name: AlertConfig(name=name, type=cfg["type"], config={"name": name, **cfg})
        for name, cfg in converted.get("alert", {}).items()
    }
    services = {
        name: _service(name, table, defaults)
        for name, table in converted.get("service", {}).items()
    }
    overrides = {
        unit: _override(unit, table, defaults)
        for unit, table in converted.get("override", {}).items()
    }
    return Spec(
        path=source, defaults=defaults, services=services, overrides=overrides, alerts=alerts
    )


def _hardening(value: Mapping[str, Any], defaults: Defaults) -> Hardening:
    return Hardening(
        profile=value.get("profile", defaults.hardening),
        disable=value.get("disable", ()),
        read_write_paths=value.get("read_write_paths", ()),
        capabilities=tuple(value["capabilities"]) if "capabilities" in value else None,
    )


_SERVICE_SPECIAL = frozenset({"description", "exec", "environment", "hardening", "alerts"})


def _service(name: str, table: Mapping[str, Any], defaults: Defaults) -> Service:
    rest = {k: v for k, v in table.items() if k not in _SERVICE_SPECIAL}
    return Service(
        name=name,
        unit=f"{name}.service",
        description=table.get("description", f"{name} (unitgen)"),
        exec=table["exec"],
        environment=tuple(table.get("environment", {}).items()),
        hardening=_hardening(table.get("hardening", {}), defaults),
        alerts=table.get("alerts", defaults.alerts),
        **rest,
    )


def _override(unit: str, table: Mapping[str, Any], defaults: Defaults) -> Override:
    rest = {k: v for k, v in table.items() if k not in ("hardening", "alerts")}
    hardening = table.get("hardening")
    return Override(
        unit=unit,
        hardening=None if hardening is None else _hardening(hardening, defaults),
        alerts=table.get("alerts", defaults.alerts),
        **rest,
    )
