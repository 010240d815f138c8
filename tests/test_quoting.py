"""quote(): every kind, the hostile cases, and the inverse the round-trip tests use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitgen.errors import RenderError
from unitgen.quoting import KINDS, quote, unquote

UNITS_DIR = Path(__file__).resolve().parent.parent / "units"

# Any text systemd can hold in a line: no line breakers, no lone surrogates.
line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"),
    max_size=40,
)


def test_exec_quotes_every_word_and_escapes() -> None:
    got = quote(("/bin/echo", 'a "b"', "c\\d", ";", "100%", "$HOME", "${X}", ""), "exec")
    assert got == ('"/bin/echo" "a \\"b\\"" "c\\\\d" \\; "100%%" "$$HOME" "$${X}" ""')


def test_exec_argv0_must_be_absolute() -> None:
    # A prefix character on argv[0] (-, @, +, !, :) would change how systemd runs it.
    for argv0 in ("-/bin/true", "@/bin/true", "bin/true", ""):
        with pytest.raises(RenderError, match="argv\\[0\\]"):
            quote((argv0,), "exec")
    with pytest.raises(RenderError):
        quote((), "exec")


def test_env_assignment() -> None:
    assert quote(("GREETING", '100% "fine"; \\'), "env") == '"GREETING=100%% \\"fine\\"; \\\\"'
    with pytest.raises(RenderError, match="environment name"):
        quote(("BAD KEY", "x"), "env")
    with pytest.raises(RenderError, match="environment name"):
        quote(("1X", "x"), "env")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "a\nExecStart=/bin/sh"])
def test_line_breakers_are_refused_by_every_kind(kind: str, bad: str) -> None:
    values: dict[str, object] = {
        "exec": ("/bin/x", bad),
        "env": ("K", bad),
        "paths": ("/x" + bad,),
        "dirs": ("x" + bad,),
        "units": ("a.service" + bad,),
        "directives": (("Key", "v" + bad),),
    }
    with pytest.raises(RenderError):
        quote(values.get(kind, "/x" + bad), kind)


def test_surrogates_are_refused() -> None:
    with pytest.raises(RenderError, match="UTF-8"):
        quote("a\udc80", "text")


def test_text_escapes_percent_and_refuses_a_continuation() -> None:
    assert quote("  50% off  ", "text") == "50%% off"
    with pytest.raises(RenderError, match="continuation"):
        quote("ends in \\", "text")
    # An even run is no continuation, but text is not unescaped: still refused as odd-looking.
    assert quote("a\\b", "text") == "a\\b"


def test_path_kinds() -> None:
    assert quote("/srv/a b/%c", "path") == "/srv/a b/%%c"
    assert quote("-/etc/default/api", "path") == "-/etc/default/api"
    with pytest.raises(RenderError):
        quote("relative/x", "path")
    with pytest.raises(RenderError):
        quote("/x\\", "path")
    assert quote(("/a b", '/c"d', "-/e\\f"), "paths") == '"/a b" "/c\\"d" "-/e\\\\f"'
    with pytest.raises(RenderError):
        quote(("x",), "paths")
    assert quote(("api", "api/queues"), "dirs") == '"api" "api/queues"'
    for bad in ("/abs", "a:b", ""):
        with pytest.raises(RenderError):
            quote((bad,), "dirs")


def test_units_names_literals_keys() -> None:
    assert quote(("a.service", "dev-x\\x2dy.device", "w@1.service"), "units") == (
        "a.service dev-x\\x2dy.device w@1.service"
    )
    for bad in ("a b.service", "a%n.service", 'a".service', ""):
        with pytest.raises(RenderError):
            quote((bad,), "units")
    assert quote("www-data", "name") == "www-data"
    with pytest.raises(RenderError):
        quote("root\nUser=x", "name")
    with pytest.raises(RenderError):
        quote("a b", "name")
    assert quote(5, "literal") == "5"
    assert quote("1min 30s", "literal") == "1min 30s"
    assert quote("~@privileged @resources", "literal") == "~@privileged @resources"
    for bad in ('"x"', "a\\b", "$X", "a;b"):
        with pytest.raises(RenderError):
            quote(bad, "literal")
    assert quote("ProtectSystem", "key") == "ProtectSystem"
    with pytest.raises(RenderError):
        quote("Exec Start", "key")
    block = (("ProtectSystem", "strict"), ("SystemCallFilter", "~@privileged @resources"))
    assert quote(block, "directives") == (
        "ProtectSystem=strict\nSystemCallFilter=~@privileged @resources"
    )
    assert unquote(quote(block, "directives"), "directives") == block
    for bad_block in ((("Bad Key", "x"),), (("Key", '"x"'),), ("Key=x",), "Key=x"):
        with pytest.raises(RenderError):
            quote(bad_block, "directives")
    with pytest.raises(RenderError, match="unknown kind"):
        quote("x", "nope")


def test_values_must_be_strings() -> None:
    with pytest.raises(RenderError):
        quote(None, "text")
    with pytest.raises(RenderError):
        quote("/bin/x", "exec")  # a string is not an argv


@settings(deadline=None)  # a loaded CI box must not fail a correctness test
@given(st.lists(line_text, max_size=6))
def test_exec_round_trips(words: list[str]) -> None:
    argv = ("/bin/x", *words)
    text = quote(argv, "exec")
    assert "\n" not in text and "\r" not in text
    assert unquote(text, "exec") == argv


@settings(deadline=None)  # a loaded CI box must not fail a correctness test
@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), line_text)
def test_env_round_trips(key: str, value: str) -> None:
    text = quote((key, value), "env")
    assert text.startswith('"') and text.endswith('"')
    assert unquote(text, "env") == (key, value)


@settings(deadline=None)  # a loaded CI box must not fail a correctness test
@given(line_text)
def test_text_round_trips_or_refuses(value: str) -> None:
    try:
        text = quote(value, "text")
    except RenderError:
        # The only refusal for text is a trailing backslash (a line continuation).
        assert value.strip(" \t").endswith("\\")
        return
    assert unquote(text, "text") == value.strip(" \t")


@settings(deadline=None)  # a loaded CI box must not fail a correctness test
@given(st.lists(line_text.map(lambda s: "/" + s), max_size=4))
def test_paths_round_trip(paths: list[str]) -> None:
    assert unquote(quote(tuple(paths), "paths"), "paths") == tuple(paths)


def test_templates_never_print_a_raw_value() -> None:
    expr = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
    templates = sorted(UNITS_DIR.glob("*.j2"))
    assert templates, f"no templates in {UNITS_DIR}"
    seen = 0
    for path in templates:
        for match in expr.finditer(path.read_text(encoding="utf-8")):
            seen += 1
            body = match.group(1).strip()
            assert re.fullmatch(r"[\w.]+ \| q\(\"[a-z]+\"\)", body), (
                f"{path.name}: {{{{ {body} }}}} does not go through | q(kind)"
            )
    assert seen > 20
