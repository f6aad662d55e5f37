"""The qemu-io command engine: number parsing, output formats, and byte-for-byte agreement with
real qemu-io 7.2 (timings masked) on the same image."""

from __future__ import annotations

import errno
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from emulator.block.image import create_image, open_image_chain
from emulator.block.qemu_io import QemuIo, cvtnum, cvtstr, run_command, timestr
from emulator.cutils import qemu_strtosz as strtosz
from emulator.tools import io as io_tool

MiB = 1 << 20
_RATE = re.compile(r"\(\S+ \S+/sec and \S+ ops/sec\)|\d\d\.\d\d sec|\d+:\d\d:\d\d\.\d\d|,\d+\.\d{3},\d+\.\d{3}$",
                   re.MULTILINE)


def mask(text: str) -> str:
    """Mask qemu-io's timings and rates, as iotests' filter_qemu_io does."""
    return _RATE.sub("X", text)


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("512", 512), ("1k", 1024), ("1K", 1024), ("64k", 65536), ("1M", MiB), ("2G", 2 << 30),
    ("1T", 1 << 40), ("0x10", 16), ("0x1b", 27), ("1.5k", 1536), ("1.k", 1024), ("1b", 1), ("1B", 1),
    ("32736k", 32736 * 1024), ("1.0", 1), ("+5", 5),
])
def test_cvtnum_accepts(text: str, value: int) -> None:
    assert cvtnum(text) == value


@pytest.mark.parametrize(("text", "err"), [
    ("x", errno.EINVAL), ("1e3", errno.EINVAL), ("1.5", errno.EINVAL), ("-1", errno.EINVAL),
    ("1x", errno.EINVAL), ("0x", errno.EINVAL), ("0x1.5k", errno.EINVAL), ("", errno.EINVAL),
    ("8E", errno.ERANGE), ("16E", errno.ERANGE), ("99999999999999999999", errno.ERANGE),
])
def test_cvtnum_rejects(text: str, err: int) -> None:
    with pytest.raises(OSError) as e:
        cvtnum(text)
    assert e.value.errno == err


def test_strtosz_rounds_fractions_half_up() -> None:
    assert strtosz("0.5k") == 512
    assert strtosz("1.0009765625k") == 1025


def test_formatting_helpers() -> None:
    assert cvtstr(0.0) == "0 bytes"
    assert cvtstr(512.0) == "512 bytes"
    assert cvtstr(12.5) == "12.500000 bytes"
    assert cvtstr(1536.0) == "1.500 KiB"
    assert cvtstr(float(64 * MiB)) == "64 MiB"
    assert cvtstr(float(63.875 * MiB)) == "63.875 MiB"
    assert timestr(0.004, False) == "00.00 sec"
    assert timestr(1.5, False) == "0:00:01.50"
    assert timestr(0.0, True) == "0:00:00.00"


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", 64 * MiB)
    return path


def run(path: Path, *cmds: str, read_only: bool = False) -> tuple[bool, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with open_image_chain(str(path), read_only=read_only) as img:
        session = QemuIo(img, out, err)
        results = [session.run(c) for c in cmds]  # run all, even after a failure
        ok = all(results)
    return ok, out.getvalue(), err.getvalue()


def test_write_read_verify(image: Path) -> None:
    ok, out, err = run(image, "write -P 0x41 0 512", "read -P 0x41 0 512", "read -q -P 0x41 0 512")
    assert ok and err == ""
    assert mask(out) == ("wrote 512/512 bytes at offset 0\n512 bytes, 1 ops; X X\n"
                         "read 512/512 bytes at offset 0\n512 bytes, 1 ops; X X\n")
    ok, out, _ = run(image, "read -P 0x42 0 512")
    assert not ok and out.startswith("Pattern verification failed at offset 0, 512 bytes\n")


def test_errors_and_usage(image: Path) -> None:
    ok, out, err = run(image, "bogus 1")
    assert not ok and out == "" and err == 'command "bogus" not found\n'
    ok, out, err = run(image, "write 64M 512")
    assert not ok and out == "write failed: Input/output error\n"
    ok, out, err = run(image, "read")
    assert err == "bad argument count 0 to read, expected at least 2 arguments\n"
    ok, out, err = run(image, "read -Q 0 1")
    assert err == "read: invalid option -- 'Q'\n"
    assert out.startswith("read [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads")
    ok, out, err = run(image, "write 0 512", read_only=True)
    assert not ok and err == "qemu-io: Block node is read-only\n"


def test_eio_from_target_is_reported() -> None:
    class Failing:
        def length(self) -> int:
            return MiB

        def pread(self, offset: int, length: int) -> bytes:
            raise OSError(errno.EIO, "Input/output error")

    out = io.StringIO()
    assert run_command(Failing(), "read 0 512", out) is False
    assert out.getvalue() == "read failed: Input/output error\n"


# ---- against real qemu-io -------------------------------------------------------------------------
SCRIPTS = [
    ["write -P 0x41 0 512", "read -P 0x41 0 512", "read -P 0x42 0 512", "read -v 0 40", "write 1 3",
     "read -P 0xcd 1 3", "write -z 64k 64k", "alloc 0 128k", "alloc 0", "map", "flush", "aio_write 0 4k",
     "aio_flush", "length"],
    ["read 1.5k 0x10", "read 1e3 1", "read 1.5 1", "read 0x1b 1", "read 99999999999999999999 1", "read 8E 1",
     "write -z -P 1 0 512", "write -u 0 512", "write 0", "write x 512", "read -P 300 0 1", "write 64M 512",
     "read 64M 512", "read 0 0", "write -1 512", "read 0 3G", "read -Q 0 1", "read"],
    ["write -P 7 0 1M", "write -z 4k 8k", "write -z -u 192k 64k", "write -z 1M+1 3", "alloc 60M 8M", "alloc 64M 1",
     "alloc 1k", "read 0 512 -P 7", "read -P 7 -s 1 -l 3 0 8", "read -l 3 0 8", "read -P 1 -s 9 0 8",
     "discard 0 64k", "discard x 1", "alloc -1", "alloc 0 1 2", "map", "help read", "help nosuch",
     "quit", "read 0 1"],
]


@pytest.mark.parametrize("script", range(len(SCRIPTS)))
def test_same_output_as_real_qemu_io(tmp_path: Path, script: int) -> None:
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io not found: apt-get install qemu-utils")
    cmds = SCRIPTS[script]
    args = [a for c in cmds for a in ("-c", c)]
    real_img, emu_img = tmp_path / "real.qcow2", tmp_path / "emu.qcow2"
    create_image(str(real_img), "qcow2", 64 * MiB)
    create_image(str(emu_img), "qcow2", 64 * MiB)
    r = subprocess.run(["qemu-io", "-f", "qcow2", *args, str(real_img)], capture_output=True, text=True,
                       check=False, timeout=60)
    out, err = io.StringIO(), io.StringIO()
    rc = io_tool.main(["-f", "qcow2", *args, str(emu_img)], out=out, err=err)
    assert (rc, mask(out.getvalue()), err.getvalue()) == (r.returncode, mask(r.stdout), r.stderr)
    # Same guest-visible result too.
    c = subprocess.run(["qemu-img", "compare", str(real_img), str(emu_img)], capture_output=True, text=True,
                       check=False, timeout=60)
    assert c.returncode == 0, c.stdout
