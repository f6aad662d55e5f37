"""The fuzzer's client: FuzzClient sends one input on a fresh connection and collects every reply
up to a sentinel request, within a deadline.

A 0xFF byte before the sentinel resets QEMU's JSON streamer from any state (0xFF is a lexical
error everywhere), so the sentinel always parses whatever the input left behind.  RawConnection
sends and receives at once, so a large pipelined input cannot deadlock against the replies.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from conformance.qmpfuzz.inputs import FuzzInput

SENTINEL_PREFIX = "fz-end-"
NEGOTIATE = b'{"execute":"qmp_capabilities"}'
NEGOTIATED_REPLY = b'{"return": {}}\r\n'
#: QEMU accepts JSON nested 1024 deep, and an "id" that deep comes back in the reply.
MAX_ECHO_DEPTH = 1024


# ---- the client -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    """One line the server sent."""

    raw: bytes
    message: dict[str, Any] | None

    @property
    def kind(self) -> str:
        if self.message is None:
            return "invalid"
        if "event" in self.message:
            return "event"
        if "return" in self.message and "error" not in self.message:
            return "return"
        error = self.message.get("error")
        if isinstance(error, dict) and isinstance(error.get("class"), str) \
                and isinstance(error.get("desc"), str) and "return" not in self.message:
            return "error"
        return "invalid"

    @property
    def error_class(self) -> str | None:
        return self.message["error"]["class"] if self.kind == "error" else None  # type: ignore[index]

    @property
    def desc(self) -> str | None:
        return self.message["error"]["desc"] if self.kind == "error" else None  # type: ignore[index]

    def key(self) -> tuple[Any, ...]:
        """What must be equal between the emulator and QEMU: kind, class, text and id."""
        message = self.message or {}
        request_id = _deep(json.dumps, message["id"]) if "id" in message else None
        if self.kind == "error":
            return ("error", self.error_class, self.desc, request_id)
        if self.kind == "return":
            return ("return", request_id)
        return (self.kind, self.raw)

    def class_key(self) -> tuple[str, str | None]:
        return (self.kind, self.error_class)


_BARE_NONFINITE = re.compile(rb"(?:(?<=[:,] )|(?<=\[))(-?)(inf|nan)(?=[,\]}])")


def parse_reply(line: bytes) -> Reply:
    """A reply line; QEMU prints non-finite numbers as bare inf/nan, which JSON lacks."""
    for text in (line, _BARE_NONFINITE.sub(lambda m: m.group(1) + (b"Infinity" if m.group(2) == b"inf"
                                                                    else b"NaN"), line)):
        try:
            value = _deep(json.loads, text)
        except (ValueError, UnicodeDecodeError):
            continue
        return Reply(line, value if isinstance(value, dict) else None)
    return Reply(line, None)


def _deep(function: Callable[[Any], Any], value: Any) -> Any:
    """json.loads/dumps, also for the 1024-deep values QEMU echoes back in an "id"."""
    try:
        return function(value)
    except RecursionError:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 3 * MAX_ECHO_DEPTH))
        try:
            return function(value)
        finally:
            sys.setrecursionlimit(limit)


@dataclass
class Outcome:
    """What one input got: `answered` (the sentinel came back), `closed` (EOF first), `hang`
    (deadline passed), `refused` (could not connect or no greeting), `disconnected` (we left)."""

    status: str
    replies: list[Reply] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    @property
    def answers(self) -> list[Reply]:
        return [reply for reply in self.replies if reply.kind != "event"]


class ConnectionFailed(Exception):
    """Could not connect, or no greeting in time."""


class RawConnection:
    """A non-blocking unix-socket QMP connection that sends and receives at the same time, so a
    large pipelined input cannot deadlock against replies the server is writing.  Received
    bytes are split into lines as they arrive (one input may draw a million replies)."""

    def __init__(self, path: str, deadline: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lines: list[bytes] = []
        self._taken = 0  # lines handed out by take_line()
        self._partial = bytearray()
        self.eof = False
        try:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise ConnectionFailed(f"connect: {exc}") from exc
        self.sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)

    def close(self) -> None:
        self.selector.close()
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exchange(self, data: bytes, until: Callable[[bytes], bool] | None, deadline: float) -> bool:
        """Send `data` while reading; stop once a received line satisfies `until` (True), or at
        EOF or the deadline (False).  With until=None, stop once everything is sent (True)."""
        view = memoryview(data)
        sent = 0
        checked = self._taken  # lines already tested against `until`
        while True:
            if until is not None:
                while checked < len(self.lines):
                    checked += 1
                    if until(self.lines[checked - 1]):
                        return True
            elif sent == len(view):
                return True
            if self.eof:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < len(view) else 0)
            self.selector.modify(self.sock, want)
            for _key, mask in self.selector.select(min(remaining, 1.0)):
                if mask & selectors.EVENT_READ:
                    self._receive()
                if mask & selectors.EVENT_WRITE and sent < len(view):
                    try:
                        sent += self.sock.send(view[sent:sent + 262144])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:  # the peer is gone; what it sent is still readable
                        if until is None:
                            return False
                        sent = len(view)

    def _receive(self) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.eof = True
            return
        if not chunk:
            self.eof = True
            return
        if b"\n" not in chunk:
            self._partial += chunk
            return
        first, *middle, rest = chunk.split(b"\n")
        self._partial += first
        self.lines.append(bytes(self._partial) + b"\n")
        self.lines.extend(line + b"\n" for line in middle)
        self._partial = bytearray(rest)

    def take_line(self) -> bytes | None:
        if self._taken == len(self.lines):
            return None
        self._taken += 1
        return self.lines[self._taken - 1]


class FuzzClient:
    """Runs FuzzInputs against one QMP unix socket, each on a fresh connection."""

    def __init__(self, socket_path: str | Path, *, base_timeout: float = 10.0,
                 bytes_per_second: float = 8 * 1024) -> None:
        self.path = str(socket_path)
        self.base_timeout = base_timeout
        self.bytes_per_second = bytes_per_second
        self._sentinel = 0

    def timeout_for(self, item: FuzzInput) -> float:
        """The bound on one input: a base plus time in proportion to its size.  The worst input
        draws one error reply per byte; QEMU 7.2 and the emulator both answer about 22,000
        such replies a second, so 8 KB/s leaves room for a loaded machine."""
        return self.base_timeout + len(item.data) / self.bytes_per_second

    def _open(self, negotiate: bool, deadline: float) -> RawConnection:
        conn = RawConnection(self.path, deadline)
        try:
            if not conn.exchange(b"", lambda line: True, deadline):
                raise ConnectionFailed("no greeting" + (" (closed)" if conn.eof else " in time"))
            greeting = conn.take_line() or b""
            if not greeting.startswith(b'{"QMP": '):
                raise ConnectionFailed(f"bad greeting {greeting[:80]!r}")
            if negotiate:
                if not conn.exchange(NEGOTIATE, lambda line: True, deadline):
                    raise ConnectionFailed("no reply to qmp_capabilities")
                reply = conn.take_line()
                # A QEMU connected to while still starting up can send its greeting twice.
                while reply is not None and reply.startswith(b'{"QMP": '):
                    reply = conn.take_line()
                    if reply is None and conn.exchange(b"", lambda line: True, deadline):
                        reply = conn.take_line()
                if reply != NEGOTIATED_REPLY:
                    raise ConnectionFailed(f"qmp_capabilities answered {reply!r}")
        except BaseException:
            conn.close()
            raise
        return conn

    def run(self, item: FuzzInput) -> Outcome:
        started = time.monotonic()
        deadline = started + self.timeout_for(item)
        try:
            conn = self._open(item.negotiate, deadline)
        except ConnectionFailed as exc:
            return Outcome("refused", seconds=time.monotonic() - started, note=str(exc))
        with conn:
            if item.disconnect:
                conn.exchange(item.data, None, deadline)
                return Outcome("disconnected", seconds=time.monotonic() - started)
            self._sentinel += 1
            marker = f'"{SENTINEL_PREFIX}{self._sentinel}"'.encode()
            sentinel = f'{{"execute":"query-status","id":"{SENTINEL_PREFIX}{self._sentinel}"}}'.encode()
            found = conn.exchange(item.data + b"\xff" + sentinel, lambda line: marker in line, deadline)
            replies = []
            while (line := conn.take_line()) is not None:
                if marker in line:
                    break
                replies.append(parse_reply(line))
            seconds = time.monotonic() - started
            if found:
                return Outcome("answered", replies, seconds)
            if conn.eof:
                return Outcome("closed", replies, seconds, "connection closed before the sentinel reply")
            return Outcome("hang", replies, seconds,
                           f"no sentinel reply within {self.timeout_for(item):.1f}s")

    def health_check(self, timeout: float = 10.0) -> str | None:
        """None if a fresh connection negotiates and query-status answers; else what failed."""
        deadline = time.monotonic() + timeout
        try:
            with self._open(True, deadline) as conn:
                if not conn.exchange(b'{"execute":"query-status","id":"fz-health"}',
                                     lambda line: b'"fz-health"' in line, deadline):
                    return "query-status got no reply"
                reply = conn.lines[-1]
                if b'"status": "running"' not in reply:  # an input must never stop the machine
                    return f"query-status answered {reply[:200]!r}"
                return None
        except ConnectionFailed as exc:
            return str(exc)
