"""``unitgen diff SPEC --against DIR``: what rendering would change in an installed tree.

Exit status, like diff(1): 0 when nothing would change, 1 when something would
(changed files and files that would be added), 2 for bad input. Files in DIR
that the spec does not render are not reported: they may belong to anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unitgen.commands.render import add_common_arguments, prepare
from unitgen.textdiff import file_diff

HELP = "show what rendering would change in an installed tree"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--against",
        type=Path,
        required=True,
        metavar="DIR",
        help="the installed unit directory, e.g. /etc/systemd/system",
    )
    parser.add_argument(
        "--policies",
        action="store_true",
        help="also compare the recovery policies with --policy-dir",
    )


def _read(path: Path) -> str | None:
    from unitgen.errors import UsageError

    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the installed file ({exc})") from exc


def run(args: argparse.Namespace) -> int:
    from unitgen.errors import UsageError
    from unitgen.render import render, render_policies

    spec, options = prepare(args)
    if not args.against.is_dir():
        raise UsageError(f"--against {args.against}: not a directory")
    trees = [(args.against, render(spec, options))]
    if args.policies:
        trees.append((options.policy_dir, render_policies(spec, options)))
    changes: list[dict[str, str]] = []
    chunks: list[str] = []
    for directory, files in trees:
        for name, text in files.items():
            path = directory / name
            installed = _read(path)
            if installed == text:
                continue
            status = "added" if installed is None else "changed"
            changes.append({"path": str(path), "status": status})
            chunks.extend(file_diff(str(path), installed, text))
    if args.json:
        print(json.dumps({"changes": changes, "diff": "".join(chunks)}))
    else:
        print("".join(chunks), end="")
    return 1 if changes else 0
