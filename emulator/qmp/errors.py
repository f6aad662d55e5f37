"""QMP error responses (qapi/qmp-dispatch.c qmp_error_response) and the request-shape errors."""

from __future__ import annotations

from typing import Any

from emulator.error import ErrorClass, QemuError

NEGOTIATION_EXPECTED = "Expecting capabilities negotiation with 'qmp_capabilities'"


def error_response(error: QemuError) -> dict[str, Any]:
    """`{"error": {"class": ..., "desc": ...}}` for `error` (the caller adds "id")."""
    return {"error": {"class": error.error_class.value, "desc": error.desc}}


def not_an_object() -> QemuError:
    return QemuError("QMP input must be a JSON object")


def member_not_string(member: str) -> QemuError:
    return QemuError(f"QMP input member '{member}' must be a string")


def member_clash(member: str, other: str) -> QemuError:
    return QemuError(f"QMP input member '{member}' clashes with '{other}'")


def arguments_not_object() -> QemuError:
    return QemuError("QMP input member 'arguments' must be an object")


def member_unexpected(member: str) -> QemuError:
    return QemuError(f"QMP input member '{member}' is unexpected")


def lacks_execute() -> QemuError:
    return QemuError("QMP input lacks member 'execute'")


def command_not_found(command: str) -> QemuError:
    return QemuError(f"The command {command} has not been found", ErrorClass.COMMAND_NOT_FOUND)


def no_oob_support(command: str) -> QemuError:
    return QemuError(f"The command {command} does not support OOB")


def internal_error(command: str, exc: BaseException) -> QemuError:
    """What a client sees when a handler fails with something other than QemuError (a bug)."""
    return QemuError(f"Internal error in the blocktxn emulator while running {command}: "
                     f"{type(exc).__name__}: {exc}")
