"""The search behind ``unitgen harden``: the largest set of hardening items a unit survives.

Pure logic, no systemd: the caller supplies the *oracle*, which starts the unit
with a set of items turned on and says whether it survived. Items are the
strict profile's directive names (``unitgen.hardening``) and, for a unit that
keeps capabilities, one item per capability ("drop CAP_X from the bounding set").

The search assumes what is nearly always true of sandboxing: turning an item on
never repairs a unit another item broke (monotonicity). It starts from strict
(every item on); when that fails, it looks for the *first* item, in a given
order, whose addition breaks the unit on top of the items known to be good:
a galloping search (prefixes of 1, 2, 4, ... items) and then a bisection
between the last prefix that passed and the first that failed. That item is
left off, the prefix before it joins the good set, and the rest is tried again
all at once. Each culprit costs about 2 log2(position) trials, so items likely
to break come first (``order_items``); an item that breaks nothing costs none.

Every culprit is then confirmed on the final set: the final set plus that one
item is tried, and an item that passes there goes back on (a failure that was
really an interaction or a fluke). The reason recorded for each item left off
is the one from that last trial, so the drop-in's comments describe the set
that is shipped. Never all subsets: the whole search is O(k log n) trials for
k culprits among n items.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "LIKELY_CAPABILITIES",
    "LIKELY_DIRECTIVES",
    "SearchResult",
    "Trial",
    "Verdict",
    "order_items",
    "search",
]

# Directives that break real daemons most often (docs/hardening.md, "Known breakers"),
# tried first so that finding them is cheap.
LIKELY_DIRECTIVES = (
    "PrivateUsers",
    "SystemCallFilter",
    "ProtectSystem",
    "ProtectHome",
    "MemoryDenyWriteExecute",
    "ProcSubset",
    "RestrictAddressFamilies",
    "PrivateDevices",
    "ProtectProc",
)
# Capabilities daemons that start as root use, most common first.
LIKELY_CAPABILITIES = (
    "CAP_NET_BIND_SERVICE",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_DAC_OVERRIDE",
    "CAP_CHOWN",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_SETPCAP",
    "CAP_KILL",
    "CAP_SYS_RESOURCE",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_IPC_LOCK",
    "CAP_SYS_NICE",
    "CAP_AUDIT_WRITE",
)


@dataclass(frozen=True)
class Verdict:
    """What one start of the unit showed."""

    ok: bool
    reason: str = ""  # why it failed: the exit status, the journal line, the probe


@dataclass(frozen=True)
class Trial:
    number: int
    change: str  # what was tried, relative to the set known to be good
    enabled: frozenset[str]
    verdict: Verdict
    seconds: float


@dataclass
class SearchResult:
    enabled: frozenset[str]
    dropped: dict[str, str]  # item -> why it stays off (the failing trial's reason)
    trials: list[Trial] = field(default_factory=list)


Oracle = Callable[[frozenset[str]], Verdict]


def order_items(directives: Iterable[str], capabilities: Iterable[str]) -> list[str]:
    """Likely breakers first, then likely needed capabilities, then the rest in the
    given order (the profile's, and the capabilities' own)."""
    names = list(dict.fromkeys(directives))
    caps = list(dict.fromkeys(capabilities))
    first = [d for d in LIKELY_DIRECTIVES if d in names]
    first_caps = [c for c in LIKELY_CAPABILITIES if c in caps]
    rest = [d for d in names if d not in first]
    rest_caps = [c for c in caps if c not in first_caps]
    return [*first, *first_caps, *rest, *rest_caps]


def _describe(added: Sequence[str]) -> str:
    if len(added) == 1:
        return f"+{added[0]}"
    if len(added) <= 3:
        return "+" + " +".join(added)
    return f"+{len(added)} items ({added[0]} .. {added[-1]})"


def search(
    items: Sequence[str],
    oracle: Oracle,
    *,
    confirm: bool = True,
    on_trial: Callable[[Trial], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """The largest set of ``items`` (found as above) for which ``oracle`` passes.

    The empty set is taken to pass (the caller has checked the unit without any).
    ``on_trial`` sees each trial as it ends (progress lines).
    """
    if len(set(items)) != len(items):
        raise ValueError("items must be unique")
    result = SearchResult(frozenset(), {})

    def run(enabled: frozenset[str], added: Sequence[str]) -> Verdict:
        start = clock()
        verdict = oracle(enabled)
        trial = Trial(len(result.trials) + 1, _describe(added), enabled, verdict, clock() - start)
        result.trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        return verdict

    good: frozenset[str] = frozenset()
    rest = list(items)
    while rest:
        everything = good | frozenset(rest)
        verdict = run(everything, rest)
        if verdict.ok:
            good = everything
            break
        # good + rest[:lo] passes, good + rest[:hi] fails (with reason).
        lo, hi, reason = 0, len(rest), verdict.reason
        step = 1
        while lo + step < hi:
            probe_at = lo + step
            v = run(good | frozenset(rest[:probe_at]), rest[lo:probe_at])
            if not v.ok:
                hi, reason = probe_at, v.reason
                break
            lo = probe_at
            step *= 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            v = run(good | frozenset(rest[:mid]), rest[lo:mid])
            if v.ok:
                lo = mid
            else:
                hi, reason = mid, v.reason
        culprit = rest[hi - 1]
        result.dropped[culprit] = reason
        good = good | frozenset(rest[: hi - 1])
        rest = rest[hi:]
    if confirm:
        for culprit in list(result.dropped):
            v = run(good | {culprit}, [culprit])
            if v.ok:
                good = good | {culprit}
                del result.dropped[culprit]
            else:
                result.dropped[culprit] = v.reason
    result.enabled = good
    return result
