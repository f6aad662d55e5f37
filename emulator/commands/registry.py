"""The table of QMP commands (QEMU's QmpCommandList), filled by the modules of this package.

A handler is called as handler(machine, **arguments) after the QMP layer has checked the
arguments against the command's QAPI argument type (a struct in TYPES, or an inline
{member: type} dict).  Argument names are turned into Python names the way QAPI's c_name does
("job-id" -> job_id); absent optional arguments are not passed, so handlers give them their QAPI
defaults.  A handler returns the command's return value (None for "no return" -> {}) or raises
emulator.error.QemuError; it may be a coroutine function.

Every handler's signature is checked against its argument type when it is registered (or, if
that type is registered later, when emulator.commands has imported every module): one parameter
per member, named by python_name(), with a default exactly when the member is optional (a
union's variant members are optional: only one variant is given); a `**kwargs` parameter takes
the members it does not name.  A misspelt or missing argument is a TypeError at import, not a
failure on the first call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from emulator.transaction import TransactionAction

Handler = Callable[..., Any]


@dataclass(frozen=True)
class CommandDef:
    name: str
    handler: Handler
    #: QAPI argument type: a struct name in TYPES, an inline {member: type} dict, or None.
    args: str | dict[str, Any] | None = None
    #: True when the command may run before qmp_capabilities (only qmp_capabilities itself).
    allow_negotiation: bool = False
    #: True for commands QEMU marks allow-oob.
    allow_oob: bool = False


COMMANDS: dict[str, CommandDef] = {}


def python_name(member: str) -> str:
    """QAPI's c_name() for a top-level argument: "job-id" -> "job_id"."""
    return member.replace("-", "_").replace(".", "_")


class UnresolvedType(LookupError):
    """The command's argument type is not registered yet."""


def argument_members(args: str | dict[str, Any] | None,
                     types: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    """The top-level members of a command's argument type, as {member: required}."""
    if args is None:
        return {}
    if isinstance(args, dict):
        return {name.lstrip("*"): not name.startswith("*") for name in args}
    expr = types.get(args)
    if expr is None:
        raise UnresolvedType(args)
    if "union" in expr:
        members = argument_members(expr["base"], types)
        for variant in expr["data"].values():
            members.update({name: False for name in argument_members(variant, types)
                            if name not in members})
        return members
    if "struct" not in expr:
        raise TypeError(f"QAPI type {args} is not a struct or union")
    members = argument_members(expr["base"], types) if "base" in expr else {}
    members.update(argument_members(expr["data"], types))
    return members


def check_handler(command: CommandDef, types: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise TypeError if the handler cannot be called as dispatch calls it for `command`."""
    where = f"QMP command {command.name}: handler {command.handler.__qualname__}"
    params = list(inspect.signature(command.handler).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY,
                                            params[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"{where} must take the machine as its first parameter")
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in params[1:])
    if command.args == "any":  # arguments not checked against a schema (device_add)
        if not var_keyword:
            raise TypeError(f"{where}: 'any' arguments need a **kwargs parameter")
        return
    members = argument_members(command.args, types)
    named = {p.name: p for p in params[1:] if p.kind is not p.VAR_KEYWORD}
    wanted = {python_name(member): required for member, required in members.items()}
    problems = []
    for name, param in named.items():
        if param.kind is param.VAR_POSITIONAL or param.kind is param.POSITIONAL_ONLY:
            problems.append(f"parameter {name!r} cannot be passed by name")
        elif name not in wanted:
            problems.append(f"parameter {name!r} is not an argument of the command")
        elif wanted[name] and param.default is not param.empty:
            problems.append(f"parameter {name!r} has a default, but the argument is mandatory")
        elif not wanted[name] and param.default is param.empty:
            problems.append(f"parameter {name!r} has no default, but the argument is optional")
    if not var_keyword:
        problems += [f"argument {name!r} has no parameter" for name in wanted if name not in named]
    if problems:
        raise TypeError(f"{where}: " + "; ".join(problems))


def check_handlers(types: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Check every registered handler (emulator.commands runs this once all are registered)."""
    for command in COMMANDS.values():
        check_handler(command, TYPES if types is None else types)


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
        command = CommandDef(name, handler, args, allow_negotiation, allow_oob)
        try:
            check_handler(command, TYPES)
        except UnresolvedType:
            pass  # checked by check_handlers() once every module has registered its types
        COMMANDS[name] = command
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
