"""unitgen harden's pure parts: --probe parsing and the item set <-> spec <-> drop-in mapping.

The searches on real daemons are in tests/test_harden_sandbox.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitgen.errors import UsageError
from unitgen.harden import (
    ProbeArg,
    parse_probe,
    profile_directives,
    render_dropin,
    snippet,
    to_hardening,
)
from unitgen.hardensearch import order_items
from unitgen.render import DROPIN_NAME, RenderOptions, render
from unitgen.specfile import parse_spec
from unitgen.specvalues import CAPABILITIES

VERSION = 252
DIRECTIVES = profile_directives(VERSION)
CAPS = sorted(CAPABILITIES)


def test_probe_forms() -> None:
    assert parse_probe("http://127.0.0.1:8080/x") == ProbeArg("http", "http://127.0.0.1:8080/x")
    assert parse_probe("tcp:[::1]:6379") == ProbeArg("tcp", "[::1]:6379")
    assert parse_probe("cmd /usr/bin/redis-cli -h 127.0.0.1 'p ing'") == ProbeArg(
        "command", ("/usr/bin/redis-cli", "-h", "127.0.0.1", "p ing")
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ftp://x",
        "tcp:host",
        "tcp:h:99999",
        "cmd",
        "cmd relative/path",
        "cmd 'unclosed",
        "http://",
    ],
)
def test_bad_probes_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="--probe"):
        parse_probe(text)


@given(st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_any_probe_text_parses_or_is_refused_in_one_line(text: str) -> None:
    try:
        parse_probe(text)
    except UsageError as exc:
        assert "\n" not in str(exc).strip()


@given(
    enabled=st.sets(st.sampled_from(DIRECTIVES + CAPS)),
    with_caps=st.booleans(),
    paths=st.sampled_from([(), ("/var/lib/ugh",), ("/var/lib/ugh", "/run/ugh x")]),
)
@settings(max_examples=60, deadline=None)
def test_the_spec_snippet_renders_the_tested_dropin(
    enabled: set[str], with_caps: bool, paths: tuple[str, ...]
) -> None:
    """For any set the search may try, the printed spec table renders the same lines."""
    caps = CAPS if with_caps else []
    directives = [d for d in DIRECTIVES if not (with_caps and d == "CapabilityBoundingSet")]
    hard = to_hardening(frozenset(enabled), directives, caps, paths)
    # write paths only ever come with ProtectSystem=strict
    assert hard.read_write_paths == (paths if "ProtectSystem" in enabled else ())
    dropin = render_dropin("ugh-x.service", hard, VERSION)
    spec = parse_spec(snippet("ugh-x.service", hard, "note"), "snippet.toml")
    assert spec.overrides["ugh-x.service"].hardening == hard
    text = render(spec, RenderOptions(systemd_version=VERSION))[f"ugh-x.service.d/{DROPIN_NAME}"]

    def service_lines(t: str) -> list[str]:
        body = t.split("[Service]", 1)[1] if "[Service]" in t else ""
        return [line for line in body.splitlines() if line and not line.startswith("#")]

    assert service_lines(text) == service_lines(dropin)
    lines = service_lines(dropin)
    # Each directive item that is on is rendered; each that is off is not.
    for name in directives:
        assert any(line.startswith(f"{name}=") for line in lines) == (name in enabled)
    if with_caps:
        kept = sorted(set(caps) - enabled)
        bounding = [line for line in lines if line.startswith("CapabilityBoundingSet=")]
        if not kept:
            assert bounding == ["CapabilityBoundingSet="]
        elif kept == caps:
            assert bounding == []  # all kept: the vendor's own set stays
        else:
            assert bounding == ["CapabilityBoundingSet=", f"CapabilityBoundingSet={' '.join(kept)}"]


def test_items_cover_the_profile() -> None:
    items = order_items(DIRECTIVES, [])
    assert sorted(items) == sorted(DIRECTIVES)
    assert items[:3] == ["PrivateUsers", "SystemCallFilter", "ProtectSystem"]
