"""Compressed qcow2 clusters: written by the emulator (raw deflate, packed with qcow2_alloc_bytes'
rule) and read back by real QEMU tools, and the reverse; qemu-img check agrees on every count."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from helpers import qemu_img

from emulator.block.file import FileStorage
from emulator.block.qcow2 import Qcow2Image


def _fill(img: Qcow2Image, size: int, cs: int, rng: random.Random) -> bytes:
    expect = bytearray(size)
    for offset in range(0, size, cs):
        n = min(cs, size - offset)
        kind = rng.choice(["text", "random", "zero", "skip"])
        if kind == "skip":
            continue
        data = {"text": (b"cluster %d " % offset * cs)[:n], "random": rng.randbytes(n),
                "zero": bytes(n)}[kind]
        img.write_compressed(offset, data)
        expect[offset:offset + n] = data
    for _ in range(5):  # partial overwrites turn compressed clusters into normal ones
        offset = rng.randrange(size - 100)
        data = rng.randbytes(100)
        img.pwrite(offset, data)
        expect[offset:offset + 100] = data
    return bytes(expect)


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 * 1024 * 1024])
def test_emulator_writes_qemu_reads(tmp_path: Path, cluster_size: int) -> None:
    path = tmp_path / "c.qcow2"
    size = 40 * cluster_size + 3 * 512  # a short last cluster
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster_size}", str(path),
                    str(size)).returncode == 0
    storage = FileStorage(str(path))
    img = Qcow2Image.open(storage)
    expect = _fill(img, size, cluster_size, random.Random(cluster_size))
    assert img.pread(0, size) == expect
    ours = img.check()
    img.close()
    storage.close()
    check = qemu_img("check", "--output=json", str(path))
    assert check.returncode == 0, check.stdout
    theirs = json.loads(check.stdout)
    assert theirs["compressed-clusters"] > 0
    for key in ("compressed-clusters", "allocated-clusters", "fragmented-clusters",
                "image-end-offset"):
        assert ours[key] == theirs[key], key
    raw = tmp_path / "out.raw"
    assert qemu_img("convert", "-O", "raw", str(path), str(raw)).returncode == 0
    assert raw.read_bytes() == expect


def test_qemu_writes_emulator_reads(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = b"".join(rng.choice([bytes(4096), rng.randbytes(4096), b"x" * 4096])
                    for _ in range(200))
    src = tmp_path / "src.raw"
    src.write_bytes(data)
    dst = tmp_path / "c.qcow2"
    assert qemu_img("convert", "-c", "-O", "qcow2", str(src), str(dst)).returncode == 0
    storage = FileStorage(str(dst), read_only=True)
    img = Qcow2Image.open(storage, read_only=True)
    try:
        assert img.pread(0, len(data)) == data
        assert img.check()["compressed-clusters"] > 0
        assert img.check()["leaks"] == 0
    finally:
        img.close()
        storage.close()


def test_compressed_write_rules(tmp_path: Path) -> None:
    path = tmp_path / "c.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(path), "1M").returncode == 0
    storage = FileStorage(str(path))
    img = Qcow2Image.open(storage)
    try:
        with pytest.raises(OSError) as unaligned:
            img.write_compressed(512, b"a" * 65536)
        assert unaligned.value.errno == 22
        img.write_compressed(0, b"a" * 65536)
        with pytest.raises(OSError) as again:  # compression cannot overwrite an allocated cluster
            img.write_compressed(0, b"b" * 65536)
        assert again.value.errno == 5
        img.discard(0, 65536)  # frees the compressed bytes' references
        assert img.check()["leaks"] == 0 and img.check()["corruptions"] == 0
        noise = os.urandom(65536)
        img.write_compressed(65536, noise)  # does not shrink: stored as a normal cluster
        assert img.check()["compressed-clusters"] == 0
        assert img.pread(65536, 65536) == noise
    finally:
        img.close()
        storage.close()
