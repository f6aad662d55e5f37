"""QMP command handlers: translate QMP arguments into block-layer and job calls.

Importing this package registers every command in registry.COMMANDS and its QAPI types in
registry.TYPES.
"""

from importlib import import_module

from .registry import COMMANDS, TYPES, CommandDef, qapi_types, qmp_command

_MODULES = ("control", "block", "bitmaps", "hmp", "jobs", "backup", "transaction")

for _name in _MODULES:
    try:
        import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # a command family not written yet
        if exc.name != f"{__name__}.{_name}":
            raise

__all__ = ["COMMANDS", "TYPES", "CommandDef", "qapi_types", "qmp_command"]
