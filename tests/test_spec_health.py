"""The health keys of the spec: start_period, successes, startup, expect_*, gate.

Bad input is one line naming the file and key; hostile values never get past
the loader as anything but a clean problem or a clean value.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spec_toml import dumps

from unitgen.errors import SpecError
from unitgen.model import Health, Probe
from unitgen.policy import from_json, policy_from_service, to_json
from unitgen.specfile import parse_spec

SRC = "health.toml"


def spec(health: dict[str, Any], table: str = "service.api") -> str:
    body: dict[str, Any] = {"health": health}
    if table == "service.api":
        return dumps({"service": {"api": {"exec": ["/usr/bin/api"], **body}}})
    return dumps({"override": {"nginx.service": body}})


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, SRC)
    return str(info.value).splitlines()


def test_defaults_make_a_slow_starter_safe() -> None:
    health = parse_spec(spec({"tcp": "127.0.0.1:80"}), SRC).services["api"].health
    assert health == Health(Probe("tcp", "127.0.0.1:80"))
    # A JVM that takes a minute to open its port is inside the default start period.
    assert health.start_period >= 60.0 and health.successes == 1 and not health.gate
    assert health.start_probe == health.probe


def test_all_keys_round_trip_through_the_policy() -> None:
    text = spec(
        {
            "http": "http://127.0.0.1:8080/healthz",
            "expect_status": [200, "3xx", "204-206"],
            "expect_body": "UP",
            "successes": 2,
            "start_period": "5min",
            "start_interval": "500ms",
            "startup": {"tcp": "127.0.0.1:8080", "timeout": "1s"},
            "gate": True,
        }
    )
    svc = parse_spec(text, SRC).services["api"]
    assert svc.health is not None
    assert svc.health.probe.expect_status == ((200, 200), (204, 206), (300, 399))
    policy = policy_from_service(svc, ())
    assert from_json(to_json(policy), "p.json").health == svc.health


@pytest.mark.parametrize(
    ("health", "key", "fragment"),
    [
        ({"tcp": "h:1", "expect_status": 200}, "service.api.health.expect_status", "only an http"),
        ({"tcp": "h:1", "expect_body": "x"}, "service.api.health.expect_body", "only an http"),
        ({"http": "http://h/", "expect_status": 99}, "service.api.health.expect_status", "100"),
        ({"http": "http://h/", "expect_status": [200, "6xx"]}, "expect_status[1]", "'6xx'"),
        ({"http": "http://h/", "expect_status": "300-200"}, "expect_status", "'300-200'"),
        ({"http": "http://h/", "expect_status": []}, "expect_status", "1 to 64"),
        ({"http": "http://h/", "expect_status": True}, "expect_status", "boolean"),
        ({"http": "http://h/", "expect_body": ""}, "expect_body", "empty"),
        ({"http": "http://h/", "expect_body": "x" * 1025}, "expect_body", "at most 1024"),
        ({"tcp": "h:1", "successes": 0}, "service.api.health.successes", "from 1 to 1000"),
        ({"tcp": "h:1", "start_period": "soon"}, "service.api.health.start_period", "duration"),
        ({"tcp": "h:1", "start_period": "2d"}, "service.api.health.start_period", ""),
        ({"tcp": "h:1", "start_interval": 0}, "service.api.health.start_interval", ""),
        ({"tcp": "h:1", "gate": "yes"}, "service.api.health.gate", "true or false"),
        ({"tcp": "h:1", "gate": True, "start_period": 0}, "health.start_period", "positive"),
        ({"tcp": "h:1", "startup": {}}, "service.api.health.startup", "exactly one"),
        ({"tcp": "h:1", "startup": {"tcp": "h:1", "interval": "1s"}}, "startup.interval", ""),
        ({"tcp": "h:1", "startup": {"tcp": "h:1", "expect_body": "x"}}, "startup.expect_body", ""),
    ],
)
def test_bad_health_keys_are_one_line_at_the_key(
    health: dict[str, Any], key: str, fragment: str
) -> None:
    lines = problems(spec(health))
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{SRC}: ") and key in lines[0] and fragment in lines[0], lines


def test_gate_is_refused_in_a_drop_in() -> None:
    lines = problems(spec({"tcp": "127.0.0.1:80", "gate": True}, table="override"))
    assert lines == [
        f'{SRC}: override."nginx.service".health.gate: expected false: a drop-in cannot gate '
        "a vendor's unit on health (it would replace the unit's NotifyAccess=); use a "
        "[service.NAME] of your own"
    ]


def test_cli_exit_2_one_line_and_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "services.toml"
    path.write_text(spec({"http": "http://h/", "expect_status": "2xy"}))
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "unitgen",
            "render",
            str(path),
            "--out",
            str(out),
            "--policy-dir",
            str(tmp_path / "policy"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "service.api.health.expect_status" in res.stderr
    assert not out.exists() and not (tmp_path / "policy").exists()


SCALARS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["2xx", "5xx", "200-299", "0xx", "199-600", "1min", "0", "-1s"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=5))


@given(
    st.sampled_from(
        ["expect_status", "expect_body", "successes", "start_period", "start_interval", "gate"]
    ),
    VALUES,
)
@settings(max_examples=300, deadline=None)
def test_hostile_values_load_cleanly_or_fail_at_their_key(key: str, value: Any) -> None:
    text = spec({"http": "http://127.0.0.1/", key: value})
    try:
        health = parse_spec(text, SRC).services["api"].health
    except SpecError as exc:
        lines = str(exc).splitlines()
        assert lines and all(
            line.startswith(f"{SRC}: service.api.health.{key}") for line in lines
        ), lines
        return
    assert health is not None
    for low, high in health.probe.expect_status:
        assert 100 <= low <= high <= 599
    assert health.successes >= 1 and health.start_period >= 0 and health.start_interval > 0
