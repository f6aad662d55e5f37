"""A QMP input fuzzer: generated hostile input, a raw-socket client that bounds every wait, and
a differential check against real QEMU.

Three parts:

- InputGenerator makes FuzzInput byte strings in families: malformed and truncated JSON, deep
  nesting, huge strings and numbers, non-UTF-8 bytes, wrong argument types, unknown members,
  random command names, requests before negotiation, thousands of pipelined requests, and
  clients that disconnect mid-command.  Generated requests never reach a command with side
  effects: they name a side-effect-free query, an unknown command, or a real command with
  arguments the QAPI visitor must reject (it does so before the command runs, in QEMU too).
- FuzzClient sends one input on a fresh connection and collects every reply up to a sentinel
  request.  A 0xFF byte before the sentinel resets QEMU's JSON streamer from any state (0xFF is
  a lexical error everywhere), so the sentinel always parses whatever the input left behind.
- Campaign runs inputs against one or two live targets (the emulator as a process, real QEMU),
  checks every answer, probes the server with a fresh connection after each batch, and
  collects Findings: crashes, hangs, unexpected closes, malformed replies, and replies that
  differ from QEMU's (error class, or only the text).
"""

from __future__ import annotations

import json
import math
import random
import re
import selectors
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from conformance.differential.targets import FuzzProfile
from conformance.targets import EmulatorTarget, Instance, MonitorSocket, QemuBinaries, Target

# ---- what the generator may send --------------------------------------------------------------------

#: Commands without side effects, in both the emulator and QEMU 7.2.
SAFE_COMMANDS = ("query-status", "query-version", "query-block", "query-named-block-nodes",
                 "query-jobs", "query-block-jobs", "query-commands")

#: Commands with side effects.  Generated input reaches them only with arguments the QAPI
#: visitor rejects; a mutated request that happens to name one of them is thrown away.
UNSAFE_COMMANDS = frozenset({
    "quit", "stop", "cont", "system_reset", "system_powerdown", "system_wakeup", "migrate",
    "migrate_cancel", "human-monitor-command", "blockdev-add", "blockdev-del", "blockdev-create",
    "blockdev-backup", "drive-backup", "drive-mirror", "blockdev-mirror", "block-commit",
    "block-stream", "transaction", "block_resize", "blockdev-snapshot", "blockdev-snapshot-sync",
    "block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable", "block-dirty-bitmap-disable", "block-dirty-bitmap-merge",
    "block-job-cancel", "block-job-pause", "block-job-resume", "block-job-set-speed",
    "block-job-complete", "block-job-finalize", "block-job-dismiss", "job-cancel", "job-pause",
    "job-resume", "job-complete", "job-finalize", "job-dismiss", "object-add", "object-del",
    "chardev-add", "chardev-change", "chardev-remove", "device_add", "device_del", "netdev_add",
    "netdev_del", "screendump", "dump-guest-memory", "memsave", "pmemsave", "getfd", "closefd",
    "add-fd", "remove-fd", "add_client", "set_link", "balloon", "inject-nmi", "xen-save-devices-state",
    "qom-set", "trace-event-set-state", "set-action", "eject", "change-vnc-password",
    "blockdev-change-medium", "blockdev-open-tray", "blockdev-close-tray", "x-exit-preconfig",
    "nbd-server-start", "nbd-server-add", "nbd-server-stop", "block-export-add", "block-export-del",
    "snapshot-save", "snapshot-load", "snapshot-delete", "x-blockdev-change", "x-blockdev-reopen",
    "blockdev-reopen", "block_set_io_throttle", "block-set-write-threshold", "calc-dirty-rate",
    "migrate-set-capabilities", "migrate-set-parameters", "migrate-incoming", "migrate-recover",
    "migrate-pause", "migrate-continue", "client_migrate_info", "set_password", "expire_password",
    "display-reload", "display-update", "cxl-inject-poison", "x-colo-lost-heartbeat",
    "xen-set-global-dirty-log", "xen-load-devices-state", "yank", "watchdog-set-action",
})

#: Argument names for wrong-type and unknown-member input: (command, {member: QAPI type}).
#: Every one of these is a real command in the emulator and in QEMU 7.2 with these members.
COMMAND_MEMBERS: dict[str, dict[str, Any]] = {
    "block-dirty-bitmap-add": {"node": "str", "name": "str", "*granularity": "uint32",
                               "*persistent": "bool", "*disabled": "bool"},
    "block-dirty-bitmap-remove": {"node": "str", "name": "str"},
    "block-dirty-bitmap-clear": {"node": "str", "name": "str"},
    "block-dirty-bitmap-merge": {"node": "str", "target": "str", "bitmaps": ["alternate"]},
    "block-job-cancel": {"device": "str", "*force": "bool"},
    "block-job-set-speed": {"device": "str", "speed": "int"},
    "block_resize": {"*device": "str", "*node-name": "str", "size": "int"},
    "blockdev-del": {"node-name": "str"},
    "job-cancel": {"id": "str"},
    "job-dismiss": {"id": "str"},
    "job-finalize": {"id": "str"},
    "drive-backup": {"*job-id": "str", "device": "str", "sync": "enum", "*speed": "int",
                     "*bitmap": "str", "*bitmap-mode": "enum", "*compress": "bool",
                     "*auto-finalize": "bool", "*auto-dismiss": "bool", "target": "str",
                     "*format": "str", "*mode": "enum"},
    "blockdev-backup": {"*job-id": "str", "device": "str", "sync": "enum", "*speed": "int",
                        "target": "str"},
    "transaction": {"actions": ["struct"], "*properties": "struct"},
    "human-monitor-command": {"command-line": "str", "*cpu-index": "int"},
    "query-named-block-nodes": {"*flat": "bool"},
    "qmp_capabilities": {"*enable": ["enum"]},
    "query-status": {},
    "query-version": {},
    "quit": {},
    "stop": {},
    "cont": {},
}

