"""QEMU's Error object (util/error.c) as a Python exception.

Every layer raises QemuError with QEMU's exact message text and error class; the QMP layer only
serializes it.  It is not QMP-specific: qemu-img and qemu-io report the same messages.
"""

from __future__ import annotations


class QemuError(Exception):
    """An error with QEMU's class ("GenericError", "DeviceNotActive", ...) and message."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def __repr__(self) -> str:
        return f"QemuError({self.error_class}: {self.desc!r})"


def device_not_active(desc: str) -> QemuError:
    return QemuError(desc, "DeviceNotActive")


def command_not_found(desc: str) -> QemuError:
    return QemuError(desc, "CommandNotFound")
