"""Spec -> unit files and recovery policies, as text.

:func:`render` and :func:`render_policies` are pure: the same spec and
:class:`RenderOptions` give the same bytes, with no file system access beyond
reading the templates. :func:`unitgen.writetrees.write_trees` writes them.

Templates are Jinja2 files in the repository's ``units/`` directory, found
(first match wins) in ``$UNITGEN_TEMPLATES``, then ``unitgen/templates`` next to
this module: a symlink to ``../units`` in the repository, and a real copy in
an installed wheel (package data). docs/rendering.md describes the layout.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2

from handlers.ladder import DEPENDENCY_WAIT, MAX_DEPENDENCY_ROUNDS
from unitgen import hardening
from unitgen.credentials import credential_units, load_credentials
from unitgen.errors import RenderError
from unitgen.model import Health, Limits, Override, Recovery, Restart, Service, Spec
from unitgen.paths import LISTENING_DIR, LISTENING_MARKER, Scope, paths_for
from unitgen.policy import policy_from_service, to_json
from unitgen.quantities import format_duration, format_size
from unitgen.quoting import quote
from unitgen.specnodes import join_key
from unitgen.systemd_version import RESTART_MODE_SINCE
from unitgen.unitnames import (
    RECOVER_TEMPLATE,
    managed_unit_problem,
    reserved_name_problem,
)

__all__ = [
    "DROPIN_NAME",
    "RECOVER_UNIT",
    "RenderOptions",
    "default_unitgen_bin",
    "render",
    "render_policies",
    "template_dir",
]

RECOVER_UNIT = RECOVER_TEMPLATE
# Drop-ins of all directories are applied in lexical order of their file names, and
# for single-valued settings the last one wins. systemd recommends 10-40 for files in
# /usr (vendors) and 60-90 for /etc and /run (the administrator's side, where we
# write): 70 lands after every vendor drop-in, leaves 60-69 below us and 71-90 (and
# `systemctl edit`'s override.conf, which sorts after digits) above us.
DROPIN_NAME = "70-unitgen.conf"
# Names an older unitgen used: unitgen.dropins removes them once the new one is written.
LEGACY_DROPIN_NAMES = ("50-unitgen.conf",)
SYSTEM_POLICY_DIR = Path("/etc/unitgen/policy.d")


def default_unitgen_bin() -> str:
    """The ``unitgen`` of the running interpreter's environment (the installed venv)."""
    return str(Path(sys.executable).parent / "unitgen")


@dataclass(frozen=True)
class BaseDirs:
    """Where systemd puts State/Logs/Cache/RuntimeDirectory= for the scope."""

    state: str
    logs: str
    cache: str
    runtime: str

    @classmethod
    def for_scope(cls, scope: Scope) -> BaseDirs:
        if scope is Scope.SYSTEM:
            return cls("/var/lib", "/var/log", "/var/cache", "/run")
        home = Path.home()

        def xdg(var: str, fallback: Path) -> str:
            value = os.environ.get(var, "")
            return value if value.startswith("/") else str(fallback)

        state = xdg("XDG_STATE_HOME", home / ".local" / "state")
        return cls(
            state=state,
            logs=f"{state}/log",
            cache=xdg("XDG_CACHE_HOME", home / ".cache"),
            runtime=xdg("XDG_RUNTIME_DIR", Path(f"/run/user/{os.geteuid()}")),
        )


@dataclass(frozen=True)
class RenderOptions:
    systemd_version: int
    scope: Scope = Scope.SYSTEM
    unitgen_bin: str = field(default_factory=default_unitgen_bin)
    policy_dir: Path = SYSTEM_POLICY_DIR
    base_dirs: BaseDirs = field(default_factory=lambda: BaseDirs.for_scope(Scope.SYSTEM))
    # Extra Environment= for the recovery unit (UNITGEN_STATE_DIR, UNITGEN_RUN_DIR).
    recover_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def for_scope(
        cls,
        scope: Scope,
        systemd_version: int,
        *,
        unitgen_bin: str | None = None,
        policy_dir: Path | None = None,
    ) -> RenderOptions:
        """Options for a real install: directories from paths.py and the environment."""
        env = tuple(
            (name, os.environ[name])
            for name in ("UNITGEN_STATE_DIR", "UNITGEN_RUN_DIR")
            if os.environ.get(name)
        )
        return cls(
            systemd_version=systemd_version,
            scope=scope,
            unitgen_bin=unitgen_bin or default_unitgen_bin(),
            policy_dir=policy_dir or paths_for(scope).policy_dir,
            base_dirs=BaseDirs.for_scope(scope),
            recover_env=env,
        )


