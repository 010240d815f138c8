"""Every error unitgen raises is in the hierarchy drawn in unitgen/errors.py, with an exit code."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from types import ModuleType
from typing import Any

import pytest

import handlers
import unitgen
from unitgen import cli, errors
from unitgen.errors import SpecError, SpecProblem, UnitgenError

# "    │   └── UnitNotFoundError(LookupError)   systemd does not know the unit"
_DRAWN = re.compile(r"^(?P<indent>[ │├└─]*?)(?:[├└]── )?(?P<name>\w+)(?:\((?P<builtin>\w+)\))?\s")


def _all_modules() -> list[ModuleType]:
    modules = []
    for package in (unitgen, handlers):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue  # runs the CLI
            modules.append(importlib.import_module(info.name))
    return modules


def _error_classes() -> list[type[UnitgenError]]:
    _all_modules()
    found: list[type[UnitgenError]] = []
    stack: list[type[UnitgenError]] = [UnitgenError]
    while stack:
        cls = stack.pop()
        if cls.__module__.split(".")[0] in ("unitgen", "handlers"):
            found.append(cls)
        stack.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


def _drawing() -> dict[str, tuple[str | None, str | None]]:
    """Name -> (drawn parent, drawn builtin), from the module docstring's tree."""
    doc = errors.__doc__ or ""
    tree = doc.split("::", 1)[1].strip("\n").split("\n\n", 1)[0]
    drawn: dict[str, tuple[str | None, str | None]] = {}
    parents: list[tuple[int, str]] = []  # (column of the name, name)
    for line in tree.splitlines():
        m = _DRAWN.match(line.strip("\n").removeprefix("    "))
        assert m, f"unitgen/errors.py: cannot read this line of the drawing: {line!r}"
        column = m.start("name")
        while parents and parents[-1][0] >= column:
            parents.pop()
        drawn[m["name"]] = (parents[-1][1] if parents else None, m["builtin"])
        parents.append((column, m["name"]))
    return drawn


def _parent_and_builtin(cls: type[UnitgenError]) -> tuple[str | None, str | None]:
    parent = next((b for b in cls.__bases__ if issubclass(b, UnitgenError)), None)
    builtin = next((b for b in cls.__bases__ if not issubclass(b, UnitgenError)), None)
    if builtin is Exception:
        builtin = None
    return (
        parent.__name__ if parent else None,
        builtin.__name__ if builtin else None,
    )


def test_the_drawing_is_read() -> None:
    drawn = _drawing()
    assert drawn["UnitgenError"] == (None, None)
    assert drawn["UnitNotFoundError"] == ("SystemdError", "LookupError")
    assert drawn["SpecError"] == ("UnitgenError", "ValueError")


def test_every_error_class_is_drawn_where_it_is() -> None:
    drawn = _drawing()
    wrong = []
    for cls in _error_classes():
        parent, builtin = _parent_and_builtin(cls)
        where = f"{cls.__name__} ({cls.__module__})"
        want = f"{cls.__name__}({builtin})" if builtin else cls.__name__
        if cls.__name__ not in drawn:
            wrong.append(f"{where} is missing: draw {want} under {parent}")
        elif drawn[cls.__name__] != (parent, builtin):
            got_parent, got_builtin = drawn[cls.__name__]
            wrong.append(
                f"{where} is drawn as {cls.__name__}({got_builtin}) under {got_parent}, "
                f"but is {want} under {parent}"
            )
    classes = {c.__name__ for c in _error_classes()}
    wrong += [f"{name} is drawn but no such error exists" for name in set(drawn) - classes]
    assert not wrong, "the hierarchy in unitgen/errors.py's docstring:\n" + "\n".join(wrong)


def test_every_error_inherits_a_builtin() -> None:
    bare = [
        c.__name__
        for c in _error_classes()
        if c is not UnitgenError
        and not any(b.__module__ == "builtins" and b is not Exception for b in c.__mro__[1:])
    ]
    assert not bare, f"errors without the matching builtin beside UnitgenError: {bare}"


def _instance(cls: type[UnitgenError]) -> UnitgenError:
    if issubclass(cls, SpecError):
        return cls([SpecProblem("spec.toml", "service.api.exec", "expected an argv")])
    return cls("something went wrong")


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_has_an_exit_code_the_cli_returns(
    cls: type[UnitgenError], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cls.exit_code in (1, 2), f"{cls.__name__}.exit_code is {cls.exit_code!r}"

    class Raises:
        @staticmethod
        def run(args: argparse.Namespace) -> int:
            raise _instance(cls)

    def parser(argv: Any) -> tuple[argparse.ArgumentParser, Any]:
        p = argparse.ArgumentParser()
        p.add_argument("--json", action="store_true")
        return p, Raises

    monkeypatch.setattr(cli, "build_parser", parser)
    assert cli.main([]) == cls.exit_code
    err = capsys.readouterr().err
    assert err.startswith("unitgen: ") and err.count("\n") == 1, err
