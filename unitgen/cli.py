"""The ``unitgen`` command line.

Sub-commands live in ``unitgen/commands/NAME.py``, each with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen command's
module is imported: ``unitgen recover`` runs from an OnFailure= unit, where
every millisecond of start-up is time a failed service stays down, so it must
not pay for Jinja2 or the spec validator.

Errors: this is the one place that catches :class:`UnitgenError`, prints it
(one line per problem, no traceback) and turns it into the exit code. Anything
else is a bug and is allowed to show its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from unitgen import __version__
from unitgen.errors import SpecError, UnitgenError

# name -> (module, one-line help). Order is the order `unitgen --help` shows.
COMMANDS: dict[str, tuple[str, str]] = {
    "render": ("unitgen.commands.render", "render hardened units from a spec"),
    "check": ("unitgen.commands.check", "validate a spec and verify its units with systemd"),
    "diff": ("unitgen.commands.diff", "show what rendering would change in an installed tree"),
    "apply": ("unitgen.commands.apply", "switch to a spec's units; restart what changed"),
    "rollback": ("unitgen.commands.rollback", "go back to an earlier generation of applied units"),
    "generations": ("unitgen.commands.generations", "list the generations unitgen apply kept"),
    "schema": ("unitgen.commands.schema", "print the JSON Schema of the spec"),
    "sandbox": ("unitgen.commands.sandbox", "run a command against a disposable real systemd"),
    "recover": ("unitgen.commands.recover", "run the recovery ladder for a failed unit"),
    "reset": ("unitgen.commands.reset", "re-arm recovery for a unit that was given up"),
    "status": ("unitgen.commands.status", "show recovery state of units"),
    "history": ("unitgen.commands.history", "show the incident history of a unit"),
    "test-restart": ("unitgen.commands.test_restart", "fire drill: kill a unit, time its recovery"),
    "watch": ("unitgen.commands.watch", "run the D-Bus listener daemon"),
    "events": ("unitgen.commands.events", "follow the recovery event stream"),
    "harden": ("unitgen.commands.harden", "find the strictest drop-in an installed unit survives"),
    "import": ("unitgen.commands.import_units", "turn existing unit files into spec entries"),
}


class CommandModule(Protocol):
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _chosen(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, CommandModule | None]:
    parser = argparse.ArgumentParser(
        prog="unitgen",
        description="Hardened systemd units from one spec, and event-driven recovery.",
    )
    parser.add_argument("--version", action="version", version=f"unitgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen(argv)
    module: CommandModule | None = None
    for name, (modname, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == chosen:
            module = cast(CommandModule, importlib.import_module(modname))
            module.add_arguments(p)
    return parser, module


def report(exc: UnitgenError, as_json: bool) -> None:
    """Print an error the way an operator reads it: one line per problem."""
    if as_json:
        payload: dict[str, object] = {"error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, SpecError):
            payload["problems"] = [
                {"file": p.file, "key": p.key, "message": p.message} for p in exc.problems
            ]
        print(json.dumps(payload), file=sys.stderr)
        return
    lines = str(exc).splitlines() or [type(exc).__name__]
    for line in lines:
        print(f"unitgen: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(args_list)
    args = parser.parse_args(args_list)
    assert module is not None  # argparse rejected anything not in COMMANDS
    try:
        return module.run(args)
    except UnitgenError as exc:
        report(exc, getattr(args, "json", False))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def full_parser() -> argparse.ArgumentParser:
    """The parser with every command's arguments: for man pages and shell completion.

    ``main`` imports only the chosen command; the generators need them all, so
    this one pays for every import (packaging/gen-docs, at build time only).
    """
    parser = argparse.ArgumentParser(
        prog="unitgen",
        description="Hardened systemd units from one spec, and event-driven recovery.",
    )
    parser.add_argument("--version", action="version", version=f"unitgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (modname, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        cast(CommandModule, importlib.import_module(modname)).add_arguments(p)
    return parser