# -- templates ----------------------------------------------------------------------


def template_dir() -> Path:
    override = os.environ.get("UNITGEN_TEMPLATES")
    candidates = [Path(override)] if override else []
    candidates.append(Path(__file__).resolve().parent / "templates")
    for candidate in candidates:
        if (candidate / "service.j2").is_file():
            return candidate
    where = ", ".join(str(c) for c in candidates)
    raise RenderError(f"unit templates not found (looked in {where}); set UNITGEN_TEMPLATES")


@functools.cache
def _environment(directory: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 -- unit files, not HTML; quote() does the escaping
        trim_blocks=True,
        lstrip_blocks=True,
        # Templates do not change under a running process; skip the stat() per use.
        auto_reload=False,
    )
    env.filters["q"] = quote
    return env


def _templates() -> jinja2.Environment:
    return _environment(str(template_dir()))


def _render_template(
    env: jinja2.Environment, name: str, context: Mapping[str, Any], where: str
) -> str:
    try:
        return env.get_template(name).render(context)
    except RenderError as exc:
        # A value quote() refused: the spec holds something systemd cannot represent.
        err = RenderError(f"{where}: {_directive_at(exc)}{exc}")
        err.exit_code = 2
        raise err from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {name}: {exc}") from exc


def _directive_at(exc: BaseException) -> str:
    """``"Description=: "`` for the template line that failed, from Jinja's traceback."""
    tb = exc.__traceback__
    found = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            try:
                line = Path(filename).read_text(encoding="utf-8").splitlines()[tb.tb_lineno - 1]
            except (OSError, IndexError):
                line = ""
            key = line.split("=", 1)[0].strip()
            found = f"{key}=: " if key.isidentifier() else found
        tb = tb.tb_next
    return found


# -- views: what the templates see ----------------------------------------------------


def _restart_view(restart: Restart | None) -> SimpleNamespace | None:
    # Namespaces, not dicts: Jinja tries getattr() first, and a miss costs an exception.
    if restart is None:
        return None
    return SimpleNamespace(policy=restart.policy, delay=format_duration(restart.delay))


def _limits_view(limits: Limits | None) -> tuple[tuple[str, str], ...]:
    if limits is None:
        return ()
    out: list[tuple[str, str]] = []

    def size(value: int | str) -> str:
        return value if isinstance(value, str) else format_size(value)

    if limits.memory_high is not None:
        out.append(("MemoryHigh", size(limits.memory_high)))
    if limits.memory_max is not None:
        out.append(("MemoryMax", size(limits.memory_max)))
    if limits.cpu_quota is not None:
        out.append(("CPUQuota", limits.cpu_quota))
    if limits.tasks_max is not None:
        out.append(("TasksMax", str(limits.tasks_max)))
    if limits.nofile is not None:
        out.append(("LimitNOFILE", str(limits.nofile)))
    return tuple(out)


