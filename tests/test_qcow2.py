"""Qcow2Image on its own: layout, allocation, zero clusters, backing reads, growth, bad input, events."""

from __future__ import annotations

import errno
import hashlib
import struct
from pathlib import Path

import pytest

from emulator.block.file import FileStorage
from emulator.block.node import BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_ZERO
from emulator.block.qcow2 import Qcow2Image
from emulator.error import QemuError

MiB = 1 << 20


def make(path: Path, size: int = 64 * MiB, **kw: object) -> tuple[FileStorage, Qcow2Image]:
    f = FileStorage(str(path), create=True)
    Qcow2Image.create(f, size, **kw)  # type: ignore[arg-type]
    return f, Qcow2Image.open(f)


def assert_clean(img: Qcow2Image) -> None:
    r = img.check()
    assert (r["corruptions"], r["leaks"], r["check-errors"]) == (0, 0, 0), r["messages"]


class RecordingStorage:
    """A Storage wrapper that records blkdebug events and can fail reads at chosen offsets."""

    def __init__(self, inner: FileStorage) -> None:
        self.inner = inner
        self.events: list[str] = []
        self.fail_reads_at: set[int] = set()
        self.writes = 0

    def pread(self, offset: int, length: int) -> bytes:
        if offset in self.fail_reads_at:
            raise OSError(errno.EIO, "Input/output error")
        return self.inner.pread(offset, length)

    def pwrite(self, offset: int, data: bytes) -> None:
        self.writes += 1
        self.inner.pwrite(offset, data)

    def flush(self) -> None:
        self.inner.flush()

    def length(self) -> int:
        return self.inner.length()

    def truncate(self, size: int) -> None:
        self.inner.truncate(size)

    def debug_event(self, event: str) -> None:
        self.events.append(event)


@pytest.mark.parametrize("cs", [512, 4096, 65536, 2 * MiB])
def test_write_read_roundtrip_and_consistency(tmp_path: Path, cs: int) -> None:
    f, img = make(tmp_path / "a.qcow2", 16 * MiB, cluster_size=cs)
    img.pwrite(0, b"A" * 512)
    img.pwrite(1000, b"B" * 100_000)
    img.pwrite(5 * MiB + 3, b"C" * 3)
    img.pwrite(16 * MiB - 4096, b"D" * 4096)
    assert img.pread(0, 512) == b"A" * 512
    assert img.pread(1000, 100_000) == b"B" * 100_000
    assert img.pread(512, 488) == bytes(488)
    assert img.pread(5 * MiB, 8) == b"\0\0\0CCC\0\0"
    assert img.pread(16 * MiB - 4096, 4096) == b"D" * 4096
    assert_clean(img)
    img.close()
    f.close()
    # Reopen: everything came from disk, not from caches.
    f = FileStorage(str(tmp_path / "a.qcow2"))
    img = Qcow2Image.open(f)
    assert img.cluster_size == cs and img.size == 16 * MiB
    assert img.pread(1000, 100_000) == b"B" * 100_000
    assert_clean(img)
    f.close()


def test_refcount_table_growth_with_small_clusters(tmp_path: Path) -> None:
    # 512-byte clusters: a refcount block covers 128 KiB and the initial table 8 MiB of file, so
    # writing 12 MiB forces new self-describing refcount blocks and a moved refcount table.
    f, img = make(tmp_path / "g.qcow2", 64 * MiB, cluster_size=512)
    old_table = img.header.refcount_table_offset
    chunk = bytes(range(256)) * 256  # 64 KiB
    for i in range(192):
        img.pwrite(i * 64 * 1024, chunk)
    assert img.header.refcount_table_offset != old_table
    assert img.pread(191 * 64 * 1024, 64 * 1024) == chunk
    assert_clean(img)
    f.close()


