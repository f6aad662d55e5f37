"""One QMP connection (QEMU's MonitorQMP): greeting, negotiation state, in-order execution.

Bytes are fed to the connection's own JSON streamer; each complete value (or parse error) is
handled strictly in arrival order, one at a time, and the reply written before the next is
looked at.  Commands of all connections are serialized by the server's lock, as QEMU's single
dispatcher coroutine does.  A client that disconnects mid-command only loses its reply.  Once a
command has asked the machine to shut down (`quit`), nothing more is read or answered: QEMU's
main loop exits, and requests pipelined behind `quit` get no reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from emulator.error import QemuError

from .dispatch import Dispatcher
from .errors import error_response
from .framing import CAPABILITIES, encode_message, greeting
from .jsonparser import JsonMessageParser

log = logging.getLogger("emulator.qmp")

READ_CHUNK = 65536


def pretty_wire(data: bytes) -> bytes:
    """A compact wire message re-encoded as QEMU's pretty QMP (qobject_to_json_pretty: members
    one per line, four spaces per level, empty containers still opened and closed on two lines;
    the monitor turns every newline into CRLF)."""
    import json

    return (_pretty(json.loads(data), 0).replace("\n", "\r\n") + "\r\n").encode("ascii")


def _pretty(value: Any, level: int) -> str:
    from .qobject import to_json

    pad, inner = "    " * level, "    " * (level + 1)
    if isinstance(value, dict):
        members = [f"{inner}{to_json(key)}: {_pretty(item, level + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(members) + ("\n" if members else "") + pad + "}"
    if isinstance(value, list):
        items = [inner + _pretty(item, level + 1) for item in value]
        return "[\n" + ",\n".join(items) + ("\n" if items else "") + pad + "]"
    return to_json(value)


class MonitorSession:
    """A QMP monitor on one stream."""

    offered_capabilities: tuple[str, ...] = CAPABILITIES

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 dispatcher: Dispatcher, command_lock: asyncio.Lock, *, pretty: bool = False) -> None:
        #: -qmp-pretty / -mon pretty=on: every message indented over several lines.
        self.pretty = pretty
        #: stdio: the end of input does not end output (events still go out until exit).
        self.hold_output = False
        self._reader = reader
        self._writer = writer
        self._dispatcher = dispatcher
        self._lock = command_lock
        self._pending: deque[tuple[Any, QemuError | None]] = deque()
        self._parser = JsonMessageParser(lambda value, err: self._pending.append((value, err)))
        self._negotiated = False
        self._oob = False

    # -- Monitor protocol (used by qmp_capabilities and dispatch) ---------------------------------
    @property
    def negotiated(self) -> bool:
        return self._negotiated

    @property
    def oob_enabled(self) -> bool:
        return self._oob

    def enter_command_mode(self, capabilities: list[str]) -> None:
        self._negotiated = True
        self._oob = "oob" in capabilities

    # -- output ----------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        if self.pretty:
            data = pretty_wire(data)
        if not self._writer.is_closing():
            self._writer.write(data)

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(encode_message(message))

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError):
            pass

    # -- the connection's life -------------------------------------------------------------------
    async def run(self) -> None:
        """Greet, then serve requests until the peer goes away or the server closes us."""
        self.send(greeting(self._dispatcher.machine.profile))
        try:
            await self._drain()
            while not self._writer.is_closing() and not self._shutting_down:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    if self.hold_output:
                        await asyncio.Event().wait()  # until the server closes us
                    break
                self._parser.feed(data)
                await self._handle_pending()
            if self._shutting_down and not self._writer.is_closing():
                # qemu_cleanup: no more commands, but the events of the jobs the machine cancels
                # on its way out still go out, until the server closes the monitor.
                await self._writer.wait_closed()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.close()

    @property
    def _shutting_down(self) -> bool:
        return self._dispatcher.machine.shutdown_requested

    async def _handle_pending(self) -> None:
        while self._pending and not self._shutting_down:
            value, err = self._pending.popleft()
            async with self._lock:
                if self._shutting_down:  # another connection's quit ran while we waited
                    break
                if err is not None:
                    self.send(error_response(err))
                else:
                    self.send(await self._dispatcher.dispatch(value, self))
            await self._drain()
        if self._shutting_down:
            self._pending.clear()

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what was written and close the stream."""
        if not self._writer.is_closing():
            self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass


class HmpSession(MonitorSession):
    """A human monitor (`-monitor stdio`, `-mon mode=readline`): a banner, a `(qemu) ` prompt,
    each line run as human-monitor-command would run it; no events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 dispatcher: Dispatcher, command_lock: asyncio.Lock) -> None:
        super().__init__(reader, writer, dispatcher, command_lock)
        self._buffer = b""

    @property
    def negotiated(self) -> bool:
        return True  # commands run at once; the server gives HMP sessions no events

    def _write_text(self, text: str) -> None:
        self.send_raw(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())

    async def run(self) -> None:
        version = self._dispatcher.machine.profile.version_string
        self._write_text(f"QEMU {version} monitor - type 'help' for more information\n(qemu) ")
        try:
            await self._drain()
            while not self._writer.is_closing() and not self._shutting_down:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    break
                self._buffer += data
                while b"\n" in self._buffer and not self._shutting_down:
                    raw, self._buffer = self._buffer.split(b"\n", 1)
                    await self._line(raw.decode("utf-8", "replace").rstrip("\r"))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.close()

    def _echo(self, line: str) -> None:
        """QEMU's readline redraws the line after every character it reads, even off a pipe:
        cursor back over the old text, the text so far, clear to end of line; then CRLF."""
        out = [f"{chr(27)}[D" * (k - 1) + line[:k] + f"{chr(27)}[K" for k in range(1, len(line) + 1)]
        self.send_raw(("".join(out) + "\r\n").encode())

    async def _line(self, line: str) -> None:
        self._echo(line)
        async with self._lock:
            if line.strip() in ("quit", "q"):
                self._dispatcher.machine.request_shutdown("host-qmp-quit")
                return
            request = {"execute": "human-monitor-command", "arguments": {"command-line": line}}
            reply = await self._dispatcher.dispatch(request, self)
        output = reply.get("return", "")
        if "error" in reply:
            output = f"Error: {reply['error']['desc']}\n"
        self._write_text(f"{output}(qemu) ")
        await self._drain()
