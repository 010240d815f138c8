"""The generations store and the apply plan: pure file-system logic, no systemd needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from unitgen.errors import LockBusyError, UsageError
from unitgen.generations import Store, Trees, retire
from unitgen.model import Service, Spec
from unitgen.rollout import dependency_order, plan


def make_store(tmp_path: Path) -> Store:
    return Store(tmp_path / "gens", Trees(tmp_path / "units", tmp_path / "policy"))


def files(**units: str) -> dict[str, dict[str, str]]:
    return {"units": dict(units), "policy": {f"{u}.json": "{}\n" for u in units if "/" not in u}}


def svc(name: str, **kw: object) -> Service:
    return Service(name=name, unit=f"{name}.service", description=name, exec=("/bin/true",), **kw)  # type: ignore[arg-type]


def test_switch_links_every_file_through_current_and_swaps_atomically(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    g1 = store.create(files(**{"a.service": "A1", "b.service": "B1"}), {})
    store.switch(None, g1)
    assert (tmp_path / "units/a.service").read_text() == "A1"
    assert (tmp_path / "units/a.service").is_symlink()
    g2 = store.create(files(**{"a.service": "A2", "nginx.service.d/70-unitgen.conf": "D"}), {})
    store.switch(g1, g2)
    assert (tmp_path / "units/a.service").read_text() == "A2"
    assert not (tmp_path / "units/b.service").exists()
    assert not (tmp_path / "policy/b.service.json").exists()
    assert (tmp_path / "units/nginx.service.d/70-unitgen.conf").read_text() == "D"
    store.switch(g2, g1)
    assert (tmp_path / "units/b.service").read_text() == "B1"
    assert not (tmp_path / "units/nginx.service.d").exists()  # the drop-in dir it made
    retire(store, g1)
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == []
    assert store.current() is None


def test_a_file_someone_else_owns_is_refused_before_anything_changes(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    (tmp_path / "units").mkdir()
    (tmp_path / "units/b.service").write_text("theirs")
    g1 = store.create(files(**{"a.service": "A", "b.service": "B"}), {})
    with pytest.raises(UsageError, match=r"b\.service: exists and is not managed"):
        store.switch(None, g1)
    assert (tmp_path / "units/b.service").read_text() == "theirs"
    assert not (tmp_path / "units/a.service").exists()
    assert store.current() is None


def test_plan_is_empty_when_the_host_has_it_and_names_what_restarts(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    spec = Spec(path="s", services={"a": svc("a"), "b": svc("b")})
    first = files(**{"a.service": "A", "b.service": "B", "unitgen-recover@.service": "R"})
    p = plan(store, first, spec)
    assert p.changed and p.restart == ["a.service", "b.service"]  # never the template
    store.switch(None, store.create(first, {}))
    assert not plan(store, first, spec).changed
    second = files(**{"a.service": "A2", "unitgen-recover@.service": "R2"})
    p = plan(store, second, spec)
    assert p.restart == ["a.service"] and p.removed_units == ["b.service"]
    assert {(Path(c.path).name, c.status) for c in p.changes} == {
        ("a.service", "changed"),
        ("unitgen-recover@.service", "changed"),
        ("b.service", "removed"),
        ("b.service.json", "removed"),
    }
    # Drift: the host's file edited behind our back is a change again.
    (tmp_path / "units/a.service").unlink()
    (tmp_path / "units/a.service").write_text("A")
    p = plan(store, first, spec)
    assert [(Path(c.path).name, c.status) for c in p.changes] == [("a.service", "relinked")]


def test_dependency_order_follows_after_before_and_requires() -> None:
    spec = Spec(
        path="s",
        services={
            "web": svc("web", after=("db.service",), requires=("cache.service",)),
            "db": svc("db"),
            "cache": svc("cache", after=("db.service",)),
            "early": svc("early", before=("db.service",)),
        },
    )
    units = ["web.service", "db.service", "cache.service", "early.service"]
    assert dependency_order(units, spec) == [
        "early.service",
        "db.service",
        "cache.service",
        "web.service",
    ]
    cyclic = Spec(
        path="s",
        services={"x": svc("x", after=("y.service",)), "y": svc("y", after=("x.service",))},
    )
    assert dependency_order(["y.service", "x.service"], cyclic) == ["x.service", "y.service"]


def test_one_apply_at_a_time(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with store.locked(), pytest.raises(LockBusyError), make_store(tmp_path).locked():
        pass
