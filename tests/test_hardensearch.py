"""The harden search as pure logic: a fake oracle stands in for starting a unit.

Real units are started in tests/test_harden_sandbox.py; here the claims are about
the search itself: it finds exactly the culprits, never tries all subsets, and
only ever reports a set it actually tried.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitgen.hardensearch import Verdict, order_items, search


def _monotone(culprits: set[str]):  # type: ignore[no-untyped-def]
    def oracle(enabled: frozenset[str]) -> Verdict:
        bad = sorted(enabled & culprits)
        return Verdict(not bad, f"broken by {bad[0]}" if bad else "")

    return oracle


def _bound(n: int, k: int) -> int:
    """Trials the search may use for k culprits among n items (confirmations included)."""
    per_culprit = 2 * math.ceil(math.log2(max(n, 2))) + 2
    return 1 + k * per_culprit + k


ITEMS = st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=40)


@given(data=st.data(), items=ITEMS)
@settings(max_examples=200, deadline=None)
def test_finds_exactly_the_culprits_within_the_bound(data: st.DataObject, items: list[str]) -> None:
    culprits = set(data.draw(st.lists(st.sampled_from(items), unique=True)) if items else [])
    result = search(items, _monotone(culprits))
    assert set(result.dropped) == culprits
    assert result.enabled == frozenset(items) - culprits
    assert len(result.trials) <= _bound(len(items), len(culprits))
    for culprit, reason in result.dropped.items():
        assert reason == f"broken by {culprit}"  # the reason is from the confirming trial


def test_no_culprit_costs_one_trial() -> None:
    result = search([f"d{i}" for i in range(30)], _monotone(set()))
    assert len(result.trials) == 1
    assert result.trials[0].change == "+30 items (d0 .. d29)"


def test_culprits_tried_first_are_cheap() -> None:
    """Two culprits at the front of 70 items: the gallop stops at the first step."""
    items = [f"d{i}" for i in range(70)]
    result = search(items, _monotone({"d0", "d1"}))
    # all, +d0 | all-but-d0, +d1 | the rest passes | two confirmations
    assert [t.change for t in result.trials][:4] == [
        "+70 items (d0 .. d69)",
        "+d0",
        "+69 items (d1 .. d69)",
        "+d1",
    ]
    assert len(result.trials) == 7


@given(
    items=ITEMS,
    answers=st.lists(st.booleans(), max_size=400),
)
@settings(max_examples=200, deadline=None)
def test_any_oracle_the_result_was_tried_and_passed(items: list[str], answers: list[bool]) -> None:
    """Flaky or non-monotone units: what is reported is a set that really passed."""
    feed = iter(answers)

    def oracle(enabled: frozenset[str]) -> Verdict:
        return Verdict(next(feed, False), "flaky")

    result = search(items, oracle)
    passed = [t.enabled for t in result.trials if t.verdict.ok]
    assert result.enabled == frozenset() or result.enabled in passed
    assert set(result.dropped) | result.enabled == set(items)
    assert len(result.trials) <= _bound(len(items), len(items))


def test_interaction_is_undone_by_the_confirmation() -> None:
    """b breaks the unit only together with a; the confirmation puts b back once a is off."""

    def oracle(enabled: frozenset[str]) -> Verdict:
        return Verdict(not {"a", "b"} <= enabled, "a with b")

    result = search(["b", "a", "c"], oracle)
    assert result.enabled in ({"a", "c"}, {"b", "c"})
    assert len(result.dropped) == 1


def test_order_puts_likely_breakers_and_capabilities_first() -> None:
    order = order_items(
        ["NoNewPrivileges", "ProtectSystem", "UMask", "PrivateUsers"],
        ["CAP_SYS_BOOT", "CAP_SETUID", "CAP_NET_BIND_SERVICE"],
    )
    assert order == [
        "PrivateUsers",
        "ProtectSystem",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
        "NoNewPrivileges",
        "UMask",
        "CAP_SYS_BOOT",
    ]


def test_duplicate_items_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        search(["a", "a"], _monotone(set()))
