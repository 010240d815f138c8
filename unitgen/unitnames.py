"""systemd.unit(5) naming rules, as systemd's ``unit_name_is_valid()`` applies them.

A unit name is ``PREFIX[@[INSTANCE]].TYPE``: at most 255 characters, the
prefix and instance drawn from ASCII letters, digits and ``:-_.\\``, the
first ``@`` separating prefix from instance (an instance may contain more
``@``), and a known type suffix. ``foo@.service`` is a template,
``foo@bar.service`` an instance, ``foo.service`` a plain name.

:func:`unit_name_problem` is systemd's rule, for names unitgen only refers to
(``requires``, ``after``...). :func:`managed_unit_problem` is the one rule for
every unit unitgen renders, recovers, locks or keeps history of: the spec, the
command line, the recovery engine, the listener's policy scan and the D-Bus
API all call it, so a name one of them accepts is accepted by all.
"""

from __future__ import annotations

import enum
import functools
import string

__all__ = [
    "MANAGED_NAME_MAX",
    "RECOVER_PREFIX",
    "RECOVER_TEMPLATE",
    "UNIT_NAME_MAX",
    "UNIT_TYPES",
    "UnitNameKind",
    "managed_unit_problem",
    "recovery_instance",
    "reserved_name_problem",
    "unit_name_problem",
]

# systemd's UNIT_NAME_MAX is 256 including the terminating NUL.
UNIT_NAME_MAX = 255

# Every unit unitgen manages gets OnFailure=unitgen-recover@%n.service. systemd
# expands %n to the unit's full name as it is (the name's characters need no
# escaping in an instance) and drops the dependency, with "File name too long",
# when the result exceeds UNIT_NAME_MAX: the unit would never be recovered.
RECOVER_PREFIX = "unitgen-recover@"
RECOVER_TEMPLATE = f"{RECOVER_PREFIX}.service"
MANAGED_NAME_MAX = UNIT_NAME_MAX - len(RECOVER_TEMPLATE)

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


def recovery_instance(unit: str) -> str:
    """The recovery unit systemd starts when ``unit`` fails (OnFailure= expands ``%n``)."""
    return f"{RECOVER_PREFIX}{unit}.service"


@functools.lru_cache(maxsize=8192)
def reserved_name_problem(unit: str) -> str | None:
    """What a spec's unit must be instead, when it would be (or shadow) unitgen's own
    recovery template ``unitgen-recover@.service``; None otherwise."""
    if unit.startswith(RECOVER_PREFIX):
        return (
            f"a name not starting with {RECOVER_PREFIX!r}, which is reserved for unitgen's recovery"
        )
    return None


def managed_unit_problem(
    name: str,
    allowed: UnitNameKind = UnitNameKind.ANY,
    types: frozenset[str] = UNIT_TYPES,
) -> str | None:
    """:func:`unit_name_problem`, plus what unitgen needs of a unit it manages.

    - It does not start with '.' or '-'. systemd accepts ``..service`` and
      ``-x.service``, but the first is a hidden file in the unit and lock
      directories, and the second reads as an option to ``unitgen recover``
      and ``systemctl``, which the recovery unit passes the name to.
    - Its recovery instance, ``unitgen-recover@NAME.service``, fits in
      UNIT_NAME_MAX; for a template, the instance of its shortest instance.
    """
    problem = unit_name_problem(name, allowed, types)
    if problem is not None:
        return problem
    if name[0] in ".-":
        return (
            f"a unit name not starting with {name[0]!r} (unitgen recover and its lock and "
            f"policy files could not use it), got {_show(name)}"
        )
    shortest = len(name) + (1 if _kind(name) is UnitNameKind.TEMPLATE else 0)
    if shortest > MANAGED_NAME_MAX:
        what = "a template whose instances have" if shortest > len(name) else "a unit name of"
        return (
            f"{what} at most {MANAGED_NAME_MAX} characters, so that its recovery unit "
            f"{RECOVER_PREFIX}NAME.service fits systemd's {UNIT_NAME_MAX}, got {len(name)}"
        )
    return None
