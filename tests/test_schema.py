"""The JSON Schema: generated from the validator's own key table, and the example obeys it.

The schema is checked with a small draft 2020-12 walker written here; it raises on
any keyword it does not know, so the schema can only use keywords that were checked.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spec_toml import dumps

from unitgen import specnodes as sn
from unitgen.errors import SpecError
from unitgen.schema import build_schema, schema_json
from unitgen.specfile import parse_spec
from unitgen.speckeys import SPEC

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "example.toml"

_ANNOTATIONS = {"$schema", "$id", "title", "description", "default"}
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def errors(schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
    """Every way ``value`` breaks ``schema`` (draft 2020-12 subset), as 'where: why'."""
    out: list[str] = []
    for kw, arg in schema.items():
        if kw in _ANNOTATIONS or kw in ("then", "properties", "prefixItems"):
            continue
        if kw == "type":
            if not _TYPES[arg](value):
                out.append(f"{where}: not {arg}")
        elif kw == "enum":
            if value not in arg:
                out.append(f"{where}: not in {arg}")
        elif kw == "const":
            if value != arg:
                out.append(f"{where}: not {arg!r}")
        elif kw == "pattern":
            if isinstance(value, str) and not re.search(arg, value):
                out.append(f"{where}: does not match {arg}")
        elif kw in ("minLength", "maxLength"):
            if isinstance(value, str) and (
                len(value) < arg if kw == "minLength" else len(value) > arg
            ):
                out.append(f"{where}: {kw} {arg}")
        elif kw in ("minimum", "maximum", "exclusiveMinimum"):
            if _TYPES["number"](value):
                bad = {
                    "minimum": value < arg,
                    "maximum": value > arg,
                    "exclusiveMinimum": value <= arg,
                }
                if bad[kw]:
                    out.append(f"{where}: {kw} {arg}")
        elif kw in ("minItems", "maxItems"):
            if isinstance(value, list) and (
                len(value) < arg if kw == "minItems" else len(value) > arg
            ):
                out.append(f"{where}: {kw} {arg}")
        elif kw == "uniqueItems":
            if (
                isinstance(value, list)
                and arg
                and len({json.dumps(v) for v in value}) != len(value)
            ):
                out.append(f"{where}: items not unique")
        elif kw == "items":
            if isinstance(value, list):
                start = len(schema.get("prefixItems", []))
                for i, item in enumerate(value):
                    sub = schema["prefixItems"][i] if i < start else arg
                    out += errors(sub, item, f"{where}[{i}]")
                    if i < start:
                        out += errors(arg, item, f"{where}[{i}]")
        elif kw == "required":
            if isinstance(value, dict):
                out += [f"{where}.{k}: required" for k in arg if k not in value]
        elif kw == "additionalProperties":
            if isinstance(value, dict):
                props = schema.get("properties", {})
                for k, v in value.items():
                    if k in props:
                        out += errors(props[k], v, f"{where}.{k}")
                    elif arg is False:
                        out.append(f"{where}.{k}: not allowed")
                    elif isinstance(arg, dict):
                        out += errors(arg, v, f"{where}.{k}")
        elif kw == "propertyNames":
            if isinstance(value, dict):
                for k in value:
                    out += errors(arg, k, f"{where}.{k}(name)")
        elif kw == "anyOf":
            results = [errors(s, value, where) for s in arg]
            if all(results):
                out.append(f"{where}: matches no anyOf branch: {results}")
        elif kw == "oneOf":
            passing = sum(1 for s in arg if not errors(s, value, where))
            if passing != 1:
                out.append(f"{where}: matches {passing} oneOf branches")
        elif kw == "allOf":
            for s in arg:
                out += errors(s, value, where)
        elif kw == "not":
            if not errors(arg, value, where):
                out.append(f"{where}: matches a 'not'")
        elif kw == "if":
            if not errors(arg, value, where) and "then" in schema:
                out += errors(schema["then"], value, where)
        else:
            raise AssertionError(f"schema uses {kw!r}, which this walker does not check")
    if "properties" in schema and "additionalProperties" not in schema and isinstance(value, dict):
        for k, v in value.items():
            if k in schema["properties"]:
                out += errors(schema["properties"][k], v, f"{where}.{k}")
    return out


def test_example_validates_against_the_schema() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    assert errors(build_schema(), raw) == []


def test_schema_shape() -> None:
    schema = build_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"defaults", "alert", "service", "override"}
    assert json.loads(schema_json()) == schema


def test_patterns_compile() -> None:
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.append(node["pattern"])
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(build_schema())
    assert len(found) > 5
    for pattern in found:
        re.compile(pattern)


# -- the schema and the validator know the same keys ---------------------------------


def validator_keys(node: sn.Node, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(node, sn.Table):
        for name, field in node.fields.items():
            path = f"{prefix}.{name}" if prefix else name
            keys |= {path} | validator_keys(field.node, path)
    elif isinstance(node, sn.MapOf):
        keys |= {f"{prefix}.*"} | validator_keys(node.value, f"{prefix}.*")
    elif isinstance(node, sn.ListOf):
        keys |= validator_keys(node.item, f"{prefix}[]")
    elif isinstance(node, sn.ByType):
        keys |= validator_keys(node.table, prefix)
    elif isinstance(node, sn.Tagged):
        for table in node.variants.values():
            keys |= validator_keys(table, prefix)
    return keys


def schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        keys |= {path} | schema_keys(sub, path)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        keys |= {f"{prefix}.*"} | schema_keys(extra, f"{prefix}.*")
    if isinstance(schema.get("items"), dict) and schema.get("type") == "array":
        keys |= schema_keys(schema["items"], f"{prefix}[]")
    for combinator in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(combinator, []):
            keys |= schema_keys(sub, prefix)
    if isinstance(schema.get("then"), dict):
        keys |= schema_keys(schema["then"], prefix)
    return keys


def test_schema_and_validator_know_the_same_keys() -> None:
    from_validator = validator_keys(SPEC)
    from_schema = schema_keys(build_schema())
    assert from_validator == from_schema
    # and the sets are the real thing, not two empty walks
    for key in (
        "service.*.restart.delay",
        "service.*.depends[].tcp",
        "service.*.recovery.backoff.jitter",
        "override.*.on_failure",
        "alert.*.password_file",
        "alert.*.labels.*",
        "service.*.environment.*",
        "defaults.alerts",
    ):
        assert key in from_validator


def test_every_table_key_is_used_in_the_example() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    used: set[str] = set()

    def visit(value: Any, prefix: str, node: sn.Node) -> None:
        if isinstance(node, sn.Table) and isinstance(value, dict):
            for k, v in value.items():
                path = f"{prefix}.{k}" if prefix else k
                used.add(path)
                visit(v, path, node.fields[k].node)
        elif isinstance(node, sn.MapOf) and isinstance(value, dict):
            for v in value.values():
                used.add(f"{prefix}.*")
                visit(v, f"{prefix}.*", node.value)
        elif isinstance(node, sn.ListOf) and isinstance(value, list):
            for v in value:
                visit(v, f"{prefix}[]", node.item)
        elif isinstance(node, sn.ByType) and isinstance(value, dict):
            visit(value, prefix, node.table)
        elif isinstance(node, sn.Tagged) and isinstance(value, dict):
            visit(value, prefix, node.variants[value["type"]])

    visit(raw, "", SPEC)
    # Keys that exclude each other cannot all appear in one valid example; an override's
    # sub-tables are the service's, shown in full under [service.api].
    exclusive = {"alert.*.password_env", "alert.*.password_credential"}
    missing = {
        key
        for key in validator_keys(SPEC) - used - exclusive
        if not (key.startswith("override.*.") and key.count(".") > 2)
    }
    assert missing == set()


# -- the schema rejects what the validator rejects (for what a schema can express) ---


def _spec(**api: Any) -> dict[str, Any]:
    return {"service": {"api": {"exec": ["/usr/bin/api"], **api}}}


@pytest.mark.parametrize(
    "spec",
    [
        _spec(descripton="typo"),
        _spec(restart={"burst": True}),
        _spec(restart={"policy": "sometimes"}),
        _spec(exec=[]),
        _spec(exec=["relative"]),
        _spec(limits={"tasks_max": 0}),
        _spec(health={"interval": "5s"}),
        _spec(health={"http": "http://x/", "tcp": "x:1"}),
        _spec(hardening={"profile": "paranoid"}),
        {"service": {"api": {"description": "no exec"}}},
        {"alert": {"x": {"type": "webhook"}}, **_spec()},
        {"alert": {"x": {"type": "webhook", "url": "https://secret"}}, **_spec()},
        {"alert": {"x": {"type": "email", "smtp_host": "h", "from": "a@b", "to": ["c@d"],
                         "password_env": "P", "password_file": "/p"}}, **_spec()},
        {"alert": {"x": {"type": "command", "command": ["/x"], "url_env": "U"}}, **_spec()},
        {"defaults": {"colour": "blue"}, **_spec()},
        {"service": {"my api": {"exec": ["/usr/bin/api"]}}},
        {"override": {"nginx": {"on_failure": True}}, **_spec()},
    ],
)  # fmt: skip
def test_schema_rejects(spec: dict[str, Any]) -> None:
    raw = tomllib.loads(dumps(spec))
    assert errors(build_schema(), raw) != []


def test_schema_accepts_the_spellings_the_validator_accepts() -> None:
    spec = _spec(
        restart={"delay": 5, "interval": "1min 30s"},
        limits={"memory_max": "80%", "memory_high": 1048576, "cpu_quota": "250%"},
        disk={"min_free": ["10%", "1G"], "min_free_inodes": 1000},
        state_directory="api",
        hardening="minimal",
    )
    assert errors(build_schema(), tomllib.loads(dumps(spec))) == []


# -- random edits of the example: whatever the validator accepts, the schema accepts --

_RAW_EXAMPLE = tomllib.loads(EXAMPLE.read_text())


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found.append((*path, k))
            found += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.append((*path, i))
            found += _paths(v, (*path, i))
    return found


_PATHS = _paths(_RAW_EXAMPLE)
_REPLACEMENTS = [5, 0, -1, True, 1.5, "x", "", "5s", "10%", "/abs", [], ["/abs"], {}]


def _edited(edits: list[tuple[int, int | None]]) -> dict[str, Any]:
    import copy

    spec = copy.deepcopy(_RAW_EXAMPLE)
    for path_index, replacement in edits:
        path = _PATHS[path_index]
        node: Any = spec
        try:
            for step in path[:-1]:
                node = node[step]
            if replacement is None:
                del node[path[-1]]
            else:
                node[path[-1]] = copy.deepcopy(_REPLACEMENTS[replacement])
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the parent
    return spec


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_PATHS) - 1),
            st.one_of(st.none(), st.integers(0, len(_REPLACEMENTS) - 1)),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_what_the_validator_accepts_the_schema_accepts(
    edits: list[tuple[int, int | None]],
) -> None:
    spec = _edited(edits)
    try:
        parse_spec(dumps(spec), "edited.toml")
    except SpecError:
        return
    assert errors(build_schema(), tomllib.loads(dumps(spec))) == []
