"""A tiny TOML writer for the spec tests: hostile strings must reach tomllib intact."""

from __future__ import annotations

import re
from collections.abc import Mapping

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPE = re.compile(r'[\x00-\x08\x0a-\x1f\x7f"\\]')


def toml_string(text: str) -> str:
    # TOML basic strings must escape quote, backslash and controls other than tab.
    return '"' + _ESCAPE.sub(lambda m: f"\\u{ord(m.group(0)):04X}", text) + '"'


def toml_key(key: str) -> str:
    return key if _BARE.fullmatch(key) else toml_string(key)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def dumps(spec: Mapping[str, object]) -> str:
    """A spec as [section.NAME] tables with inline values; anything else inline at the top."""
    head: list[str] = []
    lines: list[str] = []
    for section, body in spec.items():
        if section == "defaults" and isinstance(body, Mapping):
            lines.append("[defaults]")
            lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in body.items())
        elif isinstance(body, Mapping) and all(isinstance(t, Mapping) for t in body.values()):
            if not body:
                head.append(f"{toml_key(section)} = {{}}")
            for name, table in body.items():
                assert isinstance(table, Mapping)
                lines.append(f"[{toml_key(section)}.{toml_key(name)}]")
                lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items())
        else:
            head.append(f"{toml_key(section)} = {toml_value(body)}")
    return "\n".join(head + lines) + "\n"