def test_zero_clusters_and_discard(tmp_path: Path) -> None:
    f, img = make(tmp_path / "z.qcow2", 4 * MiB)
    cs = img.cluster_size
    img.pwrite(0, b"x" * (3 * cs))
    img.pwrite_zeroes(cs, cs)  # keeps the allocation: ZERO_ALLOC
    assert img.block_status(cs, cs) == (cs, BLOCK_ZERO | BLOCK_ALLOCATED)
    assert img.mapping(cs, cs)[2] is not None
    img.pwrite_zeroes(2 * cs, cs, may_unmap=True)  # frees it: ZERO_PLAIN
    assert img.mapping(2 * cs, cs) == (cs, BLOCK_ZERO | BLOCK_ALLOCATED, None)
    assert img.pread(0, 3 * cs) == b"x" * cs + bytes(2 * cs)
    # Partial zero write on an unallocated cluster zeroes the whole cluster (rest reads as zero).
    img.pwrite_zeroes(10 * cs + 1, 3)
    assert img.block_status(10 * cs, cs)[1] == BLOCK_ZERO | BLOCK_ALLOCATED
    # Partial zero write into data writes explicit zeros.
    img.pwrite_zeroes(5, 10)
    assert img.block_status(0, cs)[1] == BLOCK_DATA | BLOCK_ALLOCATED
    assert img.pread(0, 20) == b"xxxxx" + bytes(10) + b"xxxxx"
    # Writing into a ZERO_ALLOC cluster reuses its host cluster.
    host = img.mapping(cs, cs)[2]
    img.pwrite(cs + 7, b"y")
    assert img.mapping(cs, cs)[2] == host
    assert img.pread(cs, 9) == bytes(7) + b"y\0"
    img.discard(0, cs + 100)  # whole first cluster only
    assert img.pread(0, cs) == bytes(cs)
    assert img.pread(cs + 7, 1) == b"y"
    assert_clean(img)
    f.close()


def test_backing_reads_and_copy_on_write(tmp_path: Path) -> None:
    fb, base = make(tmp_path / "base.qcow2", 1 * MiB)
    base.pwrite(0, b"b" * MiB)
    ft, top = make(tmp_path / "top.qcow2", 2 * MiB, backing_file="base.qcow2", backing_fmt="qcow2")
    assert (top.backing_file, top.backing_format) == ("base.qcow2", "qcow2")
    top.set_backing(base)  # type: ignore[arg-type]
    assert top.pread(MiB - 2, 4) == b"bb\0\0"  # past the backing's end reads zeros
    assert top.block_status(0, 4 * MiB) == (2 * MiB, 0)
    top.pwrite(100, b"T")  # partial write: the rest of the cluster is copied from the backing
    cs = top.cluster_size
    assert top.pread(0, cs) == b"b" * 100 + b"T" + b"b" * (cs - 101)
    top.discard(cs * 2, cs)  # with a backing, a discarded cluster reads as zeros, not backing data
    assert top.pread(cs * 2, cs) == bytes(cs)
    assert_clean(top)
    assert base.pread(0, cs) == b"b" * cs
    fb.close()
    ft.close()


def test_truncate_grow_and_shrink(tmp_path: Path) -> None:
    f, img = make(tmp_path / "t.qcow2", 1 * MiB, cluster_size=4096)
    img.pwrite(0, b"q" * MiB)
    img.truncate(64 * MiB)  # L1 grows (1 MiB -> 64 MiB with 4 KiB clusters needs 32 L1 entries)
    assert img.header.l1_size >= 32
    img.pwrite(63 * MiB, b"r" * 4096)
    assert img.pread(0, MiB) == b"q" * MiB
    assert_clean(img)
    img.truncate(512 * 1024)
    assert img.size == 512 * 1024
    assert img.pread(0, 512 * 1024) == b"q" * (512 * 1024)
    assert_clean(img)
    with pytest.raises(QemuError, match="multiple of 512"):
        img.truncate(1000)
    f.close()


def test_blkdebug_events_and_eio_passthrough(tmp_path: Path) -> None:
    f, img = make(tmp_path / "e.qcow2", 4 * MiB)
    img.pwrite(0, b"d" * 65536)
    img.close()
    rec = RecordingStorage(f)
    img = Qcow2Image.open(rec)  # type: ignore[arg-type]
    img.pread(1 * MiB, 4096)  # unallocated: no data read
    assert "read_aio" not in rec.events
    img.pread(0, 4096)
    assert rec.events.count("read_aio") == 1 and "l2_load" in rec.events
    rec.events.clear()
    img.pwrite(2 * MiB, b"w" * 4096)
    assert {"cluster_alloc", "write_aio", "l2_update", "refblock_update"} <= set(rec.events)
    host = img.mapping(0, 4096)[2]
    assert host is not None
    rec.fail_reads_at.add(host)
    with pytest.raises(OSError) as e:
        img.pread(0, 512)
    assert e.value.errno == errno.EIO
    f.close()


