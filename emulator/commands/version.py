"""Which QEMU version's texts a command gives (7.2 unless the machine or environment says 10.0)."""

from __future__ import annotations

import os

from emulator.machine import Machine


def qemu_version(machine: Machine) -> str:
    """The machine's profile version ("7.2" or "10.0"), else BLOCKTXN_QEMU_VERSION, else 7.2."""
    version = getattr(machine, "version", None) or getattr(machine, "qemu_version", None)
    if isinstance(version, str):
        return version
    return os.environ.get("BLOCKTXN_QEMU_VERSION", "7.2")


def is_qemu_10(machine: Machine) -> bool:
    return not qemu_version(machine).startswith("7.")
