"""Qcow2Image: a qcow2 (v2 read, v3 read/write) codec over a Storage, compatible with QEMU 7.2.

What it does, mirroring block/qcow2*.c:
- two-level mapping: L1 table -> L2 tables -> host clusters, 64-bit big-endian entries with
  QCOW_OFLAG_COPIED (refcount == 1), QCOW_OFLAG_COMPRESSED and the v3 zero flag (bit 0);
- 16-bit refcounts in refcount blocks found through the refcount table; clusters are allocated
  first-fit, refcount blocks are self-describing (a new one lives in the first cluster of the range
  it covers), the refcount table grows into a fresh area at the end of the file;
- unallocated clusters read through the backing Storage (zeros past the backing's end);
- crash ordering: refcount update, then data, then the L2/L1 entry, then freeing the old cluster,
  so an interrupted write can leak clusters but never map a cluster to wrong data.

Metadata is cached in memory and written through, so there is nothing to write back on flush.
Compressed clusters, encryption, internal snapshots, external data files and extended L2 entries
are refused with a QemuError (at open) or an OSError(ENOTSUP) (a compressed cluster met by I/O).
"""

from __future__ import annotations

import errno
import logging
import struct
import sys
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from emulator import qerror
from emulator.error import QemuError

from .node import BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_ZERO
from .qcow2_bitmaps import AUTOCLEAR_BITMAPS, BitmapsExtension, Qcow2BitmapStore
from .storage import Storage

log = logging.getLogger("emulator.block.qcow2")

QCOW_MAGIC = b"QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
HEADER_V2_LENGTH = 72
HEADER_V3_LENGTH = 104
HEADER_LENGTH = 112  # v3 header with the compression type byte, padded to 8 (as QEMU writes it)
QCOW_MAX_L1_SIZE = 32 * 1024 * 1024
QCOW_MAX_REFTABLE_SIZE = 8 * 1024 * 1024

QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_CRYPTO_HEADER = 0x0537BE77
EXT_BITMAPS = 0x23852875
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
#: QCOW2_AUTOCLEAR_MASK: the autoclear features QEMU 7.2 maintains (others are cleared on open).
AUTOCLEAR_MASK = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW

FEAT_INCOMPATIBLE, FEAT_COMPATIBLE, FEAT_AUTOCLEAR = 0, 1, 2
#: QEMU 7.2's feature name table (qcow2_update_header), written for cluster sizes above 4 KiB.
FEATURE_TABLE = (
    (FEAT_INCOMPATIBLE, 0, "dirty bit"),
    (FEAT_INCOMPATIBLE, 1, "corrupt bit"),
    (FEAT_INCOMPATIBLE, 2, "external data file"),
    (FEAT_INCOMPATIBLE, 3, "compression type"),
    (FEAT_INCOMPATIBLE, 4, "extended L2 entries"),
    (FEAT_COMPATIBLE, 0, "lazy refcounts"),
    (FEAT_AUTOCLEAR, 0, "bitmaps"),
    (FEAT_AUTOCLEAR, 1, "raw external data"),
)

# Cluster types (QCow2ClusterType)
UNALLOCATED, ZERO_PLAIN, ZERO_ALLOC, NORMAL, COMPRESSED = range(5)

_BIG_ENDIAN_HOST = sys.byteorder == "big"

_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")  # up to header_length (104 bytes)
_HEADER_FIELDS = (
    "magic", "version", "backing_file_offset", "backing_file_size", "cluster_bits", "size",
    "crypt_method", "l1_size", "l1_table_offset", "refcount_table_offset",
    "refcount_table_clusters", "nb_snapshots", "snapshots_offset", "incompatible_features",
    "compatible_features", "autoclear_features", "refcount_order", "header_length",
)
# Byte offsets of header fields that are rewritten in place.
_OFF_SIZE = 24
_OFF_L1 = 36  # l1_size (u32) + l1_table_offset (u64)
_OFF_REFTABLE = 48  # refcount_table_offset (u64) + refcount_table_clusters (u32)
_OFF_AUTOCLEAR = 88


_ZERO_CHUNK = bytes(4096)


def _used_length(data: bytes) -> int:
    """len(data.rstrip(b"\0")) without testing a 64 KiB table byte by byte (opening an image
    does it twice): whole zero chunks from the end are skipped with memcmp first."""
    end = len(data)
    chunk = len(_ZERO_CHUNK)
    while end >= chunk and data[end - chunk:end] == _ZERO_CHUNK:
        end -= chunk
    return len(data[max(end - chunk, 0):end].rstrip(b"\0")) + max(end - chunk, 0)


def _same_entries_end(raw: bytes, i: int, limit: int, size: int) -> int:
    """First index in (i, limit] whose entry differs from entry i (`limit` when none does), for
    a table's bytes `raw` of `size`-byte entries: exponential, then binary, search with memcmp
    (bytes compare faster than array slices)."""
    entry = raw[i * size:(i + 1) * size]

    def same(count: int) -> bool:
        return raw[i * size:(i + count) * size] == entry * count

    good, step = 1, 1
    while True:
        probe = min(good + step, limit - i)
        if probe <= good:
            return i + good
        if not same(probe):
            break
        good, step = probe, step << 1
    bad = probe
    while bad - good > 1:
        middle = (good + bad) // 2
        if same(middle):
            good = middle
        else:
            bad = middle
    return i + good


def _be_array(code: str, data: bytes) -> array:
    """Big-endian table bytes -> array of host integers."""
    a = array(code)
    a.frombytes(data)
    if not _BIG_ENDIAN_HOST:
        a.byteswap()
    return a


def _be_bytes(a: array) -> bytes:
    """Array of host integers -> big-endian table bytes."""
    if _BIG_ENDIAN_HOST:
        return a.tobytes()
    b = array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


def _corruption(msg: str) -> OSError:
    """What QEMU's qcow2_signal_corruption turns a metadata inconsistency into: -EIO."""
    return OSError(errno.EIO, f"Input/output error (qcow2 corruption: {msg})")


@dataclass
class Qcow2Header:
    """The fixed qcow2 header fields (QCowHeader)."""

    magic: bytes = QCOW_MAGIC
    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = HEADER_LENGTH
    compression_type: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> Qcow2Header:
        raw = raw.ljust(HEADER_LENGTH, b"\0")
        h = cls(**dict(zip(_HEADER_FIELDS, _HEADER.unpack_from(raw))))
        if h.version == 2:
            h.incompatible_features = h.compatible_features = h.autoclear_features = 0
            h.refcount_order = 4
            h.header_length = HEADER_V2_LENGTH
        elif h.header_length > HEADER_V3_LENGTH:
            h.compression_type = raw[HEADER_V3_LENGTH]
        return h

    def pack(self) -> bytes:
        fixed = _HEADER.pack(*(getattr(self, f) for f in _HEADER_FIELDS))
        return (fixed + bytes([self.compression_type])).ljust(self.header_length, b"\0")


def _pack_ext(magic: int, data: bytes) -> bytes:
    pad = (-len(data)) % 8
    return struct.pack(">II", magic, len(data)) + data + bytes(pad)


def _l2_type(entry: int) -> int:
    """qcow2_get_cluster_type for an L2 entry without subclusters."""
    if entry & QCOW_OFLAG_COMPRESSED:
        return COMPRESSED
    if entry & QCOW_OFLAG_ZERO:
        return ZERO_ALLOC if entry & L2E_OFFSET_MASK else ZERO_PLAIN
    if entry & L2E_OFFSET_MASK:
        return NORMAL
    return UNALLOCATED


_TYPE_FLAGS = {
    UNALLOCATED: 0,
    ZERO_PLAIN: BLOCK_ZERO | BLOCK_ALLOCATED,
    ZERO_ALLOC: BLOCK_ZERO | BLOCK_ALLOCATED,
    NORMAL: BLOCK_DATA | BLOCK_ALLOCATED,
    COMPRESSED: BLOCK_DATA | BLOCK_ALLOCATED,
}


