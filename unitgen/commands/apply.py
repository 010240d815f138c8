"""``unitgen apply SPEC``: render, verify, switch generations, restart what changed, or go back.

Exit status: 0 applied or nothing to change (``--check``: nothing would change);
1 refused by verify or the exposure gate (nothing changed), rolled back to the
previous generation (the host runs what it ran before), or with ``--check``
something would change; 2 bad input; 3 the rollback failed too (the report
names what is left). The engine is ``unitgen.rollout``; the on-disk layout is
``unitgen.generations``; docs/rendering.md, "Applying".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unitgen.commands.render import add_common_arguments, prepare

if TYPE_CHECKING:
    from unitgen.generations import Generation, Store
    from unitgen.model import Spec
    from unitgen.render import RenderOptions
    from unitgen.rollout import Outcome, Plan, UnitResult

HELP = "render, verify and switch to a spec's units; restart what changed, roll back on failure"


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Where generations and their links live (shared by apply, rollback, generations)."""
    parser.add_argument(
        "--generations",
        type=Path,
        metavar="DIR",
        help="where generations are kept (default: STATE_DIR/generations, "
        "/var/lib/unitgen/generations for the system manager)",
    )
    parser.add_argument(
        "--unit-dir",
        type=Path,
        metavar="DIR",
        help="where the unit links go (default: /etc/systemd/system, or the user's "
        "~/.config/systemd/user with --user)",
    )


def add_rollout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="S",
        help="seconds each restarted unit has to become active (and healthy); default 90",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds a restarted unit must then stay active without a restart; default 3",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_target_arguments(parser)
    add_rollout_arguments(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing: report whether applying would change anything, and the diff",
    )
    parser.add_argument(
        "--max-exposure",
        type=float,
        default=None,
        metavar="X",
        help="refuse a unit whose exposure is above X (default: its profile's ceiling)",
    )


def store_for(args: argparse.Namespace, policy_dir: Path | None = None) -> Store:
    from unitgen.generations import Store, Trees
    from unitgen.paths import detect_scope, paths_for

    paths = paths_for(detect_scope(True if args.user else None))
    root = args.generations if args.generations is not None else paths.state_dir / "generations"
    units = args.unit_dir if args.unit_dir is not None else paths.unit_dir
    return Store(root.absolute(), Trees(units.absolute(), (policy_dir or paths.policy_dir)))


def check_rollout_args(args: argparse.Namespace) -> None:
    from unitgen.errors import UsageError

    if not 0 < args.timeout <= 3600:
        raise UsageError(f"--timeout {args.timeout}: expected seconds in (0, 3600]")
    if not 0 <= args.settle <= 600:
        raise UsageError(f"--settle {args.settle}: expected seconds in [0, 600]")


def run(args: argparse.Namespace) -> int:
    from unitgen.errors import UsageError
    from unitgen.render import render, render_policies
    from unitgen.rollout import Outcome, plan

    check_rollout_args(args)
    if args.max_exposure is not None and not 0.0 <= args.max_exposure <= 10.0:
        raise UsageError(f"--max-exposure {args.max_exposure}: expected 0.0 to 10.0")
    spec, options = prepare(args)
    files = {"units": render(spec, options), "policy": render_policies(spec, options)}
    store = store_for(args, options.policy_dir)
    if args.check:
        p = plan(store, files, spec)
        problems = _gate(spec, options, files["units"], args.max_exposure) if p.changed else []
        problems += [
            f"{path}: exists and is not managed by unitgen apply" for path in store.conflicts(files)
        ]
        out = Outcome(
            "would-change" if p.changed else "unchanged",
            p.changed,
            generation=p.current.number if p.current else None,
            changes=[{"path": c.path, "status": c.status} for c in p.changes],
            diff=p.diff,
            problems=problems,
        )
        out.restarted = [{"unit": u, "action": "would restart"} for u in p.restart]
        _print(out, args.json)
        return 1 if p.changed or problems else 0
    spec_text = Path(args.spec).read_bytes()
    with store.locked():
        p = plan(store, files, spec)
        if not p.changed:
            out = Outcome("unchanged", False, generation=p.current.number if p.current else None)
            _print(out, args.json)
            return 0
        from unitgen.generations import refuse_conflicts

        refuse_conflicts(store.conflicts(files))
        problems = _gate(spec, options, files["units"], args.max_exposure)
        if problems:
            out = Outcome("refused", True, changes=_changes(p), diff=p.diff, problems=problems)
            _print(out, args.json)
            return 1
        new = _create(store, files, spec_text, args.spec, options)
        out = _switch_and_restart(store, spec, p, new, args)
    _print(out, args.json)
    return {"applied": 0, "rolled-back": 1, "rollback-failed": 3}.get(out.outcome, 1)


