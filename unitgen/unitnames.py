"""systemd.unit(5) naming rules, as systemd's ``unit_name_is_valid()`` applies them.

A unit name is ``PREFIX[@[INSTANCE]].TYPE``: at most 255 characters, the
prefix and instance drawn from ASCII letters, digits and ``:-_.\\``, the
first ``@`` separating prefix from instance (an instance may contain more
``@``), and a known type suffix. ``foo@.service`` is a template,
``foo@bar.service`` an instance, ``foo.service`` a plain name.
"""

from __future__ import annotations

import enum
import functools
import string

__all__ = [
    "UNIT_NAME_MAX",
    "UNIT_TYPES",
    "UnitNameKind",
    "unit_name_problem",
]

# systemd's UNIT_NAME_MAX is 256 including the terminating NUL.
UNIT_NAME_MAX = 255

UNIT_TYPES = frozenset(
    {
        "service",
        "socket",
        "device",
        "mount",
        "automount",
        "swap",
        "target",
        "path",
        "timer",
        "slice",
        "scope",
    }
)

_VALID_CHARS = frozenset(string.ascii_letters + string.digits + ":-_.\\")


def _show(name: str) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


class UnitNameKind(enum.Flag):
    PLAIN = enum.auto()
    INSTANCE = enum.auto()
    TEMPLATE = enum.auto()
    ANY = PLAIN | INSTANCE | TEMPLATE


def classify(name: str) -> UnitNameKind | None:
    """The kind of a syntactically valid unit name, or None when it is invalid."""
    return None if unit_name_problem(name) else _kind(name)


def _kind(name: str) -> UnitNameKind:
    stem = name.rsplit(".", 1)[0]
    _, at, instance = stem.partition("@")
    if not at:
        return UnitNameKind.PLAIN
    return UnitNameKind.INSTANCE if instance else UnitNameKind.TEMPLATE


@functools.lru_cache(maxsize=8192)
def unit_name_problem(
    name: str,
    allowed: UnitNameKind = UnitNameKind.ANY,
    types: frozenset[str] = UNIT_TYPES,
) -> str | None:
    """What is wrong with ``name`` as a unit name, phrased to follow "expected ...";
    None when it is valid, of an allowed kind and of an allowed type."""
    if not name:
        return "a unit name like 'foo.service', got an empty string"
    if len(name) > UNIT_NAME_MAX:
        return f"a unit name of at most {UNIT_NAME_MAX} characters, got {len(name)}"
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return f"a unit name with a type suffix like 'foo.service', got {_show(name)}"
    if suffix not in UNIT_TYPES:
        known = ", ".join(sorted(UNIT_TYPES))
        return f"a unit type suffix ({known}), got {('.' + suffix)!r} in {_show(name)}"
    bad = sorted({c for c in stem if c not in _VALID_CHARS and c != "@"})
    if bad:
        shown = "".join(bad)
        return (
            "a unit name of ASCII letters, digits and ':-_.\\' (plus '@' for templates), "
            f"got {shown!r} in {_show(name)}"
        )
    if stem.startswith("@"):
        return f"a unit name with a prefix before '@', got {_show(name)}"
    kind = _kind(name)
    if not kind & allowed:
        wanted = " or ".join(
            k.name.lower()
            for k in (UnitNameKind.PLAIN, UnitNameKind.INSTANCE, UnitNameKind.TEMPLATE)
            if k & allowed and k.name
        )
        assert kind.name is not None
        return f"a {wanted} unit name, got the {kind.name.lower()} {_show(name)}"
    if suffix not in types:
        return f"a unit of type {', '.join('.' + t for t in sorted(types))}, got {_show(name)}"
    return None
