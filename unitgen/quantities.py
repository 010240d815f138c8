"""Durations and sizes, in the syntax systemd itself accepts.

Durations follow systemd.time(7) time spans: ``"5s"``, ``"500ms"``,
``"1min 30s"``, ``"2h"``, ``"1d"``, ``"1.5s"``; a bare number is seconds.
They are parsed to a whole number of microseconds first (systemd's own
resolution) and only then turned into float seconds, so that
``parse_duration(format_duration(x)) == x`` for every value this module
produces.

Sizes follow systemd's ``parse_size()``: a decimal number with an optional
``K``/``M``/``G``/``T``/``P``/``E`` suffix in base 1024, an optional trailing
``B`` (``"512"``, ``"512B"``, ``"64K"``, ``"1.5G"``, ``"1GB"``).

Both parsers raise :class:`QuantityError` (a ``ValueError``) with a message
that is fit to follow ``expected ...``; the spec loader turns it into a
:class:`unitgen.errors.SpecProblem` at the right key.
"""

from __future__ import annotations

import functools
import math
import re
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

__all__ = [
    "DURATION_PATTERN",
    "MAX_DURATION_USEC",
    "MAX_SIZE",
    "PERCENT_PATTERN",
    "SIZE_PATTERN",
    "QuantityError",
    "format_duration",
    "format_duration_usec",
    "format_percent",
    "format_size",
    "parse_duration",
    "parse_duration_usec",
    "parse_percent",
    "parse_size",
]


class QuantityError(ValueError):
    """A duration, size or percentage that does not parse. Plain ValueError on purpose:
    the spec loader catches it and reports a SpecProblem; nothing else sees it."""


USEC_PER_SEC = 1_000_000

# systemd.time(7), longest spellings first is not needed: the regex anchors each unit.
_DURATION_UNITS: dict[str, int] = {
    "usec": 1,
    "us": 1,
    "µs": 1,
    "μs": 1,
    "msec": 1_000,
    "ms": 1_000,
    "seconds": USEC_PER_SEC,
    "second": USEC_PER_SEC,
    "sec": USEC_PER_SEC,
    "s": USEC_PER_SEC,
    "minutes": 60 * USEC_PER_SEC,
    "minute": 60 * USEC_PER_SEC,
    "min": 60 * USEC_PER_SEC,
    "m": 60 * USEC_PER_SEC,
    "hours": 3600 * USEC_PER_SEC,
    "hour": 3600 * USEC_PER_SEC,
    "hr": 3600 * USEC_PER_SEC,
    "h": 3600 * USEC_PER_SEC,
    "days": 86400 * USEC_PER_SEC,
    "day": 86400 * USEC_PER_SEC,
    "d": 86400 * USEC_PER_SEC,
    "weeks": 7 * 86400 * USEC_PER_SEC,
    "week": 7 * 86400 * USEC_PER_SEC,
    "w": 7 * 86400 * USEC_PER_SEC,
    # systemd's month and year are averages: 30.44 and 365.25 days.
    "months": 2_629_800 * USEC_PER_SEC,
    "month": 2_629_800 * USEC_PER_SEC,
    "M": 2_629_800 * USEC_PER_SEC,
    "years": 31_557_600 * USEC_PER_SEC,
    "year": 31_557_600 * USEC_PER_SEC,
    "y": 31_557_600 * USEC_PER_SEC,
}

# systemd keeps time spans in a uint64 of microseconds and reserves the maximum
# for "infinity"; anything at or past it would wrap in the unit file.
MAX_DURATION_USEC = 2**64 - 2

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_UNIT_ALT = "|".join(sorted((re.escape(u) for u in _DURATION_UNITS), key=len, reverse=True))
_COMPONENT = re.compile(rf"\s*({_NUMBER})\s*({_UNIT_ALT})(?![A-Za-zµμ])")
_BARE = re.compile(rf"\s*({_NUMBER})\s*")

# Loose patterns for the JSON Schema (editors); the parsers below are the authority.
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}|(?:{_NUMBER}\s*(?:{_UNIT_ALT})\s*)+)\s*$"
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?\s*[KMGTPE]?(i?B)?$"
PERCENT_PATTERN = r"^[0-9]+(\.[0-9]+)?%$"


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regexes admit only digits
        raise QuantityError(f"a number, got {text!r}") from exc