FAMILIES = ("valid", "malformed", "truncated", "nesting", "huge-string", "huge-number",
            "bytes", "bad-utf8", "wrong-type", "unknown-member", "random-name", "pipelined",
            "disconnect")

#: How likely each family is in a default mix.
DEFAULT_WEIGHTS = {"valid": 6, "malformed": 20, "truncated": 10, "nesting": 6, "huge-string": 3,
                   "huge-number": 5, "bytes": 10, "bad-utf8": 10, "wrong-type": 12,
                   "unknown-member": 6, "random-name": 6, "pipelined": 3, "disconnect": 3}

#: "No such member" for InputGenerator.request() (None stands for JSON null).
ABSENT = object()
SENTINEL_PREFIX = "fz-end-"
NEGOTIATE = b'{"execute":"qmp_capabilities"}'
NEGOTIATED_REPLY = b'{"return": {}}\r\n'
INTERNAL_ERROR = "Internal error in the blocktxn emulator"
#: Inputs up to this size also go to QEMU, which reads its monitor slowly.
COMPARE_LIMIT = 4096
#: QEMU accepts JSON nested 1024 deep, and an "id" that deep comes back in the reply.
MAX_ECHO_DEPTH = 1024


@dataclass(frozen=True)
class FuzzInput:
    """One input: bytes sent on a fresh connection (after negotiating if `negotiate`)."""

    family: str
    data: bytes
    negotiate: bool = True
    #: Close the connection right after sending, without reading a reply.
    disconnect: bool = False
    #: Known answer: the ids of the successful replies, in order (None: no oracle).
    expected_ids: tuple[Any, ...] | None = None

    def describe(self) -> str:
        shown = self.data[:120]
        more = f"... ({len(self.data)} bytes)" if len(self.data) > 120 else ""
        mode = "" if self.negotiate else " before negotiation"
        return f"{self.family}{mode}{' then disconnect' if self.disconnect else ''}: {shown!r}{more}"


# ---- JSON text with a random surface -----------------------------------------------------------------

