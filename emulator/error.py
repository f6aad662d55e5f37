"""QEMU's Error object (util/error.c) as a Python exception, and QEMU's error classes.

Every layer raises QemuError with QEMU's exact message text and error class; the QMP layer only
serializes it.  It is not QMP-specific: qemu-img and qemu-io report the same messages.  Texts
that several places raise are named in emulator/qerror.py (the same in every QEMU version) and
in the version profiles' ErrorTexts (emulator/versions.py, where versions differ).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    """QAPI QapiErrorClass (qapi/error.json): the "class" of a QMP error reply.  New code uses
    GENERIC_ERROR; the others exist for compatibility, where QEMU still raises them."""

    GENERIC_ERROR = "GenericError"
    COMMAND_NOT_FOUND = "CommandNotFound"
    DEVICE_NOT_ACTIVE = "DeviceNotActive"
    DEVICE_NOT_FOUND = "DeviceNotFound"
    KVM_MISSING_CAP = "KVMMissingCap"


class QemuError(Exception):
    """An error with QEMU's class and message."""

    def __init__(self, desc: str, error_class: ErrorClass = ErrorClass.GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = ErrorClass(error_class)

    def __repr__(self) -> str:
        return f"QemuError({self.error_class.value}: {self.desc!r})"
