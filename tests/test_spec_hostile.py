"""Hostile strings in every string field: forbidden characters always give a problem at
exactly the right key; everything else (%, quotes, backslashes, ';', unicode) loads intact.

The renderer quotes what loads (its own tests); this file proves that a newline, carriage
return, NUL or other control character can never get past the loader to a unit file.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_toml import dumps

from unitgen.errors import SpecError
from unitgen.model import Spec
from unitgen.specfile import parse_spec
from unitgen.specnodes import FORBIDDEN_CHARS, join_key

SRC = "hostile.toml"

HOSTILE = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("\n\r\x00\x1b\x7f\x85\u2028\u2029%\"'\\;$ \t{}[]=#`é日🙂-@.:")),
        st.characters(),
    ),
    max_size=40,
)


def base() -> dict[str, Any]:
    return {
        "alert": {
            "ops": {"type": "command", "command": ["/usr/bin/notify", "x"]},
            "am": {"type": "alertmanager", "url_env": "AM_URL", "labels": {"team": "x"}},
        },
        "service": {"api": {"exec": ["/usr/bin/api", "x"]}},
    }


Place = Callable[[dict[str, Any], str], None]
Read = Callable[[Spec], object]


def _svc(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = spec["service"]["api"]
    return result


# (where the value goes, the key a problem must name, where the value lands in the model)
FREE_TEXT: dict[str, tuple[Place, str, Read]] = {
    "description": (
        lambda s, v: _svc(s).update(description=v),
        "service.api.description",
        lambda m: m.services["api"].description,
    ),
    "exec argument": (
        lambda s, v: _svc(s).update(exec=["/usr/bin/api", v]),
        "service.api.exec[1]",
        lambda m: m.services["api"].exec[1],
    ),
    "environment value": (
        lambda s, v: _svc(s).update(environment={"V": v}),
        "service.api.environment.V",
        lambda m: dict(m.services["api"].environment)["V"],
    ),
    "validate argument": (
        lambda s, v: _svc(s).update(validate=["/usr/bin/api", "--check", v]),
        "service.api.validate[2]",
        lambda m: m.services["api"].validate[2],  # type: ignore[index]
    ),
    "exec_start_pre argument": (
        lambda s, v: _svc(s).update(exec_start_pre=[["/bin/true"], ["/bin/prep", v]]),
        "service.api.exec_start_pre[1][1]",
        lambda m: m.services["api"].exec_start_pre[1][1],
    ),
    "exec_reload argument": (
        lambda s, v: _svc(s).update(exec_reload=["/bin/kill", v]),
        "service.api.exec_reload[1]",
        lambda m: m.services["api"].exec_reload[1],  # type: ignore[index]
    ),
    "health command argument": (
        lambda s, v: _svc(s).update(health={"command": ["/bin/check", v]}),
        "service.api.health.command[1]",
        lambda m: m.services["api"].health.probe.target[1],  # type: ignore[union-attr]
    ),
    "dependency command argument": (
        lambda s, v: _svc(s).update(depends=[{"tcp": "h:1"}, {"command": ["/bin/dep", v]}]),
        "service.api.depends[1].command[1]",
        lambda m: m.services["api"].depends[1].target[1],
    ),
    "override validate argument": (
        lambda s, v: s.setdefault("override", {}).update(
            {"nginx.service": {"validate": ["/usr/sbin/nginx", v]}}
        ),
        'override."nginx.service".validate[1]',
        lambda m: m.overrides["nginx.service"].validate[1],  # type: ignore[index]
    ),
    "alert command argument": (
        lambda s, v: s["alert"]["ops"].update(command=["/usr/bin/notify", v]),
        "alert.ops.command[1]",
        lambda m: m.alerts["ops"].config["command"][1],  # type: ignore[index]
    ),
    "alertmanager label value": (
        lambda s, v: s["alert"]["am"].update(labels={"team": v}),
        "alert.am.labels.team",
        lambda m: m.alerts["am"].config["labels"]["team"],  # type: ignore[index]
    ),
}

# Paths get a leading "/" and no further "/", so they are absolute single components.
PATHS: dict[str, tuple[Place, str, Read]] = {
    "exec[0]": (
        lambda s, v: _svc(s).update(exec=[v]),
        "service.api.exec[0]",
        lambda m: m.services["api"].exec[0],
    ),
    "pidfile": (
        lambda s, v: _svc(s).update(pidfile=v),
        "service.api.pidfile",
        lambda m: m.services["api"].pidfile,
    ),
    "working_directory": (
        lambda s, v: _svc(s).update(working_directory=v),
        "service.api.working_directory",
        lambda m: m.services["api"].working_directory,
    ),
    "environment_files": (
        lambda s, v: _svc(s).update(environment_files=[v]),
        "service.api.environment_files[0]",
        lambda m: m.services["api"].environment_files[0],
    ),
    "cleanup.temp": (
        lambda s, v: _svc(s).update(cleanup={"temp": ["/tmp/a", v]}),
        "service.api.cleanup.temp[1]",
        lambda m: m.services["api"].cleanup.temp[1],
    ),
    "disk.paths": (
        lambda s, v: _svc(s).update(disk={"paths": [v]}),
        "service.api.disk.paths[0]",
        lambda m: m.services["api"].disk.paths[0],
    ),
    "read_write_paths": (
        lambda s, v: _svc(s).update(hardening={"read_write_paths": [v]}),
        "service.api.hardening.read_write_paths[0]",
        lambda m: m.services["api"].hardening.read_write_paths[0],
    ),
    "url_file": (
        lambda s, v: s["alert"].update(hook={"type": "webhook", "url_file": v}),
        "alert.hook.url_file",
        lambda m: m.alerts["hook"].config["url_file"],
    ),
}


def check(place: Place, key: str, read: Read, value: str) -> None:
    spec = base()
    place(spec, value)
    text = dumps(spec)
    if FORBIDDEN_CHARS.search(value):
        with pytest.raises(SpecError) as info:
            parse_spec(text, SRC)
        assert {p.key for p in info.value.problems} == {key}
        assert len(str(info.value).splitlines()) == len(info.value.problems)
    else:
        assert read(parse_spec(text, SRC)) == value


_SETTINGS = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("field", sorted(FREE_TEXT))
@_SETTINGS
@given(value=HOSTILE)
def test_free_text(field: str, value: str) -> None:
    check(*FREE_TEXT[field], value)


@pytest.mark.parametrize("field", sorted(PATHS))
@_SETTINGS
@given(value=HOSTILE.filter(lambda v: "/" not in v and v not in ("", ".", "..")))
def test_paths(field: str, value: str) -> None:
    check(*PATHS[field], "/" + value)


@pytest.mark.parametrize(
    "value", ["a\nExecStartPre=/bin/sh", "x\r\n[Service]", "nul\x00byte", "esc\x1b[2J", "ls\u2028"]
)
@pytest.mark.parametrize("field", sorted(FREE_TEXT))
def test_known_injections(field: str, value: str) -> None:
    check(*FREE_TEXT[field], value)


@_SETTINGS
@given(name=HOSTILE.filter(lambda v: FORBIDDEN_CHARS.search(v) is not None))
def test_hostile_keys_are_reported_once_at_their_key(name: str) -> None:
    spec = base()
    _svc(spec)["environment"] = {name: "v"}
    spec["service"][name] = {"exec": ["/bin/x"]}
    spec["override"] = {"o" + name + ".service": {"on_failure": True}}
    _svc(spec)[name] = 1  # an unknown key, too
    with pytest.raises(SpecError) as info:
        parse_spec(dumps(spec), SRC)
    keys = [p.key for p in info.value.problems]
    expected = {
        join_key("service.api.environment", name),
        join_key("service", name),
        join_key("override", "o" + name + ".service"),
        join_key("service.api", name),
    }
    assert set(keys) == expected
    assert len(keys) == len(expected)
    text = str(info.value)
    assert len(text.splitlines()) == len(keys)
    assert not FORBIDDEN_CHARS.search(text.replace("\n", ""))


@_SETTINGS
@given(value=HOSTILE)
def test_any_string_in_any_numeric_field_never_crashes(value: str) -> None:
    spec = base()
    _svc(spec).update(
        restart={"delay": value, "burst": 2, "interval": "1h"},
        limits={"memory_max": value, "cpu_quota": value},
        disk={"min_free": value},
        user=value,
        requires=[value],
        state_directory=value,
        health={"tcp": value},
    )
    try:
        parse_spec(dumps(spec), SRC)
    except SpecError as exc:
        assert all(p.key.startswith("service.api.") for p in exc.problems)
        assert len(str(exc).splitlines()) == len(exc.problems)


def _spellings(ch: str) -> list[str]:
    """Every TOML way to put ``ch`` into a description."""
    code = ord(ch)
    ways = [
        f'"a\\u{code:04X}b"',
        f'"a\\U{code:08X}b"',
        f'"""a\\u{code:04x}b"""',
    ]
    short = {"\n": "n", "\r": "r", "\b": "b", "\f": "f"}
    if ch in short:
        ways.append(f'"a\\{short[ch]}b"')
    if ch in "\n\x85\u2028\u2029":
        ways += [f'"""a{ch}b"""', f"'''a{ch}b'''"]
    if ch in "\x85\u2028\u2029":
        ways += [f'"a{ch}b"', f"'a{ch}b'"]
    return ways


@pytest.mark.parametrize(
    "ch", ["\n", "\r", "\x00", "\b", "\f", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]
)
def test_every_toml_spelling_of_a_forbidden_character_is_caught(ch: str) -> None:
    for spelling in _spellings(ch):
        text = f'[service.api]\nexec = ["/usr/bin/api"]\ndescription = {spelling}\n'
        with pytest.raises(SpecError) as info:
            parse_spec(text, SRC)
        assert [p.key for p in info.value.problems] == ["service.api.description"], spelling


def test_multiline_string_with_crlf_is_caught() -> None:
    text = '[service.api]\r\nexec = ["/usr/bin/api"]\r\ndescription = """a\r\nb"""\r\n'
    with pytest.raises(SpecError) as info:
        parse_spec(text, SRC)
    assert [p.key for p in info.value.problems] == ["service.api.description"]


def test_clean_escapes_still_load() -> None:
    text = (
        '[service.api]\nexec = ["/usr/bin/api", "a\\tb", "q\\"uote", "back\\\\slash"]\n'
        "description = '''literal \\n stays two characters'''\n"
    )
    api = parse_spec(text, SRC).services["api"]
    assert api.exec[1:] == ("a\tb", 'q"uote', "back\\slash")
    assert api.description == "literal \\n stays two characters"


# -- every string in the full example (which uses every key) -------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "example.toml"


def _string_leaves(value: object, key: str = "") -> list[tuple[str, tuple[str | int, ...]]]:
    """(problem key, access path) of every string value in a parsed spec."""
    found: list[tuple[str, tuple[str | int, ...]]] = []

    def walk(node: object, where: str, path: tuple[str | int, ...]) -> None:
        if isinstance(node, str):
            found.append((where, path))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, join_key(where, k), (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]", (*path, i))

    walk(value, key, ())
    return found


def _replaced(raw: dict[str, Any], path: tuple[str | int, ...], value: str) -> dict[str, Any]:
    spec = copy.deepcopy(raw)
    node: Any = spec
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return spec


RAW_EXAMPLE = tomllib.loads(EXAMPLE.read_text())
LEAVES = _string_leaves(RAW_EXAMPLE)


def test_the_example_has_many_string_leaves() -> None:
    assert len(LEAVES) > 100
    assert parse_spec(dumps(RAW_EXAMPLE), SRC).services


@pytest.mark.parametrize(("key", "path"), LEAVES, ids=[k for k, _ in LEAVES])
def test_newline_in_any_string_of_the_example(key: str, path: tuple[str | int, ...]) -> None:
    original = _get(RAW_EXAMPLE, path)
    for bad in (original + "\nExecStartPre=/bin/sh", "\r" + original, original + "\x00"):
        with pytest.raises(SpecError) as info:
            parse_spec(dumps(_replaced(RAW_EXAMPLE, path, bad)), SRC)
        assert [p.key for p in info.value.problems] == [key]


def _get(raw: Any, path: tuple[str | int, ...]) -> str:
    node = raw
    for step in path:
        node = node[step]
    assert isinstance(node, str)
    return node


@_SETTINGS
@given(leaf=st.sampled_from(LEAVES), value=HOSTILE)
def test_hostile_string_anywhere_in_the_example(
    leaf: tuple[str, tuple[str | int, ...]], value: str
) -> None:
    key, path = leaf
    text = dumps(_replaced(RAW_EXAMPLE, path, value))
    try:
        parse_spec(text, SRC)
    except SpecError as exc:
        keys = [p.key for p in exc.problems]
        if FORBIDDEN_CHARS.search(value):
            assert keys == [key]
        # A clean but wrong value is reported too: one line per problem, no traceback.
        assert keys
        assert len(str(exc).splitlines()) == len(exc.problems)
    else:
        assert not FORBIDDEN_CHARS.search(value)


# -- arbitrary text: a Spec or a SpecError, never anything else ----------------------

EXAMPLE_TEXT = EXAMPLE.read_text()


def _loads_or_spec_error(text: str) -> None:
    try:
        spec = parse_spec(text, SRC)
    except SpecError as exc:
        assert exc.problems
        assert len(str(exc).splitlines()) == len(exc.problems)
    else:
        assert spec.services or spec.overrides


@_SETTINGS
@given(text=st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    _loads_or_spec_error(text)


@_SETTINGS
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(EXAMPLE_TEXT)), st.integers(0, 3), HOSTILE),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_example(edits: list[tuple[int, int, str]]) -> None:
    # Replace a few short spans of the real example with hostile text.
    text = EXAMPLE_TEXT
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut :]
    _loads_or_spec_error(text)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE)
def test_capability_names_are_only_ever_known_ones(value: str) -> None:
    """Anything but a known capability name is refused at its key, with one line."""
    from unitgen.specvalues import CAPABILITIES

    spec = base()
    _svc(spec)["hardening"] = {"capabilities": ["CAP_KILL", value]}
    try:
        loaded = parse_spec(dumps(spec), SRC)
    except SpecError as exc:
        assert "service.api.hardening.capabilities" in str(exc)
        assert "\n" not in str(exc)
        return
    assert value in CAPABILITIES and value != "CAP_KILL"
    assert loaded.services["api"].hardening.capabilities == ("CAP_KILL", value)


def test_capabilities_and_disabling_the_bounding_set_contradict() -> None:
    spec = base()
    _svc(spec)["hardening"] = {
        "disable": ["CapabilityBoundingSet"],
        "capabilities": ["CAP_KILL"],
    }
    with pytest.raises(SpecError, match="capabilities: contradicts disable") as info:
        parse_spec(dumps(spec), SRC)
    assert info.value.exit_code == 2