def _hardening_view(
    unit: str,
    profile: hardening.HardeningProfile,
    disable: Sequence[str],
    options: RenderOptions,
    capabilities: Sequence[str] | None = None,
) -> tuple[tuple[str, str], ...]:
    unknown = sorted(set(disable) - hardening.known_directive_names())
    if unknown:
        # A typo here would silently keep the directive the operator meant to drop.
        err = RenderError(
            f"{unit}: hardening.disable: {', '.join(unknown)} is not a directive of any "
            f"profile (known: see docs/hardening.md)"
        )
        err.exit_code = 2
        raise err
    lines = hardening.directives_for(
        profile,
        disable=disable,
        scope=options.scope,
        systemd_version=options.systemd_version,
    )
    if capabilities is None:
        return tuple(lines)
    # The spec's list replaces the profile's bounding set (strict's empty one), or is
    # added where the profile keeps every capability. systemd ORs non-empty
    # CapabilityBoundingSet= assignments together and an empty one resets the set, so
    # the list comes after an empty line: in a drop-in, the vendor unit's own
    # capabilities would otherwise be kept as well.
    kept = [("CapabilityBoundingSet", "")]
    if capabilities:
        kept.append(("CapabilityBoundingSet", " ".join(capabilities)))
    if not any(name == "CapabilityBoundingSet" for name, _ in lines):
        return (*lines, *kept)
    out: list[tuple[str, str]] = []
    for name, value in lines:
        out.extend(kept if name == "CapabilityBoundingSet" else [(name, value)])
    return tuple(out)


def _service_view(svc: Service, options: RenderOptions) -> dict[str, Any]:
    user_scope = options.scope is Scope.USER
    deps = [
        ("Requires", svc.requires),
        ("Wants", svc.wants),
        ("BindsTo", svc.binds_to),
        ("PartOf", svc.part_of),
        ("After", svc.after),
        ("Before", svc.before),
    ]
    timeouts = tuple(
        (key, format_duration(value))
        for key, value in (
            ("TimeoutStartSec", svc.timeout_start),
            ("TimeoutStopSec", svc.timeout_stop),
            ("WatchdogSec", svc.watchdog),
        )
        if value is not None
    )
    directories = [
        ("StateDirectory", svc.state_directory),
        ("RuntimeDirectory", svc.runtime_directory),
        ("LogsDirectory", svc.logs_directory),
        ("CacheDirectory", svc.cache_directory),
        ("ConfigurationDirectory", svc.configuration_directory),
    ]
    profile = svc.hardening.profile
    # A user manager runs everything as its own user: it cannot switch to another.
    dynamic = False
    if not user_scope:
        dynamic = svc.dynamic_user or (
            profile == "strict" and svc.user is None and "DynamicUser" not in svc.hardening.disable
        )
    default_target = "default.target" if user_scope else "multi-user.target"
    return {
        "description": svc.description,
        "deps": [(k, v) for k, v in deps if v],
        "start_limit_interval": format_duration(start_limit_interval(svc)),
        "start_limit_burst": svc.restart.burst,
        "on_failure": True,
        "type": svc.type,
        "exec_start_pre": list(svc.exec_start_pre),
        "exec": svc.exec,
        "exec_reload": svc.exec_reload,
        "restart": _restart_view(svc.restart),
        "restart_mode": _restart_mode(options),
        "timeouts": timeouts,
        "environment": list(svc.environment),
        "environment_files": list(svc.environment_files),
        "user": None if user_scope else svc.user,
        "group": None if user_scope else svc.group,
        "dynamic_user": dynamic,
        "pidfile": svc.pidfile,
        "working_directory": svc.working_directory,
        "directories": [(k, v) for k, v in directories if v],
        "limits": _limits_view(svc.limits),
        "profile": profile,
        "hardening": _hardening_view(
            svc.unit, profile, svc.hardening.disable, options, svc.hardening.capabilities
        ),
        "read_write_paths": list(svc.hardening.read_write_paths),
        "wanted_by": list(svc.wanted_by) or [default_target],
        "gate": _gate_argv(svc, options),
    }


def start_limit_interval(svc: Service) -> float:
    """StartLimitIntervalSec=: ``restart.interval``, widened for a health gate.

    A start that fails its gate takes ``start_period``; if ``burst`` such starts
    do not fit in the interval, the start limit never trips and a unit that
    never gets healthy is restarted by systemd for ever, out of the ladder's
    sight. So the window grows to hold ``burst`` failed gated starts.
    """
    r, health = svc.restart, svc.health
    if health is None or not health.gate or r.policy == "no":
        return r.interval
    one_start = r.delay + health.start_period + health.start_interval + health.start_probe.timeout
    return max(r.interval, math.ceil(r.burst * one_start))


