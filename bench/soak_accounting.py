"""The chaos soak's restart accounting (bench/soak.py): every start has a known cause.

A unit's starts are what ``chaos.sh`` logs in ``ExecStartPre=`` (one line per
start). Each cause is counted from its own evidence, never inferred from the
count it is checked against:

* the first start, and the soak's own starts (a re-arm after a give-up);
* systemd's ``Restart=``: ``Scheduled restart job`` lines in the unit's journal;
* the unit's own ladder: ``restart`` and ``resume`` rows in the history, and the
  run-dir ledger's attempts;
* a dependent's ladder at level ``restart-with-dependencies``: it restarts the
  units its unit ``Requires=`` before the unit itself, and writes a
  ``restart-dependency`` row (on the dependent's incident) naming each one;
* for a unit that ``Requires=`` another: that unit's restarts by its ladder or
  by the soak, which systemd propagates (a restart of a required unit restarts
  the units that require it).

A start none of these accounts for (one failure restarted by two actors) is a
violation. The restart-window check drops the starts whose budget is not the
unit's own: the soak's, and a dependent's ladder's (counted in the dependent's
``max_attempts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StartEvidence:
    """What the soak found about one unit's starts, by cause."""

    unit: str
    starts: list[float]  # wall times from chaos.sh's log
    by_soak: list[float] = field(default_factory=list)  # the soak's own (re)starts
    by_systemd: int = 0  # "Scheduled restart job" journal lines
    by_ladder: list[float] = field(default_factory=list)  # its own ladder's restarts
    as_dependency: list[float] = field(default_factory=list)  # dependents' ladders
    via_required: int = 0  # restarts of a unit it Requires= (its ladder's and the soak's)

    def allowed(self) -> int:
        return (
            1
            + len(self.by_soak)
            + self.by_systemd
            + len(self.by_ladder)
            + len(self.as_dependency)
            + self.via_required
        )

    def unaccounted(self) -> int:
        """Starts beyond every known cause (0 when all are accounted for)."""
        return max(0, len(self.starts) - self.allowed())

    def describe(self) -> str:
        text = (
            f"{self.unit} started {len(self.starts)} times, accounted for {self.allowed()}"
            f" (1 + {len(self.by_soak)} by the soak + {self.by_systemd} by systemd"
            f" + {len(self.by_ladder)} by the ladder"
            f" + {len(self.as_dependency)} by a dependent's ladder"
        )
        if self.via_required:
            text += f" + {self.via_required} with a unit it requires"
        return text + ")"


def restarts_to_budget(ev: StartEvidence, since: float) -> list[float]:
    """The starts since ``since`` that count against the unit's own budget.

    Dropped: the first start; one start at or after each of the soak's own and
    each dependent's ladder's restarts (those are on the soak, or on the
    dependent's budget).
    """
    auto = sorted(t for t in ev.starts if t >= since)
    for t in [ev.starts[0] if ev.starts else 0.0, *ev.by_soak]:
        if t in auto:
            auto.remove(t)
    for m in sorted([*ev.by_soak, *ev.as_dependency]):
        later = [t for t in auto if t >= m]
        if later:
            auto.remove(later[0])
    return auto


def over_budget(restarts: list[float], worst: int, window: float) -> int | None:
    """The most restarts within any ``window`` seconds, if over ``worst``."""
    for i, t in enumerate(restarts):
        n = sum(1 for x in restarts[i:] if x - t < window)
        if n > worst:
            return n
    return None
