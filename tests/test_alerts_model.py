"""One alert model: the spec loader and the handler accept exactly the same alert tables.

The handler builds ``AlertTarget`` through the spec's own key table
(``unitgen.alertconfig``), so every bound of ``speckeys.ALERT`` holds on both
sides. Hypothesis draws tables at and around those bounds, in the form both
TOML and the rendered policy can hold (a timeout in seconds, arrays as lists).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_toml import dumps

from handlers.alertmodel import AlertTarget, AlertType
from unitgen.errors import PolicyError, SpecError
from unitgen.policy import from_json, policy_from_service, to_json
from unitgen.specfile import parse_spec
from unitgen.speckeys import ALERT, ALERT_TYPES

SRC = "spec.toml"


def test_the_runtime_types_are_the_spec_types() -> None:
    assert typing.get_args(AlertType) == ALERT_TYPES == tuple(ALERT.variants)


def _long(n: int) -> str:
    return "a" * n


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "timeout": st.one_of(
        st.sampled_from([0, 0.0, -1, 1e-9, 0.001, 1, 5, 60, 60.0, 60.000001, 61, True, "5s"]),
        st.floats(-1, 70, allow_nan=False),
    ),
    "retries": st.one_of(st.integers(-1, 11), st.sampled_from([True, 2.0, "3"])),
    "send_resolved": st.sampled_from([True, False, 1, "yes"]),
    "url_file": st.sampled_from(
        ["/etc/u", "rel", "/a/../b", "/" + _long(255), "/" + _long(256), "", "http://h/x", 3]
    ),
    "url_env": st.sampled_from(["X", "_x1", "BAD-NAME", "1X", _long(256), _long(257), "", 3]),
    "labels": st.dictionaries(
        st.sampled_from(["team", "_t", "__x", "unit", "reason", "a-b", "9x"]),
        st.one_of(
            st.sampled_from([0, 1, 1024, 1025]).map(_long), st.sampled_from([1, True, ["x"]])
        ),
        max_size=3,
    )
    | st.sampled_from(["team=sre", []]),
    "smtp_host": st.sampled_from(["mx.example.org", "h", "", "a b", "x/y", "[::1]", 25]),
    "smtp_port": st.one_of(st.integers(-1, 2), st.integers(65534, 65536), st.just(True)),
    "starttls": st.sampled_from([True, False, 1]),
    "from": st.sampled_from(["a@b", "a", "a@b@c", "<a@b>", ""]),
    "to": st.one_of(st.lists(st.sampled_from(["c@d", "x", "e@f g"]), max_size=3), st.just("c@d")),
    "username": st.sampled_from(["u", "", _long(256), _long(257), 7]),
    "password_file": st.sampled_from(["/etc/pw", "pw", "/" + _long(300)]),
    "password_env": st.sampled_from(["PW", "bad pw", "p" * 300]),
    "url_credential": st.sampled_from(["hook", "a.b-c_d", "", "bad/name", "..", _long(256), 3]),
    "password_credential": st.sampled_from(["smtp", "", "x/y", _long(256)]),
    "command": st.one_of(
        st.lists(st.sampled_from(["/bin/x", "rel", "-v", "", _long(4097)]), max_size=3),
        st.just("/bin/sh -c x"),
    ),
    "resend_interval": st.one_of(
        st.sampled_from([0, 29.999, 30, 30.0, 60, 180, 180.0, 180.001, 181, True, "1min"]),
        st.floats(0, 200, allow_nan=False),
    ),
    "generator_url": st.sampled_from(
        ["http://h/x", "https://grafana.example.org/d/unitgen", "ftp://h", "h", "", 3]
    ),
    "url": st.just("http://h/secret"),
    "token": st.just("t0ken"),
}
# A valid table of each type, then a few keys redrawn, added or dropped: most
# draws sit next to a bound, and about half are accepted.
BASE: dict[str, dict[str, Any]] = {
    "webhook": {"url_env": "X"},
    "slack": {"url_file": "/etc/u"},
    "alertmanager": {"url_env": "X"},
    "email": {"smtp_host": "h", "from": "a@b", "to": ["c@d"]},
    "command": {"command": ["/bin/x"]},
    "pager": {"url_env": "X"},
}
OWN_KEYS = {kind: sorted(set(t.fields) - {"type"}) for kind, t in ALERT.variants.items()}


@st.composite
def alert_tables(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from([*ALERT_TYPES, "pager"]))
    table: dict[str, Any] = {"type": kind, **BASE[kind]}
    own = OWN_KEYS.get(kind, OWN_KEYS["webhook"])
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(own) | st.sampled_from(sorted(VALUES)))
        if draw(st.integers(0, 5)) == 0:
            table.pop(key, None)
        else:
            table[key] = draw(VALUES[key])
    name = draw(
        st.sampled_from(["ops"])
        | st.sampled_from(["a.b-c_d", _long(64), _long(65), "bad name", "-x", ""])
    )
    return name, table


def _spec_accepts(name: str, table: dict[str, Any]) -> AlertTarget | None:
    text = dumps({"alert": {name: table}, "service": {"api": {"exec": ["/usr/bin/api"]}}})
    try:
        spec = parse_spec(text, SRC)
    except SpecError as exc:
        assert all(p.key.startswith("alert.") for p in exc.problems), exc
        return None
    # What render writes and the handler reads back: the policy file's own round trip.
    config = spec.alerts[name]
    mappings = ({**config.config, "name": config.name, "type": config.type},)
    policy = from_json(to_json(policy_from_service(spec.services["api"], mappings)), "p.json")
    return AlertTarget.from_mapping(policy.alerts[0], source="p.json")


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=alert_tables())
def test_spec_and_runtime_accept_and_reject_the_same_alert_tables(
    drawn: tuple[str, dict[str, Any]],
) -> None:
    name, table = drawn
    from_spec = _spec_accepts(name, table)
    try:
        from_runtime: AlertTarget | None = AlertTarget.from_mapping({**table, "name": name})
    except PolicyError as exc:
        assert "\n" not in str(exc)
        from_runtime = None
    durations = ("timeout", "resend_interval")
    if any(isinstance(table.get(k), str) for k in durations) and from_spec is not None:
        # The one deliberate difference: a policy holds seconds, never "5s".
        assert from_runtime is None
        return
    assert (from_spec is None) == (from_runtime is None), (from_spec, from_runtime)
    if from_spec is not None and from_runtime is not None:
        # The spec rounds a duration to whole microseconds; the policy holds that.
        assert abs(from_spec.timeout - from_runtime.timeout) < 1e-6
        assert abs(from_spec.resend_interval - from_runtime.resend_interval) < 1e-6
        assert from_spec == dataclasses.replace(
            from_runtime, timeout=from_spec.timeout, resend_interval=from_spec.resend_interval
        )


def test_runtime_error_names_file_and_key() -> None:
    with pytest.raises(PolicyError) as info:
        AlertTarget.from_mapping(
            {"name": "ops", "type": "webhook", "url_env": "X", "retries": 11},
            source="/etc/unitgen/policy/api.service.json",
        )
    assert str(info.value) == (
        "/etc/unitgen/policy/api.service.json: alert.ops.retries: "
        "expected an integer from 0 to 10, got the integer 11"
    )


def test_runtime_defaults_are_the_key_tables() -> None:
    target = AlertTarget.from_mapping(
        {"name": "m", "type": "email", "smtp_host": "h"} | {"from": "a@b", "to": ["c@d"]}
    )
    assert (target.timeout, target.retries, target.send_resolved) == (5.0, 3, True)
    assert (target.smtp_port, target.starttls) == (25, False)
    defaults = {k: f.default for k, f in ALERT.variants["email"].fields.items()}
    assert (defaults["timeout"], defaults["retries"], defaults["smtp_port"]) == ("5s", 3, 25)
