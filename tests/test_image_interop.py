"""The emulator's images against real QEMU 7.2: qemu-img check/compare accept what the emulator
writes, and the emulator reads what qemu-img/qemu-io write (backing chains included)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pexpect
import pytest
from helpers import real, real_check_clean
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.block.file import FileStorage
from emulator.block.image import create_image, open_image_chain
from emulator.block.permissions import PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED
from emulator.block.qcow2 import Qcow2Image
from emulator.error import QemuError

MiB = 1 << 20


def real_compare(a: Path, fmt_a: str, b: Path, fmt_b: str) -> None:
    r = real("qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, str(a), str(b), check=False)
    assert r.returncode == 0 and r.stdout == "Images are identical.\n", (r.stdout, r.stderr)


WRITES = [("0x41", 0, 512), ("0xd5", MiB, 32 * 1024), ("0xab", 0, 512), ("0xfe", 16 * MiB, 256 * 1024),
          ("0x64", 32736 * 1024, 64 * 1024), ("0x11", 3, 5), ("0x22", 65535, 2)]


@pytest.mark.parametrize("cs", [512, 4096, 65536, 2 * MiB])
def test_emulator_writes_match_qemu_io_reference(tmp_path: Path, cs: int) -> None:
    img_path, ref = tmp_path / "img.qcow2", tmp_path / "ref.raw"
    create_image(str(img_path), "qcow2", 64 * MiB, cluster_size=cs)
    real("qemu-img", "create", "-q", "-f", "raw", str(ref), "64M")
    cmds: list[str] = []
    with open_image_chain(str(img_path), read_only=False) as img:
        for pattern, off, length in WRITES:
            img.pwrite(off, bytes([int(pattern, 16)]) * length)
            cmds += ["-c", f"write -q -P {pattern} {off} {length}"]
        img.pwrite_zeroes(16 * MiB + 4096, 8192)
        cmds += ["-c", f"write -q -z {16 * MiB + 4096} 8192"]
        img.flush()
    real("qemu-io", "-f", "raw", *cmds, str(ref))
    real_check_clean(img_path)
    real_compare(img_path, "qcow2", ref, "raw")


def test_emulator_reads_a_real_four_level_chain(tmp_path: Path) -> None:
    names = ["l0.qcow2", "l1.qcow2", "l2.qcow2", "l3.qcow2"]
    real("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", names[0], "8M", cwd=tmp_path)
    for lower, upper in itertools.pairwise(names):
        real("qemu-img", "create", "-q", "-f", "qcow2", "-b", lower, "-F", "qcow2", upper, cwd=tmp_path)
    real("qemu-io", "-c", "write -P 1 0 1M", "-c", "write -P 2 7M 1M", names[0], cwd=tmp_path)
    real("qemu-io", "-c", "write -P 3 64k 64k", "-c", "write -z 7M 4k", names[1], cwd=tmp_path)
    real("qemu-io", "-d", "unmap", "-c", "discard 0 64k", "-c", "write -P 5 3 5", names[2], cwd=tmp_path)
    real("qemu-io", "-c", "write -P 4 128k 1k", "-c", "write -z -u 7M 64k", names[3], cwd=tmp_path)
    real("qemu-img", "convert", "-f", "qcow2", "-O", "raw", names[3], "flat.raw", cwd=tmp_path)
    flat = (tmp_path / "flat.raw").read_bytes()
    with open_image_chain(str(tmp_path / names[3])) as img:
        assert [i.filename for i in img.chain()] == [str(tmp_path / n) for n in reversed(names)]
        assert img.pread(0, len(flat)) == flat
        assert img.length() == 8 * MiB


def test_real_qemu_reads_emulator_chain(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    create_image(str(base), "qcow2", 4 * MiB)
    create_image(str(top), "qcow2", 4 * MiB, backing_file="base.qcow2", backing_fmt="qcow2")
    with open_image_chain(str(base), read_only=False) as img:
        img.pwrite(0, b"\x07" * MiB)
    with open_image_chain(str(top), read_only=False) as img:
        img.pwrite(100, b"\x09" * 10)
        img.pwrite_zeroes(512 * 1024, 128 * 1024)
    real_check_clean(base)
    real_check_clean(top)
    r = real("qemu-io", "-r", "-c", "read -q -P 7 0 100", "-c", "read -q -P 9 100 10",
             "-c", "read -q -P 7 110 65426", "-c", "read -q -P 0 512k 128k", "-c", "read -q -P 7 640k 384k",
             str(top))
    assert r.stdout == ""


@pytest.fixture(scope="module")
def qemu_img_present() -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not found: apt-get install qemu-utils")


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 4 * MiB - 1), st.integers(1, 300_000), st.integers(1, 255)),
        st.tuples(st.just("zero"), st.integers(0, 4 * MiB - 1), st.integers(1, 300_000), st.booleans()),
        st.tuples(st.just("discard"), st.integers(0, 4 * MiB - 1), st.integers(1, 300_000), st.just(0)),
    ),
    min_size=1, max_size=12,
)


@pytest.mark.usefixtures("qemu_img_present")
@pytest.mark.parametrize("cs", [512, 4096, 65536, 2 * MiB])
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS, with_backing=st.booleans())
def test_random_write_sequences_against_model_and_qemu(tmp_path_factory: pytest.TempPathFactory, cs: int,
                                                       ops: list[tuple[str, int, int, object]],
                                                       with_backing: bool) -> None:
    d = tmp_path_factory.mktemp("ops")
    size = 4 * MiB
    model = bytearray(size)
    backing = None
    if with_backing:
        create_image(str(d / "base.qcow2"), "qcow2", size // 2, cluster_size=cs)
        with open_image_chain(str(d / "base.qcow2"), read_only=False) as b:
            b.pwrite(0, bytes(range(256)) * (size // 512))
        model[: size // 2] = bytes(range(256)) * (size // 512)
        backing = "base.qcow2"
    create_image(str(d / "top.qcow2"), "qcow2", size, cluster_size=cs, backing_file=backing,
                 backing_fmt="qcow2" if backing else None)
    with open_image_chain(str(d / "top.qcow2"), read_only=False, discard=True) as img:
        for kind, off, length, arg in ops:
            length = min(length, size - off)
            if kind == "write":
                img.pwrite(off, bytes([int(arg)]) * length)  # type: ignore[call-overload]
                model[off:off + length] = bytes([int(arg)]) * length  # type: ignore[call-overload]
            elif kind == "zero":
                img.pwrite_zeroes(off, length, bool(arg))
                model[off:off + length] = bytes(length)
            else:
                # Discard makes whole clusters read as zero (and leaves partial ones alone).
                img.discard(off, length)
                start, end = -(-off // cs) * cs, (off + length) // cs * cs
                if start < end:
                    model[start:end] = bytes(end - start)
        assert img.pread(0, size) == bytes(model)
        assert isinstance(img.qcow2, Qcow2Image)
        r = img.qcow2.check()
        assert (r["corruptions"], r["leaks"]) == (0, 0), r["messages"]
    (d / "model.raw").write_bytes(bytes(model))
    real_check_clean(d / "top.qcow2")
    real_compare(d / "top.qcow2", "qcow2", d / "model.raw", "raw")


def test_image_locks_interoperate_with_qemu(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    create_image(str(ours), "qcow2", MiB)
    create_image(str(theirs), "qcow2", MiB)
    # The emulator holds its image as a writable guest disk does: real qemu-img needs -U.
    held = FileStorage(str(ours))
    held.set_perm(PERM_CONSISTENT_READ | PERM_WRITE, PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
    try:
        r = real("qemu-img", "info", str(ours), check=False)
        assert r.returncode == 1
        assert r.stderr.startswith(f"qemu-img: Could not open '{ours}': Failed to get shared \"write\" lock")
        assert real("qemu-img", "info", "-U", str(ours)).returncode == 0
    finally:
        held.close()
    assert real("qemu-img", "info", str(ours)).returncode == 0  # closing dropped the locks
    # A real qemu-io holding an image writable blocks the emulator the same way.
    child = pexpect.spawn("qemu-io", ["-f", "qcow2", str(theirs)], encoding="utf-8", timeout=20)
    try:
        child.expect_exact("qemu-io> ")
        probe = FileStorage(str(theirs), read_only=True)
        with pytest.raises(QemuError, match='Failed to get shared "write" lock'):
            probe.set_perm(PERM_CONSISTENT_READ, PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
        probe.set_perm(PERM_CONSISTENT_READ, 0xF)  # sharing everything (-U) is fine
        probe.close()
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
