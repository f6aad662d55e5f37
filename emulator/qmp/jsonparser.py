"""QEMU 7.2's JSON input: lexer, message streamer and parser (qobject/json-lexer.c,
json-streamer.c, json-parser.c), so that every malformed input gets QEMU's own error, at the
same moment and as many times as QEMU reports it.

The lexer is QEMU's byte-level state machine, including its extensions (single-quoted strings,
the \\' escape) and its error recovery: after a lexical error it skips input up to the next
structural character or control character.  The streamer groups tokens until brackets balance
(a top-level scalar is a message by itself once its end is seen), enforcing QEMU's limits on
token size, token count and nesting.  The parser is QEMU's recursive descent, written as a loop
so that 1024 nesting levels do not meet Python's recursion limit; the first error wins.

Values come out as Python data: dict, list, str, bool, None; JSON integers that fit int64 or
uint64 as int (QEMU's QNUM_I64/QNUM_U64), every other number as float (QNUM_DOUBLE).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from emulator.error import QemuError

from .qobject import decode_c_string, is_valid_codepoint, mod_utf8_codepoint

MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10

# Token types (json-parser-int.h); JSON_ERROR must be 0, the table's default.
JSON_ERROR = 0
JSON_LCURLY = 100
JSON_RCURLY = 101
JSON_LSQUARE = 102
JSON_RSQUARE = 103
JSON_COLON = 104
JSON_COMMA = 105
JSON_INTEGER = 106
JSON_FLOAT = 107
JSON_KEYWORD = 108
JSON_STRING = 109
JSON_END_OF_INPUT = 110
JSON_MIN = JSON_LCURLY

# Lexer states.
(IN_RECOVERY, IN_DQ_STRING_ESCAPE, IN_DQ_STRING, IN_SQ_STRING_ESCAPE, IN_SQ_STRING, IN_ZERO,
 IN_EXP_DIGITS, IN_EXP_SIGN, IN_EXP_E, IN_MANTISSA_DIGITS, IN_MANTISSA, IN_DIGITS, IN_SIGN,
 IN_KEYWORD, IN_WHITESPACE, IN_START) = range(1, 17)

LOOKAHEAD = 0x100


def _build_table() -> list[list[int]]:
    table = [[JSON_ERROR] * 256 for _ in range(IN_START + 1)]

    def terminal(state: int, token: int) -> None:
        table[state] = [token | LOOKAHEAD] * 256

    def put(state: int, chars: str | range, value: int) -> None:
        for ch in chars:
            table[state][ch if isinstance(ch, int) else ord(ch)] = value

    rec = table[IN_RECOVERY]
    for ch in range(256):
        rec[ch] = IN_START | LOOKAHEAD if ch < 0x20 or ch >= 0xFE else IN_RECOVERY
    put(IN_RECOVERY, "\t", IN_RECOVERY)
    put(IN_RECOVERY, "[]{}:,", IN_START | LOOKAHEAD)

    for escape, string, quote in ((IN_DQ_STRING_ESCAPE, IN_DQ_STRING, '"'),
                                  (IN_SQ_STRING_ESCAPE, IN_SQ_STRING, "'")):
        put(escape, range(0x20, 0xFE), string)
        put(string, range(0x20, 0xFE), string)
        put(string, "\\", escape)
        put(string, quote, JSON_STRING)

    digits = "0123456789"
    terminal(IN_ZERO, JSON_INTEGER)
    put(IN_ZERO, digits, JSON_ERROR)
    put(IN_ZERO, ".", IN_MANTISSA)
    terminal(IN_EXP_DIGITS, JSON_FLOAT)
    put(IN_EXP_DIGITS, digits, IN_EXP_DIGITS)
    put(IN_EXP_SIGN, digits, IN_EXP_DIGITS)
    put(IN_EXP_E, "-+", IN_EXP_SIGN)
    put(IN_EXP_E, digits, IN_EXP_DIGITS)
    terminal(IN_MANTISSA_DIGITS, JSON_FLOAT)
    put(IN_MANTISSA_DIGITS, digits, IN_MANTISSA_DIGITS)
    put(IN_MANTISSA_DIGITS, "eE", IN_EXP_E)
    put(IN_MANTISSA, digits, IN_MANTISSA_DIGITS)
    terminal(IN_DIGITS, JSON_INTEGER)
    put(IN_DIGITS, digits, IN_DIGITS)
    put(IN_DIGITS, "eE", IN_EXP_E)
    put(IN_DIGITS, ".", IN_MANTISSA)
    put(IN_SIGN, "0", IN_ZERO)
    put(IN_SIGN, "123456789", IN_DIGITS)
    terminal(IN_KEYWORD, JSON_KEYWORD)
    put(IN_KEYWORD, "abcdefghijklmnopqrstuvwxyz", IN_KEYWORD)
    terminal(IN_WHITESPACE, IN_START)
    put(IN_WHITESPACE, " \t\r\n", IN_WHITESPACE)

    put(IN_START, '"', IN_DQ_STRING)
    put(IN_START, "'", IN_SQ_STRING)
    put(IN_START, "0", IN_ZERO)
    put(IN_START, "123456789", IN_DIGITS)
    put(IN_START, "-", IN_SIGN)
    put(IN_START, "{", JSON_LCURLY)
    put(IN_START, "}", JSON_RCURLY)
    put(IN_START, "[", JSON_LSQUARE)
    put(IN_START, "]", JSON_RSQUARE)
    put(IN_START, ",", JSON_COMMA)
    put(IN_START, ":", JSON_COLON)
    put(IN_START, "abcdefghijklmnopqrstuvwxyz", IN_KEYWORD)
    put(IN_START, " \t\r\n", IN_WHITESPACE)
    return table


_TABLE = _build_table()

# Runs of bytes that keep the lexer in the same state, consumed in one step (an optimization
# only: the state machine gives the same result byte by byte).
_RUNS: dict[int, re.Pattern[bytes]] = {
    IN_DQ_STRING: re.compile(rb'[\x20\x21\x23-\x5b\x5d-\xfd]+'),
    IN_SQ_STRING: re.compile(rb"[\x20-\x26\x28-\x5b\x5d-\xfd]+"),
    IN_WHITESPACE: re.compile(rb"[ \t\r\n]+"),
    IN_DIGITS: re.compile(rb"[0-9]+"),
    IN_MANTISSA_DIGITS: re.compile(rb"[0-9]+"),
    IN_EXP_DIGITS: re.compile(rb"[0-9]+"),
    IN_KEYWORD: re.compile(rb"[a-z]+"),
    IN_RECOVERY: re.compile(rb"[\t\x20-\x2b\x2d-\x39\x3b-\x5a\x5c\x5e-\x7a\x7c\x7e-\xfd]+"),
}

Emit = Callable[[Any, QemuError | None], None]


def _parse_error(message: str) -> QemuError:
    return QemuError(f"JSON parse error, {message}")


class JsonMessageParser:
    """Feed bytes in, get `emit(value, None)` per complete JSON value or `emit(None, error)`.

    One instance per stream (QEMU's JSONMessageParser); create a new one for a new connection.
    """

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._state = IN_START
        self._token = bytearray()
        self._tokens: list[tuple[int, bytes]] = []
        self._brace = 0
        self._bracket = 0
        self._token_size = 0

    # ---- lexer ----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        token = self._token
        while pos < end:
            run = _RUNS.get(self._state)
            if run is not None:
                match = run.match(data, pos)
                if match is not None:
                    stop = match.end()
                    if self._state == IN_RECOVERY:
                        pos = stop
                        continue
                    stop = min(stop, pos + MAX_TOKEN_SIZE + 1 - len(token))
                    if stop > pos:
                        token += data[pos:stop]
                        pos = stop
                        self._check_token_length()
                        continue
            self._feed_char(data[pos], flush=False)
            pos += 1

    def flush(self) -> None:
        """End of input: finish a pending token and parse what is left (qobject_from_json)."""
        self._feed_char(0, flush=True)
        self._process_token(b"", JSON_END_OF_INPUT)

    def _feed_char(self, ch: int, flush: bool) -> None:
        token = self._token
        while True:
            if flush and self._state == IN_START:
                break
            entry = _TABLE[self._state][ch]
            consumed = not flush and not entry & LOOKAHEAD
            new_state = entry & ~LOOKAHEAD
            if consumed:
                token.append(ch)
            if new_state >= JSON_MIN:
                self._process_token(bytes(token), new_state)
                token.clear()
                new_state = IN_START
            elif new_state == IN_START:
                token.clear()
            elif new_state == JSON_ERROR:
                self._process_token(bytes(token), JSON_ERROR)
                token.clear()
                new_state = IN_RECOVERY
            elif new_state == IN_RECOVERY:
                token.clear()
            self._state = new_state
            if not flush and consumed:
                break
        self._check_token_length()

    def _check_token_length(self) -> None:
        # "Do not let a single token grow to an arbitrarily large size" (json-lexer.c).
        if len(self._token) > MAX_TOKEN_SIZE:
            self._process_token(bytes(self._token), self._state)
            self._token.clear()
            self._state = IN_START

    # ---- streamer -------------------------------------------------------------------------------
    def _process_token(self, text: bytes, kind: int) -> None:
        value: Any = None
        err: QemuError | None = None
        if kind == JSON_LCURLY:
            self._brace += 1
        elif kind == JSON_RCURLY:
            self._brace -= 1
        elif kind == JSON_LSQUARE:
            self._bracket += 1
        elif kind == JSON_RSQUARE:
            self._bracket -= 1
        if kind == JSON_ERROR:
            err = _parse_error(f"stray '{decode_c_string(text)}'")
        elif kind == JSON_END_OF_INPUT:
            if not self._tokens:
                return
            value, err = parse_tokens(self._tokens)
        elif self._token_size + len(text) + 1 > MAX_TOKEN_SIZE:
            err = QemuError("JSON token size limit exceeded")
        elif len(self._tokens) + 1 > MAX_TOKEN_COUNT:
            err = QemuError("JSON token count limit exceeded")
        elif self._bracket + self._brace > MAX_NESTING:
            err = QemuError("JSON nesting depth limit exceeded")
        else:
            self._tokens.append((kind, text))
            self._token_size += len(text)
            if (self._brace > 0 or self._bracket > 0) and self._brace >= 0 and self._bracket >= 0:
                return
            value, err = parse_tokens(self._tokens)
        self._brace = 0
        self._bracket = 0
        self._tokens = []
        self._token_size = 0
        self._emit(value, err)


# ---- parser -----------------------------------------------------------------------------------

class _ParseFailed(Exception):
    def __init__(self, error: QemuError) -> None:
        super().__init__(error.desc)
        self.error = error


def _fail(message: str) -> _ParseFailed:
    return _ParseFailed(_parse_error(message))


def _cvt4hex(text: bytes, pos: int) -> int:
    chunk = text[pos:pos + 4]
    if len(chunk) < 4 or not all(c in b"0123456789abcdefABCDEF" for c in chunk):
        return -1
    return int(chunk, 16)


def _parse_string(text: bytes) -> str:
    quote = text[0]
    body = text[1:-1]
    if body.isascii() and b"\\" not in body and b"\0" not in body and quote not in body:
        # Plain ASCII (what QMP commands are made of): each byte is its own code point, as the
        # loop below would find one byte at a time.
        return body.decode("ascii")
    out: list[str] = []
    pos = 1
    while text[pos] != quote:
        byte = text[pos]
        if byte == 0x5C:  # backslash
            begin = pos
            escape = text[pos + 1]
            pos += 2
            simple = {0x22: '"', 0x27: "'", 0x5C: "\\", 0x2F: "/", 0x62: "\b", 0x66: "\f",
                      0x6E: "\n", 0x72: "\r", 0x74: "\t"}.get(escape)
            if simple is not None:
                out.append(simple)
                continue
            if escape != 0x75:  # 'u'
                raise _fail("invalid escape sequence in string")
            cp = _cvt4hex(text, pos)
            pos += 4
            if 0xD800 <= cp <= 0xDBFF and text[pos:pos + 2] == b"\\u":
                cp = 0x10000 + ((cp & 0x3FF) << 10)
                trailing = _cvt4hex(text, pos + 2)
                if 0xDC00 <= trailing <= 0xDFFF:
                    cp |= trailing & 0x3FF
                    pos += 6
                else:
                    cp = -1
            if cp < 0 or not is_valid_codepoint(cp):
                shown = decode_c_string(text[begin:pos])  # QEMU prints the raw bytes
                raise _fail(f"{shown} is not a valid Unicode character")
            out.append(chr(cp))
            continue
        cp, end = mod_utf8_codepoint(text, pos)
        if cp < 0:
            raise _fail("invalid UTF-8 sequence in string")
        out.append(chr(cp))
        pos = end
    return "".join(out)


#: Digits (and sign) of the longest integer that can fit uint64 or int64.
_MAX_INTEGER_TEXT = 20


def _parse_number(kind: int, text: bytes) -> int | float:
    """QNUM_I64 or QNUM_U64 when the integer fits, else strtod() (which gives inf when the
    number is out of range).  Long digit strings never reach int(): Python refuses to convert
    more than 4300 digits, and they cannot fit 64 bits anyway."""
    if kind == JSON_INTEGER and len(text.lstrip(b"-")) <= _MAX_INTEGER_TEXT:
        value = int(text)
        if -(1 << 63) <= value < (1 << 64):
            return value
    return float(text)


def _parse_scalar(kind: int, text: bytes) -> Any:
    if kind == JSON_STRING:
        return _parse_string(text)
    if kind in (JSON_INTEGER, JSON_FLOAT):
        return _parse_number(kind, text)
    keyword = text.decode("ascii")
    if keyword == "true":
        return True
    if keyword == "false":
        return False
    if keyword == "null":
        return None
    raise _fail(f"invalid keyword '{keyword}'")


_SCALARS = (JSON_STRING, JSON_INTEGER, JSON_FLOAT, JSON_KEYWORD)


def parse_tokens(tokens: list[tuple[int, bytes]]) -> tuple[Any, QemuError | None]:
    """QEMU's json_parser_parse(): one value from a complete token list, or the first error."""
    try:
        return _parse(tokens), None
    except _ParseFailed as failed:
        return None, failed.error


def _parse(tokens: list[tuple[int, bytes]]) -> Any:
    pos = 0
    count = len(tokens)

    def pop() -> int:
        nonlocal pos
        if pos >= count:
            raise _fail("premature EOI")
        pos += 1
        return tokens[pos - 1][0]

    # Each frame: [container, phase, pending key]; phase "key"/"value" for dicts, "item" for lists.
    stack: list[list[Any]] = []
    while True:
        # -- parse_value: produce `value`, or open a container and go parse its first member.
        if pos >= count:
            raise _fail("premature EOI")
        kind, text = tokens[pos]
        if kind in _SCALARS:
            pos += 1
            value = _parse_scalar(kind, text)
        elif kind in (JSON_LCURLY, JSON_LSQUARE):
            pos += 1
            closer = JSON_RCURLY if kind == JSON_LCURLY else JSON_RSQUARE
            if pos >= count:
                raise _fail("premature EOI")
            if tokens[pos][0] == closer:
                pos += 1
                value = {} if kind == JSON_LCURLY else []
            else:
                stack.append([{}, "key", None] if kind == JSON_LCURLY else [[], "item", None])
                continue
        else:
            raise _fail("expecting value")
        # -- hand the finished value to the enclosing containers, closing those that end here.
        while True:
            if not stack:
                return value
            frame = stack[-1]
            container, phase = frame[0], frame[1]
            if phase == "key":
                if not isinstance(value, str):
                    raise _fail("key is not a string in object")
                if pop() != JSON_COLON:
                    raise _fail("missing : in object pair")
                frame[1], frame[2] = "value", value
                break
            if phase == "value":
                if frame[2] in container:
                    raise _fail("duplicate key")
                container[frame[2]] = value
                separator = pop()
                if separator == JSON_RCURLY:
                    stack.pop()
                    value = container
                    continue
                if separator != JSON_COMMA:
                    raise _fail("expected separator in dict")
                frame[1] = "key"
                break
            container.append(value)
            separator = pop()
            if separator == JSON_RSQUARE:
                stack.pop()
                value = container
                continue
            if separator != JSON_COMMA:
                raise _fail("expected separator in list")
            break


def parse_json(text: str | bytes) -> Any:
    """QEMU's qobject_from_json(): exactly one JSON value, or QemuError with QEMU's message."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    results: list[Any] = []
    errors: list[QemuError] = []

    def consume(value: Any, err: QemuError | None) -> None:
        if results:
            results.clear()
            errors.append(QemuError("Expecting at most one JSON value"))
        if errors:
            return
        if err is not None:
            errors.append(err)
        else:
            results.append(value)

    parser = JsonMessageParser(consume)
    parser.feed(data)
    parser.flush()
    if errors:
        raise errors[0]
    if not results:
        raise QemuError("Expecting a JSON value")
    return results[0]
