"""``unitgen reset UNIT``: re-arm recovery for a unit the ladder gave up on."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handlers.recovery import Outcome

HELP = "re-arm recovery for a unit that was given up"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unitgen.commands.recover import add_scope_argument

    parser.add_argument("unit", help="the unit to re-arm")
    add_scope_argument(parser)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from handlers.locks import check_unit_name
    from unitgen.commands.recover import print_outcome, setup_logging

    check_unit_name(args.unit)
    setup_logging()
    outcome = asyncio.run(_reset(args))
    print_outcome(outcome, args.json)
    return 0


async def _reset(args: argparse.Namespace) -> Outcome:
    from handlers.bus import SystemdBus
    from handlers.recovery import RecoveryEngine
    from unitgen.commands.recover import scope_paths

    paths = scope_paths(args)
    bus = await SystemdBus.connect(paths.scope)
    try:
        engine = RecoveryEngine(bus, paths, read_journal_lines=False)
        try:
            return await engine.reset(args.unit)
        finally:
            await engine.aclose()
    finally:
        await bus.close()
