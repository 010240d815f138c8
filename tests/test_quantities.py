"""Durations and sizes: systemd's syntax in, exact numbers out, and round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unitgen.quantities import (
    MAX_DURATION_USEC,
    MAX_SIZE,
    QuantityError,
    format_duration,
    format_duration_usec,
    format_percent,
    format_size,
    parse_duration,
    parse_duration_usec,
    parse_percent,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("500ms", 0.5),
        ("1min 30s", 90.0),
        ("1min30s", 90.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("250us", 0.00025),
        ("250usec", 0.00025),
        ("3 msec", 0.003),
        ("1.5s", 1.5),
        ("30", 30.0),
        ("0", 0.0),
        (" 2 min ", 120.0),
        ("1h 2min 3s 4ms 5us", 3723.004005),
        ("2 hours 1 minute", 7260.0),
        ("1y", 31557600.0),
        ("1M", 2629800.0),
        (7, 7.0),
        (2.5, 2.5),
    ],
)
def test_duration_examples(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "soon",
        "-5s",
        "5",  # valid, control below
        "nan",
        "inf",
        "infinity",
        "1e3s",
        "5 s 3",
        "5sec5",
        "5 parsecs",
        "s",
        "1min 30",
        "9" * 5000,
        "1" + "0" * 30 + "s",
        "5S",
    ],
)
def test_duration_rejects(text: str) -> None:
    if text == "5":
        assert parse_duration(text) == 5.0
        return
    with pytest.raises(QuantityError):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, -0.5, math.nan, math.inf, -math.inf, 1e300, True, None, []])
def test_duration_rejects_non_strings(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_duration(value)  # type: ignore[arg-type]


def test_duration_overflow_boundary() -> None:
    assert parse_duration_usec(f"{MAX_DURATION_USEC}us") == MAX_DURATION_USEC
    with pytest.raises(QuantityError, match="584,000 years"):
        parse_duration_usec(f"{MAX_DURATION_USEC + 1}us")


@given(st.integers(min_value=0, max_value=MAX_DURATION_USEC))
def test_duration_round_trip_usec(usec: int) -> None:
    # format -> parse is exact at systemd's microsecond resolution, over the whole range.
    assert parse_duration_usec(format_duration_usec(usec)) == usec


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_round_trip_seconds(usec: int) -> None:
    seconds = usec / 1_000_000
    assert parse_duration(format_duration(seconds)) == seconds


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["us", "ms", "s", "min", "h", "d"])),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["", " ", "  "]),
)
def test_duration_sum_of_components(parts: list[tuple[int, str]], sep: str) -> None:
    factor = {"us": 1, "ms": 1000, "s": 10**6, "min": 60 * 10**6, "h": 3600 * 10**6}
    factor["d"] = 86400 * 10**6
    text = sep.join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration_usec(text) == sum(n * factor[u] for n, u in parts)


def test_format_duration_examples() -> None:
    assert format_duration(0) == "0"
    assert format_duration(90) == "1min 30s"
    assert format_duration(5400.5) == "1h 30min 500ms"
    assert format_duration(0.000001) == "1us"
    with pytest.raises(QuantityError):
        format_duration(-1)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("512B", 512),
        ("64K", 65536),
        ("64KB", 65536),
        ("64KiB", 65536),
        ("512M", 512 * 1024**2),
        ("1G", 1024**3),
        ("1.5G", 1536 * 1024**2),
        ("2T", 2 * 1024**4),
        ("1P", 1024**5),
        ("1 G", 1024**3),
        (0, 0),
        (4096, 4096),
    ],
)
def test_size_examples(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "G", "1g", "1kb", "-1", "1.G", "1X", "1iB", "80%", "1e3", "1GG", "16E", "nan"]
)
def test_size_rejects(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_size(text)


def test_size_lowercase_hint() -> None:
    with pytest.raises(QuantityError, match="upper case"):
        parse_size("1g")


@pytest.mark.parametrize("value", [-1, MAX_SIZE + 1, True, 1.5, None])
def test_size_rejects_non_strings(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_size(value)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_format_size_examples() -> None:
    assert format_size(1024**3) == "1G"
    assert format_size(1536 * 1024) == "1536K"
    assert format_size(7) == "7"
    assert format_size(0) == "0"


@pytest.mark.parametrize(("text", "pct"), [("80%", 80.0), ("0.5%", 0.5), ("100%", 100.0)])
def test_percent(text: str, pct: float) -> None:
    assert parse_percent(text) == pct


@pytest.mark.parametrize("text", ["0%", "101%", "80", "%", "-5%", "abc%", "1e2%"])
def test_percent_rejects(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_percent(text)


def test_percent_unbounded_for_cpu() -> None:
    assert parse_percent("250%", maximum=None) == 250.0


@given(st.floats(min_value=0.001, max_value=100.0, allow_nan=False))
def test_percent_round_trip(pct: float) -> None:
    assert parse_percent(format_percent(pct)) == pytest.approx(pct, rel=1e-5)