class Qcow2Image:
    """An open qcow2 image: guest I/O, allocation, growth and a consistency check."""

    L2_CACHE_BYTES = 32 * 1024 * 1024
    REFBLOCK_CACHE_BYTES = 8 * 1024 * 1024

    # ---- creation -----------------------------------------------------------------------------
    @classmethod
    def create(cls, file: Storage, size: int, *, cluster_size: int = 65536,
               backing_file: str | None = None, backing_fmt: str | None = None) -> None:
        """Write an empty qcow2 v3 image of `size` bytes into `file` (which is truncated first)."""
        cls.validate_cluster_size(cluster_size)
        cluster_bits = cluster_size.bit_length() - 1
        if size < 0:
            raise QemuError(qerror.IMAGE_SIZE_NOT_SECTOR_MULTIPLE)
        if backing_fmt and not backing_file:
            raise QemuError(qerror.BACKING_FMT_WITHOUT_FILE)
        header = Qcow2Header(cluster_bits=cluster_bits, refcount_table_offset=cluster_size,
                             refcount_table_clusters=1)
        exts = b""
        if backing_fmt:
            exts += _pack_ext(EXT_BACKING_FORMAT, backing_fmt.encode())
        if cluster_size > 4096:
            table = b"".join(struct.pack(">BB46s", t, bit, name.encode()) for t, bit, name in FEATURE_TABLE)
            exts += _pack_ext(EXT_FEATURE_TABLE, table)
        exts += struct.pack(">II", EXT_END, 0)
        name = backing_file.encode() if backing_file else b""
        if len(name) > 1023:
            raise QemuError(qerror.BACKING_FILE_NAME_TOO_LONG)
        if backing_file:
            header.backing_file_offset = HEADER_LENGTH + len(exts)
            header.backing_file_size = len(name)
        cluster0 = header.pack() + exts + name
        if len(cluster0) > cluster_size:
            raise QemuError("Cannot create image: header extensions do not fit into the first cluster")
        refblock = array("H", [1, 1, 1])
        file.truncate(0)
        file.pwrite(0, cluster0.ljust(cluster_size, b"\0"))
        file.pwrite(cluster_size, struct.pack(">Q", 2 * cluster_size).ljust(cluster_size, b"\0"))
        file.pwrite(2 * cluster_size, _be_bytes(refblock).ljust(cluster_size, b"\0"))
        img = cls.open(file)
        try:
            img.truncate((size + 511) // 512 * 512)
        finally:
            img.close()

    @staticmethod
    def validate_cluster_size(cluster_size: int) -> None:
        """validate_cluster_size: a power of two in [512, 2 MiB]."""
        bits = cluster_size.bit_length() - 1
        if cluster_size <= 0 or cluster_size & (cluster_size - 1) or not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
            raise QemuError(f"Cluster size must be a power of two between {1 << MIN_CLUSTER_BITS} and "
                            f"{1 << (MAX_CLUSTER_BITS - 10)}k")

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, file: Storage, *, read_only: bool = False, keep_bitmaps: bool = False) -> Qcow2Image:
        """Open and validate an image (QemuError with QEMU's wording on a bad or unsupported one).

        `keep_bitmaps`: the opener loads and stores the persistent bitmaps (Qcow2BitmapStore), so a
        read-write open keeps the bitmaps extension valid.  Otherwise a read-write open clears
        autoclear bit 0, as the qcow2 spec requires of a program that cannot keep bitmaps current
        (QEMU then treats them as inconsistent rather than silently stale).
        """
        return cls(file, read_only=read_only, keep_bitmaps=keep_bitmaps)

    def __init__(self, file: Storage, *, read_only: bool = False, keep_bitmaps: bool = False) -> None:
        self.file = file
        self.read_only = read_only
        self._backing: Storage | None = None
        try:
            raw = file.pread(0, HEADER_LENGTH)
        except OSError as e:
            raise QemuError(f"Could not read qcow2 header: {e.strerror}") from None
        h = Qcow2Header.unpack(raw)
        self.header = h
        if h.magic != QCOW_MAGIC:
            raise QemuError("Image is not in qcow2 format")
        if h.version < 2 or h.version > 3:
            raise QemuError(f"Unsupported qcow2 version {h.version}")
        if h.cluster_bits < MIN_CLUSTER_BITS or h.cluster_bits > MAX_CLUSTER_BITS:
            raise QemuError(f"Unsupported cluster size: 2^{h.cluster_bits}")
        self.cluster_bits = h.cluster_bits
        self.cluster_size = cs = 1 << h.cluster_bits
        if h.version == 3 and h.header_length < HEADER_V3_LENGTH:
            raise QemuError("qcow2 header too short")
        if h.header_length > cs:
            raise QemuError("qcow2 header exceeds cluster size")
        if h.backing_file_offset > cs:
            raise QemuError("Invalid backing file offset")
        self.backing_format: str | None = None
        self._read_extensions(h)
        if h.incompatible_features & ~INCOMPAT_KNOWN:
            raise QemuError(self._unsupported_features(h.incompatible_features & ~INCOMPAT_KNOWN))
        if h.incompatible_features & INCOMPAT_DATA_FILE:
            raise QemuError(qerror.EMULATOR_NO_DATA_FILE)
        if h.incompatible_features & INCOMPAT_EXTL2:
            raise QemuError("Extended L2 entries are not supported by the emulator "
                            "(incompatible feature 'extended L2 entries')")
        if h.incompatible_features & INCOMPAT_COMPRESSION and h.compression_type == 0:
            raise QemuError("Compression type incompatible feature bit must not be set for zlib")
        if h.refcount_order > 6:
            raise QemuError("Reference count entry width too large; may not exceed 64 bits")
        if h.refcount_order != 4 and not read_only:
            raise QemuError(f"Refcount width {1 << h.refcount_order} bits is not supported for writing "
                            "by the emulator (only 16)")
        if h.incompatible_features & INCOMPAT_CORRUPT and not read_only:
            raise QemuError("qcow2: Image is corrupt; cannot be opened read/write")
        if h.incompatible_features & INCOMPAT_DIRTY and not read_only:
            raise QemuError("qcow2: Image is dirty (lazy refcounts); repairing it is not supported by "
                            "the emulator, run 'qemu-img check -r all' first")
        if h.crypt_method > 2:
            raise QemuError(f"Unsupported encryption method: {h.crypt_method}")
        if h.crypt_method:
            name = "aes" if h.crypt_method == 1 else "luks"
            raise QemuError(f"Encrypted images are not supported by the emulator (encryption format '{name}')")
        if h.refcount_table_clusters == 0:
            raise QemuError("Image does not contain a reference count table")
        self._validate_table(h.refcount_table_offset, h.refcount_table_clusters, cs,
                             QCOW_MAX_REFTABLE_SIZE, "Reference count table")
        if h.nb_snapshots:
            raise QemuError(f"Internal snapshots are not supported by the emulator "
                            f"(the image has {h.nb_snapshots})")
        self.l2_entries = cs // 8
        self.size = h.size
        if h.l1_size > QCOW_MAX_L1_SIZE // 8:
            raise QemuError(qerror.L1_TABLE_TOO_LARGE)
        self._validate_table(h.l1_table_offset, h.l1_size, 8, QCOW_MAX_L1_SIZE, "Active L1 table")
        if h.l1_size < self._size_to_l1(h.size):
            raise QemuError("L1 table is too small")
        file_len = file.length()
        if h.l1_size and h.l1_table_offset + h.l1_size * 8 > file_len:
            raise QemuError(f"Active L1 table (offset {h.l1_table_offset:#x}, {h.l1_size * 8} bytes) "
                            f"lies beyond the end of the image file ({file_len} bytes)")
        reft_bytes = h.refcount_table_clusters * cs
        if h.refcount_table_offset + reft_bytes > file_len + cs:
            raise QemuError(f"Reference count table (offset {h.refcount_table_offset:#x}) lies beyond the "
                            f"end of the image file ({file_len} bytes)")
        self.l1 = _be_array("Q", file.pread(h.l1_table_offset, h.l1_size * 8)) if h.l1_size else array("Q")
        self.reftable = _be_array("Q", file.pread(h.refcount_table_offset, reft_bytes))
        self.refcount_bits = 1 << h.refcount_order
        self._rb_entries = cs * 8 // self.refcount_bits
        self._rb_code = {8: "B", 16: "H", 32: "I", 64: "Q"}.get(self.refcount_bits, "")
        self._l2_cache: OrderedDict[int, array] = OrderedDict()
        self._l2_cache_max = max(16, self.L2_CACHE_BYTES // cs)
        self._rb_cache: OrderedDict[int, array] = OrderedDict()
        self._rb_cache_max = max(16, self.REFBLOCK_CACHE_BYTES // cs)
        self._free_hint = 0
        self._free_byte_offset = 0  # where the next compressed cluster's bytes go (0: a new cluster)
        self._end_cluster = self._initial_end_cluster(file_len)
        self._closed = False
        self.bitmap_store = Qcow2BitmapStore(self)
        if not read_only:
            # Autoclear bits of features this program does not maintain must be cleared on a
            # read-write open (qcow2 spec); QEMU would otherwise trust stale bitmaps.
            keep = AUTOCLEAR_MASK if keep_bitmaps else 0
            if h.autoclear_features & ~keep:
                h.autoclear_features &= keep
                if keep_bitmaps:
                    self.update_header()  # also drops an extension left without its autoclear bit
                else:
                    file.pwrite(_OFF_AUTOCLEAR, struct.pack(">Q", h.autoclear_features))
                    self.bitmaps_ext = BitmapsExtension()  # no longer valid for anyone
            elif keep_bitmaps and self._stale_bitmaps_ext:
                self.update_header()

    def _read_extensions(self, h: Qcow2Header) -> None:
        cs = self.cluster_size
        end = h.backing_file_offset if h.backing_file_offset else cs
        raw = self.file.pread(0, cs)
        offset = h.header_length
        self.feature_table: list[tuple[int, int, str]] = []
        self.bitmaps_ext = BitmapsExtension()
        self._stale_bitmaps_ext: bool = False
        while offset < end:
            if end - offset < 8:
                raise QemuError("qcow2_read_extension: ERROR: pread fail from offset "
                                f"{offset}")
            magic, length = struct.unpack_from(">II", raw, offset)
            offset += 8
            if length > end - offset:
                raise QemuError("Header extension too large")
            data = raw[offset:offset + length]
            if magic == EXT_END:
                break
            if magic == EXT_BACKING_FORMAT:
                if length >= 16:
                    raise QemuError(f"ERROR: ext_backing_format: len={length} too large (>=16)")
                self.backing_format = data.decode(errors="replace")
            elif magic == EXT_FEATURE_TABLE:
                for i in range(0, length - length % 48, 48):
                    t, bit, name = struct.unpack_from(">BB46s", data, i)
                    self.feature_table.append((t, bit, name.split(b"\0")[0].decode(errors="replace")))
            elif magic == EXT_CRYPTO_HEADER and h.crypt_method != 2:
                raise QemuError("Crypto header extension only expected with LUKS encryption method")
            elif magic == EXT_DATA_FILE:
                raise QemuError(qerror.EMULATOR_NO_DATA_FILE)
            elif magic == EXT_BITMAPS:
                self._read_bitmaps_ext(h, data)
            offset += (length + 7) & ~7
        self.backing_file: str | None = None
        if h.backing_file_offset:
            if h.backing_file_size > 1023:
                raise QemuError(qerror.BACKING_FILE_NAME_TOO_LONG)
            name = self.file.pread(h.backing_file_offset, h.backing_file_size)
            self.backing_file = name.decode(errors="replace")

    def _read_bitmaps_ext(self, h: Qcow2Header, data: bytes) -> None:
        """The bitmaps extension counts only while autoclear bit 0 says it is current."""
        if len(data) != 24:
            raise QemuError(qerror.BITMAPS_EXT_INVALID_LENGTH)
        if not h.autoclear_features & AUTOCLEAR_BITMAPS:
            if h.version < 3:
                log.warning("This qcow2 v2 image contains bitmaps, but they may have been modified "
                            "by a program without persistent bitmap support; so now they must all "
                            "be considered inconsistent")
            else:
                log.warning("a program lacking bitmap support modified this file, so all bitmaps "
                            "are now considered inconsistent")
            log.warning("Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.")
            self._stale_bitmaps_ext = True
            return
        self.bitmaps_ext = BitmapsExtension.parse(data, 1 << h.cluster_bits)

    def _unsupported_features(self, mask: int) -> str:
        """report_unsupported_feature's text, naming features from the image's own table."""
        names = []
        for t, bit, name in self.feature_table:
            if t == FEAT_INCOMPATIBLE and mask & (1 << bit):
                names.append(name[:46])
                mask &= ~(1 << bit)
        if mask:
            names.append(f"Unknown incompatible feature: {mask:x}")
        return "Unsupported qcow2 feature(s): " + ", ".join(names)

    def _validate_table(self, offset: int, entries: int, entry_len: int, max_bytes: int, name: str) -> None:
        """qcow2_validate_table."""
        if entries > max_bytes // entry_len:
            raise QemuError(f"{name} too large")
        if (2**63 - 1) - entries * entry_len < offset or offset & (self.cluster_size - 1):
            raise QemuError(f"{name} offset invalid")

    def _size_to_l1(self, size: int) -> int:
        span = self.cluster_size * self.l2_entries
        return (size + span - 1) // span

    def _initial_end_cluster(self, file_len: int) -> int:
        """First cluster index past every allocation: the file end or the last refcount > 0."""
        end = (file_len + self.cluster_size - 1) >> self.cluster_bits
        used = _used_length(self.reftable.tobytes())
        if not used:
            return end
        ri = (used - 1) // 8
        block = self._refblock(ri)
        if block is not None:
            used = _used_length(block.tobytes())
            if used:
                end = max(end, ri * self._rb_entries + (used - 1) // block.itemsize + 1)
        return end

    # ---- public properties ----------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.header.version

    def set_backing(self, backing: Storage | None) -> None:
        """Attach the Storage that unallocated clusters read through (None: they read as zeros)."""
        self._backing = backing

    @property
    def backing(self) -> Storage | None:
        return self._backing

    def length(self) -> int:
        return self.size

    # ---- refcounts -----------------------------------------------------------------------------
    def _refblock(self, ri: int) -> array | None:
        if ri >= len(self.reftable):
            return None
        off = self.reftable[ri] & REFT_OFFSET_MASK
        if not off:
            return None
        if self.reftable[ri] & 0x1FF or off & (self.cluster_size - 1):
            raise _corruption(f"Refblock offset {off:#x} unaligned (reftable index: {ri:#x})")
        block = self._rb_cache.get(off)
        if block is None:
            raw = self.file.pread(off, self.cluster_size)
            if self._rb_code:
                block = _be_array(self._rb_code, raw)
            else:  # 1, 2 or 4 bit refcounts: unpack bit fields (read-only images only)
                bits = self.refcount_bits
                per = 8 // bits
                mask = (1 << bits) - 1
                block = array("B", ((b >> (bits * (per - 1 - k))) & mask for b in raw for k in range(per)))
            self._rb_cache[off] = block
            if len(self._rb_cache) > self._rb_cache_max:
                self._rb_cache.popitem(last=False)
        else:
            self._rb_cache.move_to_end(off)
        return block

    def refcount(self, cluster_index: int) -> int:
        """The on-disk refcount of host cluster `cluster_index`."""
        block = self._refblock(cluster_index // self._rb_entries)
        return 0 if block is None else block[cluster_index % self._rb_entries]

    def _find_free(self, n: int) -> int:
        """First index of `n` consecutive free clusters (first fit from the free hint)."""
        E = self._rb_entries
        idx = self._free_hint
        start, run = idx, 0
        first_free: int | None = None
        while run < n:
            ri, bi = divmod(idx, E)
            block = self._refblock(ri)
            if block is None:
                if bi == 0:  # reserved for this range's future refcount block
                    idx, run = idx + 1, 0
                    continue
                take = min(n - run, E - bi)  # the rest of a block-less range is free
            elif block[bi]:
                try:
                    idx = ri * E + block.index(0, bi)
                except ValueError:
                    idx = (ri + 1) * E
                run = 0
                continue
            else:
                # Count the zero refcounts from bi in C: the first nonzero byte ends the run.
                raw = block[bi:min(E, bi + n - run)].tobytes()
                take = (len(raw) - len(raw.lstrip(b"\0"))) // block.itemsize
            if run == 0:
                start = idx
            if first_free is None:
                first_free = idx
            run += take
            idx += take
        self._free_hint = start + n if first_free in (None, start) else first_free
        return start

    def _alloc_clusters(self, n: int) -> int:
        """Allocate `n` contiguous host clusters (refcount 1 each, written first); returns offset."""
        while True:
            start = self._find_free(n)
            last_ri = (start + n - 1) // self._rb_entries
            if last_ri >= len(self.reftable):
                self._grow_reftable(last_ri + 1)
                continue
            break
        self.file.debug_event("cluster_alloc")
        self._set_refcounts(start, n, 1)
        self._end_cluster = max(self._end_cluster, start + n)
        return start << self.cluster_bits

    def _ensure_refblock(self, ri: int) -> array:
        block = self._refblock(ri)
        if block is not None:
            return block
        if ri >= len(self.reftable):
            self._grow_reftable(ri + 1)
            block = self._refblock(ri)
            if block is not None:
                return block
        # Self-describing block in the first cluster of the range it covers.
        self.file.debug_event("refblock_alloc")
        idx = ri * self._rb_entries
        off = idx << self.cluster_bits
        block = array("H", bytes(self.cluster_size))
        block[0] = 1
        self.file.debug_event("refblock_alloc_write")
        self.file.pwrite(off, _be_bytes(block))
        self.reftable[ri] = off
        self.file.debug_event("refblock_alloc_hookup")
        self.file.pwrite(self.header.refcount_table_offset + ri * 8, struct.pack(">Q", off))
        self._rb_cache[off] = block
        self._end_cluster = max(self._end_cluster, idx + 1)
        return block

    def _set_refcounts(self, start: int, n: int, value: int | None) -> None:
        """Set (value) or decrement (None) the refcounts of clusters [start, start+n), write-through."""
        idx, end = start, start + n
        while idx < end:
            ri, bi = divmod(idx, self._rb_entries)
            block = self._ensure_refblock(ri)
            stop = min(end - idx, self._rb_entries - bi) + bi
            if value is None:
                for j in range(bi, stop):
                    if block[j] == 0:
                        raise _corruption(f"refcount of cluster {ri * self._rb_entries + j} underflows")
                    block[j] -= 1
                    if block[j] == 0:
                        self._free_hint = min(self._free_hint, ri * self._rb_entries + j)
            else:
                block[bi:stop] = array("H", [value]) * (stop - bi)
            self.file.debug_event("refblock_update")
            self.file.pwrite((self.reftable[ri] & REFT_OFFSET_MASK) + bi * 2, _be_bytes(block[bi:stop]))
            idx += stop - bi

    def _free_clusters(self, offset: int, n: int) -> None:
        self._set_refcounts(offset >> self.cluster_bits, n, None)

    def alloc_clusters(self, nbytes: int) -> int:
        """qcow2_alloc_clusters: contiguous clusters covering `nbytes` (refcount 1); the offset."""
        if self.read_only:
            raise OSError(errno.EPERM, "Operation not permitted")
        return self._alloc_clusters(max(1, (nbytes + self.cluster_size - 1) >> self.cluster_bits))

    def free_clusters(self, offset: int, nbytes: int) -> None:
        """qcow2_free_clusters: drop one reference of every cluster of [offset, offset+nbytes)."""
        first = offset >> self.cluster_bits
        last = (offset + max(nbytes, 1) - 1) >> self.cluster_bits
        self._set_refcounts(first, last - first + 1, None)

    def _grow_reftable(self, min_entries: int) -> None:
        """Move the refcount table to a new, larger area at the end (qcow2_refcount_area)."""
        cs, per_cluster, E = self.cluster_size, self.cluster_size // 8, self._rb_entries
        old = self.reftable
        wanted = max(min_entries, len(old) * 2)
        s = self._end_cluster
        k = 0
        while True:
            m = (max(wanted, (s + k + (wanted + per_cluster - 1) // per_cluster) // E + 1)
                 + per_cluster - 1) // per_cluster
            area_end = s + k + m
            missing = [ri for ri in range(s // E, (area_end - 1) // E + 1)
                       if ri >= len(old) or not old[ri] & REFT_OFFSET_MASK]
            if len(missing) <= k:
                break
            k = len(missing)
        entries = m * per_cluster
        table = array("Q", old) + array("Q", bytes((entries - len(old)) * 8))
        blocks: dict[int, array] = {}
        for j, ri in enumerate(missing):
            table[ri] = (s + j) << self.cluster_bits
            blocks[ri] = array("H", bytes(cs))
        # Refcounts of the area itself: in new blocks directly, in existing blocks afterwards.
        existing: list[int] = []
        for idx in range(s, area_end):
            ri, bi = divmod(idx, E)
            if ri in blocks:
                blocks[ri][bi] = 1
            else:
                existing.append(idx)
        for ri, block in blocks.items():
            self.file.pwrite(table[ri], _be_bytes(block))
            self._rb_cache[table[ri]] = block
        for idx in existing:
            ri, bi = divmod(idx, E)
            old_block = self._refblock(ri)
            assert old_block is not None
            old_block[bi] = 1
            self.file.pwrite((table[ri] & REFT_OFFSET_MASK) + bi * 2, struct.pack(">H", 1))
        new_offset = (s + k) << self.cluster_bits
        self.file.debug_event("reftable_grow")
        self.file.pwrite(new_offset, _be_bytes(table))
        self.file.flush()
        old_offset, old_clusters = self.header.refcount_table_offset, self.header.refcount_table_clusters
        self.file.pwrite(_OFF_REFTABLE, struct.pack(">QI", new_offset, m))
        self.header.refcount_table_offset, self.header.refcount_table_clusters = new_offset, m
        self.reftable = table
        self._end_cluster = max(self._end_cluster, area_end)
        self._free_clusters(old_offset, old_clusters)

    # ---- L1 / L2 ------------------------------------------------------------------------------
    def _l2_table(self, l1_index: int) -> array | None:
        """The cached L2 table for `l1_index`, or None when the L1 entry is empty."""
        if l1_index >= len(self.l1):
            return None
        entry = self.l1[l1_index]
        off = entry & L1E_OFFSET_MASK
        if not off:
            return None
        if off & (self.cluster_size - 1):
            raise _corruption(f"L2 table offset {off:#x} unaligned (L1 index: {l1_index:#x})")
        table = self._l2_cache.get(off)
        if table is None:
            self.file.debug_event("l2_load")
            table = _be_array("Q", self.file.pread(off, self.cluster_size))
            self._l2_cache[off] = table
            if len(self._l2_cache) > self._l2_cache_max:
                self._l2_cache.popitem(last=False)
        else:
            self._l2_cache.move_to_end(off)
        return table

    def _l2_for_write(self, l1_index: int) -> tuple[array, int]:
        """The L2 table for `l1_index`, allocating (or copying on write) it first if needed."""
        entry = self.l1[l1_index]
        table = self._l2_table(l1_index)
        if table is not None and entry & QCOW_OFLAG_COPIED:
            return table, entry & L1E_OFFSET_MASK
        self.file.debug_event("l2_alloc_cow_read")
        new_off = self._alloc_clusters(1)
        new_table = array("Q", table) if table is not None else array("Q", bytes(self.cluster_size))
        self.file.debug_event("l2_alloc_write")
        self.file.pwrite(new_off, _be_bytes(new_table))
        self.l1[l1_index] = new_off | QCOW_OFLAG_COPIED
        self.file.debug_event("l1_update")
        self.file.pwrite(self.header.l1_table_offset + l1_index * 8, struct.pack(">Q", self.l1[l1_index]))
        self._l2_cache[new_off] = new_table
        if table is not None:
            self._l2_cache.pop(entry & L1E_OFFSET_MASK, None)
            self._free_clusters(entry & L1E_OFFSET_MASK, 1)
        return new_table, new_off

    def _write_l2(self, l2_off: int, table: array, first: int, last: int) -> None:
        """Write entries [first, last] of a cached L2 table through to the file."""
        self.file.debug_event("l2_update")
        self.file.pwrite(l2_off + first * 8, _be_bytes(table[first:last + 1]))

    def _meta_overlap(self, host: int) -> bool:
        """True if a data cluster at `host` would overwrite metadata (qcow2 overlap check, cheap part)."""
        cs = self.cluster_size
        h = self.header
        if host < cs:
            return True
        if h.l1_table_offset <= host < h.l1_table_offset + max(h.l1_size * 8, 1):
            return True
        if h.refcount_table_offset <= host < h.refcount_table_offset + h.refcount_table_clusters * cs:
            return True
        return host in self._l2_cache

    # ---- mapping ------------------------------------------------------------------------------
    def _extents(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """(guest offset, bytes, cluster type, host offset) runs covering [offset, offset+length).

        Runs are merged while the type stays the same and (for clusters with a host offset) the
        host clusters are contiguous.  Stops at the image size.
        """
        span = self.cluster_size * self.l2_entries
        end = min(offset + length, self.size)
        pos = offset
        run_start, run_type, run_host, run_next_host = pos, -1, 0, 0
        while pos < end:
            l1_index = pos // span
            table = self._l2_table(l1_index)
            table_end = min(end, (l1_index + 1) * span)
            if table is None:
                items: Iterator[tuple[int, int, int, int]] = iter([(pos, table_end - pos, UNALLOCATED, 0)])
            else:
                items = self._table_items(table, l1_index * span, pos, table_end)
            for g, n, t, host in items:
                if t == run_type and (t in (UNALLOCATED, ZERO_PLAIN) or host == run_next_host):
                    run_next_host = host + n if host else 0
                    continue
                if run_type >= 0:
                    yield run_start, g - run_start, run_type, run_host
                run_start, run_type, run_host = g, t, host
                run_next_host = host + n if host else 0
            pos = table_end
        if run_type >= 0 and end > run_start:
            yield run_start, end - run_start, run_type, run_host

    def _table_items(self, table: array, base: int, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        cs, bits = self.cluster_size, self.cluster_bits
        i = (pos - base) >> bits
        last = ((end - 1 - base) >> bits) + 1  # one past the last entry in [pos, end)
        raw: bytes | None = None
        while pos < end:
            entry = table[i]
            t = _l2_type(entry)
            if t in (UNALLOCATED, ZERO_PLAIN) and i + 1 < last and table[i + 1] == entry:
                # A run of one repeated entry (an unallocated or zeroed stretch) is one item:
                # its end is found with memcmp instead of one entry at a time.
                if raw is None:
                    raw = table.tobytes()
                j = _same_entries_end(raw, i, last, table.itemsize)
                c_end = min(end, base + (j << bits))
                yield pos, c_end - pos, t, 0
                pos, i = c_end, j
                continue
            c_end = min(end, base + ((i + 1) << bits))
            host = 0
            if t in (NORMAL, ZERO_ALLOC):
                host = entry & L2E_OFFSET_MASK
                if host & (cs - 1):
                    raise _corruption(f"Cluster allocation offset {host:#x} unaligned "
                                      f"(L2 offset: ?, L2 index: {i:#x})")
                host += pos - (base + (i << bits))
            elif t == COMPRESSED:
                host = entry & ((1 << 62) - 1)
            yield pos, c_end - pos, t, host
            pos = c_end
            i += 1

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """(bytes, BLOCK_* flags) of this layer at `offset`; 0 flags = unallocated (see backing)."""
        if offset >= self.size or length <= 0:
            return 0, 0
        # qcow2_co_block_status reports one run: same cluster type, host clusters contiguous, and
        # within one L2 table (qcow2_get_host_offset never looks past its L2 slice).
        span = self.cluster_size * self.l2_entries
        length = min(length, (offset // span + 1) * span - offset)
        for _, n, t, _host in self._extents(offset, length):
            return n, _TYPE_FLAGS[t]
        return 0, 0

    def mapping(self, offset: int, length: int) -> tuple[int, int, int | None]:
        """(bytes, flags, host offset or None) of the first host-contiguous run at `offset`."""
        for _, n, t, host in self._extents(offset, length):
            return n, _TYPE_FLAGS[t], host if t in (NORMAL, ZERO_ALLOC) else None
        return 0, 0, None

    # ---- reads --------------------------------------------------------------------------------
    def _read_backing(self, offset: int, length: int) -> bytes:
        backing = self._backing
        if backing is None or length <= 0:
            return bytes(length)
        blen = backing.length()
        if offset >= blen:
            return bytes(length)
        self.file.debug_event("read_backing_aio")
        n = min(length, blen - offset)
        data = backing.pread(offset, n)
        return data if n == length else data + bytes(length - n)

    def pread(self, offset: int, length: int) -> bytes:
        """Guest read; bytes past the image size read as zeros."""
        if length <= 0:
            return b""
        if offset >= self.size:
            return bytes(length)
        parts: list[bytes] = []
        for g, n, t, host in self._extents(offset, length):
            if t == NORMAL:
                self.file.debug_event("read_aio")
                parts.append(self.file.pread(host, n))
            elif t == UNALLOCATED:
                parts.append(self._read_backing(g, n))
            elif t == COMPRESSED:
                parts.append(self._read_compressed_run(g, n))
            else:
                parts.append(bytes(n))
        got = sum(map(len, parts))
        if got < length:
            parts.append(bytes(length - got))
        return b"".join(parts)

    # ---- compressed clusters (docs/interop/qcow2.txt "Compressed Clusters Descriptor") ---------
    @property
    def _csize_shift(self) -> int:
        return 62 - (self.cluster_bits - 8)

    def _compressed_range(self, entry: int) -> tuple[int, int]:
        """qcow2_parse_compressed_l2_entry: (host byte offset, bytes up to its last 512-byte sector)."""
        shift = self._csize_shift
        coffset = entry & ((1 << shift) - 1)
        nb_csectors = ((entry >> shift) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return coffset, nb_csectors * 512 - (coffset & 511)

    def _decompress_cluster(self, entry: int) -> bytes:
        """Read and inflate one compressed cluster (raw deflate for zlib, as qcow2-threads.c)."""
        if self.header.compression_type != 0:
            raise OSError(errno.ENOTSUP, "zstd-compressed clusters are not supported by the emulator")
        coffset, csize = self._compressed_range(entry)
        self.file.debug_event("read_compressed")
        raw = self.file.pread(coffset, csize)
        inflater = zlib.decompressobj(-12)
        try:
            out = inflater.decompress(raw, self.cluster_size)
        except zlib.error:
            raise OSError(errno.EIO, "Input/output error") from None
        if len(out) != self.cluster_size:
            raise OSError(errno.EIO, "Input/output error")
        return out

    def _read_compressed_run(self, guest: int, length: int) -> bytes:
        """Guest bytes of a run of compressed clusters (each cluster has its own entry)."""
        cs, bits = self.cluster_size, self.cluster_bits
        span = cs * self.l2_entries
        parts: list[bytes] = []
        pos, end = guest, guest + length
        while pos < end:
            c_guest = pos & ~(cs - 1)
            table = self._l2_table(pos // span)
            assert table is not None
            data = self._decompress_cluster(table[(pos % span) >> bits])
            stop = min(end, c_guest + cs)
            parts.append(data[pos - c_guest:stop - c_guest])
            pos = stop
        return b"".join(parts)

    def _alloc_bytes(self, size: int) -> int:
        """qcow2_alloc_bytes: `size` bytes packed after the previous compressed cluster; every host
        cluster they touch gains one reference."""
        cs, bits = self.cluster_size, self.cluster_bits
        offset = self._free_byte_offset
        if offset and self.refcount(offset >> bits) >= (1 << self.refcount_bits) - 1:
            offset = 0
        free_in_cluster = cs - (offset & (cs - 1))
        if not offset or free_in_cluster < size:
            start = self._find_free(1)
            if (start // self._rb_entries) >= len(self.reftable):
                self._grow_reftable(start // self._rb_entries + 1)
                start = self._find_free(1)
            new_cluster = start << bits
            if not offset or -(-offset // cs) * cs != new_cluster:
                offset = new_cluster
            self._end_cluster = max(self._end_cluster, start + 1)
        self.file.debug_event("cluster_alloc_bytes")
        first, last = offset >> bits, (offset + size - 1) >> bits
        for idx in range(first, last + 1):
            self._set_refcounts(idx, 1, self.refcount(idx) + 1)
        self._free_byte_offset = (offset + size) if (offset + size) & (cs - 1) else 0
        return offset

    def write_compressed(self, offset: int, data: bytes) -> None:
        """qcow2_co_pwritev_compressed_part: whole clusters (the image's tail may be short), each
        deflated into the next free bytes; one that does not shrink is written normally."""
        cs = self.cluster_size
        self._check_writable(offset, len(data))
        if self.header.compression_type != 0:
            raise OSError(errno.ENOTSUP, "zstd compression is not supported by the emulator")
        if offset & (cs - 1) or (len(data) & (cs - 1) and offset + len(data) != self.size):
            raise OSError(errno.EINVAL, "Invalid argument")
        for pos in range(0, len(data), cs):
            chunk = data[pos:pos + cs]
            self._write_compressed_cluster(offset + pos, bytes(chunk).ljust(cs, b"\0"), len(chunk))

    def _write_compressed_cluster(self, guest: int, buf: bytes, nbytes: int) -> None:
        deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9,
                                    zlib.Z_DEFAULT_STRATEGY)
        out = deflater.compress(buf) + deflater.flush(zlib.Z_FINISH)
        if len(out) > self.cluster_size - 1:  # qcow2_co_compress: -ENOMEM, write it as is
            self.pwrite(guest, buf[:nbytes])
            return
        span = self.cluster_size * self.l2_entries
        l1_index = guest // span
        table, l2_off = self._l2_for_write(l1_index)
        i = (guest % span) >> self.cluster_bits
        if table[i] & L2E_OFFSET_MASK:  # compression cannot overwrite anything
            raise OSError(errno.EIO, "Input/output error")
        host = self._alloc_bytes(len(out))
        nb_csectors = ((host + len(out) - 1) >> 9) - (host >> 9)
        self.file.debug_event("write_compressed")
        self.file.pwrite(host, out)
        table[i] = host | QCOW_OFLAG_COMPRESSED | (nb_csectors << self._csize_shift)
        self._write_l2(l2_off, table, i, i)

    # ---- writes -------------------------------------------------------------------------------
    def _check_writable(self, offset: int, length: int) -> None:
        if self.read_only:
            raise OSError(errno.EPERM, "Operation not permitted")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OSError(errno.EIO, "Input/output error")

    def _old_cluster_content(self, entry: int, t: int, guest: int) -> bytes:
        """What a cluster reads as now, for copy-on-write of a partial cluster write."""
        cs = self.cluster_size
        if t == UNALLOCATED:
            self.file.debug_event("cow_read")
            return self._read_backing(guest, cs)
        if t == NORMAL:
            self.file.debug_event("cow_read")
            return self.file.pread(entry & L2E_OFFSET_MASK, cs)
        if t == COMPRESSED:
            return self._decompress_cluster(entry)
        return bytes(cs)

    def pwrite(self, offset: int, data: bytes) -> None:
        """Guest write: in place into clusters we own, else allocate (with copy-on-write)."""
        self._check_writable(offset, len(data))
        span = self.cluster_size * self.l2_entries
        mv = memoryview(data)
        pos = 0
        while pos < len(data):
            guest = offset + pos
            l1_index = guest // span
            n = min(len(data) - pos, (l1_index + 1) * span - guest)
            self._write_in_table(l1_index, guest, mv[pos:pos + n])
            pos += n

    def _write_in_table(self, l1_index: int, guest: int, buf: memoryview) -> None:
        cs, bits = self.cluster_size, self.cluster_bits
        base = l1_index * self.cluster_size * self.l2_entries
        table, l2_off = self._l2_for_write(l1_index)
        first = (guest - base) >> bits
        last = (guest + len(buf) - 1 - base) >> bits
        # (host offset, data, offset of data in `buf`, or -1 when it is merged cluster content)
        writes: list[tuple[int, bytes | memoryview, int]] = []
        new_entries: dict[int, int] = {}
        # (l2 index, full cluster content, its offset in `buf` or -1)
        to_alloc: list[tuple[int, bytes | memoryview, int]] = []
        to_free: list[tuple[int, int]] = []  # (host offset, bytes) losing one reference
        for i in range(first, last + 1):
            c_guest = base + (i << bits)
            lo, hi = max(guest, c_guest), min(guest + len(buf), c_guest + cs)
            piece = buf[lo - guest:hi - guest]
            entry = table[i]
            t = _l2_type(entry)
            if t == NORMAL and entry & QCOW_OFLAG_COPIED:
                host = entry & L2E_OFFSET_MASK
                if host & (cs - 1) or self._meta_overlap(host):
                    raise _corruption(f"data cluster at {host:#x} overlaps metadata or is unaligned")
                writes.append((host + lo - c_guest, piece, lo - guest))
                continue
            if hi - lo == cs:
                content: bytes | memoryview = piece
            else:
                old = self._old_cluster_content(entry, t, c_guest)
                content = b"".join((old[:lo - c_guest], piece, old[hi - c_guest:]))
            if t == ZERO_ALLOC and entry & QCOW_OFLAG_COPIED and not self._meta_overlap(entry & L2E_OFFSET_MASK):
                host = entry & L2E_OFFSET_MASK
                writes.append((host, content, lo - guest if content is piece else -1))
                new_entries[i] = host | QCOW_OFLAG_COPIED
                continue
            to_alloc.append((i, content, lo - guest if content is piece else -1))
            if t in (NORMAL, ZERO_ALLOC):
                to_free.append((entry & L2E_OFFSET_MASK, cs))
            elif t == COMPRESSED:
                to_free.append(self._compressed_range(entry))
        if to_alloc:
            host = self._alloc_clusters(len(to_alloc))
            for j, (i, content, at) in enumerate(to_alloc):
                writes.append((host + (j << bits), content, at))
                new_entries[i] = (host + (j << bits)) | QCOW_OFLAG_COPIED
        self._write_data(writes, buf)
        if new_entries:
            for i, e in new_entries.items():
                table[i] = e
            self._write_l2(l2_off, table, min(new_entries), max(new_entries))
        for host, nbytes in to_free:
            self.free_clusters(host, nbytes)

    def _write_data(self, writes: list[tuple[int, bytes | memoryview, int]], buf: memoryview) -> None:
        """Write data pieces, coalescing host-contiguous ones into single pwrites.  A group that is
        the caller's whole buffer, in order (a write to contiguous clusters), is written as the
        caller's own bytes object: no copy in user space."""
        writes.sort(key=lambda w: w[0])
        whole = buf.obj if isinstance(buf.obj, bytes) and buf.nbytes == len(buf.obj) else None
        i = 0
        while i < len(writes):
            start, data, at = writes[i]
            group = [data]
            in_order = at == 0
            end = start + len(data)
            i += 1
            while i < len(writes) and writes[i][0] == end:
                in_order = in_order and writes[i][2] == end - start
                group.append(writes[i][1])
                end += len(writes[i][1])
                i += 1
            self.file.debug_event("write_aio")
            if whole is not None and in_order and end - start == len(whole):
                self.file.pwrite(start, whole)
            else:
                self.file.pwrite(start, bytes(group[0]) if len(group) == 1 else b"".join(group))

    def is_zero_fast(self, offset: int, length: int) -> bool:
        """True if [offset, offset+length) is known to read as zeros from metadata alone
        (bdrv_co_is_zero_fast: this layer, then the backing if it can tell, never reading data)."""
        if length <= 0:
            return True
        for g, n, t, _host in self._extents(offset, length):
            if t in (ZERO_PLAIN, ZERO_ALLOC):
                continue
            if t != UNALLOCATED:
                return False
            backing = self._backing
            if backing is None or g >= backing.length():
                continue
            check = getattr(backing, "is_zero_fast", None)
            if check is None or not check(g, min(n, backing.length() - g)):
                return False
        return True

    def pwrite_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        """Write zeroes: whole clusters get the zero flag (freed if may_unmap), partial ones too
        when the rest of the cluster already reads as zero, else explicit zeros (as QEMU does)."""
        self._check_writable(offset, length)
        if length == 0:
            return
        cs = self.cluster_size
        end = offset + length
        if self.version < 3:
            self.pwrite(offset, bytes(length))
            return
        a_start = (offset + cs - 1) // cs * cs
        a_end = end // cs * cs
        if offset // cs == (end - 1) // cs and (offset % cs or end % cs):
            self._zero_partial(offset, end, may_unmap)
            return
        if offset < a_start:
            self._zero_partial(offset, a_start, may_unmap)
        if a_start < a_end:
            self._zero_clusters(a_start, a_end, may_unmap)
        if a_end < end:
            self._zero_partial(a_end, end, may_unmap)

    def _zero_partial(self, start: int, end: int, may_unmap: bool) -> None:
        cs = self.cluster_size
        c = start // cs * cs
        c_end = min(c + cs, self.size)
        flags = self.block_status(c, cs)[1]
        zero_capable = flags in (0, BLOCK_ZERO | BLOCK_ALLOCATED)
        if zero_capable and self.is_zero_fast(c, start - c) and self.is_zero_fast(end, c_end - end):
            self._zero_clusters(c, c + cs, may_unmap)
        else:
            self.pwrite(start, bytes(end - start))

    def _zero_clusters(self, start: int, end: int, may_unmap: bool) -> None:
        """zero_in_l2_slice over the clusters of [start, end) (cluster aligned)."""

        def zeroed(old: int, t: int) -> tuple[int, bool]:
            unmap = t == COMPRESSED or (may_unmap and t in (NORMAL, ZERO_ALLOC))
            return (0 if unmap else old) | QCOW_OFLAG_ZERO, unmap

        self._rewrite_l2_entries(start, end, zeroed, skip_missing_tables=False)

    def _rewrite_l2_entries(self, start: int, end: int, entry: Callable[[int, int], tuple[int, bool]],
                            *, skip_missing_tables: bool) -> None:
        """Rewrite the L2 entries of the clusters of [start, end) (cluster aligned), one L2 table at
        a time: entry(old entry, cluster type) -> (new entry, whether the old host cluster is freed).
        Changed entries are written back before the freed clusters' refcounts drop (crash safety)."""
        bits, span = self.cluster_bits, self.cluster_size * self.l2_entries
        pos = start
        while pos < end:
            l1_index = pos // span
            t_end = min(end, (l1_index + 1) * span)
            if skip_missing_tables and self._l2_table(l1_index) is None:
                pos = t_end  # nothing allocated here and nothing to hide
                continue
            table, l2_off = self._l2_for_write(l1_index)
            base = l1_index * span
            first, last = (pos - base) >> bits, ((t_end - 1 - base) >> bits)
            changed: list[int] = []
            to_free: list[tuple[int, int]] = []
            count = last - first + 1
            old = table[first]
            same = count > 1 and table[first:last + 1] == table[first:first + 1] * count
            new, free = entry(old, _l2_type(old)) if same else (old, True)
            if same and not free:
                # Every entry is the same and none frees a cluster (zeroing an unallocated or
                # zeroed stretch): one slice assignment instead of a call per entry.
                if new != old:
                    table[first:last + 1] = array(table.typecode, [new]) * count
                    changed = [first, last]
                count = 0
            for i in range(first, last + 1 if count else first):
                old = table[i]
                t = _l2_type(old)
                new, free = entry(old, t)
                if new == old:
                    continue
                table[i] = new
                changed.append(i)
                if free:
                    to_free.append(self._compressed_range(old) if t == COMPRESSED
                                   else (old & L2E_OFFSET_MASK, self.cluster_size))
            if changed:
                self._write_l2(l2_off, table, changed[0], changed[-1])
            for host, nbytes in to_free:
                self.free_clusters(host, nbytes)
            pos = t_end

    def discard(self, offset: int, length: int) -> None:
        """Guest discard (qcow2_co_pdiscard, not full): whole clusters read as zeros afterwards and
        their host clusters are freed; partial clusters are ignored."""
        self._check_writable(offset, length)
        cs = self.cluster_size
        a_start = (offset + cs - 1) // cs * cs
        end = offset + length
        a_end = end // cs * cs
        if end == self.size and end % cs:
            a_end = end  # the partial cluster at the end of an unaligned image counts
        if a_start < a_end:
            self._discard_clusters(a_start, a_end, full=False)

    def _discard_clusters(self, start: int, end: int, *, full: bool) -> None:
        """discard_in_l2_slice: full -> unallocated (falls through to backing), else zero/unalloc."""

        def discarded(old: int, t: int) -> tuple[int, bool]:
            if full:
                new = 0
            elif self._backing is not None or t in (NORMAL, ZERO_ALLOC, COMPRESSED):
                new = QCOW_OFLAG_ZERO if self.version >= 3 else 0
            else:
                new = old
            return new, t in (NORMAL, ZERO_ALLOC, COMPRESSED)

        self._rewrite_l2_entries(start, end, discarded,
                                 skip_missing_tables=full or self._backing is None)

    # ---- size ---------------------------------------------------------------------------------
    def truncate(self, size: int) -> None:
        """Grow (a bigger L1 table if needed) or shrink (dropping the clusters past the end)."""
        if self.read_only:
            raise OSError(errno.EPERM, "Operation not permitted")
        if size < 0 or size % 512:
            raise QemuError("The new size must be a multiple of 512")
        if size < self.size:
            cs, span = self.cluster_size, self.cluster_size * self.l2_entries
            start = (size + cs - 1) // cs * cs
            if start < self.size:
                self._discard_clusters(start, self.size, full=True)
            # L2 tables wholly past the end go too (qcow2_shrink_l1_table).
            for l1_index in range((size + span - 1) // span, len(self.l1)):
                off = self.l1[l1_index] & L1E_OFFSET_MASK
                if off:
                    self.l1[l1_index] = 0
                    self.file.pwrite(self.header.l1_table_offset + l1_index * 8, bytes(8))
                    self._l2_cache.pop(off, None)
                    self._free_clusters(off, 1)
            self._truncate_file_tail()
        else:
            self._grow_l1(self._size_to_l1(size))
        self.file.pwrite(_OFF_SIZE, struct.pack(">Q", size))
        self.size = self.header.size = size

    def _truncate_file_tail(self) -> None:
        """qcow2_co_truncate's shrink ends by cutting the file after the last cluster that still
        has a reference (qcow2_get_last_cluster over bdrv_getlength of the file); a failure
        there is only a warning in QEMU, and no last cluster (corruption) skips it."""
        cs = self.cluster_size
        file_len = self.file.length()
        last = self._last_used_cluster(file_len)
        if last is None or (last + 1) * cs >= file_len:
            return
        try:
            self.file.truncate((last + 1) * cs)
        except (OSError, QemuError):
            return
        self._end_cluster = last + 1
        self._free_hint = min(self._free_hint, last + 1)

    def _last_used_cluster(self, file_len: int) -> int | None:
        """qcow2_get_last_cluster: the last host cluster inside `file_len` with a refcount."""
        clusters = (file_len + self.cluster_size - 1) >> self.cluster_bits
        entries = self._rb_entries
        for ri in range(min((clusters - 1) // entries, len(self.reftable) - 1), -1, -1):
            block = self._refblock(ri)
            if block is None:
                continue
            used = block[:min(entries, clusters - ri * entries)].tobytes().rstrip(b"\0")
            if used:
                return ri * entries + (len(used) - 1) // block.itemsize
        return None

    def _grow_l1(self, min_size: int) -> None:
        if min_size <= len(self.l1):
            return
        if min_size > QCOW_MAX_L1_SIZE // 8:
            raise QemuError(qerror.L1_TABLE_TOO_LARGE)
        cs = self.cluster_size
        nbytes = min_size * 8
        new_off = self._alloc_clusters((nbytes + cs - 1) // cs)
        table = array("Q", self.l1) + array("Q", bytes((min_size - len(self.l1)) * 8))
        self.file.debug_event("l1_grow_write_table")
        self.file.pwrite(new_off, _be_bytes(table))
        self.file.flush()
        old_off, old_size = self.header.l1_table_offset, self.header.l1_size
        self.file.debug_event("l1_grow_activate_table")
        self.file.pwrite(_OFF_L1, struct.pack(">IQ", min_size, new_off))
        self.header.l1_table_offset, self.header.l1_size = new_off, min_size
        self.l1 = table
        if old_size:
            self._free_clusters(old_off, (old_size * 8 + cs - 1) // cs)

    # ---- misc ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Metadata is written through; make it and the data durable.

        Raises no blkdebug flush events itself: in QEMU, flush_to_os/flush_to_disk are raised on
        the file child by the generic block layer (bdrv_co_flush), which the owning node models.
        """
        if not self.read_only:
            self.file.flush()

    def change_backing_file(self, backing_file: str | None, backing_fmt: str | None) -> None:
        """qcow2_change_backing_file: rewrite the header cluster with a new backing name/format.

        Only the header changes (qemu-img rebase -u); the feature-name table is kept.
        """
        if self.read_only:
            raise QemuError("Cannot change the backing file of a read-only image")
        if backing_fmt and not backing_file:
            raise QemuError(qerror.BACKING_FMT_WITHOUT_FILE)
        name = backing_file.encode() if backing_file else b""
        if len(name) > 1023:
            raise QemuError(qerror.BACKING_FILE_NAME_TOO_LONG)
        old = (self.backing_file, self.backing_format)
        self.backing_file, self.backing_format = backing_file, backing_fmt
        try:
            self.update_header()
        except BaseException:
            self.backing_file, self.backing_format = old
            raise

    def update_header(self) -> None:
        """qcow2_update_header + flush: rewrite the header cluster from the in-memory state
        (backing format, the image's feature-name table, the bitmaps extension, backing name)."""
        name = self.backing_file.encode() if self.backing_file else b""
        h = self.header
        exts = b""
        if self.backing_format:
            exts += _pack_ext(EXT_BACKING_FORMAT, self.backing_format.encode())
        if self.feature_table:
            table = b"".join(struct.pack(">BB46s", t, bit, fname.encode())
                             for t, bit, fname in self.feature_table)
            exts += _pack_ext(EXT_FEATURE_TABLE, table)
        if self.bitmaps_ext.nb_bitmaps:
            exts += _pack_ext(EXT_BITMAPS, self.bitmaps_ext.pack())
        exts += struct.pack(">II", EXT_END, 0)
        if len(h.pack()) + len(exts) + len(name) > self.cluster_size:
            raise QemuError("Cannot update the image header: header extensions do not fit into the "
                            "first cluster")
        h.backing_file_offset = h.header_length + len(exts) if name else 0
        h.backing_file_size = len(name)
        cluster0 = h.pack() + exts + name
        self.file.pwrite(0, cluster0.ljust(self.cluster_size, b"\0"))
        self.file.flush()

    def format_specific(self) -> dict:
        """ImageInfoSpecificQCow2 as QEMU fills it (qcow2_get_specific_info)."""
        h = self.header
        if h.version == 2:
            return {"compat": "0.10", "refcount-bits": self.refcount_bits}
        info: dict[str, Any] = {
            "compat": "1.1",
            "compression-type": "zstd" if h.compression_type == 1 else "zlib",
            "lazy-refcounts": bool(h.compatible_features & COMPAT_LAZY_REFCOUNTS),
        }
        bitmaps = self.bitmap_store.info_list()
        if bitmaps is not None:
            info["bitmaps"] = bitmaps
        info.update({
            "refcount-bits": self.refcount_bits,
            "corrupt": bool(h.incompatible_features & INCOMPAT_CORRUPT),
            "extended-l2": bool(h.incompatible_features & INCOMPAT_EXTL2),
        })
        return info

    @property
    def dirty(self) -> bool:
        return bool(self.header.incompatible_features & INCOMPAT_DIRTY)

    def check(self) -> dict:
        """Consistency check (qcow2_check_refcounts + check_oflag_copied), read-only.

        Returns QEMU's ImageCheck numbers plus "messages": the lines qemu-img prints to stderr.
        """
        return _check_image(self)

    def close(self) -> None:
        """Drop caches; the Storage itself belongs to the caller."""
        self._closed = True
        self._l2_cache.clear()
        self._rb_cache.clear()


# ---- qemu-img check -------------------------------------------------------------------------------
def _check_image(img: Qcow2Image) -> dict:
    """Recount every reference from the metadata and compare with the stored refcounts."""
    cs, bits = img.cluster_size, img.cluster_bits
    h = img.header
    file_len = img.file.length()
    nb_clusters = (file_len + cs - 1) >> bits
    refs: dict[int, int] = {}
    messages: list[str] = []
    res: dict[str, Any] = {"check-errors": 0, "corruptions": 0, "leaks": 0, "allocated-clusters": 0,
           "fragmented-clusters": 0, "compressed-clusters": 0}

    def inc(offset: int, size: int) -> None:
        if size <= 0:
            return
        if offset + size - file_len >= cs:
            messages.append("ERROR: counting reference for region exceeding the end of the file by one "
                            f"cluster or more: offset {offset:#x} size {size:#x}")
            res["corruptions"] += 1
            return
        for c in range(offset >> bits, ((offset + size - 1) >> bits) + 1):
            refs[c] = refs.get(c, 0) + 1

    def refcount_or_error(c: int) -> int | None:
        try:
            return img.refcount(c)
        except OSError as e:
            messages.append(f"Can't get refcount for cluster {c}: {e.strerror}")
            res["check-errors"] += 1
            return None

    inc(0, cs)  # header
    # Active L1 and L2 tables (check_refcounts_l1 / check_refcounts_l2).
    inc(h.l1_table_offset, h.l1_size * 8)
    l2_tables: list[tuple[int, int, array]] = []
    for i, l1e in enumerate(img.l1):
        l2_off = l1e & L1E_OFFSET_MASK
        if not l2_off:
            continue
        if l2_off & (cs - 1):
            messages.append(f"ERROR l2_offset={l2_off:x}: Table is not cluster aligned; L1 entry corrupted")
            res["corruptions"] += 1
            continue
        inc(l2_off, cs)
        try:
            table = _be_array("Q", img.file.pread(l2_off, cs))
        except OSError as e:
            messages.append(f"ERROR: I/O error in check_refcounts_l2: {e.strerror}")
            res["check-errors"] += 1
            continue
        l2_tables.append((i, l1e, table))
        next_contiguous = 0
        for entry in table:
            if not entry:
                continue
            t = _l2_type(entry)
            if t == COMPRESSED:
                # Compressed clusters reference every host cluster their bytes touch and are
                # "fragmented by nature" (check_refcounts_l2).
                res["compressed-clusters"] += 1
                res["allocated-clusters"] += 1
                res["fragmented-clusters"] += 1
                inc(*img._compressed_range(entry))
                continue
            if t not in (NORMAL, ZERO_ALLOC):
                continue
            off = entry & L2E_OFFSET_MASK
            if off & (cs - 1):
                messages.append(f"ERROR offset={off:x}: Cluster is not properly aligned; L2 entry corrupted")
                res["corruptions"] += 1
                continue
            res["allocated-clusters"] += 1
            if next_contiguous and off != next_contiguous:
                res["fragmented-clusters"] += 1
            next_contiguous = off + cs
            inc(off, cs)
    # Refcount table and blocks (check_refblocks).
    inc(h.refcount_table_offset, h.refcount_table_clusters * cs)
    for i, rte in enumerate(img.reftable):
        off = rte & REFT_OFFSET_MASK
        if not off:
            continue
        if off & (cs - 1):
            messages.append(f"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted")
            res["corruptions"] += 1
            continue
        if (off >> bits) >= nb_clusters:
            messages.append(f"ERROR refcount block {i} is outside image")
            res["corruptions"] += 1
            continue
        inc(off, cs)
    img.bitmap_store.check_refcounts(inc, res)
    for i, rte in enumerate(img.reftable):
        off = rte & REFT_OFFSET_MASK
        if off and not off & (cs - 1) and (off >> bits) < nb_clusters and refs.get(off >> bits) != 1:
            messages.append(f"ERROR refcount block {i} refcount={refs.get(off >> bits, 0)}")
            res["corruptions"] += 1
    # compare_refcounts
    highest = -1
    limit = max([nb_clusters] + [c + 1 for c in refs])
    for c in range(limit):
        stored = refcount_or_error(c)
        if stored is None:
            continue
        computed = refs.get(c, 0)
        if stored or computed:
            highest = c
        if stored != computed:
            kind = "ERROR" if stored < computed else "Leaked"
            messages.append(f"{kind} cluster {c} refcount={stored} reference={computed}")
            res["corruptions" if stored < computed else "leaks"] += 1
    # check_oflag_copied
    for i, l1e, table in l2_tables:
        l2_off = l1e & L1E_OFFSET_MASK
        rc = refcount_or_error(l2_off >> bits)
        if rc is not None and (rc == 1) != bool(l1e & QCOW_OFLAG_COPIED):
            messages.append(f"ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x} refcount={rc}")
            res["corruptions"] += 1
        for entry in table:
            if entry and _l2_type(entry) in (NORMAL, ZERO_ALLOC) and not entry & L2E_OFFSET_MASK & (cs - 1):
                rc = refcount_or_error((entry & L2E_OFFSET_MASK) >> bits)
                if rc is not None and (rc == 1) != bool(entry & QCOW_OFLAG_COPIED):
                    messages.append(f"ERROR OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={rc}")
                    res["corruptions"] += 1
    res["image-end-offset"] = (highest + 1) * cs
    res["total-clusters"] = (img.size + cs - 1) >> bits
    res["messages"] = messages
    return res
