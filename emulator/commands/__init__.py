"""QMP command handlers: translate QMP arguments into block-layer and job calls.

Importing this package registers every command in registry.COMMANDS and its QAPI types in
registry.TYPES.
"""

from importlib import import_module

from .registry import COMMANDS, TYPES, CommandDef, qapi_types, qmp_command

_MODULES = ("control", "block", "bitmaps", "hmp", "jobs", "backup", "snapshot", "transaction", "qdev",
            "create", "objects")

for _name in _MODULES:
    try:
        import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # a command family not written yet
        if exc.name != f"{__name__}.{_name}":
            raise

__all__ = ["COMMANDS", "TYPES", "CommandDef", "qapi_types", "qmp_command"]


def attach(machine: "Machine") -> "Machine":
    """Wire a Machine to the QMP command layer (job events become QMP events)."""
    from .jobs import install_job_events

    install_job_events(machine)
    return machine


def new_machine(**kwargs: "Any") -> "Machine":
    """A Machine ready to serve QMP: what the CLI and the in-process launcher build."""
    from emulator.machine import Machine

    return attach(Machine(**kwargs))


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

    from emulator.machine import Machine
