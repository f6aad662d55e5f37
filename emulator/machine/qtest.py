"""The qtest line protocol (QEMU's system/qtest.c) for a machine without a guest.

The only commands that mean something here move the virtual clock: `clock_step [NS]` (to the next
timer when NS is omitted) and `clock_set NS`, each answered `OK <now-ns>`; `endianness` says
`OK little`.  Memory, I/O port and IRQ commands have no guest to act on and get the answer QEMU
gives a command it does not know: `FAIL Unknown command '<word>'`.  As in QEMU, the conversation
is logged to stderr (or the -qtest-log file): `[I t] OPENED`, `[R +t] cmd`, `[S +t] reply`,
`[I +t] CLOSED`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

from .clock import VirtualClock

MAX_LINE = 1 << 20


class QtestServer:
    """One qtest connection, served until the peer or the machine goes away."""

    def __init__(self, clock: VirtualClock, log: TextIO | None) -> None:
        self.clock = clock
        #: Where the conversation is logged (QEMU: stderr unless -qtest-log), or None.
        self.log = log
        self._start = time.monotonic()
        self._closed_logged = False
        self._writer: asyncio.StreamWriter | None = None

    def _stamp(self) -> str:
        return f"{time.monotonic() - self._start:.6f}"

    def _log(self, text: str) -> None:
        if self.log is not None:
            try:
                self.log.write(text)
                self.log.flush()
            except (OSError, ValueError):
                pass

    def process(self, line: str) -> str:
        """Answer one command line (without its newline)."""
        words = line.split(" ")
        self._log(f"[R +{self._stamp()}] {' '.join(words)}\n")
        command = words[0]
        if command == "endianness":
            reply = "OK little"
        elif self.clock.qtest and command == "clock_step":
            step = _int(words[1]) if len(words) > 1 and words[1] else self.clock.deadline_ns()
            if step is None:
                reply = f"FAIL Unknown command '{command}'"
            else:
                reply = f"OK {self.clock.warp(self.clock.now_ns() + step)}"
        elif self.clock.qtest and command == "clock_set":
            target = _int(words[1]) if len(words) > 1 else None
            if target is None:
                reply = f"FAIL Unknown command '{command}'"
            else:
                reply = f"OK {self.clock.warp(target)}"
        else:
            reply = f"FAIL Unknown command '{command}'"
        self._log(f"[S +{self._stamp()}] {reply}\n")
        return reply + "\n"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._start = time.monotonic()
        self._log(f"[I {0.0:.6f}] OPENED\n")
        buffer = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    writer.write(self.process(raw.decode("utf-8", "replace")).encode())
                if len(buffer) > MAX_LINE:
                    buffer = b""
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Log CLOSED once and drop the connection (at exit or when the peer leaves)."""
        if not self._closed_logged:
            self._closed_logged = True
            self._log(f"[I +{self._stamp()}] CLOSED\n")
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None
