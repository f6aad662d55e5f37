"""The QEMU helpers of emulator/cutils.py, the one home of qemu_strtosz and id_wellformed.

Expected values were measured on real QEMU 7.2.22 and 10.0.2 (qemu-io's `read 0 SIZE` and
-blockdev copy-before-write,min-cluster-size=SIZE on 10.0, whose keyval visitor parses sizes with
the same qemu_strtosz).
"""

from __future__ import annotations

import errno

import pytest

from emulator.block.qemu_io import cvtnum
from emulator.commands import TYPES
from emulator.cutils import id_wellformed, qemu_strtoi64, qemu_strtosz, qemu_strtou64
from emulator.error import QemuError
from emulator.qmp.visitor import QapiSchema, visit_value


@pytest.mark.parametrize(("text", "value"), [
    ("1k", 1024), ("128K", 128 << 10), (" 1k", 1024), ("1.5k", 1536), ("1.k", 1024), ("1.0", 1),
    ("0x400", 1024), ("0x10k", 16 << 10), ("64M", 64 << 20), ("1E", 1 << 60), ("0", 0),
    ("18446744073709551615", (1 << 64) - 1),
])
def test_strtosz_accepts(text: str, value: int) -> None:
    assert qemu_strtosz(text) == value


@pytest.mark.parametrize(("text", "err"), [
    ("1 k", errno.EINVAL),  # no space before the suffix (qemu-io and the keyval visitor agree)
    ("128k ", errno.EINVAL), ("1.5", errno.EINVAL), ("-1", errno.EINVAL), ("1e3", errno.EINVAL),
    ("0x1.5k", errno.EINVAL), ("", errno.EINVAL), ("k", errno.EINVAL),
    ("16E", errno.ERANGE), ("18446744073709551616", errno.ERANGE),
])
def test_strtosz_rejects(text: str, err: int) -> None:
    with pytest.raises(OSError) as refused:
        qemu_strtosz(text)
    assert refused.value.errno == err


def test_keyval_size_uses_the_same_parser() -> None:
    """A `size` member given as key=value text (-blockdev) is parsed by qemu_strtosz: "1 k" is
    refused as real QEMU 10.0.2 refuses min-cluster-size=1 k."""
    schema = QapiSchema(TYPES)
    assert visit_value(schema, {"*min-cluster-size": "size"}, {"min-cluster-size": "128k"},
                       keyval=True) == {"min-cluster-size": 128 << 10}
    with pytest.raises(QemuError, match="^Parameter 'min-cluster-size' expects size$"):
        visit_value(schema, {"*min-cluster-size": "size"}, {"min-cluster-size": "1 k"},
                    keyval=True)


def test_qemu_io_numbers_use_the_same_parser() -> None:
    assert cvtnum("1.5k") == 1536
    with pytest.raises(OSError) as refused:
        cvtnum("1 k")
    assert refused.value.errno == errno.EINVAL


def test_integer_parsers() -> None:
    assert qemu_strtoi64("0x10") == 16
    assert qemu_strtoi64("010") == 8
    assert qemu_strtoi64(" -5") == -5
    assert qemu_strtou64("-1") == (1 << 64) - 1
    for parse, text in ((qemu_strtoi64, "9223372036854775808"), (qemu_strtou64, "18446744073709551616")):
        with pytest.raises(OSError) as refused:
            parse(text)
        assert refused.value.errno == errno.ERANGE
    for text in ("", "1 ", "0x", "08", "1.5"):
        with pytest.raises(OSError) as refused:
            qemu_strtoi64(text)
        assert refused.value.errno == errno.EINVAL


@pytest.mark.parametrize(("name", "ok"), [
    ("drive0", True), ("a.b-c_d", True), ("A", True), ("0drive", False), ("-x", False), ("", False),
    ("a b", False), ("a\n", False), ("é", False), ("aé", False),
])
def test_id_wellformed(name: str, ok: bool) -> None:
    assert id_wellformed(name) is ok