def gate_python(unitgen_bin: str) -> str:
    """The interpreter beside ``unitgen`` (the same venv), which can import handlers."""
    return str(Path(unitgen_bin).parent / "python3")


def _gate_argv(svc: Service, options: RenderOptions) -> list[str] | None:
    """``ExecStartPost=`` for ``health.gate``: the unit's name (%n) follows it."""
    if svc.health is None or not svc.health.gate:
        return None
    policy = options.policy_dir / f"{svc.unit}.json"
    return [gate_python(options.unitgen_bin), "-m", "handlers.gate", str(policy)]


def _restart_mode(options: RenderOptions) -> str | None:
    # 254 made OnFailure= fire before every automatic restart; "direct" restores the
    # 252 behaviour, where it fires only once systemd gives up (docs/recovery.md).
    return "direct" if options.systemd_version >= RESTART_MODE_SINCE else None


def _override_view(ovr: Override, options: RenderOptions) -> dict[str, Any]:
    hard = ovr.hardening
    return {
        "restart": _restart_view(ovr.restart),
        "start_limit_interval": format_duration(ovr.restart.interval) if ovr.restart else "",
        "start_limit_burst": ovr.restart.burst if ovr.restart else 0,
        "on_failure": ovr.on_failure,
        "restart_mode": _restart_mode(options) if (ovr.on_failure or ovr.restart) else None,
        "limits": _limits_view(ovr.limits),
        "profile": hard.profile if hard else "off",
        # The vendor's unit decides its user: never DynamicUser= in a drop-in.
        "hardening": (
            _hardening_view(ovr.unit, hard.profile, hard.disable, options, hard.capabilities)
            if hard
            else ()
        ),
        "read_write_paths": list(hard.read_write_paths) if hard else [],
    }


def _recover_timeout(spec: Spec) -> float:
    """How long one recovery may run: the slowest ladder in the spec, plus slack."""

    def ladder(r: Recovery, health: Health | None) -> float:
        b = r.backoff
        waits = sum(
            min(b.base * b.factor**i, b.max) * (1 + b.jitter) for i in range(r.max_attempts)
        )
        # The OnFailure= process also watches each restart for min_uptime, so a quick
        # crash is handled in the same run (systemd merges a second OnFailure= start
        # into the oneshot that is still running); and it gives each restart its
        # health start_period before it calls the attempt failed.
        start_period = health.start_period if health is not None else 0.0
        per_attempt = r.start_timeout + r.validate_timeout + r.min_uptime + start_period
        # The ladder waits up to MAX_DEPENDENCY_ROUNDS rounds for a dependency.
        return waits + r.max_attempts * per_attempt + MAX_DEPENDENCY_ROUNDS * DEPENDENCY_WAIT

    units: list[Service | Override] = [*spec.services.values(), *spec.overrides.values()]
    longest = max((ladder(u.recovery, u.health) for u in units), default=0.0)
    # Whole minutes, at least five: a ladder cut short by systemd is worse than a slow one.
    return max(300.0, math.ceil((longest + 60.0) / 60.0) * 60.0)


def _recover_view(spec: Spec, options: RenderOptions) -> dict[str, Any]:
    argv = [options.unitgen_bin, "recover"]
    if options.scope is Scope.USER:
        argv.append("--user")
    env: list[tuple[str, str]] = []
    # In user scope the default policy dir depends on the manager's XDG_CONFIG_HOME,
    # which need not be the renderer's, so it is always spelled out there.
    if options.scope is Scope.USER or options.policy_dir != SYSTEM_POLICY_DIR:
        env.append(("UNITGEN_POLICY_DIR", str(options.policy_dir)))
    env.extend(options.recover_env)
    directives = hardening.filter_directives(
        hardening.RECOVER_HARDENING,
        scope=options.scope,
        systemd_version=options.systemd_version,
    )
    return {
        "argv": argv,
        "environment": env,
        "timeout": format_duration(_recover_timeout(spec)),
        "hardening": tuple(directives),
        # systemd's %t is /run or $XDG_RUNTIME_DIR, the scope's runtime root.
        "listening": f"%t/{LISTENING_DIR}/{LISTENING_MARKER}",
        "credentials": load_credentials(spec, options),
    }


