"""Generate the man pages and shell completions from the argparse parser and the key table.

    python packaging/gen_docs.py OUTDIR

writes OUTDIR/man/unitgen.1 (argparse-manpage, from ``unitgen.cli.full_parser``
plus packaging/unitgen.1.ni), OUTDIR/man/unitgen.toml.5 (``unitgen.specman``,
the key reference docs/spec.md is generated from) and
OUTDIR/completion/{unitgen.bash,_unitgen} (shtab). Nothing is written by hand,
so a new option or key reaches every page on the next build. Needs the ``docs``
extra (argparse-manpage, shtab). SOURCE_DATE_EPOCH, when set, dates the pages
(reproducible builds).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = time.gmtime(int(epoch)) if epoch and epoch.isdigit() else time.gmtime()
    return time.strftime("%Y-%m-%d", when)


def man1() -> str:
    from argparse_manpage.manpage import Manpage

    from unitgen import __version__
    from unitgen.cli import full_parser

    parser = full_parser()
    data = {
        "prog": "unitgen",
        "project_name": "unitgen",
        "version": __version__,
        "description": "hardened systemd units from one spec, and event-driven recovery",
        "manual_title": "unitgen manual",
        "manual_section": "1",
        "include": str(HERE / "unitgen.1.ni"),
        "date": _date(),
    }
    return str(Manpage(parser, _data=data, format="single-commands-section"))


def completion(shell: str) -> str:
    import shtab

    from unitgen.cli import full_parser

    return str(shtab.complete(full_parser(), shell=shell))


def generate(out: Path) -> list[Path]:
    from unitgen.specman import reference_roff

    files = {
        out / "man" / "unitgen.1": man1(),
        out / "man" / "unitgen.toml.5": reference_roff(),
        out / "completion" / "unitgen.bash": completion("bash"),
        out / "completion" / "_unitgen": completion("zsh"),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return list(files)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gen_docs.py OUTDIR")
    for written in generate(Path(sys.argv[1])):
        print(written)
