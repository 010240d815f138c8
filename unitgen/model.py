"""The validated spec as typed, frozen data.

The spec loader (``unitgen.specfile``) is the only producer of these objects
and guarantees every invariant written here; the renderer and the recovery
policy trust them without re-checking. Units of measure are fixed so no
consumer has to guess: durations are float seconds, sizes are int bytes,
paths are absolute strings, and argv vectors are tuples of str.

The defaults below are the ones an operator gets by leaving a key out, and
``docs/spec.md`` documents each of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from unitgen.errors import PolicyError

HardeningProfile = Literal["strict", "standard", "minimal", "off"]
ProbeKind = Literal["http", "tcp", "command"]
ServiceType = Literal["simple", "exec", "notify", "forking"]
# What the ladder does once it would give up: "stop" leaves the unit failed until
# `unitgen reset`; "park" keeps retrying it slowly and at once when what it waits for
# is back. None: decided per failure (handlers.ladder.after_give_up_mode).
AfterGiveUp = Literal["stop", "park"]
RestartPolicy = Literal[
    "no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"
]


# systemd's size suffixes, base 1024 (parse_size() in src/basic/parse-util.c).
_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[BKMGTP]?)")
_PERCENT_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*%")
_MAX_BYTES = (1 << 63) - 1
_EXPECTED = "expected a percentage like '10%' or a size like '512M' (K, M, G, T, P: base 1024)"


def format_size(n: int) -> str:
    """A byte count the way systemd prints one: ``1.5G``, ``512M``, ``900B``."""
    for unit in ("P", "T", "G", "M", "K"):
        scale = _SUFFIXES[unit]
        if n >= scale:
            value = n / scale
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class Threshold:
    """A minimum to keep free: a percentage of the total, an absolute amount, or both.

    For inodes the absolute amount is a count of inodes, not bytes.  With
    both set, both must hold; with neither, the threshold never fails.
    """

    percent: float | None = None
    bytes: int | None = None

    @classmethod
    def parse(cls, text: str | int, *, what: str = "threshold") -> Threshold:
        """Parse ``"10%"``, ``"512M"``, ``"1G"``, ``"1.5T"`` or a plain number of bytes.

        Raises PolicyError with a one-line message naming ``what`` on bad input.
        """
        if isinstance(text, bool) or not isinstance(text, str | int):
            raise PolicyError(f"{what}: {_EXPECTED}, got {type(text).__name__}")
        if isinstance(text, int):
            if not 0 <= text <= _MAX_BYTES:
                raise PolicyError(f"{what}: {_EXPECTED}, got {text}")
            return cls(bytes=text)
        raw = text.strip()
        shown = repr(text if len(text) <= 40 else text[:40] + "...")
        if m := _PERCENT_RE.fullmatch(raw):
            percent = float(m["num"])
            if not 0.0 <= percent <= 100.0:
                raise PolicyError(f"{what}: percentage must be between 0% and 100%, got {shown}")
            return cls(percent=percent)
        if m := _SIZE_RE.fullmatch(raw):
            # Fraction, not float: "9007199254740993" must stay exact.
            value = Fraction(m["num"]) * _SUFFIXES[m["unit"]]
            if value > _MAX_BYTES:
                raise PolicyError(f"{what}: size too large, got {shown}")
            return cls(bytes=int(value))
        raise PolicyError(f"{what}: {_EXPECTED}, got {shown}")

    def required(self, total: int) -> int:
        """The amount that must stay free out of ``total``."""
        need = 0
        if self.percent is not None:
            need = max(need, math.ceil(total * self.percent / 100.0))
        if self.bytes is not None:
            need = max(need, self.bytes)
        return need

    def satisfied(self, free: int, total: int) -> bool:
        return free >= self.required(total)

    def __str__(self) -> str:
        parts = []
        if self.percent is not None:
            parts.append(f"{self.percent:g}%")
        if self.bytes is not None:
            parts.append(format_size(self.bytes))
        return " and ".join(parts) or "none"


@dataclass(frozen=True)
class Restart:
    """systemd's own first line of restarts (Restart=, RestartSec=, start limit)."""

    policy: RestartPolicy = "on-failure"
    delay: float = 0.1
    burst: int = 5
    interval: float = 10.0


@dataclass(frozen=True)
class Limits:
    """Resource limits. memory values are bytes, or a percentage string like "80%"."""

    memory_max: int | str | None = None
    memory_high: int | str | None = None
    cpu_quota: str | None = None  # "80%"
    tasks_max: int | None = None
    nofile: int | None = None


@dataclass(frozen=True)
class Probe:
    """One check: an http URL, a tcp "host:port", or a command argv."""

    kind: ProbeKind
    target: str | tuple[str, ...]
    timeout: float = 2.0
    # http only. Inclusive (low, high) status ranges that pass; empty: any 2xx or 3xx.
    expect_status: tuple[tuple[int, int], ...] = ()
    expect_body: str | None = None  # a substring of the body's first bytes, matched as UTF-8


@dataclass(frozen=True)
class Health:
    probe: Probe
    interval: float = 10.0
    failures: int = 3  # consecutive failures that open an incident
    successes: int = 1  # consecutive passes before the unit counts as healthy
    # After each start, failures do not count until the start-up probe passes; it
    # must pass within this long. Generous by default so a slow starter (a JVM)
    # is not restarted in a loop.
    start_period: float = 120.0
    start_interval: float = 1.0  # probe cadence during the start period
    startup: Probe | None = None  # the start-up probe; None: the probe itself
    gate: bool = False  # ExecStartPost= waits for health: "started" means "healthy"

    @property
    def start_probe(self) -> Probe:
        return self.startup if self.startup is not None else self.probe