def _changes(p: Plan) -> list[dict[str, str]]:
    return [{"path": c.path, "status": c.status} for c in p.changes]


def _create(
    store: Store,
    files: dict[str, dict[str, str]],
    spec_text: bytes,
    spec_path: str,
    options: RenderOptions,
) -> Generation:
    from unitgen.generations import spec_digest

    meta = {
        "spec": str(Path(spec_path).absolute()),
        "spec_sha256": spec_digest(spec_text),
        "scope": options.scope.value,
        "systemd_version": options.systemd_version,
    }
    # The spec goes with its generation: a later rollback knows its health probes,
    # dependency order and alert targets.
    gen = store.create(files, meta)
    (gen.path / "spec.toml").write_bytes(spec_text)
    return gen


def _gate(
    spec: Spec, options: RenderOptions, units: dict[str, str], max_exposure: float | None
) -> list[str]:
    """The checks of ``unitgen check``: verify and the exposure gate. One line per problem."""
    from unitgen.commands.check import gate
    from unitgen.writetrees import write_trees

    with tempfile.TemporaryDirectory(prefix="unitgen-apply-") as tmp:
        directory = Path(tmp)
        write_trees([(directory, units)])
        rows, unattributed, _report = gate(spec, options, units, directory, max_exposure)
    problems = [f"verify: {line}" for line in unattributed]
    for row in rows:
        problems.extend(f"{row.file}: verify: {line}" for line in row.verify)
        if row.limit is not None and (row.exposure is None or row.exposure > row.limit):
            shown = "unknown" if row.exposure is None else f"{row.exposure:.1f}"
            problems.append(f"{row.file}: exposure {shown} is above its limit {row.limit:.1f}")
    return problems


def _switch_and_restart(
    store: Store, spec: Spec, p: Plan, new: Generation, args: argparse.Namespace
) -> Outcome:
    import asyncio

    from unitgen.commands.recover import setup_logging
    from unitgen.paths import detect_scope

    setup_logging()
    scope = detect_scope(True if args.user else None)
    return asyncio.run(_rollout(store, spec, p, new, args, scope))


async def _rollout(
    store: Store, spec: Spec, p: Plan, new: Generation, args: argparse.Namespace, scope: Any
) -> Outcome:
    from handlers.bus import SystemdBus
    from unitgen.generations import retire
    from unitgen.rollout import (
        Outcome,
        daemon_reload,
        disable,
        enable,
        installable,
        owned,
        owner,
        restart_and_wait,
        stop_and_wait,
        was_running,
    )

    old = p.current
    out = Outcome(
        "applied",
        True,
        generation=new.number,
        previous=old.number if old else None,
        changes=_changes(p),
        diff=p.diff,
    )
    units = new.files("units")
    old_units = old.files("units") if old else {}
    bus = await SystemdBus.connect(scope)
    try:
        # A unit the operator does not own is restarted only if it was running.
        restart = [u for u in p.restart if owned(spec, u) or await was_running(bus, u)]
        for unit in p.removed_units:
            out.restarted.append(_row(await stop_and_wait(bus, unit, args.timeout)))
        await disable(bus, p.removed_units)
        store.switch(old, new)
        kept = _keep_stale(store, p, new)
        await daemon_reload(bus)
        added = [u for u in restart if u not in old_units]
        await enable(bus, [u for u in restart if owned(spec, u) and installable(units, u)])
        failed: UnitResult | None = None
        touched: list[str] = []
        for unit in restart:
            who = owner(spec, unit)
            touched.append(unit)
            result = await restart_and_wait(
                bus, unit, who.health if who else None, timeout=args.timeout, settle=args.settle
            )
            out.restarted.append(_row(result))
            if not result.ok:
                failed = result
                break
        if failed is None:
            store.set_status(new, "active")
            if old is not None:
                store.set_status(old, "superseded")
            return out
        # -- back to the previous generation -------------------------------------
        out.outcome = "rolled-back"
        ok = True
        for unit in added:
            r = await stop_and_wait(bus, unit, args.timeout)
            out.rolled_back.append(_row(r))
            ok = ok and r.ok
        await disable(bus, added)
        if old is not None:
            store.switch(new, old)
        else:
            retire(store, new)
        _restore_stale(kept)
        await daemon_reload(bus)
        old_spec = _old_spec(old)
        back = [u for u in touched if u not in added]
        back += [u for u in p.removed_units if u not in back]
        await enable(bus, [u for u in p.removed_units if installable(old_units, u)])
        for unit in back:
            who = owner(old_spec, unit) if old_spec is not None else None
            r = await restart_and_wait(
                bus, unit, who.health if who else None, timeout=args.timeout, settle=args.settle
            )
            out.rolled_back.append(_row(r))
            ok = ok and r.ok
        store.set_status(new, "failed", failed_unit=failed.unit, reason=failed.detail)
        if old is not None:
            store.set_status(old, "active")
        out.problems.append(f"{failed.unit}: {failed.detail}")
        if not ok:
            out.outcome = "rollback-failed"
        out.alerts = await _alert(spec, failed, out)
        return out
    finally:
        await bus.close()


