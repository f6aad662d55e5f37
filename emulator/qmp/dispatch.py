"""Request dispatch: QEMU's qmp_dispatch() (qapi/qmp-dispatch.c) and the negotiation-mode
rewrite of monitor_qmp_dispatch() (monitor/qmp.c).

The checks run in QEMU's order: the request must be an object; its members are examined in
QDict order (so with two faults the same one is reported as by QEMU); then the command is
looked up, OOB permission checked, arguments visited against the QAPI schema, and the handler
called as handler(machine, **arguments) with top-level names made Python names.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from emulator.commands import COMMANDS, TYPES, CommandDef
from emulator.commands.control import Monitor, current_monitor
from emulator.commands.registry import python_name
from emulator.error import ErrorClass, QemuError

from . import errors
from .qobject import qdict_order
from .visitor import QapiSchema, visit_arguments

if TYPE_CHECKING:
    from emulator.machine import Machine

log = logging.getLogger("emulator.qmp")


class DispatchMonitor(Monitor, Protocol):
    """A Monitor that also tells dispatch whether OOB execution was negotiated."""

    @property
    def oob_enabled(self) -> bool: ...


def check_request(request: dict[str, Any], allow_oob: bool) -> tuple[str, bool]:
    """qmp_dispatch_check_obj(): return (command, oob) or raise the first shape error."""
    exec_key: str | None = None
    for key in qdict_order(request):
        value = request[key]
        if key == "execute" or (key == "exec-oob" and allow_oob):
            if not isinstance(value, str):
                raise errors.member_not_string(key)
            if exec_key is not None:
                raise errors.member_clash(key, exec_key)
            exec_key = key
        elif key == "arguments":
            if not isinstance(value, dict):
                raise errors.arguments_not_object()
        elif key != "id":
            raise errors.member_unexpected(key)
    if exec_key is None:
        raise errors.lacks_execute()
    return request[exec_key], exec_key == "exec-oob"


class Dispatcher:
    """Runs QMP requests against one Machine."""

    def __init__(self, machine: Machine, commands: Mapping[str, CommandDef] | None = None,
                 types: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.machine = machine
        profile = machine.profile
        # The registry holds the union of all versions; the profile drops what its version lacks.
        table = COMMANDS if commands is None else commands
        self.commands = {name: command for name, command in table.items()
                         if profile.has_command(name)}
        self.schema = QapiSchema(profile.qapi_types(TYPES if types is None else types))

    async def dispatch(self, request: Any, monitor: DispatchMonitor) -> dict[str, Any]:
        """The response to one parsed request (an "id" member is echoed whenever present)."""
        response: dict[str, Any]
        try:
            if not isinstance(request, dict):
                raise errors.not_an_object()
            response = {"return": await self._execute(request, monitor)}
        except QemuError as error:
            if not monitor.negotiated and error.error_class is ErrorClass.COMMAND_NOT_FOUND:
                error = QemuError(errors.NEGOTIATION_EXPECTED, ErrorClass.COMMAND_NOT_FOUND)
            response = errors.error_response(error)
        if isinstance(request, dict) and "id" in request:
            response["id"] = request["id"]
        return response

    def lookup(self, name: str, monitor: DispatchMonitor) -> CommandDef:
        command = self.commands.get(name)
        if command is None or (not monitor.negotiated and not command.allow_negotiation):
            raise errors.command_not_found(name)
        return command

    async def _execute(self, request: dict[str, Any], monitor: DispatchMonitor) -> Any:
        name, oob = check_request(request, monitor.oob_enabled)
        command = self.lookup(name, monitor)
        if oob and not command.allow_oob:
            raise errors.no_oob_support(name)
        token = current_monitor.set(monitor)
        try:
            arguments = visit_arguments(self.schema, command.args, request.get("arguments", {}))
            kwargs = {python_name(key): value for key, value in arguments.items()}
            result = command.handler(self.machine, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except QemuError:
            raise
        except Exception as exc:  # an emulator bug: keep serving, but make it loud
            log.exception("QMP command %s failed with an unexpected exception", name)
            raise errors.internal_error(name, exc) from exc
        finally:
            current_monitor.reset(token)
        return {} if result is None else result
