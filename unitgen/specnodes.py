"""The building blocks of the spec's declarative key table.

Over 800 lines on purpose: the node kinds share the Collector protocol and
the schema and documentation walks, and are easiest to keep consistent side by side.

Each node knows three things about one place in the spec: how to check and
convert a raw TOML value (collecting every problem into a :class:`Collector`
instead of stopping), what JSON Schema describes it, and how to name its type
in the documentation. ``unitgen.speckeys`` assembles the table from these
nodes; the validator (``unitgen.specfile``) and the JSON Schema
(``unitgen.schema``) are both walks over that one table, so they cannot
disagree about which keys exist.

A node returns the converted value, or :data:`INVALID` once it has recorded
at least one problem. Containers keep checking their other members after a
failure so that every problem in the file is reported at once.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from unitgen.errors import SpecProblem
from unitgen.quantities import (
    DURATION_PATTERN,
    PERCENT_PATTERN,
    SIZE_PATTERN,
    QuantityError,
    parse_duration,
    parse_percent,
    parse_size,
)

__all__ = [
    "FORBIDDEN_CHARS",
    "INVALID",
    "Argv",
    "Boolean",
    "ByType",
    "Choice",
    "Collector",
    "Computed",
    "Duration",
    "Field",
    "Integer",
    "ListOf",
    "MapOf",
    "Node",
    "Number",
    "Percent",
    "SizeOrPercent",
    "Table",
    "Tagged",
    "Text",
    "ThresholdNode",
    "describe",
    "did_you_mean",
    "forbidden_char_problem",
    "join_key",
    "scan_strings",
]


class _Invalid:
    _instance: _Invalid | None = None

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()

# Characters no spec string may hold. A newline, carriage return or NUL would
# end a line (or a C string) in a unit file and let a value inject a directive
# or a section; the other C0 controls, DEL and the Unicode line separators have
# no legitimate use in a unit and confuse every tool that prints one. A lone
# surrogate cannot come from a UTF-8 file but can reach parse_spec() as text,
# and could not be written out again.
FORBIDDEN_CHARS: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")
_CHAR_NAMES = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL byte"}


def forbidden_char_problem(text: str) -> str | None:
    m = FORBIDDEN_CHARS.search(text)
    if m is None:
        return None
    ch = m.group(0)
    if "\ud800" <= ch <= "\udfff":
        name = f"the lone surrogate U+{ord(ch):04X}"
    else:
        name = _CHAR_NAMES.get(ch, f"the control character U+{ord(ch):04X}")
    return (
        f"contains {name} at position {m.start()}: values must stay on one line "
        "of a unit file, so newlines, carriage returns, NUL and control characters are refused"
    )


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join_key(parent: str, child: str) -> str:
    """``service.api`` + ``restart`` -> ``service.api.restart``; TOML-quotes odd keys."""
    if _BARE_KEY.fullmatch(child):
        part = child
    else:
        # json escapes C0 controls but not DEL or the Unicode line separators, and a
        # key path must never break the one-line-per-problem error output.
        part = FORBIDDEN_CHARS.sub(
            lambda m: f"\\u{ord(m.group(0)):04x}", json.dumps(child, ensure_ascii=False)
        )
    return f"{parent}.{part}" if parent else part


def did_you_mean(value: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``candidates``, or nothing."""
    close = difflib.get_close_matches(value, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe(value: object) -> str:
    """A value as the operator wrote it, short: ``the string 'soon'``, ``the boolean true``."""
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else "a huge number"
        return f"the integer {text}"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        text = repr(value)
        return f"the string {text if len(text) <= 60 else text[:57] + '...'}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a TOML {type(value).__name__}"


@dataclass
class Collector:
    """Problems found so far, for one file."""

    file: str
    problems: list[SpecProblem] = field(default_factory=list)

    def add(self, key: str, message: str) -> None:
        self.problems.append(SpecProblem(self.file, key, message))

    def expected(self, key: str, what: str, value: object) -> None:
        self.add(key, f"expected {what}, got {describe(value)}")


def scan_strings(raw: object, out: Collector, key: str = "") -> None:
    """Report a newline, CR, NUL or control character in any key or string value.

    Run before the node checks: :class:`Text` and its kin refuse such a value
    without a message of their own, so that it is reported once, here.
    """
    stack: list[tuple[str, object]] = [(key, raw)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            problem = forbidden_char_problem(value)
            if problem is not None:
                out.add(where, problem)
        elif isinstance(value, dict):
            for name, child in value.items():
                child_key = join_key(where, name)
                problem = forbidden_char_problem(name)
                if problem is not None:
                    out.add(child_key, "the key " + problem)
                stack.append((child_key, child))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(value))


JSON = dict[str, Any]


class Node:
    """One kind of spec value. Subclasses set ``type_doc`` for the reference."""

    type_doc: str = "value"

    def check(self, value: object, key: str, out: Collector) -> object:
        raise NotImplementedError

    def schema(self) -> JSON:
        raise NotImplementedError


# -- scalars -------------------------------------------------------------------------

Checker = Callable[[str], str | None]


class Text(Node):
    """A string, optionally checked by ``rule`` (returns "expected ..." text or None)."""

    def __init__(
        self,
        rule: Checker | None = None,
        *,
        type_doc: str = "string",
        pattern: str | None = None,
        min_length: int = 0,
        max_length: int = 4096,
    ) -> None:
        self.rule = rule
        self.type_doc = type_doc
        self.pattern = pattern
        self.min_length = min_length
        self.max_length = max_length

    def check(self, value: object, key: str, out: Collector) -> object:
        if not isinstance(value, str):
            what = "a string" if self.type_doc == "string" else f"a string ({self.type_doc})"
            out.expected(key, what, value)
            return INVALID
        if FORBIDDEN_CHARS.search(value):
            return INVALID  # the pre-scan in specfile reported it, at this very key
        if len(value) < self.min_length:
            out.add(key, f"expected {self.type_doc}, got an empty string")
            return INVALID
        if len(value) > self.max_length:
            out.add(key, f"expected at most {self.max_length} characters, got {len(value)}")
            return INVALID
        if self.rule is not None:
            problem = self.rule(value)
            if problem is not None:
                out.add(key, f"expected {problem}")
                return INVALID
        return value

    def schema(self) -> JSON:
        s: JSON = {"type": "string"}
        if self.min_length:
            s["minLength"] = self.min_length
        s["maxLength"] = self.max_length
        if self.pattern is not None:
            s["pattern"] = self.pattern
        return s


class Choice(Node):
    def __init__(self, values: Sequence[str]) -> None:
        self.values = tuple(values)
        self.type_doc = " | ".join(f'"{v}"' for v in self.values)

    def check(self, value: object, key: str, out: Collector) -> object:
        if isinstance(value, str) and value in self.values:
            return value
        if isinstance(value, str) and FORBIDDEN_CHARS.search(value):
            return INVALID
        hint = did_you_mean(value, self.values) if isinstance(value, str) else ""
        out.add(key, f"expected one of {', '.join(self.values)}, got {describe(value)}{hint}")
        return INVALID

    def schema(self) -> JSON:
        return {"type": "string", "enum": list(self.values)}


class Boolean(Node):
    type_doc = "boolean"

    def check(self, value: object, key: str, out: Collector) -> object:
        if isinstance(value, bool):
            return value
        out.expected(key, "true or false", value)
        return INVALID

    def schema(self) -> JSON:
        return {"type": "boolean"}


class Integer(Node):
    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.type_doc = "integer" + _range_doc(minimum, maximum)

    def check(self, value: object, key: str, out: Collector) -> object:
        # bool is an int subclass in Python; in a spec `true` is never a count.
        if isinstance(value, bool) or not isinstance(value, int):
            out.expected(key, "an integer", value)
            return INVALID
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            out.expected(key, "an integer" + _range_doc(self.minimum, self.maximum), value)
            return INVALID
        return value

    def schema(self) -> JSON:
        s: JSON = {"type": "integer"}
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        return s


class Number(Node):
    """A float (an integer is accepted and widened)."""

    def __init__(
        self, minimum: float | None = None, maximum: float | None = None, *, above: bool = False
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.above = above  # exclusive minimum
        self.type_doc = "number" + _range_doc(minimum, maximum, above=above)

    def check(self, value: object, key: str, out: Collector) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.expected(key, "a number", value)
            return INVALID
        number = float(value) if abs(value) < 1e300 else math.inf
        low_ok = self.minimum is None or (
            number > self.minimum if self.above else number >= self.minimum
        )
        high_ok = self.maximum is None or number <= self.maximum
        if not math.isfinite(number) or not low_ok or not high_ok:
            out.expected(
                key,
                "a finite number" + _range_doc(self.minimum, self.maximum, above=self.above),
                value,
            )
            return INVALID
        return number

    def schema(self) -> JSON:
        s: JSON = {"type": "number"}
        if self.minimum is not None:
            s["exclusiveMinimum" if self.above else "minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        return s


def _range_doc(minimum: float | None, maximum: float | None, *, above: bool = False) -> str:
    if minimum is not None and maximum is not None:
        return (
            f" from {minimum:g} to {maximum:g}"
            if not above
            else f" above {minimum:g}, at most {maximum:g}"
        )
    if minimum is not None:
        return f" above {minimum:g}" if above else f" of at least {minimum:g}"
    if maximum is not None:
        return f" of at most {maximum:g}"
    return ""


class Duration(Node):
    """A systemd time span ("5s", "1min 30s", or a number of seconds) -> float seconds."""

    def __init__(
        self, *, positive: bool = False, maximum: float | None = None, minimum: float | None = None
    ) -> None:
        self.positive = positive
        self.maximum = maximum
        self.minimum = minimum
        self.type_doc = "duration"

    def check(self, value: object, key: str, out: Collector) -> object:
        if isinstance(value, str) and FORBIDDEN_CHARS.search(value):
            return INVALID
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            out.expected(key, "a duration like '5s' or '1min 30s'", value)
            return INVALID
        try:
            seconds = parse_duration(value)
        except QuantityError as exc:
            out.add(key, f"expected {exc}")
            return INVALID
        if self.positive and seconds <= 0:
            out.expected(key, "a duration above zero", value)
            return INVALID
        if self.maximum is not None and seconds > self.maximum:
            out.expected(key, f"a duration of at most {self.maximum:g}s", value)
            return INVALID
        if self.minimum is not None and seconds < self.minimum:
            out.expected(key, f"a duration of at least {self.minimum:g}s", value)
            return INVALID
        return seconds

    def schema(self) -> JSON:
        number: JSON = {"type": "number"}
        number["exclusiveMinimum" if self.positive else "minimum"] = 0
        if self.maximum is not None:
            number["maximum"] = self.maximum
        if self.minimum is not None:
            number["minimum"] = self.minimum
        return {"anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, number]}


class SizeOrPercent(Node):
    """A byte size ("512M", "1G", 1048576) -> int; with ``percent``, "80%" is kept as text."""

    def __init__(self, *, percent: bool = False, positive: bool = True) -> None:
        self.percent = percent
        self.positive = positive
        self.type_doc = "size or percentage" if percent else "size"

    def _what(self) -> str:
        return "a size like '512M' or '1G'" + (
            " or a percentage like '80%'" if self.percent else ""
        )

    def check(self, value: object, key: str, out: Collector) -> object:
        if isinstance(value, str) and FORBIDDEN_CHARS.search(value):
            return INVALID
        if isinstance(value, bool) or not isinstance(value, str | int):
            out.expected(key, self._what(), value)
            return INVALID
        if isinstance(value, str) and value.strip().endswith("%"):
            if not self.percent:
                out.add(
                    key,
                    "expected a size like '512M' or '1G' (no percentage here), "
                    f"got {describe(value)}",
                )
                return INVALID
            try:
                return f"{parse_percent(value):g}%"
            except QuantityError as exc:
                out.add(key, f"expected {exc}")
                return INVALID
        try:
            size = parse_size(value)
        except QuantityError as exc:
            message = str(exc)
            if self.percent:
                message = message.replace("'1G'", "'1G' or a percentage like '80%'", 1)
            out.add(key, f"expected {message}")
            return INVALID
        if self.positive and size == 0:
            out.expected(key, self._what() + " above zero", value)
            return INVALID
        return size

    def schema(self) -> JSON:
        options: list[JSON] = [
            {"type": "string", "pattern": SIZE_PATTERN},
            {"type": "integer", "minimum": 1 if self.positive else 0},
        ]
        if self.percent:
            options.append({"type": "string", "pattern": PERCENT_PATTERN})
        return {"anyOf": options}


class Percent(Node):
    """ "80%" -> "80%" (normalised). ``maximum`` None allows CPUQuota's 200% and beyond."""

    def __init__(self, maximum: float | None = 100.0) -> None:
        self.maximum = maximum
        self.type_doc = "percentage"

    def check(self, value: object, key: str, out: Collector) -> object:
        if isinstance(value, str) and FORBIDDEN_CHARS.search(value):
            return INVALID
        if not isinstance(value, str):
            out.expected(key, "a percentage like '80%'", value)
            return INVALID
        try:
            return f"{parse_percent(value, maximum=self.maximum):g}%"
        except QuantityError as exc:
            out.add(key, f"expected {exc}")
            return INVALID

    def schema(self) -> JSON:
        return {"type": "string", "pattern": PERCENT_PATTERN}


class ThresholdNode(Node):
    """A floor: "10%", "1G" (or a count, for inodes), or a list of one of each."""

    def __init__(self, build: Callable[[float | None, int | None], object], *, sizes: bool) -> None:
        self.build = build
        self.sizes = sizes
        self.type_doc = "threshold"
        self._what = "a percentage like '10%' or " + (
            "a size like '1G'" if sizes else "a count of at least 1"
        )

    def _one(self, value: object, key: str, out: Collector) -> tuple[str, float | int] | None:
        if isinstance(value, str) and FORBIDDEN_CHARS.search(value):
            return None  # reported by the pre-scan
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                return ("percent", parse_percent(value))
            except QuantityError as exc:
                out.add(key, f"expected {exc}")
                return None
        absolute = 0
        if isinstance(value, bool):
            pass
        elif self.sizes and isinstance(value, str | int):
            try:
                absolute = parse_size(value)
            except QuantityError:
                absolute = 0  # the message below names both spellings
        elif isinstance(value, int):
            absolute = value
        if absolute > 0:
            return ("absolute", absolute)
        out.expected(key, self._what, value)
        return None

    def check(self, value: object, key: str, out: Collector) -> object:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not 1 <= len(value) <= 2:
            out.add(
                key, f"expected one or two floors (a percentage and an absolute), got {len(value)}"
            )
            return INVALID
        found: dict[str, float | int] = {}
        ok = True
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if isinstance(value, list) else key
            got = self._one(item, where, out)
            if got is None:
                ok = False
            elif got[0] in found:
                out.add(where, "expected at most one percentage and one absolute floor")
                ok = False
            else:
                found[got[0]] = got[1]
        if not ok:
            return INVALID
        pct = found.get("percent")
        absolute = found.get("absolute")
        return self.build(
            None if pct is None else float(pct), None if absolute is None else int(absolute)
        )

    def schema(self) -> JSON:
        one: JSON = {
            "anyOf": [
                {"type": "string", "pattern": PERCENT_PATTERN},
                *(
                    SizeOrPercent().schema()["anyOf"]
                    if self.sizes
                    else [{"type": "integer", "minimum": 1}]
                ),
            ]
        }
        return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": 2}]}


# -- containers ----------------------------------------------------------------------


class ListOf(Node):
    """An array -> tuple. With ``one_or_many``, a single item stands for a list of one."""

    def __init__(
        self,
        item: Node,
        *,
        min_items: int = 0,
        max_items: int = 4096,
        one_or_many: bool = False,
        unique: bool = False,
    ) -> None:
        self.item = item
        self.min_items = min_items
        self.max_items = max_items
        self.one_or_many = one_or_many
        self.unique = unique
        self.type_doc = f"list of {item.type_doc}" + (" (or one)" if one_or_many else "")

    def check(self, value: object, key: str, out: Collector) -> object:
        if self.one_or_many and not isinstance(value, list):
            result = self.item.check(value, key, out)
            return INVALID if result is INVALID else (result,)
        if not isinstance(value, list):
            out.expected(key, f"an array of {self.item.type_doc}", value)
            return INVALID
        if len(value) < self.min_items:
            out.add(key, f"expected at least {self.min_items} item(s), got {len(value)}")
            return INVALID
        if len(value) > self.max_items:
            out.add(key, f"expected at most {self.max_items} items, got {len(value)}")
            return INVALID
        results = [self.item.check(v, f"{key}[{i}]", out) for i, v in enumerate(value)]
        if any(r is INVALID for r in results):
            return INVALID
        if self.unique:
            seen: set[object] = set()
            for i, r in enumerate(results):
                if r in seen:
                    out.add(f"{key}[{i}]", f"duplicate entry {describe(value[i])}")
                    return INVALID
                seen.add(r)
        return tuple(results)

    def schema(self) -> JSON:
        arr: JSON = {"type": "array", "items": self.item.schema(), "maxItems": self.max_items}
        if self.min_items:
            arr["minItems"] = self.min_items
        if self.unique:
            arr["uniqueItems"] = True
        if self.one_or_many:
            return {"anyOf": [self.item.schema(), arr]}
        return arr


class Argv(Node):
    """A command: a non-empty array of strings whose first element is an absolute path."""

    type_doc = "argv"

    def __init__(self, path_rule: Checker) -> None:
        self.path_rule = path_rule
        self._args = ListOf(Text(), min_items=1)

    def check(self, value: object, key: str, out: Collector) -> object:
        if isinstance(value, list) and not value:
            out.add(
                key,
                'expected a command as a non-empty array like ["/usr/bin/prog", "--flag"], '
                "got an empty array",
            )
            return INVALID
        if isinstance(value, str):
            out.add(
                key,
                'expected a command as an array of strings like ["/usr/bin/prog", "--flag"], '
                f"got {describe(value)}",
            )
            return INVALID
        argv = self._args.check(value, key, out)
        if argv is INVALID:
            return INVALID
        assert isinstance(argv, tuple)
        problem = self.path_rule(argv[0])
        if problem is not None:
            out.add(f"{key}[0]", f"expected the program as {problem}")
            return INVALID
        return argv

    def schema(self) -> JSON:
        return {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": self._args.max_items,
            "prefixItems": [{"type": "string", "pattern": "^/"}],
        }


@dataclass(frozen=True)
class Computed:
    """A default that depends on other keys: the reference shows ``doc``, the schema nothing."""

    doc: str


@dataclass(frozen=True)
class Field:
    """One key of a table, with what the reference documentation says about it."""

    node: Node
    doc: str
    default: object = None  # as the operator would write it; None: no default
    directive: str = ""  # the systemd directive it maps to, if any
    required: bool = False


TableCheck = Callable[[Mapping[str, Any], str, Collector], bool]


class Table(Node):
    """A TOML table with a fixed key set.

    ``one_of``: groups of keys of which exactly one must be present;
    ``at_most_one``: groups of mutually exclusive keys; ``refused``: keys that
    are known to be a mistake, with the message to give; ``checks``: cross-key
    rules run on the converted values when every key converted cleanly;
    ``build``: turns the converted mapping into a model object.
    """

    type_doc = "table"

    def __init__(
        self,
        fields: Mapping[str, Field],
        *,
        build: Callable[[dict[str, Any]], object] | None = None,
        one_of: Sequence[tuple[str, ...]] = (),
        at_most_one: Sequence[tuple[str, ...]] = (),
        refused: Mapping[str, str] | None = None,
        checks: Sequence[TableCheck] = (),
        doc: str = "",
    ) -> None:
        self.fields = dict(fields)
        self.build = build
        self.one_of = tuple(one_of)
        self.at_most_one = tuple(at_most_one)
        self.refused = dict(refused or {})
        self.checks = tuple(checks)
        self.doc = doc
        assert all(_BARE_KEY.fullmatch(n) for n in self.fields), "field names are bare keys"
        # Precomputed for the hot path: a 1,000-service spec runs check() 10,000 times.
        self._nodes = {name: f.node for name, f in self.fields.items()}
        self._required = tuple(name for name, f in self.fields.items() if f.required)

    def check(self, value: object, key: str, out: Collector) -> object:
        if not isinstance(value, dict):
            out.expected(key, "a table", value)
            return INVALID
        converted: dict[str, Any] = {}
        ok = True
        nodes = self._nodes
        for name, raw in value.items():
            node = nodes.get(name)
            if node is not None:
                # Known field names are bare TOML keys, so no quoting is needed.
                result = node.check(raw, f"{key}.{name}" if key else name, out)
                if result is INVALID:
                    ok = False
                else:
                    converted[name] = result
                continue
            ok = False
            where = join_key(key, name)
            if name in self.refused:
                out.add(where, self.refused[name])
            elif not FORBIDDEN_CHARS.search(name):
                out.add(where, self._unknown(name))
        for name in self._required:
            if name not in value:
                out.add(join_key(key, name), f"missing: {self.fields[name].doc}")
                ok = False
        for group in self.one_of:
            present = [k for k in group if k in value]
            if len(present) != 1:
                names = " or ".join(group)
                got = "none" if not present else ", ".join(present)
                out.add(key, f"expected exactly one of {names}, got {got}")
                ok = False
        for group in self.at_most_one:
            present = [k for k in group if k in value]
            if len(present) > 1:
                out.add(join_key(key, present[1]), f"give {' or '.join(group)}, not both")
                ok = False
        if ok:
            for rule in self.checks:
                ok = rule(converted, key, out) and ok
        if not ok:
            return INVALID
        return self.build(converted) if self.build is not None else converted

    def _unknown(self, name: str) -> str:
        known = sorted(self.fields)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            return f"unknown key {name!r}; did you mean {close[0]!r}?"
        return f"unknown key {name!r}; expected one of {', '.join(known)}"

    def schema(self) -> JSON:
        props: JSON = {}
        for name, spec_field in self.fields.items():
            prop = dict(spec_field.node.schema())
            prop["description"] = spec_field.doc
            if spec_field.default is not None and not isinstance(spec_field.default, Computed):
                prop["default"] = spec_field.default
            props[name] = prop
        s: JSON = {"type": "object", "properties": props, "additionalProperties": False}
        required = [n for n, f in self.fields.items() if f.required]
        if required:
            s["required"] = required
        constraints: list[JSON] = []
        for group in self.one_of:
            constraints.append({"oneOf": [{"required": [k]} for k in group]})
        for group in self.at_most_one:
            # Any two of the group are one too many (a group may hold three or more).
            for i, first in enumerate(group):
                for second in group[i + 1 :]:
                    constraints.append({"not": {"required": [first, second]}})
        if constraints:
            s["allOf"] = constraints
        if self.doc:
            s["description"] = self.doc
        return s


class MapOf(Node):
    """A table whose keys the operator chooses (service names, environment variables)."""

    def __init__(
        self,
        value: Node,
        key_rule: Checker,
        *,
        key_doc: str,
        key_pattern: str | None = None,
        max_items: int = 10_000,
    ) -> None:
        self.value = value
        self.key_rule = key_rule
        self.key_doc = key_doc
        self.key_pattern = key_pattern
        self.max_items = max_items
        self.type_doc = f"table of {key_doc} = {value.type_doc}"

    def check(self, value: object, key: str, out: Collector) -> object:
        if not isinstance(value, dict):
            out.expected(key, f"a table of {self.key_doc} = {self.value.type_doc}", value)
            return INVALID
        if len(value) > self.max_items:
            out.add(key, f"expected at most {self.max_items} entries, got {len(value)}")
            return INVALID
        converted: dict[str, object] = {}
        ok = True
        for name, raw in value.items():
            where = join_key(key, name)
            if FORBIDDEN_CHARS.search(name):
                ok = False  # reported by the pre-scan
                self.value.check(raw, where, out)
                continue
            problem = self.key_rule(name)
            if problem is not None:
                out.add(where, f"expected {problem}")
                ok = False
            result = self.value.check(raw, where, out)
            if result is INVALID:
                ok = False
            else:
                converted[name] = result
        return converted if ok else INVALID

    def schema(self) -> JSON:
        s: JSON = {"type": "object", "additionalProperties": self.value.schema()}
        if self.key_pattern is not None:
            s["propertyNames"] = {"pattern": self.key_pattern}
        return s


class ByType(Node):
    """Either of two spellings, chosen by TOML type: ``hardening = "strict"`` or a table."""

    def __init__(self, text: Node, table: Table, convert_text: Callable[[object], object]) -> None:
        self.text = text
        self.table = table
        self.convert_text = convert_text
        self.type_doc = f"{text.type_doc} or table"

    def check(self, value: object, key: str, out: Collector) -> object:
        if isinstance(value, dict):
            return self.table.check(value, key, out)
        if isinstance(value, str):
            result = self.text.check(value, key, out)
            return INVALID if result is INVALID else self.convert_text(result)
        out.expected(key, f"{self.text.type_doc} or a table", value)
        return INVALID

    def schema(self) -> JSON:
        return {"anyOf": [self.text.schema(), self.table.schema()]}


class Tagged(Node):
    """A table whose key set depends on its ``tag`` key (alert ``type``)."""

    def __init__(
        self,
        tag: str,
        variants: Mapping[str, Table],
        *,
        tag_doc: str,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        self.tag = tag
        self.variants = dict(variants)
        self.tag_doc = tag_doc
        self.refused = dict(refused or {})
        self.type_doc = "table"
        self._tag_node = Choice(tuple(self.variants))

    def check(self, value: object, key: str, out: Collector) -> object:
        if not isinstance(value, dict):
            out.expected(key, "a table", value)
            return INVALID
        if self.tag not in value:
            out.add(join_key(key, self.tag), f"missing: {self.tag_doc}")
            tag: object = INVALID
        else:
            tag = self._tag_node.check(value[self.tag], join_key(key, self.tag), out)
        if isinstance(tag, str):
            return self.variants[tag].check(value, key, out)
        # Without a type the key set is unknown, but an inline secret is wrong in any type.
        for name in value:
            if name in self.refused:
                out.add(join_key(key, name), self.refused[name])
        return INVALID

    def schema(self) -> JSON:
        branches: list[JSON] = []
        for tag, table in self.variants.items():
            branches.append(
                {
                    "if": {"properties": {self.tag: {"const": tag}}, "required": [self.tag]},
                    "then": table.schema(),
                }
            )
        return {
            "type": "object",
            "required": [self.tag],
            "properties": {self.tag: self._tag_node.schema()},
            "allOf": branches,
        }
