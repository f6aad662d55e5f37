"""Event fan-out: QEMU's monitor_qapi_event_emit() for the QMP server.

Subscribes to Machine events and writes each one to every connection that has finished
capabilities negotiation; connections still negotiating get nothing, and nothing is kept for
them (as in QEMU).  An event raised while a command runs is written at once, so it precedes the
command's reply.  Events raised on another thread are handed to the server's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .framing import encode_message, event_message

if TYPE_CHECKING:
    from emulator.machine import Machine


class EventSink(Protocol):
    @property
    def negotiated(self) -> bool: ...

    def send_raw(self, data: bytes) -> None: ...


class EventBroadcaster:
    """Writes Machine events to the negotiated sessions of one server."""

    def __init__(self, machine: Machine, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._sinks: list[EventSink] = []
        self._unsubscribe: Callable[[], None] | None = machine.subscribe(self._on_event)

    def add(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def remove(self, sink: EventSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._sinks.clear()

    def _on_event(self, name: str, data: dict[str, Any] | None, stamp: tuple[int, int]) -> None:
        wire = encode_message(event_message(name, data, stamp))
        if threading.get_ident() == self._loop_thread:
            self._deliver(wire)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, wire)

    def _deliver(self, wire: bytes) -> None:
        for sink in list(self._sinks):
            if sink.negotiated:
                sink.send_raw(wire)
