"""``unitgen check SPEC``: validate, render to a temporary directory, ask systemd.

For every rendered unit it runs the real ``systemd-analyze verify`` (any
complaint about our files is an error, since verify itself exits 0 on unknown
keys) and ``systemd-analyze security --offline=yes``. The exposure must not
exceed ``--max-exposure`` when given; otherwise each unit is held to its
profile's ceiling (``hardening.EXPOSURE_CEILING``; system scope: strict 1.5,
standard 5.0, minimal 9.0, off 10.0), so a spec that deliberately picks a milder profile for
one daemon still passes while every strict unit must reach 1.5. The recovery
template is verified but not held to any limit: it runs as root on purpose
(docs/hardening.md).

Exit status: 0 all good, 1 a unit failed verify or is too exposed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unitgen.commands.render import add_common_arguments, prepare

if TYPE_CHECKING:
    from collections.abc import Mapping

    from handlers.budget import Budget
    from unitgen.model import Override, Service, Spec
    from unitgen.paths import Scope
    from unitgen.render import RenderOptions
    from unitgen.verify import VerifyReport

HELP = "validate a spec and verify its units with systemd"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--max-exposure",
        type=float,
        default=None,
        metavar="X",
        help="fail a unit whose systemd-analyze security exposure is above X "
        "(0.0-10.0; default: its profile's ceiling, 1.5 for strict)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="also start each service in a disposable real systemd (root; docs/sandbox.md) "
        "and name the hardening directives that stop it from starting",
    )
    parser.add_argument(
        "--unprivileged",
        action="store_true",
        help="with --probe --user: probe under a non-root user manager, as `install.sh --user` "
        "for an ordinary account would meet it",
    )


@dataclass
class Row:
    unit: str
    file: str
    verify: list[str] = field(default_factory=list)
    exposure: float | None = None
    limit: float | None = None  # the exposure it is held to; None: not gated
    worst_case: str = ""  # restarts per window, systemd + ladder (handlers/budget.py)
    notes: list[str] = field(default_factory=list)
    ok: bool = True


def worst_case_of(spec_unit: Service | Override) -> Budget:
    """The ladder's budget (handlers/budget.py): the most restarts the combined
    policy allows per ladder window, systemd's burst and the ladder's attempts together."""
    from handlers.budget import worst_case
    from unitgen.policy import policy_from_service

    return worst_case(policy_from_service(spec_unit, ()))


def _worst_case(spec_unit: Service | Override) -> str:
    budget = worst_case_of(spec_unit)
    return f"{budget.total}/{budget.window:g}s ({budget.systemd_restarts}+{budget.ladder_restarts})"


def run(args: argparse.Namespace) -> int:
    from unitgen.errors import UsageError
    from unitgen.render import render
    from unitgen.writetrees import write_trees

    if args.max_exposure is not None and not 0.0 <= args.max_exposure <= 10.0:
        raise UsageError(f"--max-exposure {args.max_exposure}: expected 0.0 to 10.0")
    spec, options = prepare(args)
    files = render(spec, options)
    rows: list[Row]
    with tempfile.TemporaryDirectory(prefix="unitgen-check-") as tmp:
        directory = Path(tmp)
        write_trees([(directory, files)])
        rows, unattributed, report = gate(spec, options, files, directory, args.max_exposure)
    if args.probe:
        _probe(files, rows, options.scope, unprivileged=args.unprivileged)
    environment = _environment_notes(files, options.scope)
    ok = all(r.ok for r in rows) and not unattributed
    if args.json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "systemd_version": options.systemd_version,
                    "scope": options.scope.value,
                    "units": [asdict(r) for r in rows],
                    "verify_errors": unattributed,
                    "verify_notes": report.notes,
                    "environment_notes": environment,
                }
            )
        )
    else:
        _print_table(rows)
        for line in unattributed:
            print(f"verify: {line}")
        for line in environment:
            print(f"note (this machine): {line}")
        for line in report.notes:
            print(f"note (not a unit of this spec): {line}")
    return 0 if ok else 1


def gate(
    spec: Spec,
    options: RenderOptions,
    files: Mapping[str, str],
    directory: Path,
    max_exposure: float | None,
) -> tuple[list[Row], list[str], VerifyReport]:
    """Verify the units written in ``directory`` and hold each to its exposure ceiling.

    Shared by ``check`` and ``apply``: returns one row per file, the verify lines
    about no file in particular, and the verify report (its notes).
    """
    from unitgen.credentials import LISTENER_DROPIN
    from unitgen.errors import SystemdError
    from unitgen.hardening import EXPOSURE_CEILING
    from unitgen.render import RECOVER_UNIT
    from unitgen.verify import exposure, verify

    owners: dict[str, Service | Override] = {s.unit: s for s in spec.services.values()}
    owners.update({o.unit: o for o in spec.overrides.values()})
    rows: list[Row] = []
    report = verify(directory, list(files), options.scope)
    for name in files:
        unit = name.split(".d/", 1)[0]
        row = Row(unit=unit, file=name)
        owner = owners.get(unit)
        if name != RECOVER_UNIT and owner is not None:
            # The recovery unit runs as root on purpose: reported, not gated.
            profile = owner.hardening.profile if owner.hardening else "off"
            ceiling = EXPOSURE_CEILING[options.scope][profile]
            row.limit = max_exposure if max_exposure is not None else ceiling
        row.verify = report.errors.get(name, [])
        if name == LISTENER_DROPIN:
            # unitgen's own listener may come later (install.sh, the package): its
            # credentials drop-in waits for it. Not a unit of the spec: no exposure.
            absent = [line for line in row.verify if line.endswith("not found.")]
            row.verify = [line for line in row.verify if line not in absent]
            row.notes.extend(f"{line} (the drop-in applies once it is)" for line in absent)
            rows.append(row)
            continue
        try:
            row.exposure = exposure(directory, name, options.scope)
        except SystemdError as exc:
            row.notes.append(str(exc))
        if owner is not None:
            row.worst_case = _worst_case(owner)
        row.ok = not row.verify and (
            row.limit is None or (row.exposure is not None and row.exposure <= row.limit)
        )
        if row.limit is not None and row.exposure is None:
            row.notes.append("no exposure figure: cannot hold it to --max-exposure")
        rows.append(row)
    return rows, report.errors.get("(verify)", []), report


def _probe(files: dict[str, str], rows: list[Row], scope: Scope, *, unprivileged: bool) -> None:
    """Start every plain service in a sandbox (unitgen.sandbox.probe_units); note the result."""
    from unitgen.paths import Scope
    from unitgen.sandbox import probe_units

    plain = {n: t for n, t in files.items() if n.endswith(".service") and "@" not in n}
    results = {r.unit: r for r in probe_units(plain, scope, unprivileged=unprivileged)}
    where = "an unprivileged user manager" if unprivileged else f"a {scope.value} manager"
    if unprivileged and scope is not Scope.USER:
        where = "a system manager (--unprivileged needs --user)"
    for row in rows:
        result = results.get(row.file)
        if result is None:
            continue
        if result.started:
            row.notes.append(f"probe: started under {where}")
            continue
        row.ok = False
        blame = ", ".join(result.culprits) or "none of its hardening directives"
        row.notes.append(
            f"probe: did not start under {where} (ExecMainStatus {result.status}); "
            f"removing {blame} lets it start"
            if result.culprits
            else f"probe: did not start under {where} (ExecMainStatus {result.status}); "
            "not caused by its hardening"
        )


def _environment_notes(files: dict[str, str], scope: Scope) -> list[str]:
    """Directives that would fail with 226/NAMESPACE on *this* machine (docs/hardening.md)."""
    from unitgen.hardening import INACCESSIBLE_DIR, needs_inaccessible_nodes
    from unitgen.paths import Scope

    if scope is Scope.USER or Path(INACCESSIBLE_DIR).is_dir():
        return []
    wanted = needs_inaccessible_nodes()
    used = sorted(
        {
            line.split("=", 1)[0]
            for text in files.values()
            for line in text.splitlines()
            if line.split("=", 1)[0] in wanted
        }
    )
    if not used:
        return []
    return [
        f"{INACCESSIBLE_DIR} is missing (systemd is not PID 1 here): units using "
        f"{', '.join(used)} would fail with 226/NAMESPACE on this machine; "
        "they work where systemd boots the system"
    ]


def _print_table(rows: list[Row]) -> None:
    header = ("UNIT", "VERIFY", "EXPOSURE", "RESTARTS/WINDOW", "RESULT")
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        if r.exposure is None:
            exp = "-"
        elif r.limit is not None:
            exp = f"{r.exposure:.1f}/{r.limit:.1f}"
        else:
            exp = f"{r.exposure:.1f} (ungated)"
        verify = "ok" if not r.verify else f"{len(r.verify)} error(s)"
        table.append((r.file, verify, exp, r.worst_case or "-", "ok" if r.ok else "FAIL"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        for line in r.verify:
            print(f"{r.file}: verify: {line}")
        for note in r.notes:
            print(f"{r.file}: {note}")
