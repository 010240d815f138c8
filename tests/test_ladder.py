"""The ladder's state machine and budget arithmetic, with numbers only (no systemd, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.ladder import (
    ENTRY_STATES,
    TRANSITIONS,
    GiveUp,
    InvalidTransitionError,
    Level,
    State,
    Verdict,
    attempts_in_window,
    count_start,
    level_budget,
    level_for,
    park_instead,
    transition,
)


def _reachable() -> set[State]:
    seen = set(ENTRY_STATES)
    frontier = list(ENTRY_STATES)
    while frontier:
        s = frontier.pop()
        for (src, _v), t in TRANSITIONS.items():
            # With after_give_up = "park", a parkable give-up edge leads to PARKED.
            for target in {t.target, park_instead(t, "park").target}:
                if src is s and target not in seen:
                    seen.add(target)
                    frontier.append(target)
    return seen


def test_every_state_is_reachable_from_an_entry_state() -> None:
    assert _reachable() == set(State)


def test_nothing_leads_back_into_resuming() -> None:
    # Adoption happens once, when a run starts; no verdict of a run sends it there.
    assert all(t.target is not State.RESUMING for t in TRANSITIONS.values())


def test_terminal_states_have_no_way_out_and_others_do() -> None:
    sources = {src for src, _ in TRANSITIONS}
    for state in State:
        assert (state in sources) is (not state.terminal), state


def test_every_give_up_carries_a_reason_and_ends_in_gave_up() -> None:
    for (src, verdict), t in TRANSITIONS.items():
        assert (t.target is State.GAVE_UP) == (t.give_up is not None), (src, verdict)
    reasons = {t.give_up for t in TRANSITIONS.values() if t.give_up is not None}
    assert {GiveUp.DISK, GiveUp.CONFIG, GiveUp.DEPENDENCY, GiveUp.BUDGET} <= reasons


def test_restart_only_after_config_validation_and_backoff() -> None:
    # The only way into RESTARTING is BACKING_OFF, and into that only VALIDATING_CONFIG:
    # no path restarts a unit whose config failed or without the pause.
    # RESUMING re-issues only a restart the dead owner had recorded, which it could
    # record only in RESTARTING, so after the same validation and back-off.
    into = {src for (src, _v), t in TRANSITIONS.items() if t.target is State.RESTARTING}
    assert into == {State.BACKING_OFF, State.RESUMING}
    into_backoff = {src for (src, _v), t in TRANSITIONS.items() if t.target is State.BACKING_OFF}
    assert into_backoff == {State.VALIDATING_CONFIG}


def test_failed_attempt_goes_back_to_diagnosis() -> None:
    t = transition(State.VERIFYING, Verdict.FAILED)
    assert t.target is State.DIAGNOSING and t.attempt_failed
    t = transition(State.RESTARTING, Verdict.FAILED)
    assert t.target is State.DIAGNOSING and t.attempt_failed


def test_systemd_restarting_means_standing_down() -> None:
    assert transition(State.DIAGNOSING, Verdict.SYSTEMD_RESTARTING).target is (
        State.WAITING_FOR_SYSTEMD
    )


def test_unknown_edge_is_a_bug_not_a_guess() -> None:
    with pytest.raises(InvalidTransitionError):
        transition(State.BACKING_OFF, Verdict.DISK_LOW)


def test_the_comment_rule_every_transition_has_one() -> None:
    import inspect

    import handlers.ladder as mod

    src = inspect.getsource(mod)
    body = src[src.index("TRANSITIONS: dict") : src.index("class InvalidTransitionError")]
    entries = body.count("): Transition(")
    comments = sum(1 for line in body.splitlines() if line.strip().startswith("#"))
    assert entries == len(TRANSITIONS)
    assert comments >= entries


@pytest.mark.parametrize(
    ("n", "want"),
    [
        (0, (0, 0, 0)),
        (1, (1, 0, 0)),
        (2, (1, 1, 0)),
        (3, (1, 1, 1)),
        (5, (2, 2, 1)),
        (9, (3, 3, 3)),
    ],
)
def test_level_budget_splits_evenly_earliest_first(n: int, want: tuple[int, int, int]) -> None:
    assert level_budget(n) == want


def test_levels_in_order_for_five_attempts() -> None:
    got = [level_for(used, 5) for used in range(7)]
    assert got == [
        Level.RESTART,
        Level.RESTART,
        Level.RESTART_WITH_DEPENDENCIES,
        Level.RESTART_WITH_DEPENDENCIES,
        Level.CLEANUP_THEN_RESTART,
        Level.ALERT_AND_STOP,
        Level.ALERT_AND_STOP,
    ]


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=-5, max_value=60))
def test_levels_never_go_down_and_stop_exactly_at_max(max_attempts: int, used: int) -> None:
    level = level_for(used, max_attempts)
    assert level_for(used + 1, max_attempts) >= level
    assert (level is Level.ALERT_AND_STOP) == (max(used, 0) >= max_attempts)


@given(st.integers(min_value=0, max_value=1000))
def test_level_budget_sums_to_max(n: int) -> None:
    assert sum(level_budget(n)) == n


def test_window_drops_old_attempts() -> None:
    times = [0.0, 100.0, 500.0, 650.0]
    since = count_start(700.0, window=600.0, stable_after=1e9, last_attempt_at=650.0, reset_at=None)
    assert since == 100.0
    assert attempts_in_window(times, since) == 2  # 500 and 650; 100 is exactly at the edge


def test_decay_after_stable_period_forgets_everything_before() -> None:
    times = [10.0, 20.0, 30.0]
    # 30s stable_after, last attempt at 30, now 61: stable for 31s -> nothing counts.
    since = count_start(61.0, window=600.0, stable_after=30.0, last_attempt_at=30.0, reset_at=None)
    assert attempts_in_window(times, since) == 0
    # Not yet stable: all count.
    since = count_start(59.0, window=600.0, stable_after=30.0, last_attempt_at=30.0, reset_at=None)
    assert attempts_in_window(times, since) == 3


def test_reset_starts_afresh() -> None:
    since = count_start(
        100.0, window=600.0, stable_after=600.0, last_attempt_at=90.0, reset_at=95.0
    )
    assert attempts_in_window([10.0, 50.0, 90.0], since) == 0
    assert attempts_in_window([10.0, 50.0, 90.0, 97.0], since) == 1


@given(
    st.lists(st.floats(min_value=0, max_value=1e6), max_size=30),
    st.floats(min_value=0, max_value=2e6),
    st.floats(min_value=1, max_value=1e5),
    st.floats(min_value=1, max_value=1e5),
)
def test_count_never_exceeds_attempts_inside_window(
    times: list[float], now: float, window: float, stable: float
) -> None:
    last = max(times) if times else None
    since = count_start(
        now, window=window, stable_after=stable, last_attempt_at=last, reset_at=None
    )
    n = attempts_in_window(times, since)
    assert 0 <= n <= sum(1 for t in times if t > now - window)
