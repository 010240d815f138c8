"""systemd.unit(5) naming rules, checked against systemd's own unit_name_is_valid()."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unitgen.unitnames import UNIT_NAME_MAX, UnitNameKind, classify, unit_name_problem


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("nginx.service", UnitNameKind.PLAIN),
        ("network-online.target", UnitNameKind.PLAIN),
        ("dev-sda1.device", UnitNameKind.PLAIN),
        ("systemd-fsck@dev-disk-by\\x2duuid-1.service", UnitNameKind.INSTANCE),
        ("getty@tty1.service", UnitNameKind.INSTANCE),
        ("worker@.service", UnitNameKind.TEMPLATE),
        ("a@b@c.service", UnitNameKind.INSTANCE),  # the instance may hold more '@'
        ("x:y_z.timer", UnitNameKind.PLAIN),
        ("a" * (UNIT_NAME_MAX - len(".service")) + ".service", UnitNameKind.PLAIN),
    ],
)
def test_valid(name: str, kind: UnitNameKind) -> None:
    assert unit_name_problem(name) is None
    assert classify(name) == kind


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("nginx", "type suffix"),
        (".service", "type suffix"),
        ("nginx.servic", "type suffix"),
        ("nginx.Service", "type suffix"),
        ("ng inx.service", "' '"),
        ("ng/inx.service", "'/'"),
        ("ngïnx.service", "'ï'"),
        ("a%i.service", "'%'"),
        ("@foo.service", "prefix before '@'"),
        ("@.service", "prefix before '@'"),
        ("a" * (UNIT_NAME_MAX - len(".service") + 1) + ".service", "at most 255"),
        ("a\nb.service", "'\\n'"),
    ],
)
def test_invalid(name: str, fragment: str) -> None:
    problem = unit_name_problem(name)
    assert problem is not None
    assert fragment in problem
    assert classify(name) is None


def test_kind_restriction() -> None:
    deps = UnitNameKind.PLAIN | UnitNameKind.INSTANCE
    assert unit_name_problem("foo@bar.service", deps) is None
    problem = unit_name_problem("foo@.service", deps)
    assert problem is not None and "template" in problem


def test_type_restriction() -> None:
    only_services = frozenset({"service"})
    assert unit_name_problem("nginx.service", types=only_services) is None
    problem = unit_name_problem("nginx.socket", types=only_services)
    assert problem is not None and ".service" in problem


_VALID = string.ascii_letters + string.digits + ":-_.\\"


def _reference(name: str) -> bool:
    """A transliteration of systemd's unit_name_is_valid(UNIT_NAME_ANY)."""
    if not name or len(name) >= 256:
        return False
    dot = name.rfind(".")
    if dot <= 0:
        return False
    if name[dot + 1 :] not in {
        "service", "socket", "device", "mount", "automount", "swap",
        "target", "path", "timer", "slice", "scope",
    }:  # fmt: skip
        return False
    at = -1
    for i, c in enumerate(name[:dot]):
        if c == "@" and at < 0:
            at = i
        if c not in _VALID + "@":
            return False
    return at != 0


@given(
    st.text(alphabet=_VALID + "@ %/é\n", max_size=20),
    st.sampled_from(["service", "target", "socket", "bogus", ""]),
)
def test_agrees_with_systemd_reference(stem: str, suffix: str) -> None:
    name = f"{stem}.{suffix}" if suffix else stem
    assert (unit_name_problem(name) is None) == _reference(name)
