"""unitgen: hardened systemd units from one spec, and the recovery that goes with them."""

__version__ = "0.1.0"
