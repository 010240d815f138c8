"""What the spec loader accepts, the recovery side accepts too.

The handler re-reads probes and alert targets from the rendered policy with its own
checks (handlers.probes, handlers.alerts). A value the loader lets through but the
handler refuses would only fail at the moment a unit fails, so the two are held
together here, with hostile strings included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_toml import dumps

from handlers.alerts import AlertTarget
from handlers.probes import ProbeSpec
from unitgen.errors import SpecError
from unitgen.specfile import load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "example.toml"
SRC = "spec.toml"

TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(" %\"'\\;:/@[]?#.-_09azAZ\t")), st.characters(codec="utf-8")
    ),
    max_size=30,
)


def test_every_probe_and_alert_of_the_example_is_accepted_by_the_handler() -> None:
    spec = load_spec(EXAMPLE)
    probes = 0
    for unit in [*spec.services.values(), *spec.overrides.values()]:
        for probe in ([unit.health.probe] if unit.health else []) + list(unit.depends):
            assert ProbeSpec.from_model(probe).target == (
                probe.target if isinstance(probe.target, str) else tuple(probe.target)
            )
            probes += 1
    assert probes >= 6
    for alert in spec.alerts.values():
        assert AlertTarget.from_mapping(alert.config).name == alert.name


def _health(**health: Any) -> str:
    return dumps({"service": {"api": {"exec": ["/usr/bin/api"], "health": health}}})


SHAPES = [
    ("http", "http://h/{}"),
    ("http", "https://{}/"),
    ("http", "http://{}"),
    ("http", "{}"),
    ("tcp", "{}:80"),
    ("tcp", "h:{}"),
    ("tcp", "[{}]:80"),
    ("tcp", "{}"),
]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(SHAPES), value=TEXT)
def test_probe_targets_the_loader_accepts_the_handler_accepts(
    shape: tuple[str, str], value: str
) -> None:
    kind, template = shape
    try:
        spec = parse_spec(_health(**{kind: template.format(value)}), SRC)
    except SpecError:
        return
    probe = spec.services["api"].health.probe  # type: ignore[union-attr]
    ProbeSpec.from_model(probe)  # raises PolicyError if the two disagree


@pytest.mark.parametrize("timeout", ["5min", "300s", "1ms"])
def test_probe_timeout_range_agrees(timeout: str) -> None:
    spec = parse_spec(_health(tcp="h:1", timeout=timeout), SRC)
    ProbeSpec.from_model(spec.services["api"].health.probe)  # type: ignore[union-attr]


def test_probe_timeout_beyond_the_handler_limit_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_health(tcp="h:1", timeout="301s"), SRC)
    assert [p.key for p in info.value.problems] == ["service.api.health.timeout"]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["webhook", "alertmanager", "email", "command"]),
    value=TEXT,
    slot=st.integers(0, 2),
)
def test_alert_values_the_loader_accepts_the_handler_accepts(
    kind: str, value: str, slot: int
) -> None:
    alert: dict[str, Any]
    if kind == "webhook":
        alert = {"type": kind, ["url_file", "url_env", "url_env"][slot]: value}
    elif kind == "alertmanager":
        alert = {"type": kind, "url_env": "AM", "labels": {value or "x": value}}
    elif kind == "email":
        alert = {"type": kind, "smtp_host": value, "from": "a@b", "to": [value]}
        if slot:
            alert |= {"starttls": True, "username": value, "password_env": "P"}
    else:
        alert = {"type": kind, "command": ["/bin/notify", value]}
    text = dumps({"alert": {"a": alert}, "service": {"api": {"exec": ["/usr/bin/api"]}}})
    try:
        spec = parse_spec(text, SRC)
    except SpecError:
        return
    AlertTarget.from_mapping(spec.alerts["a"].config)  # raises PolicyError on disagreement
