"""Persistent dirty bitmaps in qcow2: the bitmaps header extension (QEMU 7.2's block/qcow2-bitmap.c).

On-disk format (docs/interop/qcow2.txt, "Bitmaps extension"), all big-endian:
- header extension 0x23852875 (24 bytes): nb_bitmaps u32, reserved u32 (0), directory size u64,
  directory offset u64; only valid while autoclear feature bit 0 ("bitmaps") is set;
- bitmap directory: one entry per bitmap, 8-byte aligned: bitmap table offset u64, table size u32
  (entries), flags u32 (bit 0 in_use, bit 1 auto), type u8 (1), granularity bits u8, name size u16,
  extra data size u32 (0), then the name (no NUL);
- bitmap table: one u64 per cluster of bitmap data: a data cluster offset, or 0 with bit 0 meaning
  "all ones" (else all zeros);
- bitmap data: dense bits, bit i of byte j = granule 8*j+i of the guest disk.

Qcow2BitmapStore follows QEMU's life cycle: load every bitmap on open (inconsistent if in_use,
disabled unless auto) and, on a writable open, set in_use on disk at once; store them all on close
(new tables and data clusters, a new directory, then the old clusters are freed); remove one from
the image immediately.  It works on a qcow2 image through its allocator and header writer (the
BitmapImage protocol below, which Qcow2Image implements; this module does not import qcow2.py)
and on a node's DirtyBitmapSet; it knows nothing of QMP.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from emulator import qerror
from emulator.error import QemuError

from .dirty_bitmap import (
    BITMAP_DEFAULT,
    BME_MAX_GRANULARITY_BITS,
    BME_MAX_NAME_SIZE,
    BME_MAX_PHYS_SIZE,
    BME_MAX_TABLE_SIZE,
    BME_MIN_GRANULARITY_BITS,
    QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
    QCOW2_MAX_BITMAPS,
    DirtyBitmap,
    DirtyBitmapSet,
)
from .storage import Storage

#: Autoclear feature bit 0: the bitmaps extension is consistent with the image.
AUTOCLEAR_BITMAPS = 1 << 0
BME_FLAG_IN_USE = 1 << 0
BME_FLAG_AUTO = 1 << 1
BME_RESERVED_FLAGS = 0xFFFFFFFC
BME_TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE
BME_TABLE_ENTRY_OFFSET_MASK = 0x00FFFFFFFFFFFE00
BME_TABLE_ENTRY_FLAG_ALL_ONES = 1
BT_DIRTY_TRACKING_BITMAP = 1

_EXT = struct.Struct(">IIQQ")
EXT_LENGTH = _EXT.size  # 24
_DIR_ENTRY = struct.Struct(">QIIBBHI")
DIR_ENTRY_HEADER = _DIR_ENTRY.size  # 24


def _einval(msg: str) -> OSError:
    return OSError(errno.EINVAL, msg)


def _errno_text(err: OSError) -> str:
    return err.strerror or os.strerror(err.errno or errno.EIO)


# ---- the header extension -------------------------------------------------------------------------
@dataclass
class BitmapsExtension:
    """Qcow2BitmapHeaderExt."""

    nb_bitmaps: int = 0
    directory_size: int = 0
    directory_offset: int = 0

    @classmethod
    def parse(cls, data: bytes, cluster_size: int) -> BitmapsExtension:
        """qcow2_read_extensions' checks of a bitmaps extension, with QEMU's messages."""
        if len(data) != EXT_LENGTH:
            raise QemuError(qerror.BITMAPS_EXT_INVALID_LENGTH)
        nb, reserved, size, offset = _EXT.unpack(data)
        if reserved:
            raise QemuError("bitmaps_ext: Reserved field is not zero")
        if nb > QCOW2_MAX_BITMAPS:
            raise QemuError(f"bitmaps_ext: Image has {nb} bitmaps, exceeding the QEMU supported "
                            f"maximum of {QCOW2_MAX_BITMAPS}")
        if nb == 0:
            raise QemuError("found bitmaps extension with zero bitmaps")
        if offset % cluster_size:
            raise QemuError("bitmaps_ext: invalid bitmap directory offset")
        if size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
            raise QemuError(f"bitmaps_ext: bitmap directory size ({size}) exceeds the maximum "
                            f"supported size ({QCOW2_MAX_BITMAP_DIRECTORY_SIZE})")
        return cls(nb, size, offset)

    def pack(self) -> bytes:
        return _EXT.pack(self.nb_bitmaps, 0, self.directory_size, self.directory_offset)


# ---- directory entries ----------------------------------------------------------------------------
def dir_entry_size(name_size: int, extra_data_size: int = 0) -> int:
    """calc_dir_entry_size."""
    return (DIR_ENTRY_HEADER + name_size + extra_data_size + 7) & ~7


@dataclass
class StoredBitmap:
    """One bitmap directory entry (QEMU's Qcow2Bitmap), plus the in-memory bitmap it stores."""

    name: str
    granularity_bits: int
    flags: int = 0
    table_offset: int = 0
    table_size: int = 0
    bitmap: DirtyBitmap | None = None

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits

    @property
    def in_use(self) -> bool:
        return bool(self.flags & BME_FLAG_IN_USE)

    @property
    def auto(self) -> bool:
        return bool(self.flags & BME_FLAG_AUTO)

    def info(self) -> dict[str, Any]:
        """Qcow2BitmapInfo in QAPI field order (qemu-img info's format-specific "bitmaps")."""
        flags = [name for bit, name in ((BME_FLAG_IN_USE, "in-use"), (BME_FLAG_AUTO, "auto"))
                 if self.flags & bit]
        return {"name": self.name, "granularity": self.granularity, "flags": flags}


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def check_table_entry(entry: int, cluster_size: int) -> bool:
    """check_table_entry: reserved bits clear; a data offset is aligned and excludes "all ones"."""
    if entry & BME_TABLE_ENTRY_RESERVED_MASK:
        return False
    offset = entry & BME_TABLE_ENTRY_OFFSET_MASK
    return not offset or (not entry & BME_TABLE_ENTRY_FLAG_ALL_ONES and not offset % cluster_size)


def check_dir_entry(bm: StoredBitmap, name_size: int, bm_type: int, extra: int, cluster_size: int,
                    length: int) -> bool:
    """check_dir_entry: the directory entry satisfies the format's constraints for this image."""
    if (bm.table_size == 0 or bm.table_offset == 0 or bm.table_offset % cluster_size
            or bm.table_size > BME_MAX_TABLE_SIZE
            or not BME_MIN_GRANULARITY_BITS <= bm.granularity_bits <= BME_MAX_GRANULARITY_BITS
            or bm.flags & BME_RESERVED_FLAGS or name_size > BME_MAX_NAME_SIZE
            or bm_type != BT_DIRTY_TRACKING_BITMAP or extra):
        return False
    phys = bm.table_size * cluster_size
    if phys > BME_MAX_PHYS_SIZE:
        return False
    # A consistent bitmap must cover the disk; an in_use one may be stale after a resize.
    return bool(bm.flags & BME_FLAG_IN_USE) or length <= (phys * 8) << bm.granularity_bits


def bitmap_table_size(length: int, granularity: int, cluster_size: int) -> int:
    """Clusters of dense data for a bitmap over `length` bytes (size_to_clusters of the
    serialization size, which hbitmap rounds up to whole 64-bit words)."""
    granules = (length + granularity - 1) // granularity
    serialized = (granules + 63) // 64 * 8
    return (serialized + cluster_size - 1) // cluster_size


def check_constraints(name: str, granularity: int, length: int, cluster_size: int) -> None:
    """check_constraints_on_bitmap (QemuError with QEMU's text)."""
    bits = granularity.bit_length() - 1
    if bits > BME_MAX_GRANULARITY_BITS:
        raise QemuError(f"Granularity exceeds maximum ({1 << BME_MAX_GRANULARITY_BITS} bytes)")
    if bits < BME_MIN_GRANULARITY_BITS:
        raise QemuError(f"Granularity is under minimum ({1 << BME_MIN_GRANULARITY_BITS} bytes)")
    nbytes = ((length + granularity - 1) // granularity + 7) // 8
    if nbytes > BME_MAX_PHYS_SIZE or nbytes > BME_MAX_TABLE_SIZE * cluster_size:
        raise QemuError("Too much space will be occupied by the bitmap. Use larger granularity")
    if len(_name_bytes(name)) > BME_MAX_NAME_SIZE:
        raise QemuError(f"Name length exceeds maximum ({BME_MAX_NAME_SIZE} characters)")


# ---- the store ------------------------------------------------------------------------------------
class BitmapHeader(Protocol):
    """The part of the qcow2 header the bitmaps extension rules (autoclear bit 0)."""

    autoclear_features: int


class BitmapImage(Protocol):
    """What the bitmap store needs from the qcow2 image it lives in (Qcow2Image)."""

    bitmaps_ext: BitmapsExtension

    @property
    def file(self) -> Storage: ...

    @property
    def header(self) -> BitmapHeader: ...

    @property
    def cluster_size(self) -> int: ...

    @property
    def size(self) -> int: ...

    def update_header(self) -> None:
        """Write the header (with its extensions) back to the image file."""
        ...

    def alloc_clusters(self, nbytes: int) -> int:
        """Allocate contiguous host clusters for `nbytes`; returns their offset."""
        ...

    def free_clusters(self, offset: int, nbytes: int) -> None: ...

    def flush(self) -> None: ...


class Qcow2BitmapStore:
    """The persistent bitmaps of one open qcow2 image."""

    def __init__(self, image: BitmapImage) -> None:
        self.image = image

    @property
    def ext(self) -> BitmapsExtension:
        return self.image.bitmaps_ext

    @property
    def cluster_size(self) -> int:
        return self.image.cluster_size

    # ---- directory ----------------------------------------------------------------------------
    def load_list(self) -> list[StoredBitmap]:
        """bitmap_list_load: read and check the directory (QemuError with QEMU's message)."""
        ext = self.ext
        if ext.directory_size == 0:
            raise QemuError("Requested bitmap directory size is zero")
        if ext.directory_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
            raise QemuError("Requested bitmap directory size is too big")
        try:
            raw = self.image.file.pread(ext.directory_offset, ext.directory_size)
        except OSError as e:
            raise QemuError(f"Failed to read bitmap directory: {_errno_text(e)}") from None
        out: list[StoredBitmap] = []
        pos, end = 0, len(raw)
        length = self.image.size
        while pos < end:
            if pos + DIR_ENTRY_HEADER > end:
                raise QemuError(qerror.BITMAP_DIRECTORY_BROKEN)
            if len(out) + 1 > ext.nb_bitmaps:
                raise QemuError("More bitmaps found than specified in header extension")
            t_off, t_size, flags, bm_type, gbits, name_size, extra = _DIR_ENTRY.unpack_from(raw, pos)
            nxt = pos + dir_entry_size(name_size, extra)
            if nxt > end:
                raise QemuError(qerror.BITMAP_DIRECTORY_BROKEN)
            if extra:
                raise QemuError("Bitmap extra data is not supported")
            name_raw = raw[pos + DIR_ENTRY_HEADER:pos + DIR_ENTRY_HEADER + name_size]
            name = name_raw.decode("utf-8", "surrogateescape")
            bm = StoredBitmap(name, gbits, flags, t_off, t_size)
            if not check_dir_entry(bm, name_size, bm_type, extra, self.cluster_size, length):
                raise QemuError(f"Bitmap '{name}' doesn't satisfy the constraints")
            out.append(bm)
            pos = nxt
        if len(out) != ext.nb_bitmaps:
            raise QemuError("Less bitmaps found than specified in header extension")
        return out

    def _directory_bytes(self, bitmaps: list[StoredBitmap]) -> bytes:
        """The directory of `bitmaps`, each entry checked (EINVAL when one is invalid)."""
        parts: list[bytes] = []
        for bm in bitmaps:
            name = _name_bytes(bm.name)
            if not check_dir_entry(bm, len(name), BT_DIRTY_TRACKING_BITMAP, 0, self.cluster_size,
                                   self.image.size):
                raise _einval("Invalid argument")
            entry = _DIR_ENTRY.pack(bm.table_offset, bm.table_size, bm.flags, BT_DIRTY_TRACKING_BITMAP,
                                    bm.granularity_bits, len(name), 0) + name
            parts.append(entry.ljust(dir_entry_size(len(name)), b"\0"))
        data = b"".join(parts)
        if not data or len(data) > QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
            raise _einval("Invalid argument")
        return data

    def _update_in_place(self, bitmaps: list[StoredBitmap]) -> None:
        """update_ext_header_and_dir_in_place: drop the autoclear bit, rewrite the directory
        where it is, then set the bit again -- a crash in between loses the bitmaps, never
        leaves a half-written directory trusted."""
        img = self.image
        if (not img.header.autoclear_features & AUTOCLEAR_BITMAPS or not bitmaps
                or len(bitmaps) != self.ext.nb_bitmaps):
            raise _einval("Invalid argument")
        img.header.autoclear_features &= ~AUTOCLEAR_BITMAPS
        img.update_header()
        data = self._directory_bytes(bitmaps)
        if len(data) != self.ext.directory_size or not self.ext.directory_offset:
            raise _einval("Invalid argument")
        img.file.pwrite(self.ext.directory_offset, data)
        img.update_header()
        img.header.autoclear_features |= AUTOCLEAR_BITMAPS
        img.update_header()

    def _update_header_and_dir(self, bitmaps: list[StoredBitmap]) -> None:
        """update_ext_header_and_dir: write a new directory, point the header at it, free the old."""
        img = self.image
        old = BitmapsExtension(self.ext.nb_bitmaps, self.ext.directory_size, self.ext.directory_offset)
        old_autoclear = img.header.autoclear_features
        new = BitmapsExtension()
        if bitmaps:
            if len(bitmaps) > QCOW2_MAX_BITMAPS:
                raise _einval("Invalid argument")
            data = self._directory_bytes(bitmaps)
            new = BitmapsExtension(len(bitmaps), len(data), img.alloc_clusters(len(data)))
            try:
                img.file.pwrite(new.directory_offset, data)
                img.flush()
            except OSError:
                img.free_clusters(new.directory_offset, new.directory_size)
                raise
            img.header.autoclear_features |= AUTOCLEAR_BITMAPS
        else:
            img.header.autoclear_features &= ~AUTOCLEAR_BITMAPS
        img.bitmaps_ext = new
        try:
            img.update_header()
        except OSError:
            if new.directory_size:
                img.free_clusters(new.directory_offset, new.directory_size)
            img.bitmaps_ext = old
            img.header.autoclear_features = old_autoclear
            raise
        if old.directory_size:
            img.free_clusters(old.directory_offset, old.directory_size)

    # ---- tables and data ----------------------------------------------------------------------
    def _load_table(self, bm: StoredBitmap) -> list[int]:
        """bitmap_table_load (OSError EINVAL on a bad entry)."""
        raw = self.image.file.pread(bm.table_offset, bm.table_size * 8)
        table = list(struct.unpack(f">{bm.table_size}Q", raw))
        for entry in table:
            if not check_table_entry(entry, self.cluster_size):
                raise _einval("Invalid argument")
        return table

    def _free_bitmap_clusters(self, bm: StoredBitmap) -> None:
        """free_bitmap_clusters: the data clusters, then the table itself."""
        table = self._load_table(bm)
        for entry in table:
            addr = entry & BME_TABLE_ENTRY_OFFSET_MASK
            if addr:
                self.image.free_clusters(addr, self.cluster_size)
        self.image.free_clusters(bm.table_offset, bm.table_size * 8)
        bm.table_offset = bm.table_size = 0

    def _load_data(self, table: list[int], bitmap: DirtyBitmap) -> None:
        """load_bitmap_data: OR each table entry's granules into `bitmap` (which is empty)."""
        cs = self.cluster_size
        if len(table) != bitmap_table_size(bitmap.size, bitmap.granularity, cs) or \
                len(table) > BME_MAX_TABLE_SIZE:
            raise _einval("Invalid argument")
        coverage = cs * 8  # granules per data cluster
        for i, entry in enumerate(table):
            first = i * coverage
            count = min(bitmap.granules - first, coverage)
            data_offset = entry & BME_TABLE_ENTRY_OFFSET_MASK
            if data_offset:
                data = self.image.file.pread(data_offset, cs)
                bitmap.load_dense(data[:(count + 7) // 8], first)
            elif entry & BME_TABLE_ENTRY_FLAG_ALL_ONES and count > 0:
                bitmap.set_dirty(first * bitmap.granularity, count * bitmap.granularity)

    def _store_bitmap(self, bm: StoredBitmap) -> None:
        """store_bitmap / store_bitmap_data: data clusters for every chunk with a dirty granule
        (all-zero chunks stay 0 in the table), then the table."""
        bitmap = bm.bitmap
        assert bitmap is not None
        img, cs = self.image, self.cluster_size
        tb_size = bitmap_table_size(bitmap.size, bitmap.granularity, cs)
        if tb_size > BME_MAX_TABLE_SIZE or tb_size * cs > BME_MAX_PHYS_SIZE:
            raise QemuError(f"Bitmap '{bitmap.name}' is too big")
        coverage = cs * 8
        limit = coverage * bitmap.granularity  # guest bytes per data cluster
        table = [0] * tb_size
        try:
            offset = bitmap.next_dirty(0)
            while offset >= 0:
                chunk = offset // limit
                first = chunk * coverage
                count = min(bitmap.granules - first, coverage)
                off = img.alloc_clusters(cs)
                table[chunk] = off
                data = bitmap.to_dense(first, count)
                try:
                    img.file.pwrite(off, data.ljust(cs, b"\0"))
                except OSError as e:
                    raise QemuError(qerror.BITMAP_WRITE_FAILED % (bitmap.name, _errno_text(e))) from None
                offset = bitmap.next_dirty((chunk + 1) * limit)
            tb_offset = img.alloc_clusters(tb_size * 8)
        except BaseException:
            self._clear_table(table)
            raise
        try:
            img.file.pwrite(tb_offset, struct.pack(f">{tb_size}Q", *table))
        except OSError as e:
            self._clear_table(table)
            img.free_clusters(tb_offset, tb_size * 8)
            raise QemuError(qerror.BITMAP_WRITE_FAILED % (bitmap.name, _errno_text(e))) from None
        bm.table_offset, bm.table_size = tb_offset, tb_size

    def _clear_table(self, table: list[int]) -> None:
        """clear_bitmap_table: free the data clusters a table points to."""
        for i, entry in enumerate(table):
            addr = entry & BME_TABLE_ENTRY_OFFSET_MASK
            if addr:
                self.image.free_clusters(addr, self.cluster_size)
                table[i] = 0

    # ---- life cycle ---------------------------------------------------------------------------
    def load(self, bitmaps: DirtyBitmapSet, *, writable: bool) -> None:
        """qcow2_load_dirty_bitmaps: create every stored bitmap in `bitmaps`.

        in_use on disk -> inconsistent (no data read); not auto -> disabled; a writable open marks
        the others in_use on disk before returning, a read-only one makes them all readonly.
        """
        if self.ext.nb_bitmaps == 0:
            return
        stored = self.load_list()
        created: list[DirtyBitmap] = []
        needs_update = False
        length = self.image.size
        try:
            for bm in stored:
                if bm.in_use and bitmaps.find(bm.name) is not None:
                    continue  # migration with shared storage: ours is the live copy
                bitmap = bitmaps.create(bm.name, bm.granularity, length)
                created.append(bitmap)
                if not bm.in_use:
                    try:
                        table = self._load_table(bm)
                    except OSError as e:
                        raise QemuError(f"Could not read bitmap_table table from image for bitmap "
                                        f"'{bm.name}': {_errno_text(e)}") from None
                    try:
                        self._load_data(table, bitmap)
                    except OSError as e:
                        raise QemuError(f"Could not read bitmap '{bm.name}' from image: "
                                        f"{_errno_text(e)}") from None
                bitmap.persistent = True
                if bm.in_use:
                    # bdrv_dirty_bitmap_set_inconsistent: unusable, and it records nothing either.
                    bitmap.inconsistent = True
                    bitmap.disabled = True
                else:
                    bm.flags |= BME_FLAG_IN_USE
                    needs_update = True
                if not bm.auto:
                    bitmap.disabled = True
            if needs_update and writable:
                try:
                    self._update_in_place(stored)
                except OSError as e:
                    raise QemuError(qerror.BITMAP_DIRECTORY_UPDATE_FAILED % _errno_text(e)) from None
        except BaseException:
            for bitmap in created:
                bitmaps.remove(bitmap)
            raise
        if not writable:
            for bitmap in created:
                bitmap.readonly = True

    def store(self, bitmaps: DirtyBitmapSet, *, writable: bool, release: bool = True) -> None:
        """qcow2_store_persistent_dirty_bitmaps: write every persistent, consistent bitmap.

        Existing entries of the image keep their place in the directory, new ones are appended in
        list order; on success the old tables and data are freed and (with `release`) the stored
        bitmaps leave `bitmaps`.  Raises QemuError with QEMU's message; the image then keeps its
        previous bitmaps.
        """
        stored = self.load_list() if self.ext.nb_bitmaps else []
        by_name = {bm.name: bm for bm in stored}
        new_nb, new_dir = self.ext.nb_bitmaps, self.ext.directory_size
        drop: list[StoredBitmap] = []
        need_write = False
        length, cs = self.image.size, self.cluster_size
        try:
            for bitmap in bitmaps:
                if not persistence(bitmap) or bitmap.inconsistent or bitmap.name is None:
                    continue
                name = bitmap.name
                if bitmap.readonly:
                    if name in by_name:
                        by_name[name].bitmap = bitmap
                    continue
                need_write = True
                try:
                    check_constraints(name, bitmap.granularity, length, cs)
                except QemuError as e:
                    raise QemuError(f"Bitmap '{name}' doesn't satisfy the constraints: {e.desc}") from None
                bm = by_name.get(name)
                if bm is None:
                    new_nb += 1
                    if new_nb > QCOW2_MAX_BITMAPS:
                        raise QemuError("Too many persistent bitmaps")
                    new_dir += dir_entry_size(len(_name_bytes(name)))
                    if new_dir > QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
                        raise QemuError("Bitmap directory is too large")
                    bm = StoredBitmap(name, 0)
                    stored.append(bm)
                    by_name[name] = bm
                else:
                    if not bm.in_use:
                        raise QemuError(f"Bitmap '{name}' already exists in the image")
                    drop.append(StoredBitmap(bm.name, bm.granularity_bits, bm.flags, bm.table_offset,
                                             bm.table_size))
                    bm.table_offset = bm.table_size = 0
                bm.flags = 0 if bitmap.disabled else BME_FLAG_AUTO
                bm.granularity_bits = bitmap.granularity.bit_length() - 1
                bm.bitmap = bitmap
            if need_write:
                if not writable:
                    raise QemuError("No write access")
                for bm in stored:
                    if bm.bitmap is not None and not bm.bitmap.readonly:
                        self._store_bitmap(bm)
                try:
                    self._update_header_and_dir(stored)
                except OSError as e:
                    raise QemuError(qerror.BITMAP_EXT_UPDATE_FAILED % _errno_text(e)) from None
        except BaseException:
            for bm in stored:
                if bm.bitmap is not None and bm.table_offset and not bm.bitmap.readonly:
                    self._free_bitmap_clusters(bm)
            raise
        for tb in drop:  # the directory no longer points at them
            self._free_bitmap_clusters(tb)
        if need_write:
            self.image.flush()
        if release:
            for bm in stored:
                if bm.bitmap is not None and bm.bitmap in bitmaps:
                    bitmaps.remove(bm.bitmap)

    def reopen_rw(self, bitmaps: DirtyBitmapSet) -> None:
        """qcow2_reopen_bitmaps_rw: the read-only bitmaps loaded from the image get in_use on
        disk again and become writable."""
        if self.ext.nb_bitmaps == 0:
            return
        stored = self.load_list()
        reopened: list[DirtyBitmap] = []
        for bm in stored:
            bitmap = bitmaps.find(bm.name)
            if bitmap is None or bm.in_use:
                continue
            bm.flags |= BME_FLAG_IN_USE
            reopened.append(bitmap)
        if reopened:
            try:
                self._update_in_place(stored)
            except OSError as e:
                raise QemuError(qerror.BITMAP_DIRECTORY_UPDATE_FAILED % _errno_text(e)) from None
            for bitmap in reopened:
                bitmap.readonly = False

    def remove(self, name: str) -> None:
        """qcow2_co_remove_persistent_dirty_bitmap: drop `name` from the image now (absent: no-op)."""
        if self.ext.nb_bitmaps == 0:
            return
        stored = self.load_list()
        bm = next((b for b in stored if b.name == name), None)
        if bm is None:
            return
        stored.remove(bm)
        try:
            self._update_header_and_dir(stored)
        except OSError as e:
            raise QemuError(qerror.BITMAP_EXT_UPDATE_FAILED % _errno_text(e)) from None
        self._free_bitmap_clusters(bm)
        self.image.flush()

    def truncate_check(self, bitmaps: DirtyBitmapSet) -> None:
        """qcow2_truncate_bitmaps_check: every stored bitmap is in memory and usable."""
        if self.ext.nb_bitmaps == 0:
            return
        for bm in self.load_list():
            bitmap = bitmaps.find(bm.name)
            if bitmap is None:
                raise QemuError("Cannot resize qcow2 with persistent bitmaps that were not loaded "
                                "into memory")
            bitmap.check(BITMAP_DEFAULT)

    # ---- info and check -----------------------------------------------------------------------
    def info_list(self) -> list[dict[str, Any]] | None:
        """qcow2_get_bitmap_info_list, from the directory on disk; None when there are none."""
        if self.ext.nb_bitmaps == 0:
            return None
        return [bm.info() for bm in self.load_list()]

    def check_refcounts(self, inc: Callable[[int, int], None], res: dict[str, Any]) -> None:
        """qcow2_check_bitmaps_refcounts: count the directory, tables and data clusters."""
        if self.ext.nb_bitmaps == 0:
            return
        inc(self.ext.directory_offset, self.ext.directory_size)
        try:
            stored = self.load_list()
        except (QemuError, OSError):
            res["corruptions"] += 1
            return
        for bm in stored:
            inc(bm.table_offset, bm.table_size * 8)
            try:
                raw = self.image.file.pread(bm.table_offset, bm.table_size * 8)
            except OSError:
                res["corruptions"] += 1
                return
            table = struct.unpack(f">{bm.table_size}Q", raw)
            if not all(check_table_entry(e, self.cluster_size) for e in table):
                res["corruptions"] += 1
                return
            for entry in table:
                offset = entry & BME_TABLE_ENTRY_OFFSET_MASK
                if offset:
                    inc(offset, self.cluster_size)


def persistence(bitmap: DirtyBitmap) -> bool:
    """bdrv_dirty_bitmap_get_persistence: persistent and not being removed by a transaction."""
    return bitmap.persistent and not bitmap.skip_store
