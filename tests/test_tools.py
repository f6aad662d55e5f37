"""`blocktxn img` / `blocktxn io` against real qemu-img / qemu-io on the same inputs: stdout, stderr,
exit status and (for create) the image bytes; plus an interactive qemu-io session over pexpect."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from helpers import need

from emulator.block.file import FileStorage
from emulator.block.qcow2 import Qcow2Image
from emulator.tools import img as img_tool

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


def real_img(args: list[str], cwd: Path) -> tuple[int, str, str]:
    need("qemu-img")
    r = subprocess.run(["qemu-img", *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=60)
    return r.returncode, r.stdout, r.stderr


def emu_img(args: list[str], cwd: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        rc = img_tool.main(args, out=out, err=err)
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


def same(args: list[str], cwd: Path) -> tuple[int, str, str]:
    expected = real_img(args, cwd)
    assert emu_img(args, cwd) == expected, args
    return expected


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """A real-QEMU-made chain c1 <- c2 <- c3 (c3 bigger), a raw file, and an image with a missing backing."""
    need("qemu-img")
    run = lambda *a: subprocess.run(a, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    run("qemu-img", "create", "-q", "-f", "qcow2", "c1", "1M")
    run("qemu-io", "-c", "write -P 1 0 64k", "-c", "write -P 2 512k 4k", "c1")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "c1", "-F", "qcow2", "c2")
    run("qemu-io", "-c", "write -P 3 64k 64k", "-c", "write -z 512k 64k", "c2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "c2", "-F", "qcow2", "c3", "2M")
    run("qemu-io", "-c", "write -P 4 1M 4k", "c3")
    run("qemu-img", "create", "-q", "-f", "raw", "r.raw", "2M")
    run("qemu-io", "-f", "raw", "-c", "write -P 9 4k 4k", "r.raw")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", "orphan", "1M")
    (tmp_path / "sub").mkdir()
    run("qemu-img", "create", "-q", "-f", "qcow2", "sub/base", "1M")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base", "-F", "qcow2", "sub/top")
    return tmp_path


@pytest.mark.parametrize("args", [
    ["info", "c3"], ["info", "--output=json", "c2"], ["info", "r.raw"], ["info", "--output=json", "r.raw"],
    ["info", "orphan"], ["info", "--output=json", "sub/top"], ["info", "sub/top"], ["info", "nope"],
    ["info", "-f", "qcow2", "r.raw"], ["info", "--output=xml", "c1"],
    ["check", "c3"], ["check", "--output=json", "c2"], ["check", "r.raw"], ["check", "orphan"],
    ["map", "--output=json", "c3"], ["map", "c3"], ["map", "--output=json", "r.raw"], ["map", "-f", "raw", "r.raw"],
    ["compare", "c3", "c3"], ["compare", "c1", "c3"], ["compare", "-s", "c2", "c3"], ["compare", "c3", "c2"],
    ["compare", "-f", "qcow2", "-F", "raw", "c2", "r.raw"], ["compare", "nope", "c2"], ["compare", "c1"],
])
def test_img_matches_qemu_img(images: Path, args: list[str]) -> None:
    same(args, images)


def test_compare_exit_codes(images: Path) -> None:
    assert same(["compare", "c3", "c3"], images)[0] == 0
    assert same(["compare", "c1", "c3"], images)[:2] == (1, "Content mismatch at offset 65536!\n")
    assert same(["compare", "nope", "c3"], images)[0] == 2


@pytest.mark.parametrize("args", [
    ["create", "-f", "qcow2", "x1.qcow2", "64M"],
    ["create", "-f", "qcow2", "-b", "c1", "-F", "qcow2", "x2.qcow2"],
    ["create", "-f", "qcow2", "-o", "cluster_size=4k,backing_file=c2,backing_fmt=qcow2", "x3.qcow2", "100M"],
    ["create", "-q", "-f", "qcow2", "x4.qcow2", "1G"],
    ["create", "-f", "qcow2", "x5.qcow2", "-o", "cluster_size=512", "1000"],
    ["create", "-f", "qcow2", "-o", "cluster_size=2M", "x6.qcow2", "10G"],
    ["create", "x7", "1M"],
    ["create", "-f", "raw", "x8", "1000"],
    ["create", "-f", "qcow2", "-u", "-b", "nonexist", "-F", "qcow2", "x9", "1M"],
    ["create", "-f", "qcow2", "-b", "c1", "bad1"],
    ["create", "-f", "qcow2", "-o", "cluster_size=1000", "bad2", "1M"],
    ["create", "-f", "qcow2", "-b", "nonexist", "-F", "qcow2", "bad3"],
    ["create", "-f", "vmdkx", "bad4", "1M"],
    ["create", "-f", "qcow2", "bad5"],
    ["create", "-f", "qcow2", "bad6", "1x"],
    ["create", "-f", "raw", "-b", "c1", "-F", "qcow2", "bad7", "1M"],
    ["create", "-f", "qcow2", "-o", "foo=bar", "bad8", "1M"],
])
def test_create_matches_qemu_img_byte_for_byte(images: Path, tmp_path: Path, args: list[str]) -> None:
    real_dir, emu_dir = tmp_path / "real", tmp_path / "emu"
    for d in (real_dir, emu_dir):
        d.mkdir()
        for name in ("c1", "c2"):
            shutil.copy(images / name, d / name)
        shutil.copy(images / "c1", d / "c1")
    assert emu_img(args, emu_dir) == real_img(args, real_dir)
    real_files = sorted(p.name for p in real_dir.iterdir())
    assert sorted(p.name for p in emu_dir.iterdir()) == real_files
    for name in real_files:
        assert (emu_dir / name).read_bytes() == (real_dir / name).read_bytes(), name


def _leaky_and_corrupt(path: Path, kind: str) -> None:
    f = FileStorage(str(path), create=True)
    Qcow2Image.create(f, 4 * MiB)
    img = Qcow2Image.open(f)
    img.pwrite(0, b"x" * 200_000)
    if kind == "leak":
        host = img._alloc_clusters(2)  # allocated and written, never mapped: a crash mid-write
        f.pwrite(host, bytes(2 * img.cluster_size))
    elif kind == "corrupt":
        host = img.mapping(0, 512)[2]
        assert host is not None
        img._set_refcounts(host >> img.cluster_bits, 1, 0)  # referenced cluster with refcount 0
    f.close()


@pytest.mark.parametrize(("kind", "code"), [("leak", 3), ("corrupt", 2)])
def test_check_leaks_and_corruptions_like_qemu_img(tmp_path: Path, kind: str, code: int) -> None:
    _leaky_and_corrupt(tmp_path / "i.qcow2", kind)
    for args in (["check", "i.qcow2"], ["check", "--output=json", "i.qcow2"]):
        assert same(args, tmp_path)[0] == code


def test_l1_past_eof_is_refused(tmp_path: Path) -> None:
    # Real qemu-img opens this (reading zeros) and reports the corruption only in `check`; the
    # emulator refuses to open it.  Both exit non-zero.
    real_img(["create", "-q", "-f", "qcow2", "l1.qcow2", "1M"], tmp_path)
    with open(tmp_path / "l1.qcow2", "r+b") as fh:
        fh.seek(40)
        fh.write(struct.pack(">Q", 1 << 40))
    rc, _out, err = emu_img(["check", "l1.qcow2"], tmp_path)
    assert rc == 1 and "lies beyond the end of the image file" in err
    assert real_img(["check", "l1.qcow2"], tmp_path)[0] == 2


def test_interactive_io_session_under_pexpect(images: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = pexpect.spawn(sys.executable, ["-m", "emulator.tools.io", "-f", "qcow2", "c3"], cwd=str(images),
                          env=env, encoding="utf-8", timeout=20)
    child.delaybeforesend = None
    try:
        child.expect_exact("qemu-io> ")
        child.sendline("read -P 4 1M 4k")
        child.expect(r"read 4096/4096 bytes at offset 1048576\r\n.*ops/sec\)\r\nqemu-io> ")
        child.sendline("write -P 0x5a 0 512")
        child.expect(r"wrote 512/512 bytes at offset 0\r\n.*\r\nqemu-io> ")
        child.sendline("read -P 0x5b 0 512")
        child.expect(r"Pattern verification failed at offset 0, 512 bytes\r\n.*qemu-io> ")
        child.sendline("bogus")
        child.expect_exact('command "bogus" not found')
        child.expect_exact("qemu-io> ")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 1  # a verification and an unknown command failed
    need("qemu-io")
    r = subprocess.run(["qemu-io", "-r", "-c", "read -P 0x5a 0 512", "c3"], cwd=images, capture_output=True,
                       text=True, check=False, timeout=60)
    assert r.returncode == 0, r.stdout


def test_io_tool_with_commands_and_eof(images: Path) -> None:
    from emulator.tools import io as io_tool

    out, err = io.StringIO(), io.StringIO()
    rc = io_tool.main(["-f", "qcow2", str(images / "c3")], stdin=io.StringIO("read -q -P 4 1M 4k\n"), out=out, err=err)
    assert (rc, out.getvalue(), err.getvalue()) == (0, "qemu-io> qemu-io> ", "")


def test_img_help_lists_usage_commands_and_formats_and_exits_0() -> None:
    """`blocktxn img --help` (and -h after a command) prints qemu-img's help layout, exit 0."""
    for argv in (["--help"], ["-h"], ["info", "-h"], ["create", "--help"]):
        out, err = io.StringIO(), io.StringIO()
        assert img_tool.main(argv, out=out, err=err) == 0, (argv, err.getvalue())
        text = out.getvalue()
        assert text.splitlines()[1] == "usage: qemu-img [standard options] command [command options]"
        assert "Command syntax:" in text and "Command parameters:" in text
        for command in ("check", "compare", "create", "info", "map", "rebase"):
            assert f"\n  {command} [" in text
        assert text.rstrip().endswith("Supported formats: qcow2 raw") and err.getvalue() == ""


def test_io_help_lists_options_and_commands_and_exits_0() -> None:
    from emulator.block.qemu_io import COMMANDS
    from emulator.tools import io as io_tool

    for argv in (["--help"], ["-h"]):
        out, err = io.StringIO(), io.StringIO()
        assert io_tool.main(argv, out=out, err=err) == 0
        text = out.getvalue()
        assert text.startswith("Usage: qemu-io [OPTIONS]... [-c STRING]... [file]\n")
        for option in ("-c, --cmd STRING", "-f, --format FMT", "-r, --read-only", "-d, --discard=MODE",
                       "-U, --force-share", "-h, --help"):
            assert f"\n  {option}" in text
        for name in COMMANDS:
            assert f"\n  {name}" in text
        assert err.getvalue() == ""


def test_blocktxn_img_and_io_help_from_the_command_line() -> None:
    for tool in ("img", "io"):
        done = subprocess.run([sys.executable, "-m", "blocktxn_cli.main", tool, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) > 10
