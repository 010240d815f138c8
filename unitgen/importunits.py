"""``unitgen import``: existing unit files (and their drop-ins) as spec entries.

Each ``NAME.service`` becomes ``[service.NAME]``. Carried over: the exec lines,
type, user and group, environment, directories, restart policy and start limit,
timeouts, resource limits, dependencies, the install target, and the unit's
sandboxing as a profile plus escape hatches. For the profile, each of strict,
standard and minimal is tried: a directive of that profile counts when the unit
sets it to that same value. The profile that covers the most of them wins. Its
directives the unit does not set go into ``disable``, and ``ReadWritePaths=``
and ``CapabilityBoundingSet=`` fill their escape hatches. A unit that sets none
of them gets ``hardening = "off"``.

Anything the spec cannot say is *listed*, with the line it came from and why:
keys the spec has no field for (``ExecStop=``, ``KillMode=``, conditions, ...),
values it cannot hold (``TimeoutStopSec=0``, an exec prefix like ``-`` or ``!!``,
a profile directive with another value), and whatever the spec's own validator
refuses. The last case is found by validating the entry with
``unitgen.specfile.parse_spec`` and moving each refused field to the list,
so "expressible" means what the spec says, not a guess made here.

Parsing follows systemd's unit-file rules where they matter here: sections,
``#``/``;`` comments, backslash continuation lines, an empty assignment
resetting a list, later files (drop-ins, in name order; ``/etc`` over ``/run``
over the unit's own directory for the same name) overriding earlier ones.
Exec lines are split into words by shell rules (``shlex``), which agree with
systemd's for the quoting real units use. ``$VAR`` expansion and ``%``
specifiers are not carried (the renderer writes both literally) and are listed.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from unitgen.errors import SpecError, UsageError
from unitgen.hardening import PROFILES, HardeningProfile
from unitgen.quantities import QuantityError, parse_duration
from unitgen.specvalues import CAPABILITIES

__all__ = ["ImportedUnit", "Unrepresented", "import_units", "parse_unit_files", "to_toml"]

DROPIN_DIRS = (Path("/etc/systemd/system"), Path("/run/systemd/system"))
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}
_SERVICE_TYPES = {"simple", "exec", "notify", "forking"}
_RESTART = {"no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"}

# unit key -> spec field, for the keys whose value is a list of unit names
_DEPENDENCIES = {
    "Requires": "requires",
    "Wants": "wants",
    "After": "after",
    "Before": "before",
    "BindsTo": "binds_to",
    "PartOf": "part_of",
}
_DIRECTORIES = {
    "StateDirectory": "state_directory",
    "RuntimeDirectory": "runtime_directory",
    "LogsDirectory": "logs_directory",
    "CacheDirectory": "cache_directory",
    "ConfigurationDirectory": "configuration_directory",
}
_TIMEOUTS = {
    "TimeoutStartSec": "timeout_start",
    "TimeoutStopSec": "timeout_stop",
    "WatchdogSec": "watchdog",
}
_LIMITS = {
    "MemoryMax": "memory_max",
    "MemoryHigh": "memory_high",
    "CPUQuota": "cpu_quota",
    "TasksMax": "tasks_max",
    "LimitNOFILE": "nofile",
}
_PROFILE_NAMES = frozenset(d.name for p in PROFILES.values() for d in p)
# What DefaultDependencies=yes orders a service after (systemd.service(5)).
_DEFAULT_AFTER = frozenset({"sysinit.target", "basic.target"})
# systemd's old name for ReadWritePaths=.
_READ_WRITE = ("ReadWritePaths", "ReadWriteDirectories")


@dataclass(frozen=True)
class Unrepresented:
    """A line of the unit the spec entry does not carry, and why."""

    line: str  # "Section: Key=value"
    why: str


@dataclass
class ImportedUnit:
    unit: str
    service: str  # the spec's [service.NAME]
    files: list[str]
    entry: dict[str, object]  # the spec table, as TOML values
    unrepresented: list[Unrepresented] = field(default_factory=list)
    # spec field -> the unit lines it came from (to name them when the spec refuses it)
    sources: dict[str, list[str]] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "unit": self.unit,
            "service": self.service,
            "files": self.files,
            "entry": self.entry,
            "unrepresented": [{"line": u.line, "why": u.why} for u in self.unrepresented],
        }


# -- reading unit files -----------------------------------------------------------------


Assignments = dict[str, dict[str, list[str]]]  # section -> key -> values in order


def _logical_lines(text: str) -> Iterable[str]:
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if pending and line[:1] in ("#", ";"):
            continue  # comments inside a continuation are skipped, as systemd does
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def parse_unit_text(text: str, into: Assignments, where: str) -> None:
    """Add the assignments of one unit file (or drop-in) to ``into``."""
    section = ""
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            into.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        if not sep or not section:
            raise UsageError(f"{where}: expected 'Key=value' inside a [Section], got {line!r}")
        key, value = key.strip(), value.strip()
        values = into.setdefault(section, {}).setdefault(key, [])
        if value == "":
            values.clear()  # an empty assignment resets the list
        else:
            values.append(value)


def unit_files(path: Path) -> list[Path]:
    """``path`` and its drop-ins: ``PATH.d/*.conf`` beside it, then /run's and /etc's,
    by file name, a later directory's file replacing an earlier one of the same name."""
    by_name: dict[str, Path] = {}
    for directory in (
        path.parent / f"{path.name}.d",
        *(d / f"{path.name}.d" for d in DROPIN_DIRS[::-1]),
    ):
        if directory.is_dir():
            for conf in directory.glob("*.conf"):
                by_name[conf.name] = conf
    return [path, *(by_name[name] for name in sorted(by_name))]


def parse_unit_files(path: Path) -> tuple[Assignments, list[Path]]:
    files = unit_files(path)
    into: Assignments = {}
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{file}: cannot read it: {exc}") from exc
        parse_unit_text(text, into, str(file))
    return into, files


# -- the mapping --------------------------------------------------------------------------


class _Builder:
    def __init__(self, unit: str, assignments: Assignments) -> None:
        self.unit = unit
        self.a = assignments
        self.entry: dict[str, object] = {}
        self.unrepresented: list[Unrepresented] = []
        self.sources: dict[str, list[str]] = {}
        self.used: set[tuple[str, str]] = set()

    def values(self, section: str, key: str) -> list[str]:
        self.used.add((section, key))
        return list(self.a.get(section, {}).get(key, []))

    def last(self, section: str, key: str) -> str | None:
        values = self.values(section, key)
        return values[-1] if values else None

    def put(self, name: str, value: object, *lines: str) -> None:
        self.entry[name] = value
        self.sources.setdefault(name, []).extend(lines)

    def refuse(self, line: str, why: str) -> None:
        self.unrepresented.append(Unrepresented(line, why))

    def argv(self, section: str, key: str, value: str) -> list[str] | None:
        line = f"{section}: {key}={value}"
        text = value
        prefix = re.match(r"[-@:+!]+", text)
        if prefix:
            self.refuse(
                line,
                f"the exec prefix {prefix.group(0)!r} has no spec equivalent; carried without it",
            )
            text = text[prefix.end() :]
        try:
            words = shlex.split(text)
        except ValueError as exc:
            self.refuse(line, f"cannot split into words: {exc}")
            return None
        if not words:
            return None
        if any("$" in w for w in words):
            self.refuse(line, "$VAR expansion: the spec's exec is literal (rendered with $$)")
        if any("%" in w for w in words):
            self.refuse(line, "% specifiers: the spec's exec is literal (rendered with %%)")
        if ";" in words:
            self.refuse(line, "several commands on one line (';') are not carried")
            words = words[: words.index(";")]
        return words

    def build(self) -> None:
        self._unit_section()
        self._service_section()
        self._install_section()
        self._hardening()
        for section, keys in self.a.items():
            for key, values in keys.items():
                if (section, key) in self.used:
                    continue
                for value in values:
                    self.refuse(f"{section}: {key}={value}", "the spec has no key for it")

    def _unit_section(self) -> None:
        description = self.last("Unit", "Description")
        if description is not None:
            self.put("description", description, f"Unit: Description={description}")
        # The rendered unit gets systemd's default dependencies (After=sysinit.target
        # basic.target): an early-boot unit's Before= on those would be a cycle.
        defaults_off = (self.a.get("Unit", {}).get("DefaultDependencies") or ["yes"])[-1]
        early = defaults_off.lower() in _FALSE
        for key, name in _DEPENDENCIES.items():
            units: list[str] = []
            for value in self.values("Unit", key):
                for target in value.split():
                    if early and key == "Before" and target in _DEFAULT_AFTER:
                        self.refuse(
                            f"Unit: Before={target}",
                            "DefaultDependencies=no is not carried, and with the default "
                            f"After={target} this would be an ordering cycle",
                        )
                        continue
                    units.append(target)
            if units:
                self.put(name, list(dict.fromkeys(units)), f"Unit: {key}=")
        for key in ("StartLimitBurst", "StartLimitIntervalSec"):
            self.used.add(("Unit", key))

    def _service_section(self) -> None:
        s = "Service"
        starts = self.values(s, "ExecStart")
        if len(starts) > 1:
            for value in starts[1:]:
                self.refuse(f"{s}: ExecStart={value}", "the spec has one ExecStart=")
        if starts:
            argv = self.argv(s, "ExecStart", starts[0])
            if argv:
                self.put("exec", argv, f"{s}: ExecStart={starts[0]}")
        pre = [a for v in self.values(s, "ExecStartPre") if (a := self.argv(s, "ExecStartPre", v))]
        if pre:
            self.put("exec_start_pre", pre, f"{s}: ExecStartPre=")
        reloads = self.values(s, "ExecReload")
        if reloads:
            argv = self.argv(s, "ExecReload", reloads[0])
            if argv:
                self.put("exec_reload", argv, f"{s}: ExecReload={reloads[0]}")
            for value in reloads[1:]:
                self.refuse(f"{s}: ExecReload={value}", "the spec has one ExecReload=")
        kind = self.last(s, "Type")
        if kind is not None:
            if kind in _SERVICE_TYPES:
                self.put("type", kind, f"{s}: Type={kind}")
            else:
                self.refuse(
                    f"{s}: Type={kind}", "the spec's type is simple, exec, notify or forking"
                )
        for key, name in (
            ("User", "user"),
            ("Group", "group"),
            ("WorkingDirectory", "working_directory"),
            ("PIDFile", "pidfile"),
        ):
            found = self.last(s, key)
            if found is not None:
                self.put(name, found, f"{s}: {key}={found}")
        dynamic = self.last(s, "DynamicUser")
        if dynamic is not None:
            self.put("dynamic_user", dynamic.lower() in _TRUE, f"{s}: DynamicUser={dynamic}")
        env: dict[str, str] = {}
        for value in self.values(s, "Environment"):
            try:
                words = shlex.split(value)
            except ValueError as exc:
                self.refuse(f"{s}: Environment={value}", f"cannot split into words: {exc}")
                continue
            for word in words:
                key, sep, val = word.partition("=")
                if sep:
                    env[key] = val
                else:
                    self.refuse(f"{s}: Environment={value}", f"{word!r} is not NAME=value")
        if env:
            self.put("environment", env, f"{s}: Environment=")
        files = self.values(s, "EnvironmentFile")
        if files:
            self.put("environment_files", files, f"{s}: EnvironmentFile=")
        for key, name in _DIRECTORIES.items():
            dirs: list[str] = []
            for value in self.values(s, key):
                dirs.extend(value.split())
            if dirs:
                self.put(name, dirs, f"{s}: {key}=")
        for key, name in _TIMEOUTS.items():
            span = self.last(s, key)
            if span is not None:
                self._duration(name, s, key, span)
        self._restart()
        limits: dict[str, object] = {}
        for key, name in _LIMITS.items():
            limit = self.last(s, key)
            if limit is None:
                continue
            value = limit
            if key in ("TasksMax", "LimitNOFILE") and value.isdigit():
                limits[name] = int(value)
            elif key in ("TasksMax", "LimitNOFILE"):
                self.refuse(f"{s}: {key}={value}", "the spec takes a plain number here")
                continue
            else:
                limits[name] = value
            self.sources.setdefault("limits", []).append(f"{s}: {key}={value}")
        if limits:
            self.entry["limits"] = limits

    def _duration(self, name: str, section: str, key: str, value: str) -> None:
        line = f"{section}: {key}={value}"
        try:
            parse_duration(value)
        except QuantityError as exc:
            self.refuse(line, f"not a duration the spec takes ({exc})")
            return
        self.put(name, value, line)

    def _restart(self) -> None:
        s = "Service"
        policy = self.last(s, "Restart") or "no"  # systemd's default
        restart: dict[str, object] = {}
        lines: list[str] = []
        if policy in _RESTART:
            restart["policy"] = policy
            lines.append(f"{s}: Restart={policy}")
        else:
            self.refuse(f"{s}: Restart={policy}", "not a restart policy the spec knows")
        delay = self.last(s, "RestartSec")
        burst = self.last("Unit", "StartLimitBurst") or self.last(s, "StartLimitBurst")
        interval = self.last("Unit", "StartLimitIntervalSec") or self.last(
            s, "StartLimitIntervalSec"
        )
        self.used.update({(s, "StartLimitBurst"), (s, "StartLimitIntervalSec")})
        if delay is not None:
            restart["delay"] = delay
            lines.append(f"{s}: RestartSec={delay}")
        if burst is not None:
            restart["burst"] = int(burst) if burst.isdigit() else burst
            lines.append(f"StartLimitBurst={burst}")
        if interval is not None:
            restart["interval"] = interval
            lines.append(f"StartLimitIntervalSec={interval}")
        self.put("restart", restart, *lines)

    def _install_section(self) -> None:
        targets: list[str] = []
        for value in self.values("Install", "WantedBy"):
            targets.extend(value.split())
        if targets:
            self.put("wanted_by", list(dict.fromkeys(targets)), "Install: WantedBy=")

    def _hardening(self) -> None:
        s = "Service"
        section = self.a.get(s, {})
        # An empty assignment (CapabilityBoundingSet=) is a value too: "none".
        set_by_unit = {k: v or [""] for k, v in section.items() if k in _PROFILE_NAMES}

        def same(name: str, profile_values: list[str]) -> bool:
            ours = sorted(_normal(name, v) for v in set_by_unit.get(name, []))
            return ours == sorted(_normal(name, v) for v in profile_values)

        best: tuple[int, HardeningProfile, list[str]] = (0, "off", [])
        candidates: tuple[HardeningProfile, ...] = ("strict", "standard", "minimal")
        for profile in candidates:
            wanted: dict[str, list[str]] = {}
            for d in PROFILES[profile]:
                wanted.setdefault(d.name, []).append(d.value)
            matched = [n for n, vals in wanted.items() if n in set_by_unit and same(n, vals)]
            if len(matched) > best[0]:
                best = (len(matched), profile, matched)
        _, profile, matched = best
        hard: dict[str, object] = {"profile": profile}
        lines = [f"{s}: {k}=" for k in matched]
        if profile != "off":
            names = list(dict.fromkeys(d.name for d in PROFILES[profile]))
            disable = [n for n in names if n not in matched and n != "CapabilityBoundingSet"]
            hard["disable"] = disable
        for name in matched:
            self.used.add((s, name))
        caps_values = section.get("CapabilityBoundingSet", [])
        if "CapabilityBoundingSet" in section and "CapabilityBoundingSet" not in matched:
            self.used.add((s, "CapabilityBoundingSet"))
            caps = " ".join(caps_values).split()
            if caps and all(c in CAPABILITIES for c in caps):
                hard["capabilities"] = sorted(set(caps))
                lines.append(f"{s}: CapabilityBoundingSet=")
            else:
                for value in caps_values:
                    self.refuse(
                        f"{s}: CapabilityBoundingSet={value}",
                        "the spec keeps a list of capabilities (no '~' inversion)",
                    )
        elif profile != "off" and "CapabilityBoundingSet" not in matched:
            # The profile's bounding set must not replace the unit's "keep all".
            disable_list = hard["disable"]
            assert isinstance(disable_list, list)
            disable_list.append("CapabilityBoundingSet")
        if (
            profile == "strict"
            and not self.entry.get("user")
            and not self.entry.get("dynamic_user")
        ):
            hard.setdefault("disable", [])
            disable_list = hard["disable"]
            assert isinstance(disable_list, list)
            disable_list.append("DynamicUser")  # the renderer's automatic one: not in the unit
        paths: list[str] = []
        for key in _READ_WRITE:
            for value in self.values(s, key):
                for word in value.split():
                    if word.startswith("-"):
                        self.refuse(
                            f"{s}: {key}={value}",
                            f"the '-' of {word} (ignore if missing) cannot be said in "
                            "read_write_paths; carried without it",
                        )
                        word = word[1:]
                    paths.append(word)
        if paths:
            hard["read_write_paths"] = list(dict.fromkeys(paths))
            lines.append(f"{s}: ReadWritePaths=")
        for name, values in set_by_unit.items():
            if name in matched or (name == "CapabilityBoundingSet" and "capabilities" in hard):
                continue
            self.used.add((s, name))
            for value in values:
                why = (
                    f"the {profile} profile sets another value or none"
                    if profile != "off"
                    else "no profile matches the unit's sandboxing"
                )
                self.refuse(f"{s}: {name}={value}", why)
        self.put("hardening", hard, *lines)


def _normal(name: str, value: str) -> str:
    v = value.strip()
    if v.lower() in _TRUE:
        return "yes"
    if v.lower() in _FALSE:
        return "no"
    if name in ("RestrictAddressFamilies", "SystemCallFilter", "CapabilityBoundingSet"):
        invert = v.startswith("~")
        words = sorted(v.lstrip("~").split())
        return ("~" if invert else "") + " ".join(words)
    return v


# -- validation by the spec itself and output ----------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def entry_toml(imported: ImportedUnit) -> str:
    lines = [f"[service.{_key(imported.service)}]"]
    lines.append(f"# imported from {', '.join(imported.files)}")
    for u in imported.unrepresented:
        lines.append(f"# not carried as is: {u.line}  ({u.why})".replace("\n", " "))
    for name, value in imported.entry.items():
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def to_toml(units: Iterable[ImportedUnit]) -> str:
    return "\n".join(entry_toml(u) for u in units)


def _settle_with_spec(imported: ImportedUnit) -> None:
    """Move every field the spec refuses to the unrepresented list, with its message."""
    from unitgen.specfile import parse_spec

    prefix = f"service.{imported.service}."
    for _ in range(len(imported.entry) + 1):
        try:
            parse_spec(entry_toml(imported), f"{imported.unit} (imported)")
        except SpecError as exc:
            refused = False
            for problem in exc.problems:
                key = problem.key.removeprefix(prefix).split(".", 1)[0].split("[", 1)[0]
                if key in imported.entry and key != "exec":
                    imported.entry.pop(key)
                    for line in imported.sources.get(key, [key]) or [key]:
                        imported.unrepresented.append(
                            Unrepresented(line, f"the spec refuses it: {problem.message}")
                        )
                    refused = True
            if not refused:
                raise UsageError(
                    f"{imported.unit}: cannot be a spec entry: {exc.problems[0]}"
                ) from exc
        else:
            return
    raise UsageError(f"{imported.unit}: cannot be a spec entry")  # pragma: no cover


def import_unit(path: Path) -> ImportedUnit:
    if not path.is_file():
        raise UsageError(f"{path}: no such unit file")
    unit = path.name
    if not unit.endswith(".service") or "@" in unit:
        raise UsageError(f"{path}: expected a plain NAME.service unit file (no templates)")
    assignments, files = parse_unit_files(path)
    builder = _Builder(unit, assignments)
    builder.build()
    if "exec" not in builder.entry:
        raise UsageError(f"{path}: no ExecStart= the spec can carry")
    imported = ImportedUnit(
        unit=unit,
        service=unit.removesuffix(".service"),
        files=[str(f) for f in files],
        entry=builder.entry,
        unrepresented=builder.unrepresented,
        sources=builder.sources,
    )
    _settle_with_spec(imported)
    return imported


def import_units(paths: Iterable[Path]) -> list[ImportedUnit]:
    return [import_unit(p) for p in paths]
