"""The chaos soak's restart accounting (bench/soak_accounting.py), as pure logic.

The soak's violation at fault 636 of ``--seed 1000`` (docs/reliability.md): the
ladder's level ``restart-with-dependencies`` for ``front.service`` restarted
``back.service`` (a ``restart-dependency`` row naming it), a start the
accounting did not count. These tests pin down that such a start is counted
from its row, and that a start with no evidence at all is still a violation.
The same on the real sandbox: tests/test_soak_sandbox.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from soak_accounting import StartEvidence, over_budget, restarts_to_budget


def back(starts: list[float], **kw: object) -> StartEvidence:
    return StartEvidence("back.service", starts, **kw)  # type: ignore[arg-type]


def test_a_dependents_ladder_restart_is_accounted_from_its_row() -> None:
    # Started at 0, restarted by its own ladder at 10, by front's ladder (level 2) at 20.
    without = back([0.1, 10.1, 20.1], by_ladder=[10.0])
    assert without.unaccounted() == 1  # what the soak reported before
    ev = back([0.1, 10.1, 20.1], by_ladder=[10.0], as_dependency=[20.0])
    assert ev.unaccounted() == 0
    assert "1 by a dependent's ladder" in ev.describe()


def test_a_start_without_evidence_is_still_a_violation() -> None:
    # One failure restarted by two actors: two starts, one restart on record.
    ev = back([0.1, 10.1, 10.2], by_ladder=[10.0], as_dependency=[])
    assert ev.unaccounted() == 1
    assert "started 3 times, accounted for 2" in ev.describe()
    # A dependent's row accounts for one start, not for every later one.
    ev = back([0.1, 20.1, 20.2], as_dependency=[20.0])
    assert ev.unaccounted() == 1


def test_every_cause_counts_once() -> None:
    ev = StartEvidence(
        "front.service",
        [float(i) for i in range(8)],
        by_soak=[1.0],
        by_systemd=2,
        by_ladder=[3.0],
        as_dependency=[4.0],
        via_required=2,
    )
    assert ev.allowed() == 8 and ev.unaccounted() == 0
    ev.starts.append(9.0)
    assert ev.unaccounted() == 1
    assert "2 with a unit it requires" in ev.describe()


def test_a_dependents_restarts_are_not_on_the_units_own_budget() -> None:
    # Six restarts by its own ladder (its worst case) and two by front's level 2.
    own = [10.0 * i for i in range(1, 7)]
    by_front = [65.0, 75.0]
    starts = sorted([0.1] + [t + 0.1 for t in own + by_front])
    ev = back(starts, by_ladder=own, as_dependency=by_front)
    assert over_budget(restarts_to_budget(ev, 0.0), 6, 600.0) is None
    # The same starts, none of them by front: eight restarts, over six.
    alone = back(starts, by_ladder=own + by_front)
    assert over_budget(restarts_to_budget(alone, 0.0), 6, 600.0) == 8


def test_budget_counts_only_since_the_reset_and_within_the_window() -> None:
    starts = [0.0, *[float(t) for t in range(100, 800, 100)]]  # 7 restarts, 100 s apart
    ev = back(starts)
    assert over_budget(restarts_to_budget(ev, 0.0), 6, 600.0) is None  # 6 in any 600 s
    assert over_budget(restarts_to_budget(ev, 0.0), 5, 600.0) == 6
    assert over_budget(restarts_to_budget(ev, 350.0), 5, 600.0) is None
