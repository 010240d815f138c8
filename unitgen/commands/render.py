"""``unitgen render SPEC --out DIR``: write the units and recovery policies of a spec."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unitgen.model import Spec
    from unitgen.render import RenderOptions

HELP = "render hardened units from a spec"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that renders (render, check, diff) shares."""
    parser.add_argument("spec", help="the spec file (TOML)")
    parser.add_argument(
        "--user", action="store_true", help="render for a user manager (default: system)"
    )
    parser.add_argument(
        "--systemd-version",
        type=int,
        metavar="N",
        help="render for systemd N (default: the installed one, from systemctl --version)",
    )
    parser.add_argument(
        "--unitgen-bin",
        metavar="PATH",
        help="the unitgen the recovery unit runs (default: the one next to this Python)",
    )
    parser.add_argument(
        "--policy-dir",
        type=Path,
        metavar="DIR",
        help="where the recovery policies go and the recovery unit reads them "
        "(default: the scope's, see unitgen/paths.py)",
    )


def prepare(args: argparse.Namespace) -> tuple[Spec, RenderOptions]:
    """Load and validate the spec, and turn the flags into render options."""
    from unitgen import systemd_version
    from unitgen.errors import UsageError
    from unitgen.paths import detect_scope
    from unitgen.render import RenderOptions
    from unitgen.specfile import load_spec

    if args.unitgen_bin is not None and not Path(args.unitgen_bin).is_absolute():
        raise UsageError(f"--unitgen-bin {args.unitgen_bin!r}: expected an absolute path")
    spec = load_spec(args.spec)
    scope = detect_scope(True if args.user else None)
    options = RenderOptions.for_scope(
        scope,
        systemd_version.resolve(args.systemd_version),
        unitgen_bin=args.unitgen_bin,
        policy_dir=args.policy_dir.absolute() if args.policy_dir else None,
    )
    return spec, options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="where the unit files go"
    )


def run(args: argparse.Namespace) -> int:
    from unitgen.render import DROPIN_NAME, render, render_policies
    from unitgen.writetrees import write_trees

    spec, options = prepare(args)
    units = render(spec, options)
    policies = render_policies(spec, options)
    written = write_trees([(args.out, units), (options.policy_dir, policies)])
    # Only once the new drop-ins are in place: the old ones never go missing first.
    from unitgen.dropins import remove_stale, stale_dropins

    removed = remove_stale(stale_dropins(args.out, units))
    if args.json:
        print(
            json.dumps(
                {
                    "units": [str(args.out / n) for n in units],
                    "policies": [str(options.policy_dir / n) for n in policies],
                    "removed": [str(p) for p in removed],
                    "scope": options.scope.value,
                    "systemd_version": options.systemd_version,
                }
            )
        )
    else:
        for path in written:
            print(f"wrote {path}")
        for path in removed:
            print(f"removed {path} (replaced by {path.with_name(DROPIN_NAME)})")
    return 0