class JsonWriter:
    """Serializes Python data as JSON text in the forms QEMU's parser accepts: random whitespace,
    single-quoted strings, \\u escapes, raw UTF-8, number spellings."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def space(self) -> str:
        return self.rng.choice(("", "", "", " ", "\n", "\r\n", "\t", "  "))

    def string(self, text: str) -> str:
        rng = self.rng
        quote = "'" if rng.random() < 0.1 else '"'
        out = [quote]
        for ch in text:
            cp = ord(ch)
            if ch == quote or ch == "\\":
                out.append("\\" + ch)
            elif cp < 0x20 or (0xD800 <= cp <= 0xDFFF):
                out.append(f"\\u{cp:04x}")
            elif cp > 0x7E and rng.random() < 0.5:
                if cp > 0xFFFF:
                    cp -= 0x10000
                    out.append(f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04x}")
                else:
                    out.append(f"\\u{cp:04X}")
            elif ch == "/" and rng.random() < 0.5:
                out.append("\\/")
            else:
                out.append(ch)
        out.append(quote)
        return "".join(out)

    def number(self, value: float) -> str:
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                return "1e999" if value > 0 else "-1e999"
            return self.rng.choice((repr(value), f"{value:e}", f"{value:E}"))
        if value and self.rng.random() < 0.1:
            return f"{value}e0"
        return str(value)

    def write(self, value: Any) -> str:
        parts: list[str] = []
        self._write(value, parts)
        return "".join(parts)

    def _write(self, value: Any, parts: list[str]) -> None:
        if value is None:
            parts.append("null")
        elif value is True:
            parts.append("true")
        elif value is False:
            parts.append("false")
        elif isinstance(value, str):
            parts.append(self.string(value))
        elif isinstance(value, (int, float)):
            parts.append(self.number(value))
        elif isinstance(value, dict):
            parts.append("{" + self.space())
            for index, (key, item) in enumerate(value.items()):
                if index:
                    parts.append(self.space() + "," + self.space())
                parts.append(self.string(key) + self.space() + ":" + self.space())
                self._write(item, parts)
            parts.append(self.space() + "}")
        elif isinstance(value, (list, tuple)):
            parts.append("[" + self.space())
            for index, item in enumerate(value):
                if index:
                    parts.append("," + self.space())
                self._write(item, parts)
            parts.append(self.space() + "]")
        else:
            raise TypeError(f"cannot write {type(value).__name__}")

    def encode(self, value: Any) -> bytes:
        return self.write(value).encode("utf-8")


# ---- the generator ----------------------------------------------------------------------------------

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz-_0123456789"
_UNICODE_SAMPLES = "é€ü中文😀\u2028\ufeff\u00a0\u0301ß\U0001F4A9\uFFFD"
_STRUCTURAL = b'{}[]:,"\'\\ \t\r\n'
#: Invalid or unusual UTF-8 inside strings: overlong forms, surrogates, 5/6-byte forms,
#: truncated sequences, lone continuation bytes, 0xFE/0xFF, noncharacters, C0 80.
_BAD_UTF8 = (b"\xc0\x80", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
             b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"\xc3",
             b"\xe2\x82", b"\x80", b"\xbf", b"\xfe", b"\xff", b"\xef\xbf\xbe", b"\xef\xb7\x90",
             b"\xf0\x9f\x98", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"\x7f", b"\x01", b"\x1f")
_ODD_NUMBERS = (b"-0", b"0", b"-0.0", b"1e999", b"-1e999", b"1e-999", b"9223372036854775807",
                b"9223372036854775808", b"-9223372036854775808", b"-9223372036854775809",
                b"18446744073709551615", b"18446744073709551616", b"1.7976931348623157e308",
                b"4.9e-324", b"1E+2", b"1e+", b"1e", b"1.", b".5", b"+1", b"01", b"00", b"-",
                b"0x10", b"1.5e3", b"123456789012345678901234567890", b"-1.0e-0", b"2e308")
_ESCAPES = (b"\\u0000", b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b"\\ud83d", b"\\uDBFF\\uDFFF",
            b"\\uFFFE", b"\\uFDD0", b"\\u12", b"\\u12G4", b"\\x41", b"\\'", b'\\"', b"\\/",
            b"\\b\\f\\n\\r\\t", b"\\", b"\\U0001F600", b"\\u00e9")


class InputGenerator:
    """Makes FuzzInputs from a seeded random source: same seed, same inputs."""

    def __init__(self, seed: int | str = 0, *, max_size: int = 1 << 20,
                 weights: dict[str, float] | None = None, pre_negotiation: float = 0.15,
                 drive: str | None = None) -> None:
        self.rng = random.Random(seed)
        self.writer = JsonWriter(self.rng)
        self.max_size = max_size
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.pre_negotiation = pre_negotiation
        #: A drive id the target has (makes mid-command disconnects hit a real, slower command).
        self.drive = drive
        self._serial = 0

    # -- public --------------------------------------------------------------------------------
    def generate(self, family: str | None = None) -> FuzzInput:
        """One input, of `family` or of a family drawn by weight."""
        if family is None:
            names = [name for name, weight in self.weights.items() if weight > 0]
            family = self.rng.choices(names, [self.weights[name] for name in names])[0]
        make = getattr(self, "_" + family.replace("-", "_"), None)
        if make is None:
            raise ValueError(f"unknown fuzz family {family!r} (known: {', '.join(FAMILIES)})")
        for _ in range(100):
            item: FuzzInput = make()
            if len(item.data) <= self.max_size and is_harmless(item):
                return item
        raise RuntimeError(f"family {family} made no acceptable input in 100 tries")

    def inputs(self, count: int, family: str | None = None) -> Iterator[FuzzInput]:
        for _ in range(count):
            yield self.generate(family)

    # -- building blocks -----------------------------------------------------------------------
    def _negotiate(self) -> bool:
        return self.rng.random() >= self.pre_negotiation

    def _next_id(self) -> str:
        self._serial += 1
        return f"fz{self._serial}"

    def random_string(self, max_len: int = 12) -> str:
        rng = self.rng
        length = rng.randint(0, max_len)
        pool = rng.choice((_NAME_CHARS, _NAME_CHARS + _UNICODE_SAMPLES + '"\\/\'\x00\x01\n\t '))
        return "".join(rng.choice(pool) for _ in range(length))

    def random_number(self) -> int | float:
        rng = self.rng
        return rng.choice((
            lambda: rng.randint(-10, 10),
            lambda: rng.randint(-(1 << 63), (1 << 64) - 1),
            lambda: rng.choice((1 << 63, (1 << 64) - 1, -(1 << 63), 1 << 32, (1 << 32) - 1, -1)),
            lambda: rng.uniform(-1e6, 1e6),
            lambda: rng.choice((0.0, -0.0, 1.5, 1e300, -1e-300, 2.0 ** 64)),
        ))()

    def random_value(self, depth: int = 3) -> Any:
        rng = self.rng
        kinds = ["null", "bool", "number", "string"] + (["list", "dict"] if depth > 0 else [])
        kind = rng.choice(kinds)
        if kind == "null":
            return None
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "number":
            return self.random_number()
        if kind == "string":
            return self.random_string()
        if kind == "list":
            return [self.random_value(depth - 1) for _ in range(rng.randint(0, 4))]
        return {self.random_string(8): self.random_value(depth - 1) for _ in range(rng.randint(0, 4))}

    def request(self, command: str, arguments: Any = ABSENT, request_id: Any = None, *,
                with_id: bool = True) -> dict[str, Any]:
        """A request dict with members in a random order (`arguments` may be any value)."""
        members: list[tuple[str, Any]] = [("execute", command)]
        if arguments is not ABSENT:
            members.append(("arguments", arguments))
        if with_id:
            members.append(("id", request_id))
        self.rng.shuffle(members)
        return dict(members)

    def safe_request(self, request_id: Any = None) -> dict[str, Any]:
        command = self.rng.choice(SAFE_COMMANDS)
        arguments: Any = ABSENT
        if command == "query-named-block-nodes" and self.rng.random() < 0.5:
            arguments = {"flat": self.rng.random() < 0.5}
        elif self.rng.random() < 0.2:
            arguments = {}
        return self.request(command, arguments, request_id, with_id=request_id is not None)

    def valid_text(self) -> bytes:
        return self.writer.encode(self.safe_request(self.random_value(2)))

    # -- families ------------------------------------------------------------------------------
    def _valid(self) -> FuzzInput:
        request_id = self._next_id() if self.rng.random() < 0.5 else self.random_value(2)
        data = self.writer.encode(self.safe_request(request_id))
        negotiate = self._negotiate()
        expected = (request_id,) if negotiate and isinstance(request_id, str) else None
        return FuzzInput("valid", data, negotiate, expected_ids=expected)

    def _malformed(self) -> FuzzInput:
        rng = self.rng
        data = bytearray(self.valid_text())
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            pos = rng.randrange(len(data) + 1)
            op = rng.randrange(9)
            if op == 0:  # delete a byte
                del data[min(pos, len(data) - 1)]
            elif op == 1:  # insert a structural character
                data[pos:pos] = bytes([rng.choice(_STRUCTURAL)])
            elif op == 2:  # insert any byte
                data[pos:pos] = bytes([rng.randrange(256)])
            elif op == 3:  # flip a bit
                index = min(pos, len(data) - 1)
                data[index] ^= 1 << rng.randrange(8)
            elif op == 4:  # duplicate a slice (duplicate keys, doubled values)
                end = rng.randint(pos, min(len(data), pos + 40))
                data[pos:pos] = data[pos:end]
            elif op == 5:  # an odd number
                data[pos:pos] = rng.choice(_ODD_NUMBERS)
            elif op == 6:  # an escape sequence, valid or not
                data[pos:pos] = rng.choice(_ESCAPES)
            elif op == 7:  # swap the quoting style
                data = bytearray(bytes(data).replace(b'"', b"'") if rng.random() < 0.5
                                 else bytes(data).replace(b"'", b'"'))
            else:  # a keyword, real or not
                data[pos:pos] = rng.choice((b"true", b"false", b"null", b"nul", b"True", b"NaN",
                                            b"Infinity", b"undefined", b"t"))
        return FuzzInput("malformed", bytes(data), self._negotiate())

    def _truncated(self) -> FuzzInput:
        text = self.valid_text()
        cut = self.rng.randrange(len(text))
        return FuzzInput("truncated", text[:cut], self._negotiate())

    def _nesting(self) -> FuzzInput:
        rng = self.rng
        depth = rng.choice((rng.randint(1, 64), rng.randint(1015, 1030), 1023, 1024, 1025,
                            rng.randint(1031, 5000)))
        style = rng.randrange(5)
        if style == 0:  # balanced lists
            data = b"[" * depth + b"]" * depth
        elif style == 1:  # balanced objects
            data = b'{"a":' * depth + b"1" + b"}" * depth
        elif style == 2:  # a deep id in a real request (echoed back when accepted)
            inner = b"[" * depth + b"0" + b"]" * depth
            data = b'{"execute":"query-status","id":' + inner + b"}"
        elif style == 3:  # unclosed
            data = rng.choice((b"[", b"{\"k\":", b"[{\"k\":")) * depth
        else:  # mixed, with a mismatched close
            opens = bytes(rng.choice(b"[{") for _ in range(depth))
            closes = b"".join(b"]" if c == ord("[") else b"}" for c in reversed(opens))
            body = b"".join(b"[" if c == ord("[") else b'{"k":' for c in opens)
            data = body + b"null" + closes
            if rng.random() < 0.5 and data:
                index = rng.randrange(len(data))
                data = data[:index] + rng.choice((b"]", b"}", b",", b":")) + data[index + 1:]
        return FuzzInput("nesting", data, self._negotiate())

    def _size(self, minimum: int) -> int:
        """A size drawn log-uniformly between `minimum` and max_size."""
        top = max(minimum, self.max_size - 256)
        return int(minimum * (top / minimum) ** self.rng.random())

    def _huge_string(self) -> FuzzInput:
        rng = self.rng
        size = self._size(64)
        fill = rng.choice((b"a", b"\\u00e9", "é".encode(), b"\\n", b" ", b"\\\\", "😀".encode()))
        body = (fill * (size // len(fill) + 1))[:size]
        body = body[:len(body) - len(body) % len(fill)]
        where = rng.randrange(4)
        if where == 0:
            data = b'{"execute":"query-status","id":"' + body + b'"}'
        elif where == 1:
            data = b'{"execute":"' + body + b'"}'
        elif where == 2:
            data = b'{"execute":"query-status","arguments":{"' + body + b'":1}}'
        else:
            data = b'"' + body  # never terminated
        return FuzzInput("huge-string", data, self._negotiate())

    def _huge_number(self) -> FuzzInput:
        rng = self.rng
        if rng.random() < 0.5:
            number = rng.choice(_ODD_NUMBERS)
        else:
            digits = self._size(16)
            number = (rng.choice((b"", b"-")) + b"9" + b"".join(
                bytes([48 + rng.randrange(10)]) for _ in range(min(digits, 4096)))
                + b"7" * max(0, digits - 4096) + rng.choice((b"", b".5", b"e10", b"e-99999", b"e+400")))
        where = rng.randrange(4)
        if where == 0:
            data = b'{"execute":"query-status","id":' + number + b"}"
        elif where == 1:
            data = b'{"execute":"block-job-set-speed","arguments":{"device":"fz","speed":' + number + b"}}"
        elif where == 2:
            data = (b'{"execute":"block-dirty-bitmap-add","arguments":{"node":5,"name":"b",'
                    b'"granularity":' + number + b"}}")
        else:
            data = number
        return FuzzInput("huge-number", data, self._negotiate())

    def _bytes(self) -> FuzzInput:
        rng = self.rng
        # Random bytes draw about one error reply per three bytes: big ones only now and then.
        size = rng.choice((rng.randint(1, 64), rng.randint(64, 2048), rng.randint(2048, 16384)))
        if rng.random() < 0.02:
            size = self._size(16384)
        if rng.random() < 0.5:
            data = rng.randbytes(size)
        else:  # mostly JSON-ish bytes, so the parser gets deeper
            pool = _STRUCTURAL + b"0123456789-+.eEtrufalsn" + bytes(range(0x20)) + b"\xfe\xff\xc3\xa9"
            data = bytes(rng.choice(pool) for _ in range(min(size, 4096)))
        return FuzzInput("bytes", data, self._negotiate())

    def _bad_utf8(self) -> FuzzInput:
        rng = self.rng
        pieces = [rng.choice(_BAD_UTF8 + _ESCAPES) for _ in range(rng.randint(1, 6))]
        text = b"".join(pieces)
        where = rng.randrange(4)
        request_id = self._next_id()
        if where == 0:
            data = b'{"execute":"query-status","id":"' + text + b'"}'
        elif where == 1:
            data = b'{"execute":"' + text + b'","id":"' + request_id.encode() + b'"}'
        elif where == 2:
            data = b'{"execute":"query-status","arguments":{"' + text + b'":null},"id":"' + \
                request_id.encode() + b'"}'
        else:
            data = b"{'execute':'query-status','id':'" + text + b"'}"
        return FuzzInput("bad-utf8", data, self._negotiate())

    def wrong_value(self, kind: Any) -> Any:
        """A value the QAPI visitor must reject for a member of type `kind`."""
        rng = self.rng
        if isinstance(kind, list):  # a list type: anything but a list
            return rng.choice((1, "x", True, {}, None))
        if kind == "str":
            return rng.choice((1, 1.5, True, [], {}, ["x"]))
        if kind == "bool":
            return rng.choice((1, 0, "true", "on", [], {}))
        if kind in ("int", "uint32"):
            return rng.choice(("5", 1.5, True, [], {}, -1e999, 1 << 64))
        if kind == "enum":
            return rng.choice((1, True, [], {}, "fz-no-such-value", ""))
        return rng.choice((1, "x", True, []))  # struct or alternate: never a list/scalar mix

    def _wrong_type(self) -> FuzzInput:
        rng = self.rng
        command = rng.choice(sorted(COMMAND_MEMBERS))
        members = COMMAND_MEMBERS[command]
        if not members or rng.random() < 0.1:
            arguments: Any = rng.choice(([], "x", 1, None, True))  # arguments not an object
        else:
            arguments = {}
            for name, kind in members.items():
                if name.startswith("*") and rng.random() < 0.6:
                    continue
                arguments[name.lstrip("*")] = self.plausible_value(kind)
            bad = rng.choice(sorted(members))
            arguments[bad.lstrip("*")] = self.wrong_value(members[bad])
            items = list(arguments.items())
            rng.shuffle(items)
            arguments = dict(items)
        data = self.writer.encode(self.request(command, arguments, self._next_id()))
        return FuzzInput("wrong-type", data, self._negotiate())

    def plausible_value(self, kind: Any) -> Any:
        """A well-typed value (the command may still fail later: never on its own)."""
        rng = self.rng
        if isinstance(kind, list):
            return [] if rng.random() < 0.5 else [self.plausible_value(kind[0])]
        return {"str": lambda: rng.choice(("fz-node", "", "drive0")),
                "bool": lambda: rng.random() < 0.5,
                "int": lambda: rng.randint(0, 1 << 20),
                "uint32": lambda: 65536,
                "enum": lambda: "fz-no-such-value",
                }.get(kind, dict)()

    def _unknown_member(self) -> FuzzInput:
        rng = self.rng
        if rng.random() < 0.5:  # in arguments (QAPI: "Parameter 'x' is unexpected")
            command = rng.choice(sorted(COMMAND_MEMBERS))
            arguments = {name.lstrip("*"): self.plausible_value(kind)
                         for name, kind in COMMAND_MEMBERS[command].items() if not name.startswith("*")}
            arguments["fz-" + self.random_string(6)] = self.random_value(1)
            items = list(arguments.items())
            rng.shuffle(items)
            request = self.request(command, dict(items), self._next_id())
        else:  # at the top level ("QMP input member 'x' is unexpected")
            request = self.safe_request(self._next_id())
            extra = rng.choice(("fz-" + self.random_string(6), "exec-oob", "control", "Execute",
                                "arguments ", ""))
            request[extra] = self.random_value(1)
        return FuzzInput("unknown-member", self.writer.encode(request), self._negotiate())

    def _random_name(self) -> FuzzInput:
        rng = self.rng
        style = rng.randrange(4)
        if style == 0:
            name = "fz-" + "".join(rng.choice(_NAME_CHARS) for _ in range(rng.randint(0, 30)))
        elif style == 1:
            name = "fz" + self.random_string(20)
        elif style == 2:
            name = rng.choice(("", " ", "Query-Status", "query_status", "QUERY-STATUS",
                               "query-status ", "x-" * 200, "fz-\u00e9", "fz\U0001F600", "fz\u0000x"))
        else:
            name = "fz-" + "n" * self._size(16)
        arguments = self.random_value(2) if rng.random() < 0.3 else ABSENT
        data = self.writer.encode(self.request(name, arguments, self._next_id()))
        return FuzzInput("random-name", data, self._negotiate())

    def _pipelined(self) -> FuzzInput:
        rng = self.rng
        count = rng.choice((rng.randint(2, 50), rng.randint(100, 1000), rng.randint(1000, 5000)))
        separator = rng.choice((b"", b"\n", b" ", b"\r\n"))
        ids: list[str] = []
        parts: list[bytes] = []
        budget = self.max_size
        for _ in range(count):
            request_id = self._next_id()
            part = self.writer.encode(self.safe_request(request_id))
            if budget - len(part) - len(separator) < 256:
                break
            budget -= len(part) + len(separator)
            ids.append(request_id)
            parts.append(part)
        negotiate = self._negotiate()
        return FuzzInput("pipelined", separator.join(parts), negotiate,
                         expected_ids=tuple(ids) if negotiate else None)

    def _disconnect(self) -> FuzzInput:
        rng = self.rng
        style = rng.randrange(4)
        if style == 0:  # many requests, gone before the replies
            data = b"".join(self.writer.encode(self.safe_request(self._next_id()))
                            for _ in range(rng.randint(1, 2000)))
        elif style == 1:  # half a request
            text = self.valid_text()
            data = text[:rng.randrange(len(text))]
        elif style == 2 and self.drive is not None:  # a slow command, then gone
            length = rng.choice(("64k", "1M", "4M"))
            request = self.request("human-monitor-command",
                                   {"command-line": f'qemu-io {self.drive} "write -P 0x5a 0 {length}"'},
                                   self._next_id())
            data = json.dumps(request).encode() * rng.randint(1, 8)
        else:  # a huge value cut short
            data = b'{"execute":"query-status","id":"' + b"x" * self._size(1024)
        return FuzzInput("disconnect", data, self._negotiate(), disconnect=True)


_EXEC_NAME = re.compile(rb"""["']exec(?:ute|-oob)["']\s*:\s*["']([^"'\\]*)["']""")


def command_names(data: bytes) -> set[str]:
    """Every command name `data` asks for, as QEMU's JSON parser would read it (the emulator's
    copy of that parser), plus whatever a plain pattern match sees."""
    from emulator.qmp.jsonparser import JsonMessageParser

    names = {match.group(1).decode("latin-1") for match in _EXEC_NAME.finditer(data)}
    values: list[Any] = []
    parser = JsonMessageParser(lambda value, err: values.append(value))
    parser.feed(data)
    parser.flush()
    for value in values:
        if isinstance(value, dict):
            names.update(value[key] for key in ("execute", "exec-oob")
                         if isinstance(value.get(key), str))
    return names


def is_harmless(item: FuzzInput) -> bool:
    """False when an input might run a command with side effects with valid arguments."""
    if item.family in ("wrong-type", "unknown-member"):
        return True  # built so that the QAPI visitor rejects them before the command runs
    if item.family == "disconnect" and b"human-monitor-command" in item.data:
        return True  # writes a pattern to the target's own scratch drive, by design
    if len(item.data) > 65536:  # big inputs come from fixed templates naming query-status
        return not any(match.group(1).decode("latin-1") in UNSAFE_COMMANDS
                       for match in _EXEC_NAME.finditer(item.data))
    return not command_names(item.data) & UNSAFE_COMMANDS


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


# ---- checking outcomes ---------------------------------------------------------------------------

@dataclass
class Finding:
    """Something wrong with one input: category is crash, hang, closed, refused, invalid-reply,
    oracle, class-mismatch or text-mismatch (against QEMU)."""

    category: str
    item: FuzzInput
    detail: str

    def describe(self) -> str:
        return f"[{self.category}] {self.detail}\n    input: {self.item.describe()}"


def check_outcome(item: FuzzInput, outcome: Outcome) -> list[Finding]:
    """The checks that need no second target."""
    findings: list[Finding] = []
    if item.disconnect:
        if outcome.status not in ("disconnected",):
            findings.append(Finding(outcome.status, item, outcome.note))
        return findings
    if outcome.status != "answered":
        findings.append(Finding(outcome.status, item, outcome.note))
    for reply in outcome.replies:
        if reply.kind == "invalid":
            findings.append(Finding("invalid-reply", item, f"not a QMP reply: {reply.raw[:200]!r}"))
        elif reply.kind == "error" and (reply.desc or "").startswith(INTERNAL_ERROR):
            findings.append(Finding("crash", item, f"handler exception: {reply.desc}"))
    if item.expected_ids is not None and outcome.status == "answered":
        got = tuple(reply.message.get("id") for reply in outcome.answers
                    if reply.kind == "return" and reply.message is not None)
        if got != item.expected_ids:
            findings.append(Finding("oracle", item, f"expected {len(item.expected_ids)} replies with "
                                    f"ids in order, got {len(got)}: first difference at "
                                    f"{_first_difference(got, item.expected_ids)}"))
    return findings


def _first_difference(got: Sequence[Any], expected: Sequence[Any]) -> str:
    for index, (left, right) in enumerate(zip(got, expected, strict=False)):
        if left != right:
            return f"#{index}: {left!r} != {right!r}"
    return f"#{min(len(got), len(expected))} (lengths {len(got)} and {len(expected)})"


def compare_outcomes(item: FuzzInput, emulator: Outcome, qemu: Outcome) -> list[Finding]:
    """Differences from QEMU: the status, the classes of the answers, then their text and ids."""
    if item.disconnect:
        return []
    if emulator.status != qemu.status:
        return [Finding("class-mismatch", item, f"emulator {emulator.status}, QEMU {qemu.status}")]
    ours = [reply.class_key() for reply in emulator.answers]
    theirs = [reply.class_key() for reply in qemu.answers]
    if ours != theirs:
        return [Finding("class-mismatch", item, f"emulator {_summary(ours)} | QEMU {_summary(theirs)}")]
    for index, (mine, real) in enumerate(zip(emulator.answers, qemu.answers, strict=True)):
        if mine.key() != real.key():
            return [Finding("text-mismatch", item, f"answer #{index}: emulator {mine.raw[:300]!r} | "
                            f"QEMU {real.raw[:300]!r}")]
    return []


def _summary(keys: Sequence[tuple[str, str | None]]) -> str:
    counts = Counter(f"{kind}:{cls}" if cls else kind for kind, cls in keys)
    shown = ", ".join(f"{name}" if n == 1 else f"{n}x {name}" for name, n in counts.items())
    order = " ".join(cls or kind for kind, cls in keys[:8])
    return f"{len(keys)} answers ({shown}) [{order}{' ...' if len(keys) > 8 else ''}]"


# ---- live targets ---------------------------------------------------------------------------------

class LiveTarget:
    """A started target (emulator process or real QEMU) with a scratch qcow2 drive."""

    def __init__(self, target: Target, *, drive: bool = True, name: str | None = None) -> None:
        self.name = name or target.name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"btx-fz-{self.name[:4]}-"))
        self.socket_path = self.workdir / "q.sock"
        extra: list[str] = []
        if drive:
            image = self.workdir / "scratch.qcow2"
            target.tools(self.workdir).create(image, "qcow2", "64M")
            extra = ["-drive", f"if=none,id=drive0,file={image},format=qcow2"]
        # The target accepts on a socket made here before it starts (MonitorSocket.listen): a
        # connection is queued until it is ready, so there is nothing to poll for.
        monitor = MonitorSocket.listen(self.socket_path)
        try:
            self.instance: Instance = target.start(monitor, self.workdir, extra)
        finally:
            monitor.close()
        self.client = FuzzClient(self.socket_path)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """One health check, bounded: its greeting arrives once the target serves QMP."""
        problem = self.client.health_check(timeout=timeout)
        if problem is not None:
            state = "exited" if not self.instance.alive() else "is running"
            raise RuntimeError(f"{self.name} did not serve QMP within {timeout}s ({state}): {problem}; "
                               f"stderr: {self.instance.stderr_text()}")

    def problems(self) -> list[str]:
        """Signs of a crash: the process died, or it logged an error or a traceback."""
        found: list[str] = []
        if not self.instance.alive():
            found.append(f"{self.name} is not running (exit status {self.instance.exit_status()})")
        stderr = self.instance.stderr_text()
        for line in stderr.splitlines():
            if "Traceback" in line or " ERROR " in line or "CRITICAL" in line or "Exception" in line:
                found.append(f"{self.name} stderr: {line.strip()[:300]}")
        return found

    def stop(self) -> None:
        self.instance.kill()
        for child in sorted(self.workdir.rglob("*"), reverse=True):
            if child.is_dir():
                child.rmdir()
            else:
                child.unlink()
        self.workdir.rmdir()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def qemu_available(binary: str | None = None) -> bool:
    """`binary` (default: qemu-system-x86_64 on PATH) runs ``--version`` (with its modules'
    QEMU_MODULE_DIR when it is an unpacked package's binary)."""
    return QemuBinaries.find(binary).version is not None


