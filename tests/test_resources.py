"""handlers.resources: thresholds, disk and inode checks, memory, oom-kill."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.resources import (
    Threshold,
    check_disk,
    format_size,
    memory_status,
    oom_killed,
)
from unitgen.errors import PolicyError, UnitgenError

# --- Threshold.parse -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10%", Threshold(percent=10.0)),
        ("0%", Threshold(percent=0.0)),
        ("100%", Threshold(percent=100.0)),
        ("2.5%", Threshold(percent=2.5)),
        (" 15 % ", Threshold(percent=15.0)),
        ("512M", Threshold(bytes=512 * 1024**2)),
        ("1G", Threshold(bytes=1024**3)),
        ("1.5G", Threshold(bytes=3 * 1024**3 // 2)),
        ("2T", Threshold(bytes=2 * 1024**4)),
        ("1P", Threshold(bytes=1024**5)),
        ("64K", Threshold(bytes=65536)),
        ("100B", Threshold(bytes=100)),
        ("4096", Threshold(bytes=4096)),
        ("0", Threshold(bytes=0)),
        ("9007199254740993", Threshold(bytes=9007199254740993)),
        ("8191P", Threshold(bytes=8191 * 1024**5)),
        (1024, Threshold(bytes=1024)),
    ],
)
def test_parse_accepts_systemd_style(text: str | int, expected: Threshold) -> None:
    assert Threshold.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "%",
        "-5%",
        "101%",
        "10%%",
        "ten%",
        "1e3",
        "512m",  # systemd's suffixes are upper case only
        "1KB",
        "1 G B",
        "-1G",
        "1,5G",
        "G",
        "nan",
        "inf",
        "1" * 40 + "P",
        "\u0661\u0660%",  # Arabic-Indic digits are not digits here
        "10% free",
        "0x10",
    ],
)
def test_parse_rejects_bad_input_with_one_line_policy_error(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        Threshold.parse(text, what="disk.min_free")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("disk.min_free: ")
    assert isinstance(info.value, UnitgenError) and isinstance(info.value, ValueError)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("value", [-1, 2**63, True, 1.5, None, ["10%"]])
def test_parse_rejects_wrong_types(value: object) -> None:
    with pytest.raises(PolicyError):
        Threshold.parse(value)  # type: ignore[arg-type]


def test_long_bad_input_is_truncated_in_the_message() -> None:
    with pytest.raises(PolicyError) as info:
        Threshold.parse("x" * 10_000)
    assert len(str(info.value)) < 200


@given(st.text(max_size=30))
def test_parse_never_raises_anything_but_policy_error(text: str) -> None:
    try:
        t = Threshold.parse(text)
    except PolicyError as exc:
        assert "\n" not in str(exc)
    else:
        assert (t.percent is None) != (t.bytes is None)
        assert t.bytes is None or 0 <= t.bytes < 2**63
        assert t.percent is None or 0 <= t.percent <= 100


@given(st.integers(min_value=0, max_value=2**22), st.sampled_from(["", "B", "K", "M", "G", "T"]))
def test_parse_round_trips_integers(n: int, unit: str) -> None:
    scale = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    assert Threshold.parse(f"{n}{unit}").bytes == n * scale


def test_required_and_satisfied() -> None:
    ten = Threshold.parse("10%")
    assert ten.required(1000) == 100
    assert ten.required(1001) == 101  # rounded up: never less than asked
    assert ten.satisfied(100, 1000) and not ten.satisfied(99, 1000)
    both = Threshold(percent=10.0, bytes=500)
    assert both.required(1000) == 500 and both.required(10_000) == 1000
    assert Threshold().satisfied(0, 1000)
    assert str(both) == "10% and 500B" and str(Threshold.parse("1.5G")) == "1.5G"
    assert str(Threshold()) == "none"


def test_format_size() -> None:
    assert format_size(0) == "0B"
    assert format_size(1023) == "1023B"
    assert format_size(1024) == "1K"
    assert format_size(1536 * 1024**2) == "1.5G"


# --- check_disk --------------------------------------------------------------------------------


def test_check_disk_on_a_real_path(tmp_path: Path) -> None:
    vfs = os.statvfs(tmp_path)
    [status] = check_disk(
        [str(tmp_path)], min_free=Threshold.parse("0%"), min_free_inodes=Threshold.parse("0%")
    )
    assert status.ok
    assert status.path == str(tmp_path) and status.checked_path == str(tmp_path)
    assert status.total_bytes == vfs.f_blocks * vfs.f_frsize
    assert 0 < status.free_bytes <= status.total_bytes
    assert status.total_inodes == vfs.f_files
    assert "missing" not in status.reason


def test_check_disk_fails_an_impossible_threshold(tmp_path: Path) -> None:
    [status] = check_disk(
        [str(tmp_path)], min_free=Threshold.parse("1P"), min_free_inodes=Threshold.parse("0%")
    )
    assert not status.ok
    assert status.reason.startswith(f"{tmp_path}: low disk space: ")
    assert status.reason.endswith("need 1P")


def test_check_disk_inodes(tmp_path: Path) -> None:
    [status] = check_disk(
        [str(tmp_path)], min_free=Threshold(), min_free_inodes=Threshold(bytes=2**62)
    )
    if status.total_inodes == 0:
        assert status.ok  # this filesystem has no inode limit at all
    else:
        assert not status.ok and "low inodes" in status.reason


def test_missing_path_checks_nearest_existing_parent(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "yet" / "there"
    [status] = check_disk(
        [str(missing)], min_free=Threshold.parse("0%"), min_free_inodes=Threshold()
    )
    assert status.ok
    assert status.path == str(missing)
    assert status.checked_path == str(tmp_path)
    assert f"(missing; checked {tmp_path})" in status.reason


def test_several_paths_keep_their_order(tmp_path: Path) -> None:
    paths = [str(tmp_path), "/", str(tmp_path / "nope")]
    statuses = check_disk(paths, min_free=Threshold(), min_free_inodes=Threshold())
    assert [s.path for s in statuses] == paths


# --- memory ------------------------------------------------------------------------------------

MEMINFO = """MemTotal:        8000000 kB
MemFree:          100000 kB
MemAvailable:    2000000 kB
Buffers:           50000 kB
Cached:           300000 kB
HugePages_Total:       0
"""


def test_memory_ok_and_low(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text(MEMINFO)
    ok = memory_status(Threshold.parse("10%"), str(f))
    assert ok.ok
    assert ok.available_bytes == 2_000_000 * 1024 and ok.total_bytes == 8_000_000 * 1024
    low = memory_status(Threshold.parse("30%"), str(f))
    assert not low.ok
    assert low.reason.startswith("low memory: ") and low.reason.endswith("need 30%")
    assert not memory_status(Threshold.parse("3G"), str(f)).ok


def test_memory_without_memavailable_is_estimated(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text("\n".join(line for line in MEMINFO.splitlines() if "Available" not in line))
    status = memory_status(Threshold.parse("1%"), str(f))
    assert status.available_bytes == (100000 + 50000 + 300000) * 1024
    assert "estimated" in status.reason


@pytest.mark.parametrize("content", ["", "garbage\n\x00\xff", "MemAvailable: lots kB\n"])
def test_memory_with_broken_file_is_not_held_against_the_unit(tmp_path: Path, content: str) -> None:
    f = tmp_path / "meminfo"
    f.write_text(content, errors="surrogateescape")
    status = memory_status(Threshold.parse("10%"), str(f))
    assert status.ok and "not checked" in status.reason


def test_memory_with_missing_file(tmp_path: Path) -> None:
    status = memory_status(Threshold.parse("10%"), str(tmp_path / "none"))
    assert status.ok and "could not read" in status.reason


def test_memory_on_this_machine() -> None:
    status = memory_status(Threshold.parse("0%"))
    assert status.ok and 0 < status.available_bytes <= status.total_bytes


# --- oom -----------------------------------------------------------------------------------------


def test_oom_killed() -> None:
    assert oom_killed("oom-kill", 2, 9)
    assert oom_killed("oom-kill", 1, 0)
    assert not oom_killed("signal", 2, 9)  # a bare SIGKILL is not proof of the OOM killer
    assert not oom_killed("exit-code", 1, 1)
    assert not oom_killed("", 0, 0)
