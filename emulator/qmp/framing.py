"""QMP framing: the greeting, and messages on the wire exactly as QEMU writes them.

Output is one JSON object per line ending in "\\r\\n" (QEMU's monitor turns "\\n" into CRLF),
in QEMU's compact style with QDict member order (see qobject.py).  Input is a stream of JSON
values with no delimiter at all; JsonMessageParser splits it.
"""

from __future__ import annotations

from typing import Any

from emulator.versions import QemuProfile, select

from .qobject import to_json

CAPABILITIES = ("oob",)


def greeting(profile: QemuProfile | None = None) -> dict[str, Any]:
    """The message a client gets on connecting (monitor/qmp.c qmp_greeting)."""
    version = (profile if profile is not None else select()).version_info()
    return {"QMP": {"version": version, "capabilities": list(CAPABILITIES)}}


def encode_message(message: dict[str, Any]) -> bytes:
    """One wire line: compact JSON (ASCII only) followed by CRLF."""
    return (to_json(message) + "\r\n").encode("ascii")


def event_message(name: str, data: dict[str, Any] | None, stamp: tuple[int, int]) -> dict[str, Any]:
    """An event as QEMU sends it; `data` is left out when the event has none."""
    message: dict[str, Any] = {"timestamp": {"seconds": stamp[0], "microseconds": stamp[1]},
                               "event": name}
    if data is not None:
        message["data"] = data
    return message
