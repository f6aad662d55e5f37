"""Which QEMU version the emulator plays: 7.2 (default) or 10.0.

Selected by `-blocktxn-version X.Y` on the command line or `BLOCKTXN_QEMU_VERSION=X.Y` in the
environment (what `blocktxn iotests` sets from the tree's VERSION); texts that differ between the
versions (`-machine help`, some error messages, qdev paths) are looked up by it.
"""

from __future__ import annotations

import os

VERSIONS = ("7.2", "10.0")
DEFAULT = "7.2"
ENV = "BLOCKTXN_QEMU_VERSION"


def from_environment() -> str:
    """The version the environment asks for (the default if unset or unknown)."""
    value = os.environ.get(ENV, DEFAULT)
    return value if value in VERSIONS else DEFAULT


def is_10(version: str) -> bool:
    return version != "7.2"
