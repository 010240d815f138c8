"""bench/bench_listener.py: every command line the docs quote still parses (nothing is run).

The benchmark is split into one module per mode under bench/listener/; the
dispatcher keeps the documented ``bench/bench_listener.py MODE ...`` lines working.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import bench_listener  # noqa: E402

COMMAND = re.compile(r"bench/bench_listener\.py ((?:[^`\n\\]|\\\n)*)")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _documented() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for match in COMMAND.finditer(doc.read_text()):
            args = match.group(1).replace("\\\n", " ").strip()
            if args.split(" ", 1)[0] in bench_listener.MODES:
                found.append((doc.name, args))
    return found


DOCUMENTED = _documented()


def test_the_docs_quote_the_benchmark() -> None:
    # The listener's reproduction commands are in docs/listener.md; if this finds
    # none, the pattern above (not the docs) went stale.
    assert len({args.split()[0] for _, args in DOCUMENTED}) >= 5


@pytest.mark.parametrize(("doc", "args"), DOCUMENTED)
def test_documented_command_line_parses(doc: str, args: str) -> None:
    parsed = bench_listener.parser().parse_args(shlex.split(args))
    assert parsed.mode == args.split()[0]


@pytest.mark.parametrize("mode", bench_listener.MODES)
def test_every_mode_is_a_module_with_its_own_entry_point(mode: str) -> None:
    path = REPO / "bench" / "listener" / f"{mode}.py"
    assert path.is_file()
    text = path.read_text()
    assert "def add_arguments(" in text and "def main(" in text
    # The docs name the module beside the figures it produces.
    assert f"`{mode}.py`" in (REPO / "docs" / "listener.md").read_text()


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        bench_listener.parser().parse_args(["idle"])
    assert exc.value.code == 2