def fuzz_targets(qemu: str | None = None, qemu_img: str | None = None,
                 qemu_io: str | None = None) -> tuple[Target, Target | None, FuzzProfile]:
    """The emulator (a separate process, told to behave like the QEMU found) and real QEMU
    (None when not found): `qemu` names qemu-system-x86_64, default PATH; the tools default to
    the ones beside it (see conformance.differential.targets)."""
    profile = FuzzProfile.find(qemu, qemu_img, qemu_io)
    emulator = EmulatorTarget(profile.emulator_version, separate_process=True)
    return emulator, (profile.reference() if profile.binaries.complete else None), profile


@dataclass
class CampaignReport:
    inputs: int = 0
    compared: int = 0
    batches: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    families: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    server_problems: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")

    def count(self, category: str) -> int:
        return sum(1 for finding in self.findings if finding.category == category)

    @property
    def clean(self) -> bool:
        return not self.findings and not self.server_problems

    def summary(self) -> str:
        categories = ("crash", "hang", "closed", "refused", "invalid-reply", "oracle",
                      "class-mismatch", "text-mismatch")
        rate = self.inputs / max(self.seconds, 1e-9)
        lines = [(f"{self.inputs} inputs in {self.batches} batches, {self.bytes_sent / 1e6:.1f} MB, "
                  f"{self.seconds:.1f}s ({rate:.0f} inputs/s); {self.compared} compared with QEMU"),
                 "families: " + ", ".join(f"{name} {n}" for name, n in sorted(self.families.items())),
                 "statuses: " + ", ".join(f"{name} {n}" for name, n in sorted(self.statuses.items())),
                 "findings: " + ", ".join(f"{name} {self.count(name)}" for name in categories),
                 f"server problems: {len(self.server_problems)}",
                 f"slowest input: {self.slowest[0]:.2f}s ({self.slowest[1][:100]})"]
        return "\n".join(lines)


