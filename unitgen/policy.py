"""The machine-readable recovery policy: what the generator hands the handler.

``unitgen render`` writes one ``UNIT.json`` per unit into the policy directory
(``unitgen.paths``). The recovery handler reads it at the moment a unit fails,
from the OnFailure= unit or from the listener, so this module is imported on
the hot path and deliberately depends on nothing heavier than ``json``.

The file is versioned. A reader refuses a version it does not know rather than
guessing, and a unit without a file gets :func:`default_policy`, flagged
``default=True`` so every output can say so.

Template instances (``worker@3.service``) fall back to the template's policy
(``worker@.service.json``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unitgen.errors import PolicyError
from unitgen.model import (
    AlertOn,
    Cleanup,
    Disk,
    Health,
    Memory,
    Override,
    Probe,
    Recovery,
    Restart,
    Service,
)

POLICY_VERSION = 1


@dataclass(frozen=True)
class Policy:
    unit: str
    restart: Restart = field(default_factory=Restart)
    recovery: Recovery = field(default_factory=Recovery)
    health: Health | None = None
    depends: tuple[Probe, ...] = ()
    cleanup: Cleanup = field(default_factory=Cleanup)
    disk: Disk = field(default_factory=Disk)
    memory: Memory = field(default_factory=Memory)
    validate: tuple[str, ...] | None = None
    # Alert targets as written in the spec: secrets appear only as file or env names.
    alerts: tuple[Mapping[str, object], ...] = ()
    # Absolute State/Logs/Cache/Runtime directories, for the disk checks.
    directories: tuple[str, ...] = ()
    default: bool = False
    # The flapping alert; None (the default) sends none. Left out of the JSON when None.
    alert_on: AlertOn | None = None
    version: int = POLICY_VERSION


def default_policy(unit: str) -> Policy:
    """What a unit without a rendered policy gets: systemd's defaults and a sane ladder."""
    return Policy(unit=unit, default=True)


def policy_from_service(
    svc: Service | Override,
    alerts: tuple[Mapping[str, object], ...],
    directories: tuple[str, ...] = (),
) -> Policy:
    restart = svc.restart if svc.restart is not None else Restart()
    return Policy(
        unit=svc.unit,
        restart=restart,
        recovery=svc.recovery,
        health=svc.health,
        depends=svc.depends,
        cleanup=svc.cleanup,
        disk=svc.disk,
        memory=svc.memory,
        validate=svc.validate,
        alerts=alerts,
        directories=directories,
        alert_on=svc.alert_on,
    )


def to_json(policy: Policy) -> str:
    raw = dataclasses.asdict(policy)
    if raw["alert_on"] is None:
        del raw["alert_on"]  # policies without it stay byte-for-byte what they were
    return json.dumps(raw, indent=2, sort_keys=True) + "\n"


def from_json(text: str, source: str) -> Policy:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: expected a JSON object")
    version = raw.get("version")
    if version != POLICY_VERSION:
        raise PolicyError(
            f"{source}: policy version {version!r} unknown, expected {POLICY_VERSION}"
        )
    policy: Policy = _build(Policy, raw, source, "")
    return policy


def policy_path(unit: str, policy_dir: Path) -> Path:
    return policy_dir / f"{unit}.json"


def load_policy(unit: str, policy_dir: Path) -> Policy:
    """The policy for ``unit``; the template's for an instance; else the default."""
    candidates = [policy_path(unit, policy_dir)]
    prefix, at, rest = unit.partition("@")
    if at and "." in rest:
        candidates.append(policy_path(f"{prefix}@.{rest.rsplit('.', 1)[1]}", policy_dir))
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read policy ({exc.strerror})") from exc
        # An instance shares its template's policy but keeps its own name.
        return dataclasses.replace(from_json(text, str(path)), unit=unit)
    return default_policy(unit)


# -- dict -> dataclass, checked against the type hints -------------------------------


# get_type_hints compiles every annotation string on each call (docs/recovery.md); the
# handler reads a policy on every failure, so resolve each class once.
_HINTS: dict[type[Any], dict[str, Any]] = {}


def _build(cls: type[Any], raw: Mapping[str, Any], source: str, where: str) -> Any:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise PolicyError(f"{source}: unknown key {where}{key}")
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _convert(hints[f.name], raw[f.name], source, f"{where}{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise PolicyError(f"{source}: {where or 'policy'}: {exc}") from exc


def _convert(tp: Any, value: Any, source: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors: list[PolicyError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, source, where)
            except PolicyError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value in args:
            return value
        raise PolicyError(f"{source}: {where}: expected one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise PolicyError(f"{source}: {where}: expected an object")
        return _build(tp, value, source, f"{where}.")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise PolicyError(f"{source}: {where}: expected a list")
        item = args[0]
        return tuple(_convert(item, v, source, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Mapping or tp is Mapping:
        if not isinstance(value, dict):
            raise PolicyError(f"{source}: {where}: expected an object")
        return dict(value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise PolicyError(f"{source}: {where}: expected a number, got {value!r}")
    if tp in (int, str, bool):
        if type(value) is tp:
            return value
        raise PolicyError(f"{source}: {where}: expected {tp.__name__}, got {value!r}")
    raise PolicyError(f"{source}: {where}: unsupported type {tp!r}")


# The listener's host-wide settings, written beside the policies by `unitgen render`
# from [defaults] (only when one differs from its default).
HOST_POLICY = "host.policy"


def load_host_restart_rate(policy_dir: Path) -> float:
    """[defaults] max_restarts_per_second as rendered; 0 (no limit) when absent."""
    path = policy_dir / HOST_POLICY
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0.0
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    value = raw.get("max_restarts_per_second", 0) if isinstance(raw, dict) else None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= 100_000  # also refuses NaN and Infinity
    ):
        raise PolicyError(f"{path}: max_restarts_per_second: expected a number from 0 to 100000")
    return float(value)
