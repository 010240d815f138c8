"""The names under which the unitgen daemon is reached on the bus.

Kept apart from ``handlers.dbus_api`` (which serves them) so that
``handlers.handoff``, on the OnFailure= path, can call the daemon without
importing the server side. The contract itself is ``org.unitgen.Recovery1.xml``.
"""

from __future__ import annotations

__all__ = ["BUS_NAME", "INTERFACE", "INTERFACE_REVISION", "OBJECT_PATH"]

BUS_NAME = "org.unitgen.Recovery1"
OBJECT_PATH = "/org/unitgen/Recovery1"
INTERFACE = "org.unitgen.Recovery1"
# Additive revisions of org.unitgen.Recovery1 (new signals only; no signature of an
# existing member changes, which would need Recovery2). 2: GroupOpened, GroupClosed.
INTERFACE_REVISION = 2
