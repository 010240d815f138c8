"""The backend's records as the D-Bus values of ``org.unitgen.Recovery1``'s replies.

:mod:`handlers.dbus_api` hands whatever the backend returned (a dataclass, a
mapping, or an iterable of either) to :func:`as_records`, and each record to
:func:`vardict`, which gives every value a Variant of a fixed, predictable
type. Text is redacted where it looks secret and cut to :data:`MAX_REPLY_TEXT`.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

from handlers.buslib import ServiceLibrary
from handlers.public_fields import REDACTED, looks_secret

__all__ = ["MAX_REPLY_TEXT", "as_records", "reply_text", "vardict"]

# Strings in replies: long enough for any unit name or error line, short enough for one message.
MAX_REPLY_TEXT = 4096


def reply_text(value: str) -> str:
    if looks_secret(value):
        return REDACTED
    return value if len(value) <= MAX_REPLY_TEXT else value[: MAX_REPLY_TEXT - 1] + "…"


def _variant(lib: ServiceLibrary, value: Any, depth: int = 0) -> Any | None:
    """``value`` as a Variant of a fixed, predictable type; None for "leave it out"."""
    if value is None or depth > 4:
        return None
    if isinstance(value, enum.Enum):
        return _variant(lib, value.value, depth)
    if isinstance(value, bool):
        return lib.Variant("b", value)
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return lib.Variant("x", value)
        return lib.Variant("s", str(value))
    if isinstance(value, float):
        return lib.Variant("d", value) if math.isfinite(value) else None
    if isinstance(value, str):
        return lib.Variant("s", reply_text(value))
    if isinstance(value, PurePath):
        return lib.Variant("s", reply_text(str(value)))
    if isinstance(value, datetime.datetime):
        return lib.Variant("s", value.isoformat())
    if isinstance(value, Mapping) or dataclasses.is_dataclass(value):
        return lib.Variant("a{sv}", vardict(lib, _record(value), depth + 1))
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        if all(isinstance(i, str) for i in items):
            return lib.Variant("as", [reply_text(i) for i in items])
        if items and all(_is_record(i) for i in items):
            # e.g. History's attempts of an incident: typed, so busctl shows them as such.
            return lib.Variant("aa{sv}", [vardict(lib, _record(i), depth + 1) for i in items])
        return lib.Variant("av", [v for i in items if (v := _variant(lib, i, depth + 1))])
    return lib.Variant("s", reply_text(str(value)))


def vardict(lib: ServiceLibrary, record: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        variant = _variant(lib, value, depth)
        if variant is not None:
            out[str(key)] = variant
    return out


def _record(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): v for k, v in obj.items()}
    return {"value": obj}


def _is_record(obj: Any) -> bool:
    return isinstance(obj, Mapping) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type))


def as_records(obj: Any) -> list[dict[str, Any]]:
    """Whatever the backend returned, as a list of flat records."""
    if obj is None:
        return []
    if isinstance(obj, Mapping):
        values = list(obj.values())
        if values and all(_is_record(v) for v in values):
            # {unit: record}: keep the key as the record's unit.
            return [{"unit": str(k), **_record(v)} for k, v in obj.items()]
        return [_record(obj)]
    if _is_record(obj):
        return [_record(obj)]
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes):
        return [_record(item) for item in obj]
    return [_record(obj)]
