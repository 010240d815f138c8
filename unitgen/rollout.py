"""``unitgen apply``'s engine: plan against the host, switch generations, restart, roll back.

1. **Plan.** The rendered files are compared with what the host has at each
   place now (through the generation links or not), so ``--check`` reports the
   real difference, drift included. A unit is restarted only if one of its own
   files (unit file or drop-in) differs; a policy change restarts nothing (the
   ladder reads policies when a unit fails).
2. **Switch** (``unitgen.generations``): the new generation is written whole,
   then one rename makes it live, then systemd reloads (``Reload`` over D-Bus).
3. **Restart** the changed units one at a time in dependency order (``After=``,
   ``Before=``, ``Requires=``, ``BindsTo=`` within the spec), each waited for
   through ``PropertiesChanged``: active with a new ``ActiveEnterTimestamp``,
   still active after ``settle`` seconds with no restart by systemd meanwhile,
   and, when it has a health probe, passing it (``handlers.probes``). A unit
   the operator does not own (an override's drop-in) is restarted only if it
   was running.
4. **Roll back** at the first unit that fails: the previous generation goes live
   again, systemd reloads, every unit touched so far is restarted on its old
   files (units new in the failed generation are stopped and disabled), and the
   failed unit's alert targets are told.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unitgen.dropins import stale_dropins
from unitgen.errors import BusConnectionLostError, SystemdError
from unitgen.generations import KINDS, Generation, Store
from unitgen.textdiff import file_diff

if TYPE_CHECKING:
    from handlers.bus import SystemdBus
    from unitgen.model import Health, Override, Service, Spec

__all__ = ["Change", "Plan", "UnitResult", "dependency_order", "plan", "restart_set"]


@dataclass(frozen=True)
class Change:
    path: str
    status: str  # added, changed, removed, relinked


@dataclass
class Plan:
    files: dict[str, dict[str, str]]  # kind -> name -> text
    changes: list[Change]
    diff: str
    restart: list[str]  # units to restart, in dependency order
    removed_units: list[str]  # units whose unit file the new generation drops
    current: Generation | None
    stale: list[Path] = field(default_factory=list)  # an older unitgen's drop-ins (dropins.py)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass
class UnitResult:
    unit: str
    ok: bool
    detail: str
    seconds: float
    action: str = "restart"  # restart, stop, skip


@dataclass
class Outcome:
    """What ``apply`` did; the ``--json`` report is its asdict."""

    outcome: str  # unchanged, applied, rolled-back, refused, rollback-failed, would-change
    changed: bool
    generation: int | None = None
    previous: int | None = None
    changes: list[dict[str, str]] = field(default_factory=list)
    diff: str = ""
    restarted: list[dict[str, Any]] = field(default_factory=list)
    rolled_back: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def unit_of(name: str) -> str | None:
    """The unit a rendered file belongs to, or None for a template (never restarted)."""
    unit = name.split(".d/", 1)[0]
    if "@." in unit:
        return None
    return unit


def plan(store: Store, files: Mapping[str, Mapping[str, str]], spec: Spec) -> Plan:
    current = store.current()
    changes: list[Change] = []
    chunks: list[str] = []
    touched: set[str] = set()
    for kind in KINDS:
        base = store.trees.of(kind)
        for name, text in files.get(kind, {}).items():
            path = base / name
            installed = store.installed(kind, name)
            if installed == text:
                if not store.is_ours(kind, name):
                    changes.append(Change(str(path), "relinked"))
                continue
            changes.append(Change(str(path), "added" if installed is None else "changed"))
            chunks.extend(file_diff(str(path), installed, text))
            unit = unit_of(name) if kind == "units" else None
            if unit is not None:
                touched.add(unit)
    removed_units: list[str] = []
    if current is not None:
        for kind in KINDS:
            base = store.trees.of(kind)
            for name, text in current.files(kind).items():
                if name in files.get(kind, {}):
                    continue
                changes.append(Change(str(base / name), "removed"))
                chunks.extend(file_diff(str(base / name), text, None))
                unit = unit_of(name) if kind == "units" else None
                if unit is None:
                    continue
                if "/" in name:
                    touched.add(unit)  # a drop-in gone: the unit runs on its vendor's file
                elif unit not in removed_units:
                    removed_units.append(unit)
    stale = stale_dropins(store.trees.units, files.get("units", {}))
    for path in stale:
        changes.append(Change(str(path), "removed"))
        rel = path.relative_to(store.trees.units).as_posix()
        unit = unit_of(rel)
        if unit is not None:
            touched.add(unit)
    touched -= set(removed_units)
    return Plan(
        files={k: dict(v) for k, v in files.items()},
        changes=changes,
        diff="".join(chunks),
        restart=dependency_order(sorted(touched), spec),
        removed_units=sorted(removed_units),
        current=current,
        stale=stale,
    )


def restart_set(plan_: Plan) -> list[str]:
    return list(plan_.restart)


def dependency_order(units: Sequence[str], spec: Spec) -> list[str]:
    """``units`` with every unit after the ones it is ordered after or requires.

    A cycle (which systemd would break at run time) keeps the remaining units in
    name order rather than failing the apply.
    """
    wanted = set(units)
    before: dict[str, set[str]] = {u: set() for u in units}  # u -> units that go first
    for svc in spec.services.values():
        if svc.unit not in wanted:
            continue
        for dep in (*svc.after, *svc.requires, *svc.binds_to):
            if dep in wanted and dep != svc.unit:
                before[svc.unit].add(dep)
        for later in svc.before:
            if later in wanted and later != svc.unit:
                before[later].add(svc.unit)
    order: list[str] = []
    left = sorted(units)
    while left:
        ready = [u for u in left if not (before[u] - set(order))]
        if not ready:
            ready = left[:1]
        order.append(ready[0])
        left.remove(ready[0])
    return order


# -- talking to systemd ------------------------------------------------------------------


def _owner(spec: Spec, unit: str) -> Service | Override | None:
    for svc in spec.services.values():
        if svc.unit == unit:
            return svc
    for ovr in spec.overrides.values():
        if ovr.unit == unit:
            return ovr
    return None


def _owned(spec: Spec, unit: str) -> bool:
    return any(svc.unit == unit for svc in spec.services.values())


def _mono(props: Mapping[str, Any], key: str) -> int:
    value = props.get(key)
    return int(value) if isinstance(value, int) else 0


def _job_idle(props: Mapping[str, Any]) -> bool:
    job = props.get("Job")
    if isinstance(job, list | tuple) and job:
        return int(job[0]) == 0
    return True


async def restart_and_wait(
    bus: SystemdBus,
    unit: str,
    health: Health | None,
    *,
    timeout: float,  # noqa: ASYNC109 - a budget for several waits, not one call
    settle: float,
) -> UnitResult:
    """Restart ``unit`` and wait until it runs on its new files, or say why not."""
    start = time.monotonic()
    try:
        before = await bus.unit_properties(unit)
        entered = _mono(before, "ActiveEnterTimestampMonotonic")
        with contextlib.suppress(SystemdError):
            # Not failed, or not loaded yet: the restart says what matters.
            await bus.reset_failed(unit)
        await bus.restart(unit)
    except BusConnectionLostError:
        raise
    except SystemdError as exc:
        # systemd refused the restart (a unit file it cannot load, a bad setting):
        # that unit did not come up, which is what a rollback is for.
        return UnitResult(unit, False, f"restart refused: {exc}", time.monotonic() - start)

    def finished(p: dict[str, Any]) -> bool:
        if not _job_idle(p):
            return False
        if p.get("ActiveState") == "active":
            return _mono(p, "ActiveEnterTimestampMonotonic") > entered
        return p.get("ActiveState") == "failed" or p.get("SubState") == "auto-restart"

    try:
        props = await bus.wait_for(unit, finished, timeout)
    except BusConnectionLostError:
        raise
    except SystemdError as exc:
        return UnitResult(unit, False, str(exc), time.monotonic() - start)
    if props.get("ActiveState") != "active":
        return UnitResult(unit, False, _why(props), time.monotonic() - start)
    now_entered = _mono(props, "ActiveEnterTimestampMonotonic")
    restarts = _mono(props, "NRestarts")

    def left(p: dict[str, Any]) -> bool:
        return (
            p.get("ActiveState") != "active"
            or _mono(p, "ActiveEnterTimestampMonotonic") != now_entered
            or _mono(p, "NRestarts") != restarts
        )

    if settle > 0:
        try:
            props = await bus.wait_for(unit, left, settle)
        except BusConnectionLostError:
            raise
        except SystemdError:
            pass  # the settle time passed with the unit still active: good
        else:
            return UnitResult(
                unit, False, f"did not stay active: {_why(props)}", time.monotonic() - start
            )
    if health is not None:
        remaining = max(1.0, timeout - (time.monotonic() - start))
        ok, detail = await _healthy(health, remaining)
        if not ok:
            return UnitResult(unit, False, f"unhealthy: {detail}", time.monotonic() - start)
    return UnitResult(
        unit, True, "active" + (", healthy" if health else ""), time.monotonic() - start
    )


def _why(props: Mapping[str, Any]) -> str:
    return (
        f"ActiveState={props.get('ActiveState')} SubState={props.get('SubState')} "
        f"Result={props.get('Result', '?')} ExecMainStatus={props.get('ExecMainStatus', '?')}"
    )


async def _healthy(health: Health, within: float) -> tuple[bool, str]:
    """Probe until it passes or ``within`` seconds are gone; a probe at least every second."""
    from handlers.probes import ProbeSpec, probe

    spec = ProbeSpec.from_model(health.probe, where="health")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    detail = "not probed"
    while True:
        result = await probe(spec)
        if result.ok:
            return True, result.detail
        detail = result.detail
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False, detail
        # A poll interval, not a wait for a state: the probe is the only signal there is.
        await asyncio.sleep(min(0.5, remaining))


async def was_running(bus: SystemdBus, unit: str) -> bool:
    props = await bus.unit_properties(unit)
    return props.get("ActiveState") in ("active", "activating", "reloading")


async def daemon_reload(bus: SystemdBus) -> None:
    await bus.call("Reload", "", [], what="daemon-reload")


async def enable(bus: SystemdBus, units: Sequence[str]) -> None:
    if units:
        await bus.call("EnableUnitFiles", "asbb", [list(units), False, True], what="enable")


async def disable(bus: SystemdBus, units: Sequence[str]) -> None:
    if units:
        await bus.call("DisableUnitFiles", "asb", [list(units), False], what="disable")


async def stop_and_wait(bus: SystemdBus, unit: str, timeout: float) -> UnitResult:  # noqa: ASYNC109
    start = time.monotonic()
    try:
        await bus.stop(unit)
        await bus.wait_for(
            unit,
            lambda p: p.get("ActiveState") in ("inactive", "failed") and _job_idle(p),
            timeout,
        )
    except BusConnectionLostError:
        raise
    except SystemdError as exc:
        return UnitResult(unit, False, str(exc), time.monotonic() - start, "stop")
    return UnitResult(unit, True, "stopped", time.monotonic() - start, "stop")


def installable(files: Mapping[str, str], unit: str) -> bool:
    text = files.get(unit)
    return text is not None and "\n[Install]" in f"\n{text}"


def owner(spec: Spec, unit: str) -> Service | Override | None:
    return _owner(spec, unit)


def owned(spec: Spec, unit: str) -> bool:
    return _owned(spec, unit)


# -- the journal ---------------------------------------------------------------------

# Stable per outcome, explained by units/unitgen.catalog (journalctl -x).
APPLY_MESSAGE_IDS: dict[str, str] = {
    "applied": "a2826753e4aa4e4b9b7710ad255728c1",
    "rolled-back": "c3dadebf4df84bd096f8a06854e42450",
    "rollback-failed": "a74d3fe5f3b1457194f9a959784b701e",
}


def journal_fields(out: Outcome) -> list[tuple[str, str]] | None:
    """The journal entry of an apply's outcome, or None when nothing happened."""
    message_id = APPLY_MESSAGE_IDS.get(out.outcome)
    if message_id is None:
        return None
    failed = next((r for r in out.restarted if not r.get("ok", True)), None)
    fields = [
        ("SYSLOG_IDENTIFIER", "unitgen"),
        ("MESSAGE_ID", message_id),
        ("UNITGEN_EVENT", "Apply"),
        ("UNITGEN_OUTCOME", out.outcome),
        ("UNITGEN_GENERATION", str(out.generation)),
        ("UNITGEN_PREVIOUS", str(out.previous) if out.previous is not None else "none"),
    ]
    if failed is None:
        units = ", ".join(str(r["unit"]) for r in out.restarted) or "none"
        fields += [
            ("PRIORITY", "5"),
            ("MESSAGE", f"unitgen apply: generation {out.generation} live; restarted: {units}"),
        ]
    else:
        unit = str(failed["unit"])
        fields += [
            # A failed rollback leaves units down: critical, not only an error.
            ("PRIORITY", "2" if out.outcome == "rollback-failed" else "3"),
            (
                "MESSAGE",
                f"unitgen apply: generation {out.generation} failed on {unit}; {went_back(out)}",
            ),
            ("UNITGEN_UNIT", unit),
            ("UNITGEN_REASON", str(failed.get("detail", ""))),
        ]
    return fields


def went_back(out: Outcome) -> str:
    """Where a failed apply left the host: back on the previous generation, or not."""
    to = f"generation {out.previous}" if out.previous is not None else "no generation"
    if out.outcome != "rollback-failed":
        return f"back on {to}"
    broken = [r for r in out.rolled_back if not r.get("ok", True)]
    what = "; ".join(f"{r['unit']}: {r.get('detail', '')}" for r in broken)
    return f"the rollback to {to} failed too ({what})"


def log_to_journal(out: Outcome) -> None:
    """One entry per apply that changed something; silently nothing without journald."""
    import socket

    from handlers.journal import JOURNAL_SOCKET, encode_entry

    fields = journal_fields(out)
    if fields is None:
        return
    # No journald here: the exit status and the report still say it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(encode_entry(fields), JOURNAL_SOCKET)