# -- rendering ------------------------------------------------------------------------


def render(spec: Spec, options: RenderOptions) -> dict[str, str]:
    """Every unit file of ``spec``: relative path -> text (the recovery template included)."""
    out: dict[str, str] = {}
    _check_unit_names(spec)
    env = _templates()
    for svc in spec.services.values():
        out[svc.unit] = _render_template(
            env,
            "service.j2",
            {"spec_path": spec.path, "s": SimpleNamespace(**_service_view(svc, options))},
            f"{spec.path}: {svc.unit}",
        )
    for ovr in spec.overrides.values():
        out[f"{ovr.unit}.d/{DROPIN_NAME}"] = _render_template(
            env,
            "dropin.j2",
            {"spec_path": spec.path, "s": SimpleNamespace(**_override_view(ovr, options))},
            f"{spec.path}: {ovr.unit}",
        )
    out[RECOVER_UNIT] = _render_template(
        env,
        f"{RECOVER_UNIT}.j2",
        {"r": SimpleNamespace(**_recover_view(spec, options))},
        RECOVER_UNIT,
    )
    out.update(credential_units(spec, options))
    return out


def _check_unit_names(spec: Spec) -> None:
    """The spec's own name rules, again, for a Spec built without the spec loader.

    Messages name the spec key, as the loader does: a name that renders is one
    unitgen recover, the locks and the D-Bus API accept (unitgen/unitnames.py).
    """
    named = [(join_key("service", key), svc.unit) for key, svc in spec.services.items()]
    named += [(join_key("override", ovr.unit), ovr.unit) for ovr in spec.overrides.values()]
    for key, unit in named:
        problem = reserved_name_problem(unit) or managed_unit_problem(unit)
        if problem is not None:
            err = RenderError(f"{spec.path}: {key}: expected {problem}")
            err.exit_code = 2
            raise err


def _unit_directories(svc: Service | Override, base: BaseDirs) -> tuple[str, ...]:
    if isinstance(svc, Override):
        return ()
    dirs: list[str] = []
    for root, names in (
        (base.state, svc.state_directory),
        (base.logs, svc.logs_directory),
        (base.cache, svc.cache_directory),
        (base.runtime, svc.runtime_directory),
    ):
        dirs.extend(f"{root}/{name}" for name in names)
    return tuple(dirs)


def render_policies(spec: Spec, options: RenderOptions) -> dict[str, str]:
    """One recovery policy per service and override: file name -> JSON text."""
    out: dict[str, str] = {}
    units: list[Service | Override] = [*spec.services.values(), *spec.overrides.values()]
    for svc in units:
        alerts: list[Mapping[str, object]] = []
        for name in svc.alerts:
            target = spec.alerts.get(name)
            if target is None:
                raise RenderError(f"{spec.path}: {svc.unit}: alert {name!r} is not defined")
            alerts.append({**target.config, "name": target.name, "type": target.type})
        policy = policy_from_service(svc, tuple(alerts), _unit_directories(svc, options.base_dirs))
        out[f"{svc.unit}.json"] = to_json(policy)
    out.update(render_host_policy(spec))
    return out


def render_host_policy(spec: Spec) -> dict[str, str]:
    """The listener's host-wide settings, beside the policies; none while all are defaults.

    Not named ``*.json``: the listener takes every such file for a unit's policy.
    """
    import json

    from unitgen.policy import HOST_POLICY

    rate = spec.defaults.max_restarts_per_second
    if not rate:
        return {}
    return {HOST_POLICY: json.dumps({"max_restarts_per_second": rate}, sort_keys=True) + "\n"}
