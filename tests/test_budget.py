"""Worst-case restarts per window, systemd's burst and the ladder's attempts combined."""

from __future__ import annotations

from handlers.budget import worst_case
from unitgen.model import Recovery, Restart
from unitgen.policy import Policy


def _policy(**restart: object) -> Policy:
    return Policy(
        unit="api.service",
        restart=Restart(**restart),  # type: ignore[arg-type]
        recovery=Recovery(max_attempts=5, window=600.0),
    )


def test_defaults() -> None:
    b = worst_case(_policy())
    # 60 intervals of 10 s, plus 5 ladder resets; 4 systemd restarts per burst of 5 starts.
    assert b.ladder_restarts == 5
    assert b.systemd_restarts == (60 + 5) * 4
    assert b.total == b.systemd_restarts + 5
    assert "StartLimitBurst=5" in b.bounded_by


def test_restart_no_leaves_only_the_ladder() -> None:
    b = worst_case(_policy(policy="no"))
    assert (b.systemd_restarts, b.ladder_restarts) == (0, 5)


def test_restartsec_can_be_the_tighter_bound() -> None:
    b = worst_case(_policy(delay=60.0, burst=100, interval=1.0))
    assert b.systemd_restarts == 10
    assert "RestartSec" in b.bounded_by


def test_no_limit_at_all_is_reported_unbounded() -> None:
    b = worst_case(_policy(delay=0.0, interval=0.0))
    assert "unbounded" in b.bounded_by
    assert "unbounded" in b.describe()


def test_more_ladder_attempts_means_more_systemd_bursts() -> None:
    p1 = Policy(unit="a.service", recovery=Recovery(max_attempts=1))
    p9 = Policy(unit="a.service", recovery=Recovery(max_attempts=9))
    assert worst_case(p9).systemd_restarts > worst_case(p1).systemd_restarts
