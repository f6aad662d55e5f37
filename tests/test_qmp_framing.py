"""QEMU's JSON input and output, pinned to replies recorded from a real QEMU 7.2.22 over a raw
socket (the expected texts below are QEMU's, byte for byte)."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.error import QemuError
from emulator.qmp import jsonparser
from emulator.qmp.framing import encode_message, event_message, greeting
from emulator.qmp.jsonparser import JsonMessageParser, parse_json
from emulator.qmp.qobject import decode_c_string, qdict_order, tdb_hash, to_json


def messages(*chunks: bytes) -> list[str]:
    """Feed chunks; return each emitted value as QEMU-formatted JSON, or 'ERR <desc>'."""
    out: list[str] = []

    def emit(value: Any, err: QemuError | None) -> None:
        out.append(f"ERR {err.desc}" if err is not None else to_json(value))

    parser = JsonMessageParser(emit)
    for chunk in chunks:
        parser.feed(chunk)
    return out


# (input, what QEMU 7.2 answered) -- recorded with a raw socket; "ERR x" is a GenericError x,
# a JSON text is a value QEMU accepted (echoed through "id" in the recording).
RECORDED = [
    (b'{"a": 01, "b": 2}', ["ERR JSON parse error, stray '01'", "ERR JSON parse error, expecting value",
                            '"b"', "ERR JSON parse error, expecting value", "2",
                            "ERR JSON parse error, expecting value"]),
    (b"T", ["ERR JSON parse error, stray 'T'"]),
    (b'{"a" 1}', ["ERR JSON parse error, missing : in object pair"]),
    (b"{1:2}", ["ERR JSON parse error, key is not a string in object"]),
    (b"[1}", ["ERR JSON parse error, expected separator in list"]),
    (b'{"a":1 ]', ["ERR JSON parse error, expected separator in dict"]),
    (b'{"a":1,"a":2}', ["ERR JSON parse error, duplicate key"]),
    (b'{"a":tru}', ["ERR JSON parse error, invalid keyword 'tru'"]),
    (b'{"a":1,}', ["ERR JSON parse error, expecting value"]),
    (b"}", ["ERR JSON parse error, expecting value"]),
    (b'{"a":"\\uzzzz"}', ["ERR JSON parse error, \\uzzzz is not a valid Unicode character"]),
    (b'{"a":"\\ud800x"}', ["ERR JSON parse error, \\ud800 is not a valid Unicode character"]),
    (b'{"i":"\\u0000\\uFFFF"}', ["ERR JSON parse error, \\uFFFF is not a valid Unicode character"]),
    (b'{"a":"\\x"}', ["ERR JSON parse error, invalid escape sequence in string"]),
    (b'{"a":"\xff"}', ["ERR JSON parse error, stray '\"\ufffd'", "ERR JSON parse error, expecting value"]),
    (b'{"a":"\xc3"}', ["ERR JSON parse error, invalid UTF-8 sequence in string"]),
    (b'{"a":"\xed\xa0\x80"}', ["ERR JSON parse error, invalid UTF-8 sequence in string"]),
    (b'{"a":"\xef\xbf\xbf"}', ["ERR JSON parse error, invalid UTF-8 sequence in string"]),
    (b'{"a":"x\ny"}', ["ERR JSON parse error, stray '\"x\n'", "ERR JSON parse error, expecting value"]),
    (b'{"a":%d}', ["ERR JSON parse error, stray '%'", "ERR JSON parse error, expecting value"]),
    (b'\xc3\xa9 {"b":3}', ["ERR JSON parse error, stray '\ufffd'", '{"b": 3}']),
    (b'{"a":1.}', ["ERR JSON parse error, stray '1.}'"]),
    (b'{"a":-}', ["ERR JSON parse error, stray '-}'"]),
    (b'{"a":1e}', ["ERR JSON parse error, stray '1e}'"]),
    (b'\x00{"i":4}', ["ERR JSON parse error, stray ''", '{"i": 4}']),
    (b"\x1b{\"i\":5}", ["ERR JSON parse error, stray '\x1b'", '{"i": 5}']),
    (b"{'e':'q', 'id': 'sq\\'x'}", ['{"e": "q", "id": "sq\'x"}']),
    (b'{"i":"\\u0041\\ud83d\\ude00"}', ['{"i": "A\\uD83D\\uDE00"}']),
    (b'{"i":"a/b\\t\x7f"}', ['{"i": "a/b\\t\\u007F"}']),
    (b'{"i":"\xc3\xa9"}', ['{"i": "\\u00E9"}']),
    (b'{"i":"\\u0000"}', ['{"i": "\\u0000"}']),
    (b'{"i":"\xc0\x80"}', ['{"i": "\\u0000"}']),
    (b'{"i":[1.0, -5, 1E2, 0.000001, 123456789.123, 1e-7, 2.5e+300]}',
     [('{"i": [1, -5, 100, 9.9999999999999995e-07, 123456789.123, 9.9999999999999995e-08, '
      '2.5000000000000001e+300]}')]),
    (b'{"i":0.1}', ['{"i": 0.10000000000000001}']),
    (b'{"i":{"x":1.5e3}}', ['{"i": {"x": 1500}}']),
    (b'{"i":-0.0}', ['{"i": -0}']),
    (b'{"i":1e400}', ['{"i": inf}']),
    (b'{"i":18446744073709551615}', ['{"i": 18446744073709551615}']),
    (b'{"i":12345678901234567890123}', ['{"i": 1.2345678901234568e+22}']),
    (b"[" * 1024 + b"]" * 1024, ["[" * 1024 + "]" * 1024]),
    (b"[" * 1025 + b"]" * 3, ["ERR JSON nesting depth limit exceeded"] + ["ERR JSON parse error, expecting value"] * 3),
    (b'{"x":' * 1025, ["ERR JSON nesting depth limit exceeded", '"x"', "ERR JSON parse error, expecting value"]),
]


@pytest.mark.parametrize(("data", "expected"), RECORDED, ids=[repr(d[:24]) for d, _ in RECORDED])
def test_recorded_qemu_behaviour(data: bytes, expected: list[str]) -> None:
    assert messages(data) == expected


def test_values_split_anywhere_and_pipelined_without_newlines() -> None:
    stream = b'{"execute":"a","id":1}{"execute":"b"}[1,2]"s"{"x":{"y":[true,false,null]}}'
    whole = messages(stream)
    assert len(whole) == 5
    for size in (1, 2, 3, 7):
        assert messages(*(stream[i:i + size] for i in range(0, len(stream), size))) == whole


def test_top_level_scalar_waits_for_its_end() -> None:
    """QEMU answers `42` only when the next byte shows the number is over."""
    out: list[Any] = []
    parser = JsonMessageParser(lambda value, err: out.append(value))
    parser.feed(b"42")
    assert out == []
    parser.feed(b"null")
    assert out == [42]
    parser.feed(b"{}")
    assert out == [42, None, {}]


def test_limits_are_qemus() -> None:
    assert (jsonparser.MAX_TOKEN_SIZE, jsonparser.MAX_TOKEN_COUNT, jsonparser.MAX_NESTING) == \
        (64 << 20, 2 << 20, 1 << 10)


def test_token_count_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Real QEMU, 2**21 tokens: the error, then every leftover token alone (recorded).
    monkeypatch.setattr(jsonparser, "MAX_TOKEN_COUNT", 10)
    out = messages(b"[" + b"1," * 20 + b"1]")
    assert out[0] == "ERR JSON token count limit exceeded"  # at the 11th token, a ","
    assert out[1:3] == ["1", "ERR JSON parse error, expecting value"]
    assert out[-2:] == ["1", "ERR JSON parse error, expecting value"]  # the final "1" and "]"


def test_token_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonparser, "MAX_TOKEN_SIZE", 1000)
    out = messages(b'{"id":"' + b"A" * 1005 + b'"}{"ok":1}')
    # The string token is cut at the limit; the rest lexes as stray input, as in QEMU.
    assert out[0] == "ERR JSON token size limit exceeded"
    assert out[1] == "ERR JSON parse error, stray 'A'"
    assert out[-1] == '{"ok": 1}'


def test_deep_nesting_encodes_without_recursion() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = {"a": [deep]}
    assert to_json(deep).startswith('{"a": [{"a": [')


def test_int_and_float_types_are_kept_apart() -> None:
    value = parse_json('{"i": 5, "u": 18446744073709551615, "f": 5.0, "big": 18446744073709551616}')
    assert type(value["i"]) is int and type(value["u"]) is int
    assert type(value["f"]) is float and type(value["big"]) is float


@pytest.mark.parametrize(("text", "message"), [
    ('{"driver":"file",', "JSON parse error, premature EOI"),
    ("", "Expecting a JSON value"),
    ("{} {}", "Expecting at most one JSON value"),
    ('{"a":"unterminated', "JSON parse error, stray '\"unterminated'"),
])
def test_parse_json_errors(text: str, message: str) -> None:
    with pytest.raises(QemuError) as info:
        parse_json(text)
    assert info.value.desc == message


def test_qdict_order_matches_qemu() -> None:
    # QEMU 7.2 printed these key orders (hash buckets of tdb_hash, newest first in a bucket).
    assert to_json({"running": True, "singlestep": False, "status": "running"}) == \
        '{"status": "running", "singlestep": false, "running": true}'
    assert to_json({"major": 7, "minor": 2, "micro": 22}) == '{"micro": 22, "minor": 2, "major": 7}'
    assert qdict_order(["error", "id"]) == ["id", "error"]
    assert qdict_order(["return", "id"]) == ["return", "id"]
    assert qdict_order(["timestamp", "event", "data"]) == ["timestamp", "event", "data"]
    assert tdb_hash(b"status") % 512 == tdb_hash(b"singlestep") % 512 == 202


def test_greeting_and_event_bytes() -> None:
    line = encode_message(greeting())
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    assert line.startswith(b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ')
    assert line.endswith(b', "capabilities": ["oob"]}}\r\n')
    event = encode_message(event_message("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}, (17, 5)))
    assert event == (b'{"timestamp": {"seconds": 17, "microseconds": 5}, "event": "SHUTDOWN", '
                     b'"data": {"guest": false, "reason": "host-qmp-quit"}}\r\n')
    assert encode_message(event_message("STOP", None, (1, 2))) == \
        b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n'


def test_output_is_ascii_with_qemu_escapes() -> None:
    assert to_json("\"\\\b\f\n\r\t\x01\x7f\u00e9\U0001f600/") == \
        '"\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u007F\\u00E9\\uD83D\\uDE00/"'
    assert decode_c_string(b"ab\xffc\x00rest") == "ab\ufffdc"
