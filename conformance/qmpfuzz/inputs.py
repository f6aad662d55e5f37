"""Hostile QMP input: InputGenerator makes FuzzInput byte strings in families.

Families: malformed and truncated JSON, deep nesting, huge strings and numbers, non-UTF-8 bytes,
wrong argument types, unknown members, random command names, requests before negotiation,
thousands of pipelined requests, and clients that disconnect mid-command.  Generated requests
never reach a command with side effects: they name a side-effect-free query, an unknown command,
or a real command with arguments the QAPI visitor must reject (it does so before the command
runs, in QEMU too); is_harmless() checks that of any input.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
