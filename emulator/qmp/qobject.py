"""QEMU's QObject JSON output (qobject/qjson.c, qobject/qdict.c), reproduced byte for byte.

QEMU keeps a JSON object in a QDict: a hash table of 512 buckets keyed by tdb_hash(), each bucket
a list with the newest entry first, iterated bucket by bucket.  That is why QEMU prints
`{"status": "running", "singlestep": false, "running": true}` and why an error reply starts
with "id".  Emitting our dicts in the same order makes emulator output byte-identical to QEMU's
for the same content.  Python dict insertion order stands for QEMU's insertion order (the QAPI
member order of output visitors).

Strings are QEMU "modified UTF-8" C strings: U+0000 travels as C0 80, invalid sequences print as
U+FFFD, and everything outside printable ASCII is escaped as \\uXXXX (upper-case hex).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

QDICT_BUCKET_MAX = 512


def tdb_hash(key: bytes) -> int:
    """QEMU's qdict.c tdb_hash() (from gdbm via tdb), on unsigned 32-bit arithmetic."""
    value = (0x238F13AF * len(key)) & 0xFFFFFFFF
    for i, byte in enumerate(key):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def c_string_bytes(text: str) -> bytes:
    """The bytes QEMU holds for `text`: UTF-8, with U+0000 as the modified-UTF-8 pair C0 80."""
    return text.encode("utf-8", "surrogatepass").replace(b"\x00", b"\xc0\x80")


@lru_cache(maxsize=4096)
def qdict_bucket(key: str) -> int:
    return tdb_hash(c_string_bytes(key)) % QDICT_BUCKET_MAX


def qdict_order(keys: Iterable[str]) -> list[str]:
    """The order in which a QDict filled with `keys` (in this insertion order) iterates them."""
    return list(_qdict_order(tuple(keys)))


@lru_cache(maxsize=4096)
def _qdict_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """qdict_order of a key sequence (replies and events repeat a few shapes: computed once)."""
    buckets: dict[int, list[str]] = {}
    for key in keys:
        buckets.setdefault(qdict_bucket(key), []).insert(0, key)
    return tuple(key for bucket in sorted(buckets) for key in buckets[bucket])


# ---- modified UTF-8 (util/unicode.c) -----------------------------------------------------------

_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def is_valid_codepoint(cp: int) -> bool:
    if cp > 0x10FFFF:
        return False
    if (cp & 0xFFFFF800) == 0xD800:  # surrogate
        return False
    return not (0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE)  # not a noncharacter


def mod_utf8_codepoint(data: bytes, pos: int, limit: int = 6) -> tuple[int, int]:
    """Decode one code point at data[pos:] like QEMU's mod_utf8_codepoint(s, n, &end).

    Returns (codepoint or -1, end position).  The end of `data` acts as the C string's NUL.
    """
    n = min(limit, len(data) - pos)
    if n <= 0 or data[pos] == 0:
        return -1, pos
    byte = data[pos]
    p = pos + 1
    if byte < 0x80:
        return byte, p
    if byte >= 0xFE or not byte & 0x40:  # impossible byte / unexpected continuation byte
        return -1, p
    length = 0
    mask = 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for i in range(1, length):
        nxt = data[p] if i < n and p < len(data) else 0
        if (nxt & 0xC0) != 0x80:
            return -1, p  # missing continuation byte
        p += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if not is_valid_codepoint(cp):
        return -1, p
    if cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2):
        return -1, p  # overlong, other than C0 80
    return cp, p


def decode_c_string(data: bytes) -> str:
    """How QEMU prints a C string of arbitrary bytes: up to the first NUL, bad sequences as U+FFFD."""
    nul = data.find(b"\x00")
    if nul >= 0:
        data = data[:nul]
    out: list[str] = []
    pos = 0
    while pos < len(data):
        cp, end = mod_utf8_codepoint(data, pos)
        out.append("\ufffd" if cp < 0 else chr(cp))
        pos = end if end > pos else pos + 1
    return "".join(out)


# ---- output (qobject/qjson.c to_json) ----------------------------------------------------------

_PLAIN = re.compile(r'[\x20-\x21\x23-\x5b\x5d-\x7e]*\Z')
_SIMPLE_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                   "\t": "\\t"}


def quote_string(text: str) -> str:
    """A JSON string literal exactly as QEMU writes it."""
    if _PLAIN.match(text):
        return f'"{text}"'
    out = ['"']
    for ch in text:
        simple = _SIMPLE_ESCAPES.get(ch)
        if simple is not None:
            out.append(simple)
            continue
        cp = ord(ch)
        if 0xD800 <= cp <= 0xDFFF:  # a lone surrogate stands for bytes QEMU could not decode
            cp = 0xFFFD
        if cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}")
        elif cp < 0x20 or cp >= 0x7F:
            out.append(f"\\u{cp:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_number(value: float) -> str:
    """QNum's text: decimal for integers, printf("%.17g") for doubles (inf prints as inf)."""
    if isinstance(value, float):
        return f"{value:.17g}"
    return f"{int(value):d}"


def _scalar(obj: Any) -> str:
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return quote_string(obj)
    if isinstance(obj, (int, float)):
        return format_number(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as a QObject")


def _encode(obj: Any, emit: Callable[[str], None]) -> None:
    """to_json() without recursion: QMP input may nest 1024 deep and an "id" is echoed."""
    # Each frame: [elements, next index, is a dict, closing bracket].
    stack: list[list[Any]] = []
    while True:
        if isinstance(obj, dict):
            emit("{")
            stack.append([[(key, obj[key]) for key in qdict_order(obj)], 0, True, "}"])
        elif isinstance(obj, (list, tuple)):
            emit("[")
            stack.append([obj, 0, False, "]"])
        else:
            emit(_scalar(obj))
        while stack:
            frame = stack[-1]
            elements, index, is_dict = frame[0], frame[1], frame[2]
            if index == len(elements):
                stack.pop()
                emit(frame[3])
                continue
            frame[1] = index + 1
            if index:
                emit(", ")
            if is_dict:
                key, obj = elements[index]
                if not isinstance(key, str):
                    raise TypeError(f"QDict key must be a string, not {type(key).__name__}")
                emit(quote_string(key) + ": ")
            else:
                obj = elements[index]
            break
        else:
            return


def to_json(obj: Any) -> str:
    """Serialize `obj` as qobject_to_json() does (compact form, ASCII only)."""
    parts: list[str] = []
    _encode(obj, parts.append)
    return "".join(parts)
