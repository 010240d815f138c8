"""Which units the listener follows: rendered policies plus command-line globs.

A unit is watched when the generator rendered a policy for it
(``policy_dir/UNIT.json``), when it is an instance of a template that has one
(``worker@.service.json`` covers ``worker@7.service``), or when it matches a
glob given with ``--unit``. The answer for a name is cached, because the
listener asks on every PropertiesChanged signal and the flood path must not
touch the file system or run fnmatch each time. So is each parsed policy, until
the next rescan: a thousand instances share one template's file.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from handlers.locks import check_unit_name
from unitgen.errors import PolicyError
from unitgen.policy import Policy, load_policy

log = logging.getLogger(__name__)

_POLICY_SUFFIX = ".json"
# Bounds the name cache under a flood of UnitNew for transient units.
_CACHE_LIMIT = 65536


def template_of(unit: str) -> str | None:
    """``worker@3.service`` -> ``worker@.service``; None for a non-instance."""
    prefix, at, rest = unit.partition("@")
    if not at or "." not in rest or not prefix:
        return None
    return f"{prefix}@.{rest.rsplit('.', 1)[1]}"


class WatchSet:
    """The set of watched units; rescan() after a daemon-reload or reconnect."""

    def __init__(self, policy_dir: Path, globs: Iterable[str] = ()) -> None:
        self.policy_dir = policy_dir
        self.globs: tuple[str, ...] = tuple(globs)
        self._glob_re = (
            re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in self.globs))
            if self.globs
            else None
        )
        self.units: frozenset[str] = frozenset()  # concrete units with a policy
        self.templates: frozenset[str] = frozenset()  # "worker@.service"
        self._cache: dict[str, bool] = {}
        self._policies: dict[str, Policy | None] = {}  # policy key -> parsed, None if bad

    def rescan(self) -> None:
        """Re-read the policy directory. A missing directory means no policies."""
        units: set[str] = set()
        templates: set[str] = set()
        try:
            entries = list(self.policy_dir.iterdir())
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            log.warning("cannot list policy directory %s: %s", self.policy_dir, exc.strerror)
            entries = []
        for entry in entries:
            name = entry.name
            if not name.endswith(_POLICY_SUFFIX):
                continue
            unit = name[: -len(_POLICY_SUFFIX)]
            try:
                check_unit_name(unit)
            except ValueError:
                log.warning("ignoring policy file with a bad unit name: %s", entry)
                continue
            if "@." in unit and unit.index("@.") == unit.index("@"):
                templates.add(unit)
            else:
                units.add(unit)
        self.units = frozenset(units)
        self.templates = frozenset(templates)
        self._cache.clear()
        self._policies.clear()  # a re-render may have changed them

    def policy_key(self, unit: str) -> str:
        """The name whose policy file governs ``unit``: its own, else its template's."""
        if unit in self.units:
            return unit
        template = template_of(unit)
        if template is not None and template in self.templates:
            return template
        return unit

    def policy(self, unit: str) -> Policy | None:
        """The policy governing ``unit``, parsed once per rescan; None if it is bad.

        A bad one is logged once per rescan, not once per signal or crash.
        """
        key = self.policy_key(unit)
        if key in self._policies:
            return self._policies[key]
        try:
            policy: Policy | None = load_policy(unit, self.policy_dir)
        except PolicyError as exc:
            log.warning("%s", exc)
            policy = None
        if len(self._policies) >= _CACHE_LIMIT:
            self._policies.clear()
        self._policies[key] = policy
        return policy

    def patterns(self) -> list[str]:
        """Globs for ListUnitsByPatterns that cover every watched unit."""
        pats = set(self.units) | set(self.globs)
        for tmpl in self.templates:
            prefix, _, suffix = tmpl.partition("@")
            pats.add(f"{prefix}@*{suffix}")
        return sorted(pats)

    def __contains__(self, unit: object) -> bool:
        if not isinstance(unit, str):
            return False
        hit = self._cache.get(unit)
        if hit is None:
            hit = self._decide(unit)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[unit] = hit
        return hit

    def _decide(self, unit: str) -> bool:
        if unit in self.units:
            return True
        template = template_of(unit)
        if template is not None and template in self.templates:
            return True
        return bool(self._glob_re is not None and self._glob_re.fullmatch(unit))
