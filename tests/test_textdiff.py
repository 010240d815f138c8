"""unitgen.textdiff: the diff -N shapes `unitgen diff` and `apply --check` print."""

from __future__ import annotations

from unitgen.textdiff import file_diff


def test_added_changed_removed_and_unchanged() -> None:
    added = file_diff("/etc/x.service", None, "[Service]\n")
    assert added[:2] == ["--- /dev/null\n", "+++ /etc/x.service\n"] and "+[Service]\n" in added
    removed = file_diff("/etc/x.service", "[Service]\n", None)
    assert removed[:2] == ["--- /etc/x.service\n", "+++ /dev/null\n"] and "-[Service]\n" in removed
    changed = file_diff("/etc/x.service", "a\n", "b\n")
    assert changed[:2] == ["--- /etc/x.service\n", "+++ /etc/x.service\n"]
    assert {"-a\n", "+b\n"} <= set(changed)
    assert file_diff("/etc/x.service", "same\n", "same\n") == []
