"""``unitgen harden UNIT``: the strictest drop-in an installed unit survives (unitgen/harden.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "find the strictest hardening drop-in an installed unit survives"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start UNIT with its vendor configuration in a disposable container (the host's "
        "/usr, /etc and /var, overlaid: nothing on the host changes), then search the "
        "strict profile's directives for the strictest set under which it still starts, "
        "stays up, passes --probe and survives its ExecReload=. Prints the drop-in "
        "(50-unitgen-harden.conf) and a spec snippet; see docs/hardening.md."
    )
    parser.add_argument("unit", help="an installed service, like nginx.service")
    parser.add_argument(
        "--probe",
        metavar="PROBE",
        help="http://HOST[:PORT]/PATH, tcp:HOST:PORT, or 'cmd ARGV...' (one argument); "
        "run inside the container",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write DIR/UNIT.d/50-unitgen-harden.conf (atomically) instead of printing it",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long the unit must stay up after each start (default 2)",
    )
    parser.add_argument(
        "--systemd-version",
        type=int,
        metavar="N",
        help="use the directives systemd N understands (default: the installed one)",
    )


def run(args: argparse.Namespace) -> int:
    from unitgen import systemd_version
    from unitgen.errors import UsageError
    from unitgen.harden import HARDEN_DROPIN, HardenOptions, harden, parse_probe
    from unitgen.hardensearch import Trial
    from unitgen.writetrees import write_trees

    if not (0.0 <= args.settle <= 600.0):
        raise UsageError(f"--settle {args.settle}: expected seconds from 0 to 600")
    probe = parse_probe(args.probe) if args.probe is not None else None
    version = systemd_version.resolve(args.systemd_version)

    def progress(trial: Trial) -> None:
        verdict = "ok" if trial.verdict.ok else "FAIL " + trial.verdict.reason
        print(
            f"trial {trial.number:3d} {trial.seconds:5.1f}s  {trial.change:<40} {verdict}",
            file=sys.stderr,
            flush=True,
        )

    def note(text: str) -> None:
        print(f"unitgen: {text}", file=sys.stderr, flush=True)

    result = harden(
        args.unit,
        probe,
        systemd_version=version,
        options=HardenOptions(settle=args.settle),
        on_trial=None if args.json else progress,
        on_note=None if args.json else note,
    )
    written: list[Path] = []
    if args.out is not None:
        written = write_trees([(args.out, {f"{args.unit}.d/{HARDEN_DROPIN}": result.dropin})])
    if args.json:
        payload = result.as_json()
        payload["written"] = [str(p) for p in written]
        print(json.dumps(payload, indent=2))
        return 0
    kept_caps = result.hardening.capabilities
    note(
        f"{args.unit}: {len(result.search.trials)} trials in {result.seconds:.1f} s; "
        f"{len(result.search.dropped)} left off"
        + (f" ({', '.join(result.search.dropped)})" if result.search.dropped else "")
        + (f"; capabilities kept: {' '.join(kept_caps)}" if kept_caps else "")
        + f"; exposure {result.before:.1f} -> {result.after:.1f}"
    )
    if written:
        for path in written:
            print(f"wrote {path}")
    else:
        print(f"# {args.unit}.d/{HARDEN_DROPIN}")
        print(result.dropin)
    print(result.snippet, end="")
    return 0
