"""QMP command handlers: translate QMP arguments into block-layer and job calls.

Importing this package registers every command in registry.COMMANDS and its QAPI types in
registry.TYPES.  The modules are imported in a fixed order: it is the registration order, which
query-commands reports (newest first).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .registry import COMMANDS, TYPES, CommandDef, check_handlers, qapi_types, qmp_command

if TYPE_CHECKING:
    from emulator.machine import Machine

_MODULES = ("control", "block", "bitmaps", "hmp", "jobs", "backup", "snapshot", "transaction", "qdev",
            "create", "objects")

for _name in _MODULES:
    import_module(f"{__name__}.{_name}")
check_handlers()

__all__ = ["COMMANDS", "TYPES", "CommandDef", "attach", "new_machine", "qapi_types", "qmp_command"]


def attach(machine: Machine) -> Machine:
    """Wire a Machine to the QMP command layer (job events become QMP events)."""
    from .jobs import install_job_events

    install_job_events(machine)
    return machine


def new_machine(**kwargs: Any) -> Machine:
    """A Machine ready to serve QMP: what the CLI and the in-process launcher build."""
    from emulator.machine import Machine

    return attach(Machine(**kwargs))