def parse_duration_usec(value: str | int | float) -> int:
    """A time span as whole microseconds (rounded down, as systemd does)."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise QuantityError(f"a duration like '5s' or '1min 30s', got {_short(value)}")
    return _duration_usec(value)


# A spec repeats the same few spellings ("5s", "10min") thousands of times.
@functools.lru_cache(maxsize=4096)
def _duration_usec(value: str | int | float) -> int:
    if isinstance(value, bool):
        raise QuantityError(f"a duration like '5s' or '1min 30s', got {_short(value)}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise QuantityError(f"a finite duration of zero or more, got {_short(value)}")
        return _bounded(Decimal(value) * USEC_PER_SEC, value)
    if not isinstance(value, str):
        raise QuantityError(f"a duration like '5s' or '1min 30s', got {_short(value)}")
    bare = _BARE.fullmatch(value)
    if bare:
        return _bounded(_decimal(bare.group(1)) * USEC_PER_SEC, value)
    pos = 0
    total_dec = Decimal(0)
    matched = False
    while pos < len(value):
        m = _COMPONENT.match(value, pos)
        if m is None:
            if value[pos:].strip() == "" and matched:
                break
            raise QuantityError(f"a duration like '5s' or '1min 30s', got {_short(value)}")
        total_dec += _decimal(m.group(1)) * _DURATION_UNITS[m.group(2)]
        matched = True
        pos = m.end()
    if not matched:
        raise QuantityError(f"a duration like '5s' or '1min 30s', got {_short(value)}")
    return _bounded(total_dec, value)


def _bounded(usec: Decimal, original: object) -> int:
    # Compare before int(): a 5,000-digit number must not reach int's digit limit.
    if usec > MAX_DURATION_USEC:
        raise QuantityError(
            f"a duration systemd can represent (under 584,000 years), got {_short(original)}"
        )
    return int(usec.to_integral_value(rounding=ROUND_FLOOR))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: str | int | float) -> float:
    """A systemd time span as float seconds. Raises QuantityError."""
    return parse_duration_usec(value) / USEC_PER_SEC


_FORMAT_STEPS: tuple[tuple[str, int], ...] = (
    ("d", 86400 * USEC_PER_SEC),
    ("h", 3600 * USEC_PER_SEC),
    ("min", 60 * USEC_PER_SEC),
    ("s", USEC_PER_SEC),
    ("ms", 1_000),
    ("us", 1),
)


def format_duration(seconds: float) -> str:
    """The shortest exact systemd spelling of ``seconds`` at microsecond resolution."""
    if not math.isfinite(seconds) or seconds < 0:
        raise QuantityError(f"a finite duration of zero or more, got {seconds!r}")
    return format_duration_usec(round(seconds * USEC_PER_SEC))


def format_duration_usec(usec: int) -> str:
    """The shortest exact systemd spelling of a whole number of microseconds."""
    if usec < 0:
        raise QuantityError(f"a duration of zero or more, got {usec!r}")
    if usec == 0:
        return "0"
    parts: list[str] = []
    for suffix, size in _FORMAT_STEPS:
        count, usec = divmod(usec, size)
        if count:
            parts.append(f"{count}{suffix}")
    return " ".join(parts)


_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]?)(i?B)?\s*")
_SIZE_FACTORS = {
    "": 1,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "T": 1024**4,
    "P": 1024**5,
    "E": 1024**6,
}
# systemd's parse_size() rejects anything that does not fit in a uint64.
MAX_SIZE = 2**64 - 1


def parse_size(value: str | int) -> int:
    """A size as int bytes (base 1024 suffixes). Raises QuantityError."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise QuantityError(f"a size like '512M' or '1G', got {_short(value)}")
    return _size(value)


@functools.lru_cache(maxsize=4096)
def _size(value: str | int) -> int:
    if isinstance(value, bool):
        raise QuantityError(f"a size like '512M' or '1G', got {_short(value)}")
    if isinstance(value, int):
        if value < 0:
            raise QuantityError(f"a size of zero or more, got {_short(value)}")
        if value > MAX_SIZE:
            raise QuantityError(f"a size below 16E, got {_short(value)}")
        return value
    if not isinstance(value, str):
        raise QuantityError(f"a size like '512M' or '1G', got {_short(value)}")
    m = _SIZE.fullmatch(value)
    if m is None or (m.group(3) and m.group(3).startswith("i") and not m.group(2)):
        hint = (
            " (suffixes are upper case: K, M, G, T)" if re.search(r"[kmgtpe]b?\s*$", value) else ""
        )
        raise QuantityError(f"a size like '512M' or '1G'{hint}, got {_short(value)}")
    number = _decimal(m.group(1)) * _SIZE_FACTORS[m.group(2)]
    if number > MAX_SIZE:
        raise QuantityError(f"a size below 16E, got {_short(value)}")
    return int(number.to_integral_value(rounding=ROUND_FLOOR))


def format_size(size: int) -> str:
    """The largest exact base-1024 spelling of ``size`` ("1G", "1536K", "7")."""
    if isinstance(size, bool) or size < 0:
        raise QuantityError(f"a size of zero or more, got {size!r}")
    for suffix in ("E", "P", "T", "G", "M", "K"):
        factor = _SIZE_FACTORS[suffix]
        if size and size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


_PERCENT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")


def parse_percent(value: str, *, maximum: float | None = 100.0) -> float:
    """``"80%"`` -> 80.0. Zero is refused: a 0% limit or floor is always a mistake."""
    if not isinstance(value, str):
        raise QuantityError(f"a percentage like '80%', got {_short(value)}")
    m = _PERCENT.fullmatch(value)
    if m is None:
        raise QuantityError(f"a percentage like '80%', got {_short(value)}")
    number = float(m.group(1))
    if not math.isfinite(number) or number <= 0:
        raise QuantityError(f"a percentage above 0%, got {_short(value)}")
    if maximum is not None and number > maximum:
        raise QuantityError(f"a percentage of at most {maximum:g}%, got {_short(value)}")
    return number


def format_percent(percent: float) -> str:
    return f"{percent:g}%"