@dataclass(frozen=True)
class AlertOn:
    """The flapping alert: ``restarts`` crashes within ``within`` seconds, whoever restarted."""

    restarts: int = 3
    within: float = 600.0


@dataclass(frozen=True)
class Cleanup:
    pidfile: str | None = None
    temp: tuple[str, ...] = ()
    older_than: float = 3600.0


@dataclass(frozen=True)
class Disk:
    paths: tuple[str, ...] = ()
    min_free: Threshold = field(default_factory=lambda: Threshold(percent=5.0))
    min_free_inodes: Threshold = field(default_factory=lambda: Threshold(percent=5.0))
    cleanup: tuple[str, ...] = ()


@dataclass(frozen=True)
class Memory:
    min_available: Threshold = field(default_factory=lambda: Threshold(percent=5.0))


@dataclass(frozen=True)
class Backoff:
    base: float = 5.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.1  # fraction of the delay, drawn uniformly in [-j, +j]


@dataclass(frozen=True)
class Recovery:
    """The ladder's budget: after max_attempts within window it gives up."""

    max_attempts: int = 5
    window: float = 600.0
    min_uptime: float = 30.0  # a restart that fails again sooner counts as failed
    stable_after: float = 600.0  # this long without failure resets the counts
    start_timeout: float = 90.0  # bounded wait for "active" after RestartUnit
    validate_timeout: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    after_give_up: AfterGiveUp | None = None
    park_interval: float = 600.0  # a parked unit's slow retry; sooner when its cause is back


@dataclass(frozen=True)
class Hardening:
    profile: HardeningProfile = "strict"
    disable: tuple[str, ...] = ()  # directive names the service opts out of
    read_write_paths: tuple[str, ...] = ()
    # CapabilityBoundingSet= in place of the profile's; None: the profile decides.
    capabilities: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AlertConfig:
    """An alert target exactly as written in the spec; secrets are only file/env names.

    ``config`` is the mapping ``handlers.alerts.AlertTarget.from_mapping`` reads
    (through ``unitgen.alertconfig``, with this same key table).
    """

    name: str
    type: str
    config: Mapping[str, object]


@dataclass(frozen=True)
class Service:
    name: str  # the spec key, "api"
    unit: str  # "api.service"
    description: str
    exec: tuple[str, ...]
    type: ServiceType = "simple"
    exec_start_pre: tuple[tuple[str, ...], ...] = ()
    exec_reload: tuple[str, ...] | None = None
    working_directory: str | None = None
    user: str | None = None
    group: str | None = None
    dynamic_user: bool = False
    environment: tuple[tuple[str, str], ...] = ()
    environment_files: tuple[str, ...] = ()
    pidfile: str | None = None  # PIDFile=, for type = "forking"
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    binds_to: tuple[str, ...] = ()
    part_of: tuple[str, ...] = ()
    wanted_by: tuple[str, ...] = ()  # empty: the scope's default target
    state_directory: tuple[str, ...] = ()  # relative names, as systemd wants them
    runtime_directory: tuple[str, ...] = ()
    logs_directory: tuple[str, ...] = ()
    cache_directory: tuple[str, ...] = ()
    configuration_directory: tuple[str, ...] = ()
    restart: Restart = field(default_factory=Restart)
    timeout_start: float | None = None
    timeout_stop: float | None = None
    watchdog: float | None = None
    limits: Limits = field(default_factory=Limits)
    health: Health | None = None
    depends: tuple[Probe, ...] = ()  # external dependencies probed by the ladder
    cleanup: Cleanup = field(default_factory=Cleanup)
    disk: Disk = field(default_factory=Disk)
    memory: Memory = field(default_factory=Memory)
    validate: tuple[str, ...] | None = None
    recovery: Recovery = field(default_factory=Recovery)
    hardening: Hardening = field(default_factory=Hardening)
    alerts: tuple[str, ...] = ()
    alert_on: AlertOn | None = None


@dataclass(frozen=True)
class Override:
    """A unit the operator does not own, rendered as a drop-in.

    Fields left None keep whatever the vendor's unit says.
    """

    unit: str  # "nginx.service"
    restart: Restart | None = None
    hardening: Hardening | None = None
    limits: Limits | None = None
    health: Health | None = None
    depends: tuple[Probe, ...] = ()
    cleanup: Cleanup = field(default_factory=Cleanup)
    disk: Disk = field(default_factory=Disk)
    memory: Memory = field(default_factory=Memory)
    validate: tuple[str, ...] | None = None
    recovery: Recovery = field(default_factory=Recovery)
    alerts: tuple[str, ...] = ()
    on_failure: bool = True  # wire OnFailure= to the recovery unit
    alert_on: AlertOn | None = None


@dataclass(frozen=True)
class Defaults:
    hardening: HardeningProfile = "strict"
    alerts: tuple[str, ...] = ()
    # Host-wide, for the listener (handlers/correlation.py RestartRate); 0: no limit.
    max_restarts_per_second: int = 0


@dataclass(frozen=True)
class Spec:
    path: str
    defaults: Defaults = field(default_factory=Defaults)
    services: Mapping[str, Service] = field(default_factory=dict)
    overrides: Mapping[str, Override] = field(default_factory=dict)
    alerts: Mapping[str, AlertConfig] = field(default_factory=dict)
