"""The unified diff of one file, as `unitgen diff` and `unitgen apply --check` print it."""

from __future__ import annotations

import difflib


def file_diff(path: str, old: str | None, new: str | None) -> list[str]:
    """Lines of a unified diff from ``old`` to ``new`` at ``path``; None is no file.

    A file added is diffed from /dev/null, one removed to /dev/null, as diff -N does.
    """
    return list(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            (new or "").splitlines(keepends=True),
            fromfile="/dev/null" if old is None else path,
            tofile="/dev/null" if new is None else path,
        )
    )
