"""``unitgen rollback [--to N]``: make an earlier generation live again, the way apply would.

Without ``--to``, the newest generation before the current one that did not
fail. The switch, reload, restarts (only units whose files differ) and the
automatic return when a unit does not come up are ``unitgen apply``'s; the
health probes and dependency order are those of the target's own spec copy.
Exit status as for ``unitgen apply``.
"""

from __future__ import annotations

import argparse

HELP = "go back to an earlier generation of applied units"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unitgen.commands.apply import add_rollout_arguments, add_target_arguments

    parser.add_argument(
        "--to", type=int, metavar="N", help="the generation to go back to (default: previous)"
    )
    parser.add_argument(
        "--user", action="store_true", help="the user manager's generations (default: system)"
    )
    add_target_arguments(parser)
    add_rollout_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from unitgen.commands.apply import _print, _rollout, check_rollout_args, store_for
    from unitgen.commands.recover import setup_logging
    from unitgen.errors import StateError, UsageError
    from unitgen.model import Spec
    from unitgen.paths import detect_scope
    from unitgen.rollout import Outcome, plan
    from unitgen.specfile import load_spec

    check_rollout_args(args)
    store = store_for(args)
    with store.locked():
        current = store.current()
        if current is None:
            raise UsageError(f"{store.root}: no generation is live; nothing to roll back")
        if args.to is not None:
            target = store.get(args.to)
        else:
            earlier = [
                n
                for n in store.numbers()
                if n < current.number and store.get(n).meta.get("status") != "failed"
            ]
            if not earlier:
                raise StateError(f"{store.root}: no generation before {current.number}")
            target = store.get(earlier[-1])
        if target.number == current.number:
            out = Outcome("unchanged", False, generation=current.number)
            _print(out, args.json)
            return 0
        spec_file = target.path / "spec.toml"
        spec = load_spec(spec_file) if spec_file.is_file() else Spec(path=str(spec_file))
        files = {k: target.files(k) for k in ("units", "policy")}
        p = plan(store, files, spec)
        setup_logging()
        scope = detect_scope(True if args.user else None)
        out = asyncio.run(_rollout(store, spec, p, target, args, scope))
    _print(out, args.json)
    return {"applied": 0, "rolled-back": 1, "rollback-failed": 3}.get(out.outcome, 1)