def _corrupt(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


BAD_HEADERS = [
    (0, b"XXXX", "Image is not in qcow2 format"),
    (4, struct.pack(">I", 4), "Unsupported qcow2 version 4"),
    (20, struct.pack(">I", 22), r"Unsupported cluster size: 2\^22"),
    (72, struct.pack(">Q", 1 << 5), r"Unsupported qcow2 feature\(s\): Unknown incompatible feature: 20"),
    (72, struct.pack(">Q", 1 << 2), "External data files are not supported"),
    (72, struct.pack(">Q", 1 << 4), "Extended L2 entries are not supported"),
    (32, struct.pack(">I", 2), "Encrypted images are not supported"),
    (32, struct.pack(">I", 3), "Unsupported encryption method: 3"),
    (60, struct.pack(">I", 1), "Internal snapshots are not supported"),
    (40, struct.pack(">Q", 1 << 40), "Active L1 table .* lies beyond the end of the image file"),
    (40, struct.pack(">Q", 4097), "Active L1 table offset invalid"),
    (36, struct.pack(">I", 0), "L1 table is too small"),
    (48, struct.pack(">Q", 123), "Reference count table offset invalid"),
    (100, struct.pack(">I", 50), "qcow2 header too short"),
]


@pytest.mark.parametrize(("offset", "data", "message"), BAD_HEADERS)
def test_bad_images_are_refused_without_writes(tmp_path: Path, offset: int, data: bytes, message: str) -> None:
    path = tmp_path / "bad.qcow2"
    f, img = make(path, 64 * MiB)
    img.pwrite(0, b"x" * 4096)
    f.close()
    _corrupt(path, offset, data)
    before = hashlib.sha256(path.read_bytes()).digest()
    f = FileStorage(str(path))
    with pytest.raises(QemuError, match=message):
        Qcow2Image.open(f)
    f.close()
    assert hashlib.sha256(path.read_bytes()).digest() == before


def test_truncated_image_and_corrupt_bit(tmp_path: Path) -> None:
    path = tmp_path / "tr.qcow2"
    f, _ = make(path, MiB)
    f.close()
    path.write_bytes(path.read_bytes()[:50])
    f = FileStorage(str(path))
    with pytest.raises(QemuError, match="qcow2 header too short"):
        Qcow2Image.open(f)
    f.close()
    path2 = tmp_path / "c.qcow2"
    f, _ = make(path2, MiB)
    f.close()
    _corrupt(path2, 72, struct.pack(">Q", 1 << 1))
    f = FileStorage(str(path2))
    with pytest.raises(QemuError, match="Image is corrupt; cannot be opened read/write"):
        Qcow2Image.open(f)
    assert Qcow2Image.open(f, read_only=True).format_specific()["corrupt"] is True
    f.close()


def test_compressed_cluster_and_misaligned_l2_fail_io(tmp_path: Path) -> None:
    path = tmp_path / "cc.qcow2"
    f, img = make(path, MiB)
    img.pwrite(0, b"x" * 65536)
    l2 = img.l1[0] & 0x00FFFFFFFFFFFE00
    f.close()
    _corrupt(path, l2, struct.pack(">Q", (1 << 62) | 0x50000))
    f = FileStorage(str(path))
    img = Qcow2Image.open(f)
    with pytest.raises(OSError) as bad:  # not deflate data: the read fails as in QEMU (-EIO)
        img.pread(0, 512)
    assert bad.value.errno == errno.EIO
    _corrupt(path, l2, struct.pack(">Q", (1 << 63) | 0x50001 << 1 | 0x200))
    img = Qcow2Image.open(f)
    with pytest.raises(OSError) as e:
        img.pread(0, 512)
    assert e.value.errno == errno.EIO
    f.close()


def test_header_l2_pointing_at_metadata_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "ov.qcow2"
    f, img = make(path, MiB)
    img.pwrite(0, b"x" * 65536)
    l2 = img.l1[0] & 0x00FFFFFFFFFFFE00
    f.close()
    _corrupt(path, l2, struct.pack(">Q", (1 << 63) | 0))  # cluster 0 would be the header
    _corrupt(path, l2, struct.pack(">Q", (1 << 63) | 0x10000))  # the refcount table cluster
    f = FileStorage(str(path))
    img = Qcow2Image.open(f)
    header = path.read_bytes()[:0x20000]
    with pytest.raises(OSError):
        img.pwrite(0, b"y" * 512)
    assert path.read_bytes()[:0x20000] == header
    f.close()


def test_format_specific_and_unknown_formats(tmp_path: Path) -> None:
    f, img = make(tmp_path / "f.qcow2", MiB)
    assert img.format_specific() == {"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": False,
                                     "refcount-bits": 16, "corrupt": False, "extended-l2": False}
    f.close()
    with pytest.raises(QemuError, match="Cluster size must be a power of two between 512 and 2048k"):
        make(tmp_path / "g.qcow2", MiB, cluster_size=1000)


def test_missing_file_error_text(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.qcow2")
    with pytest.raises(QemuError) as e:
        FileStorage(missing)
    assert e.value.desc == f"Could not open '{missing}': No such file or directory"