class Campaign:
    """Runs inputs in batches against the emulator (and, for small inputs, QEMU too)."""

    def __init__(self, emulator: LiveTarget, qemu: LiveTarget | None = None, *,
                 batch_size: int = 100, compare_limit: int = COMPARE_LIMIT, compare_every: int = 1,
                 on_finding: Callable[[Finding], None] | None = None) -> None:
        self.emulator = emulator
        self.qemu = qemu
        self.batch_size = batch_size
        self.compare_limit = compare_limit
        self.compare_every = compare_every
        self._eligible = 0  # inputs small enough to compare, seen so far
        self.on_finding = on_finding
        self.report = CampaignReport()
        if qemu is not None:  # QEMU reads its monitor at about 65 KB/s at best
            qemu.client.bytes_per_second = 4 * 1024

    def _record(self, findings: list[Finding]) -> None:
        for finding in findings:
            self.report.findings.append(finding)
            if self.on_finding is not None:
                self.on_finding(finding)

    def should_compare(self, item: FuzzInput) -> bool:
        """Every compare_every-th input that QEMU can read quickly."""
        if self.qemu is None or item.disconnect or len(item.data) > self.compare_limit:
            return False
        self._eligible += 1
        return self.compare_every > 0 and self._eligible % self.compare_every == 0

    def run(self, inputs: Iterator[FuzzInput] | Sequence[FuzzInput]) -> CampaignReport:
        started = time.monotonic()
        batch = 0
        for item in inputs:
            self.run_one(item)
            batch += 1
            if batch == self.batch_size:
                self.end_batch()
                batch = 0
        if batch:
            self.end_batch()
        self.report.seconds += time.monotonic() - started
        return self.report

    def run_one(self, item: FuzzInput) -> Outcome:
        report = self.report
        outcome = self.emulator.client.run(item)
        report.inputs += 1
        report.bytes_sent += len(item.data)
        report.families[item.family] += 1
        report.statuses[outcome.status] += 1
        if outcome.seconds > report.slowest[0]:
            report.slowest = (outcome.seconds, item.describe())
        self._record(check_outcome(item, outcome))
        if outcome.status in ("hang", "refused", "closed"):
            self.end_batch()  # is the server still there?
        if self.should_compare(item):
            assert self.qemu is not None
            real = self.qemu.client.run(item)
            report.compared += 1
            self._record(compare_outcomes(item, outcome, real))
        return outcome

    def end_batch(self) -> None:
        """The server must serve a fresh client after every batch, and show no crash."""
        self.report.batches += 1
        problem = self.emulator.client.health_check()
        problems = self.emulator.problems() + ([f"health check: {problem}"] if problem else [])
        new = [p for p in problems if p not in self.report.server_problems]
        self.report.server_problems.extend(new)
        if new and not self.emulator.instance.alive():
            raise RuntimeError("the emulator died: " + "; ".join(new))
