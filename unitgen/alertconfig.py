"""Alert targets as the recovery side reads them, checked by the spec's own key table.

``unitgen render`` copies each ``[alert.NAME]`` table, converted (a duration
becomes seconds, an array a list) and with its ``name``, into the policy of
every unit that names it. The handler reads it back with :func:`alert_config`,
through the same ``unitgen.speckeys.ALERT`` node the spec loader used, so the
spec and the runtime cannot disagree about what an alert target is:
``handlers.alerts.AlertTarget`` is built from what this returns.

One difference is deliberate: a policy holds the converted form, so text where
the conversion gives a number (``timeout = "5s"`` instead of ``5.0``) is
refused; it did not come from ``unitgen render``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unitgen.errors import PolicyError

__all__ = ["alert_config"]


def alert_config(mapping: object, *, name: str | None = None, source: str = "") -> dict[str, Any]:
    """The converted keys of one alert target, with the key table's defaults filled in.

    ``name`` is used when the mapping has no ``name`` key. Raises
    :class:`PolicyError`, one line naming ``source`` (the policy file, if
    known) and the key, for the first problem found.
    """
    # The key table costs tens of ms to import; only a unit with alerts pays for it.
    from unitgen.speckeys import ALERT
    from unitgen.specnodes import INVALID, Collector, Computed, join_key, scan_strings
    from unitgen.specvalues import alert_name

    prefix = f"{source}: " if source else ""
    if not isinstance(mapping, Mapping):
        raise PolicyError(f"{prefix}alert: expected a table, got {type(mapping).__name__}")
    table = {k: _as_toml(v) for k, v in mapping.items()}
    raw_name = table.pop("name", name)
    if not isinstance(raw_name, str):
        raise PolicyError(f"{prefix}alert.name: missing: the target's name")
    key = join_key("alert", raw_name)
    out = Collector(source)
    scan_strings(raw_name, out, "alert.name")
    problem = alert_name(raw_name) if not out.problems else None
    if problem is not None:
        out.add("alert.name", f"expected {problem}")
    scan_strings(table, out, key)
    converted = ALERT.check(table, key, out) if not out.problems else INVALID
    if out.problems or not isinstance(converted, dict):
        first = out.problems[0] if out.problems else None
        where = f"{first.key}: {first.message}" if first else f"{key}: invalid"
        raise PolicyError(prefix + where)
    for field, value in table.items():
        if isinstance(value, str) and not isinstance(converted[field], str):
            raise PolicyError(
                f"{prefix}{join_key(key, field)}: expected the rendered value "
                f"{converted[field]!r}, got {value!r} (a policy holds converted values)"
            )
        if isinstance(converted[field], float) and isinstance(value, int | float):
            # The spec rounded it to microseconds already; rounding the float again
            # could move it by one.
            converted[field] = float(value)
    variant = ALERT.variants[converted["type"]]
    for field, spec_field in variant.fields.items():
        default = spec_field.default
        if field not in converted and default is not None and not isinstance(default, Computed):
            converted[field] = spec_field.node.check(default, field, Collector(source))
    converted["name"] = raw_name
    return converted


def _as_toml(value: object) -> object:
    """Tuples as the lists TOML and JSON give: the spec's converted form uses tuples."""
    if isinstance(value, tuple):
        return [_as_toml(v) for v in value]
    if isinstance(value, list):
        return [_as_toml(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _as_toml(v) for k, v in value.items()}
    return value
