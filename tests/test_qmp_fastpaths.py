"""The QMP parser's and encoder's shortcuts give what the general code gives."""

from __future__ import annotations

import random

from emulator.qmp import jsonparser
from emulator.qmp.qobject import _qdict_order, qdict_bucket, qdict_order


def test_ascii_strings_parse_as_the_general_loop_does() -> None:
    rng = random.Random(7)
    alphabet = [bytes([b]) for b in range(1, 128) if b not in (0x5C, 0x22, 0x27)]
    for _ in range(2000):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        for quote in (b'"', b"'"):
            if quote in body:
                continue
            token = quote + body + quote
            general = "".join(chr(b) for b in body)  # each ASCII byte is its own code point
            assert jsonparser._parse_string(token) == general


def test_non_ascii_and_escapes_still_take_the_general_loop() -> None:
    assert jsonparser._parse_string('"caf\u00e9 \\u00e9"'.encode()) == "caf\u00e9 \u00e9"
    assert jsonparser._parse_string(b"'it\\'s'") == "it's"


def test_qdict_order_is_the_bucket_order_whatever_the_cache() -> None:
    rng = random.Random(3)
    names = ["return", "id", "device", "offset", "len", "speed", "type", "error", "class", "desc"]
    for _ in range(500):
        keys = rng.sample(names, rng.randrange(1, len(names)))
        buckets: dict[int, list[str]] = {}
        for key in keys:
            buckets.setdefault(qdict_bucket(key), []).insert(0, key)
        expected = [key for bucket in sorted(buckets) for key in buckets[bucket]]
        assert qdict_order(keys) == expected
        assert qdict_order(iter(keys)) == expected
    assert _qdict_order.cache_info().hits > 0
