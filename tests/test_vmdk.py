"""VMDK sparse extents written by the emulator and read back by real qemu-img (compare, check,
convert): streamOptimized (compressed grains appended, as backups with compress=true to VMDK
write them) and monolithicSparse (plain grains)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import qemu_img

from emulator.block.file import FileStorage
from emulator.block.vmdk import VmdkImage

MiB = 1 << 20


@pytest.mark.parametrize("subformat", ["streamOptimized", "monolithicSparse"])
def test_writes_read_back_by_qemu_img(tmp_path: Path, subformat: str) -> None:
    path = tmp_path / "t.vmdk"
    assert qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(path),
                    "8M").returncode == 0
    storage = FileStorage(str(path))
    img = VmdkImage(storage)
    rng = random.Random(5)
    expect = bytearray(8 * MiB)
    grain = img.cluster_size
    for index in rng.sample(range(8 * MiB // grain), 40):
        data = rng.choice([bytes([index]) * grain, rng.randbytes(grain)])
        img.pwrite(index * grain, data)
        expect[index * grain:(index + 1) * grain] = data
    if subformat == "monolithicSparse":  # partial writes into new and existing grains
        for _ in range(10):
            offset = rng.randrange(8 * MiB - 700)
            data = rng.randbytes(700)
            img.pwrite(offset, data)
            expect[offset:offset + 700] = data
    assert img.pread(0, 8 * MiB) == bytes(expect)
    img.close()
    storage.close()
    raw = tmp_path / "expect.raw"
    raw.write_bytes(bytes(expect))
    compare = qemu_img("compare", "-f", "vmdk", "-F", "raw", str(path), str(raw))
    assert compare.returncode == 0, compare.stdout + compare.stderr
    check = qemu_img("check", str(path))
    assert check.returncode == 0, check.stdout


def test_stream_optimized_grains_are_written_once(tmp_path: Path) -> None:
    path = tmp_path / "t.vmdk"
    assert qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", str(path),
                    "1M").returncode == 0
    storage = FileStorage(str(path))
    img = VmdkImage(storage)
    try:
        img.pwrite(0, b"a" * 65536)
        with pytest.raises(OSError) as info:
            img.pwrite(0, b"b" * 65536)
        assert info.value.errno == 5
        assert info.value.strerror == "Could not write to allocated cluster for streamOptimized"
    finally:
        img.close()
        storage.close()


def test_qemu_written_stream_optimized_reads(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    rng = random.Random(9)
    data = b"".join(rng.choice([bytes(65536), rng.randbytes(65536), b"q" * 65536])
                    for _ in range(32))
    src.write_bytes(data)
    path = tmp_path / "t.vmdk"
    assert qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(src),
                    str(path)).returncode == 0
    storage = FileStorage(str(path), read_only=True)
    img = VmdkImage(storage, read_only=True)  # QEMU writes its grain directory up front
    try:
        assert img.compressed and img.create_type == "streamOptimized"
        assert img.pread(0, len(data)) == data
    finally:
        storage.close()


@pytest.mark.parametrize("size", ["64M", "1G", "100k"])
def test_created_layout_is_qemu_img_s(tmp_path: Path, size: str) -> None:
    """create_image('vmdk') writes what `qemu-img create -f vmdk` writes (but the random CID)."""
    import json
    import re

    from emulator.block.image import create_image

    theirs, ours = tmp_path / "a.vmdk", tmp_path / "b.vmdk"
    assert qemu_img("create", "-q", "-f", "vmdk", str(theirs), size).returncode == 0
    info = json.loads(qemu_img("info", "--output=json", str(theirs)).stdout)
    assert create_image(str(ours), "vmdk", info["virtual-size"]) == (
        f"Formatting '{ours}', fmt=vmdk size={info['virtual-size']} compat6=off "
        "hwversion=undefined")

    def norm(data: bytes, name: bytes) -> bytes:
        """The file with its descriptor's random CID (printed unpadded, so of 1 to 8 digits) and
        the file name masked inside the descriptor's sectors, whose size stays as it is."""
        start = int.from_bytes(data[28:36], "little") * 512  # VMDK4Header.desc_offset
        size = int.from_bytes(data[36:44], "little") * 512   # VMDK4Header.desc_size
        text = data[start:start + size].rstrip(b"\0")
        text = re.sub(rb"CID=[0-9a-f]{1,8}\n", b"CID=x\n", text).replace(name, b"N.vmdk")
        return data[:start] + text.ljust(size, b"\0") + data[start + size:]

    assert norm(theirs.read_bytes(), b"a.vmdk") == norm(ours.read_bytes(), b"b.vmdk")
    assert qemu_img("check", str(ours)).returncode == 0
