"""The table of QMP commands (QEMU's QmpCommandList), filled by the modules of this package.

A handler is called as handler(machine, **arguments) after the QMP layer has checked the
arguments against the command's QAPI schema (emulator/commands/schema.py).  Argument names are
turned into Python names the way QAPI's c_name does ("job-id" -> job_id); absent optional
arguments are not passed, so handlers give them their QAPI defaults.  A handler returns the
command's return value (None for "no return" -> {}) or raises emulator.error.QemuError; it may
be a coroutine function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulator.transaction import TransactionAction

Handler = Callable[..., Any]


@dataclass(frozen=True)
class CommandDef:
    name: str
    handler: Handler
    #: QAPI argument type: a struct name in schema.SCHEMA, an inline {member: type} dict, or None.
    args: str | dict[str, Any] | None = None
    #: True when the command may run before qmp_capabilities (only qmp_capabilities itself).
    allow_negotiation: bool = False
    #: True for commands QEMU marks allow-oob.
    allow_oob: bool = False


COMMANDS: dict[str, CommandDef] = {}


def qmp_command(
    name: str,
    args: str | dict[str, Any] | None = None,
    *,
    allow_negotiation: bool = False,
    allow_oob: bool = False,
) -> Callable[[Handler], Handler]:
    """Register `handler` as the QMP command `name`."""

    def register(handler: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(f"QMP command {name} registered twice")
        COMMANDS[name] = CommandDef(name, handler, args, allow_negotiation, allow_oob)
        return handler

    return register


#: QAPI type definitions (a subset of QEMU 7.2's qapi/*.json), keyed by type name.  Each value is
#: the QAPI expression as Python data, e.g. {"struct": "BlockDirtyBitmapAdd", "data": {...}},
#: {"enum": "MirrorSyncMode", "data": [...]}, {"union": ..., "base": ..., "discriminator": ...,
#: "data": {...}}, {"alternate": ..., "data": {...}}.  Member names starting with "*" are optional.
TYPES: dict[str, dict[str, Any]] = {}


def qapi_types(*expressions: dict[str, Any]) -> None:
    """Add QAPI type expressions (struct/enum/union/alternate) to TYPES."""
    for expr in expressions:
        kind = next(k for k in ("struct", "enum", "union", "alternate") if k in expr)
        name = expr[kind]
        if name in TYPES and TYPES[name] != expr:
            raise ValueError(f"QAPI type {name} defined twice differently")
        TYPES[name] = expr


#: A transaction action's constructor, called as factory(machine, kind, data, txn): `kind` is the
#: TransactionActionKind, `data` the action's QAPI data with QAPI member names, `txn` the JobTxn
#: of a grouped transaction (None unless the action was registered with grouped=True).
ActionFactory = Callable[..., TransactionAction]


@dataclass(frozen=True)
class ActionDef:
    kind: str
    factory: ActionFactory
    #: The action may join a completion-mode=grouped transaction (QEMU: the backups only).
    grouped: bool = False
    #: QEMU 7.2 refuses a grouped transaction in this action's prepare
    #: (action_check_completion_mode); `abort` has no such check.
    mode_checked: bool = True


#: Transaction actions by TransactionActionKind (QEMU's BlkActionOps table in blockdev.c), filled
#: by the modules that implement them; `transaction` only looks them up.
TRANSACTION_ACTIONS: dict[str, ActionDef] = {}


def transaction_action(kind: str, *, grouped: bool = False,
                       mode_checked: bool = True) -> Callable[[ActionFactory], ActionFactory]:
    """Register `factory` (usually a TransactionAction class) as the action `kind`."""

    def register(factory: ActionFactory) -> ActionFactory:
        if kind in TRANSACTION_ACTIONS:
            raise ValueError(f"transaction action {kind} registered twice")
        TRANSACTION_ACTIONS[kind] = ActionDef(kind, factory, grouped, mode_checked)
        return factory

    return register