def _keep_stale(store: Store, p: Plan, new: Generation) -> list[tuple[Path, Path]]:
    """Move an older unitgen's drop-ins into the new generation (a rollback puts them back)."""
    import shutil

    kept: list[tuple[Path, Path]] = []
    for path in p.stale:
        keep = new.path / "legacy" / path.relative_to(store.trees.units)
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, keep)
        kept.append((path, keep))
    return kept


def _restore_stale(kept: list[tuple[Path, Path]]) -> None:
    import shutil

    for path, keep in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(keep, path)


def _old_spec(old: Generation | None) -> Spec | None:
    from unitgen.errors import UnitgenError
    from unitgen.specfile import load_spec

    if old is None or not (old.path / "spec.toml").is_file():
        return None
    try:
        return load_spec(old.path / "spec.toml")
    except UnitgenError:
        return None  # a spec this version no longer reads: restart without health probes


def _row(r: UnitResult) -> dict[str, Any]:
    return {
        "unit": r.unit,
        "action": r.action,
        "ok": r.ok,
        "detail": r.detail,
        "seconds": round(r.seconds, 3),
    }


async def _alert(spec: Spec, failed: UnitResult, out: Outcome) -> list[dict[str, Any]]:
    """Tell the failed unit's alert targets (those of the spec that broke it)."""
    import socket
    import time

    from handlers.alerts import Alert, Alerter, AlertTarget
    from unitgen.rollout import owner, went_back

    who = owner(spec, failed.unit)
    names = who.alerts if who is not None and who.alerts else spec.defaults.alerts
    targets = [
        AlertTarget.from_mapping({**a.config, "name": a.name, "type": a.type})
        for n in names
        if (a := spec.alerts.get(n)) is not None
    ]
    if not targets:
        return []
    alert = Alert(
        unit=failed.unit,
        incident_id=f"apply-{out.generation}",
        level="apply",
        status="firing",
        # A failed rollback is its own reason: the units it names are down now.
        reason="apply-rollback-failed" if out.outcome == "rollback-failed" else "apply-rolled-back",
        summary=f"unitgen apply: generation {out.generation} failed on {failed.unit} "
        f"({failed.detail}); {went_back(out)}",
        attempts=1,
        started_at=time.time(),
        ended_at=None,
        host=socket.gethostname(),
    )
    deliveries = await Alerter(targets).send(alert)
    return [{"target": d.target, "ok": d.ok, "error": d.error} for d in deliveries]


def _print(out: Outcome, as_json: bool) -> None:
    from unitgen.rollout import log_to_journal

    log_to_journal(out)
    if as_json:
        print(json.dumps(out.as_dict()))
        return
    if out.diff:
        sys.stdout.write(out.diff)
    for c in out.changes:
        if c["status"] == "relinked":
            print(f"relink {c['path']} (same content, not yet managed)")
    for row in out.restarted:
        state = row.get("detail") or row.get("action", "")
        mark = "" if row.get("ok", True) else "FAILED "
        print(f"{row.get('action', 'restart')} {row['unit']}: {mark}{state}")
    for row in out.rolled_back:
        mark = "" if row.get("ok") else "FAILED "
        print(f"rollback {row['action']} {row['unit']}: {mark}{row['detail']}")
    for line in out.problems:
        print(f"problem: {line}")
    where = f" (generation {out.generation})" if out.generation is not None else ""
    print(f"{out.outcome}{where}")


# For rollback: switch to an existing generation with the same engine.
async def rollout_to(
    store: Store, spec: Spec, p: Plan, target: Generation, args: argparse.Namespace, scope: Any
) -> Outcome:
    return await _rollout(store, spec, p, target, args, scope)
