"""Dirty bitmaps (QEMU's BdrvDirtyBitmap over HBitmap, block/dirty-bitmap.c and util/hbitmap.c).

A bitmap records which granules of a node were written since some point.  The bits are granule
indices in a pyroaring BitMap64, so memory and the cost of every operation follow the dirty data
(runs of granules), not the image size: a 1 TiB node at 512-byte granularity with a few writes
costs a few hundred bytes.

Semantics follow QEMU 7.2 exactly where they are observable:
- byte ranges are widened to whole granules when set; `count()` is dirty granules x granularity
  (a partly covered last granule counts whole, as hbitmap_count does);
- the per-node list is head-inserted (the newest bitmap is listed first in query output, and a
  successor that abdicates takes its own place in the list, not its parent's);
- the BUSY / RO / INCONSISTENT checks and their messages are bdrv_dirty_bitmap_check's;
- successor create / abdicate / reclaim are the backup job's freeze, sync and roll-back steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from pyroaring import BitMap64

from emulator import qerror
from emulator.error import QemuError

#: Flags of DirtyBitmapSet.check (QEMU's BDRV_BITMAP_*).
BITMAP_BUSY = 1
BITMAP_RO = 2
BITMAP_INCONSISTENT = 4
BITMAP_DEFAULT = BITMAP_BUSY | BITMAP_RO | BITMAP_INCONSISTENT
BITMAP_ALLOW_RO = BITMAP_BUSY | BITMAP_INCONSISTENT

#: BDRV_BITMAP_MAX_NAME_SIZE: longest bitmap name, in bytes (UTF-8).
MAX_NAME_SIZE = 1023
MIN_GRANULARITY = 512


def granularity_valid(granularity: int) -> bool:
    """QMP's rule for a user-given granularity: a power of two, at least 512."""
    return granularity >= MIN_GRANULARITY and granularity & (granularity - 1) == 0


def default_granularity(cluster_size: int | None) -> int:
    """bdrv_get_default_bitmap_granularity: cluster size clamped to [4 KiB, 64 KiB]; 64 KiB if unknown."""
    if cluster_size is None or cluster_size <= 0:
        return 65536
    return min(65536, max(4096, cluster_size))


class DirtyBitmap:
    """One dirty bitmap (QEMU's BdrvDirtyBitmap): flags plus granule bits."""

    def __init__(self, name: str | None, granularity: int, size: int, *, disabled: bool = False,
                 persistent: bool = False) -> None:
        if not granularity_valid(granularity):
            raise ValueError(f"bad bitmap granularity {granularity}")
        if size < 0:
            raise ValueError(f"bad bitmap size {size}")
        self.name = name
        self.granularity = granularity
        self._shift = granularity.bit_length() - 1
        self.size = size
        self.disabled = disabled
        self.busy = False
        self.persistent = persistent
        self.readonly = False
        self.inconsistent = False
        #: Set while the bitmap is selected for migration (persistence is then not reported).
        self.migration = False
        #: Set by a pending block-dirty-bitmap-remove action: do not store it to the image.
        self.skip_store = False
        self.successor: DirtyBitmap | None = None
        self._bits = BitMap64()

    # ---- flags ----------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return not self.disabled

    @property
    def recording(self) -> bool:
        """Whether guest writes are still being recorded, here or in the successor."""
        return not self.disabled or (self.successor is not None and not self.successor.disabled)

    @property
    def granules(self) -> int:
        """Number of granules covering `size` bytes (hbitmap's size)."""
        return (self.size + self.granularity - 1) >> self._shift

    def check(self, flags: int) -> None:
        """bdrv_dirty_bitmap_check: raise QEMU's message for the first flag that forbids use."""
        if flags & BITMAP_BUSY and self.busy:
            raise QemuError(f"Bitmap '{self.name}' is currently in use by another operation and "
                            "cannot be used")
        if flags & BITMAP_RO and self.readonly:
            raise QemuError(f"Bitmap '{self.name}' is readonly and cannot be modified")
        if flags & BITMAP_INCONSISTENT and self.inconsistent:
            raise QemuError(f"Bitmap '{self.name}' is inconsistent and cannot be used")

    # ---- bits ---------------------------------------------------------------------------------
    def _granule_range(self, offset: int, length: int) -> tuple[int, int]:
        """Granule indices [first, stop) covering bytes [offset, offset+length), clipped to size."""
        first = offset >> self._shift
        stop = min(((offset + length - 1) >> self._shift) + 1, self.granules)
        return first, stop

    def set_dirty(self, offset: int, length: int) -> None:
        """hbitmap_set: mark every granule touching [offset, offset+length)."""
        if length <= 0:
            return
        first, stop = self._granule_range(offset, length)
        if first < stop:
            self._bits.add_range(first, stop)

    def reset_dirty(self, offset: int, length: int) -> None:
        """hbitmap_reset: clear granule-aligned [offset, offset+length) (the tail may end at size)."""
        if length <= 0:
            return
        if offset % self.granularity or (length % self.granularity and offset + length != self.size):
            raise ValueError(f"unaligned bitmap reset {offset}+{length} at granularity "
                             f"{self.granularity}")
        first, stop = self._granule_range(offset, length)
        if first < stop:
            self._bits.remove_range(first, stop)

    def clear(self) -> None:
        """hbitmap_reset_all."""
        self._bits.clear()

    def count(self) -> int:
        """bdrv_get_dirty_count: dirty granules x granularity, in bytes."""
        return len(self._bits) << self._shift

    def is_dirty(self, offset: int) -> bool:
        return (offset >> self._shift) in self._bits

    def _next_set(self, granule: int) -> int | None:
        try:
            return int(self._bits.next_set_bit(granule))
        except ValueError:
            return None

    def _run_end(self, granule: int, limit: int) -> int:
        """First clean granule after `granule` (which is dirty), or `limit` if none before it."""
        # Exponential then binary search with contains_range: O(log run) roaring calls.
        lo, hi, step = 1, 0, 1  # [granule, granule+lo) is all dirty
        room = limit - granule
        while True:
            probe = min(lo + step, room)
            if probe <= lo:
                return granule + lo
            if self._bits.contains_range(granule, granule + probe):
                lo, step = probe, step << 1
            else:
                hi = probe
                break
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._bits.contains_range(granule, granule + mid):
                lo = mid
            else:
                hi = mid
        return granule + lo

    def next_dirty(self, offset: int, end: int | None = None) -> int:
        """hbitmap_next_dirty: first dirty byte offset in [offset, end), or -1."""
        end = self.size if end is None else min(end, self.size)
        if offset >= end:
            return -1
        granule = self._next_set(offset >> self._shift)
        if granule is None:
            return -1
        found = max(offset, granule << self._shift)
        return found if found < end else -1

    def next_zero(self, offset: int, end: int | None = None) -> int:
        """hbitmap_next_zero: first clean byte offset in [offset, end), or -1."""
        end = self.size if end is None else min(end, self.size)
        if offset >= end:
            return -1
        granule = offset >> self._shift
        if granule not in self._bits:
            return offset
        # Only a clean granule before `end` matters: the run is measured up to there, not to the
        # end of the bitmap (a 1 MiB copy task asked about the whole rest of a 64 GiB run).
        limit = min(((end - 1) >> self._shift) + 1, self.granules)
        found = self._run_end(granule, limit) << self._shift
        return found if found < end else -1

    def next_dirty_area(self, offset: int, end: int | None = None,
                        max_bytes: int | None = None) -> tuple[int, int] | None:
        """hbitmap_next_dirty_area: (start, length) of the next dirty extent inside [offset, end)."""
        end = self.size if end is None else min(end, self.size)
        start = self.next_dirty(offset, end)
        if start < 0:
            return None
        if max_bytes is not None:
            end = start + min(end - start, max_bytes)
        zero = self.next_zero(start, end)
        if zero >= 0:
            end = zero
        return start, end - start

    def dirty_extents(self, offset: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """Every dirty extent (start, length) in bytes, clipped to [offset, end) and the size."""
        end = self.size if end is None else min(end, self.size)
        while offset < end:
            area = self.next_dirty_area(offset, end)
            if area is None:
                return
            yield area
            offset = area[0] + area[1]

    def merge_from(self, other: DirtyBitmap) -> None:
        """bdrv_dirty_bitmap_merge_internal: OR `other` in, without flag checks.

        Sizes must match; granularities may differ (hbitmap_merge's sparse path widens each
        dirty byte range of the source to this bitmap's granules).
        """
        if other.size != self.size:
            raise ValueError("merging bitmaps of different sizes")
        if other.granularity == self.granularity:
            self._bits |= other._bits
            return
        for start, length in other.dirty_extents():
            self.set_dirty(start, length)

    def truncate(self, size: int) -> None:
        """hbitmap_truncate: granules wholly past the new end are cleared; the grown area is clean."""
        new_granules = (size + self.granularity - 1) >> self._shift
        old_granules = self.granules
        if new_granules < old_granules:
            self._bits.remove_range(new_granules, old_granules)
        self.size = size

    def copy(self, name: str | None = None) -> DirtyBitmap:
        """A detached bitmap with the same granularity, size and bits (not in any node's list)."""
        dup = DirtyBitmap(name, self.granularity, self.size, disabled=self.disabled)
        dup._bits = BitMap64(self._bits)
        return dup

    # ---- raw bits (transaction backups, persistence) -------------------------------------------
    def save_bits(self) -> BitMap64:
        """A copy of the bits, for restore_bits (QEMU's HBitmap backup of clear/merge actions)."""
        return BitMap64(self._bits)

    def restore_bits(self, bits: BitMap64) -> None:
        self._bits = BitMap64(bits)

    @property
    def bits(self) -> BitMap64:
        """The dirty granule indices (read them; do not modify)."""
        return self._bits

    def to_bytes(self) -> bytes:
        """The bits in roaring's portable serialization (compact; cost follows the dirty data)."""
        return bytes(self._bits.serialize())

    def load_bytes(self, data: bytes) -> None:
        """Replace the bits with a to_bytes() image."""
        self._bits = BitMap64.deserialize(data)

    def to_dense(self, first_granule: int = 0, granules: int | None = None) -> bytes:
        """Granules [first, first+granules) as a dense little-endian bit array (QEMU's on-disk order).

        Bit i of byte j is granule first + 8*j + i, as hbitmap_serialize_part lays out words on a
        little-endian host.  Cost is proportional to the range asked for.
        """
        if granules is None:
            granules = self.granules - first_granule
        out = bytearray((granules + 7) // 8)
        stop = first_granule + granules
        value = 0
        for start, length in self.dirty_extents(first_granule << self._shift,
                                                stop << self._shift):
            g0 = (start >> self._shift) - first_granule
            g1 = min(((start + length - 1) >> self._shift) + 1, stop) - first_granule
            value |= ((1 << (g1 - g0)) - 1) << g0
        if value:
            out[:] = value.to_bytes(len(out), "little")
        return bytes(out)

    def load_dense(self, data: bytes, first_granule: int = 0) -> None:
        """OR a to_dense() image into the bits, starting at granule `first_granule`."""
        value = int.from_bytes(data, "little")
        limit = self.granules
        pos = 0
        while value:
            low = (value & -value).bit_length() - 1
            value >>= low
            pos += low
            run = (~value & (value + 1)).bit_length() - 1  # length of the run of ones
            start = first_granule + pos
            stop = min(start + run, limit)
            if start < stop:
                self._bits.add_range(start, stop)
            value >>= run
            pos += run

    def sha256(self) -> str:
        """hbitmap_sha256: SHA-256 of the finest HBitmap level, as QEMU holds it in memory.

        That level is an array of 64-bit little-endian words (at least one), bit i of the array
        being granule i; iotests compare bitmaps across runs and versions through this digest.
        """
        words = max((self.granules + 63) // 64, 1)
        dense = self.to_dense(0, self.granules)
        return hashlib.sha256(dense.ljust(words * 8, b"\0")).hexdigest()

    def __repr__(self) -> str:
        return (f"<DirtyBitmap {self.name!r} gran={self.granularity} count={self.count()}"
                f"{' disabled' if self.disabled else ''}{' busy' if self.busy else ''}>")


class DirtyBitmapSet:
    """The dirty bitmaps of one node (QEMU's bs->dirty_bitmaps), head-inserted as in QEMU."""

    def __init__(self) -> None:
        self._list: list[DirtyBitmap] = []

    def __iter__(self) -> Iterator[DirtyBitmap]:
        return iter(list(self._list))

    def __len__(self) -> int:
        return len(self._list)

    def __contains__(self, bm: object) -> bool:
        return any(b is bm for b in self._list)

    # ---- lifecycle ------------------------------------------------------------------------------
    def find(self, name: str) -> DirtyBitmap | None:
        """bdrv_find_dirty_bitmap."""
        for bm in self._list:
            if bm.name is not None and bm.name == name:
                return bm
        return None

    def create(self, name: str | None, granularity: int, size: int, *, disabled: bool = False,
               persistent: bool = False, oldest: bool = False) -> DirtyBitmap:
        """bdrv_create_dirty_bitmap (+ disable / set persistence as qmp_block_dirty_bitmap_add)."""
        if not granularity_valid(granularity):
            raise QemuError(qerror.GRANULARITY_INVALID)
        if name is not None:
            if self.find(name) is not None:
                raise QemuError(qerror.BITMAP_EXISTS % name)
            if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_SIZE:
                raise QemuError(f"Bitmap name too long: {name}")
        bm = DirtyBitmap(name, granularity, size, disabled=disabled, persistent=persistent)
        # `oldest`: for a bitmap QEMU created before the ones already listed (list order).
        self._list.insert(len(self._list) if oldest else 0, bm)
        return bm

    def remove(self, bm: DirtyBitmap) -> None:
        """bdrv_release_dirty_bitmap: the bitmap must not be busy nor have a successor."""
        if bm.busy or bm.successor is not None:
            raise ValueError(f"releasing {bm!r} while it is in use")
        self._remove(bm)

    def take(self, bm: DirtyBitmap, owner: DirtyBitmapSet, *, oldest: bool = False) -> None:
        """Move `bm` from `owner` to the head of this set (a bitmap created for another node,
        e.g. QEMU 10.0's block-copy bitmap that lives on the copy-before-write filter); with
        `oldest`, to the tail, as if it had been made before every bitmap here."""
        owner._remove(bm)
        self._list.insert(len(self._list) if oldest else 0, bm)

    def _remove(self, bm: DirtyBitmap) -> None:
        for i, b in enumerate(self._list):
            if b is bm:
                del self._list[i]
                return
        raise ValueError(f"{bm!r} is not on this node")

    # ---- I/O hooks ----------------------------------------------------------------------------
    def mark_dirty(self, offset: int, length: int) -> None:
        """bdrv_set_dirty: a write hit [offset, offset+length); every enabled bitmap records it."""
        for bm in self._list:
            if not bm.disabled:
                bm.set_dirty(offset, length)

    def truncate(self, size: int) -> None:
        """bdrv_dirty_bitmap_truncate: follow a resize of the node."""
        for bm in self._list:
            bm.truncate(size)

    def has_readonly(self) -> bool:
        """bdrv_has_readonly_bitmaps: writes to the node must then fail with EPERM."""
        return any(bm.readonly for bm in self._list)

    # ---- checks and successors --------------------------------------------------------------------
    @staticmethod
    def check(bm: DirtyBitmap, flags: int) -> None:
        bm.check(flags)

    def create_successor(self, bm: DirtyBitmap) -> DirtyBitmap:
        """bdrv_dirty_bitmap_create_successor: freeze `bm`; new writes go to an anonymous child."""
        bm.check(BITMAP_BUSY)
        if bm.successor is not None:
            raise QemuError("Cannot create a successor for a bitmap that already has one")
        child = self.create(None, bm.granularity, bm.size)
        child.disabled = bm.disabled
        bm.disabled = True
        bm.successor = child
        bm.busy = True
        return child

    def abdicate(self, bm: DirtyBitmap) -> DirtyBitmap:
        """bdrv_dirty_bitmap_abdicate: the successor takes the name and persistence; `bm` is freed."""
        successor = bm.successor
        if successor is None:
            raise QemuError("Cannot relinquish control if there's no successor present")
        successor.name, bm.name = bm.name, None
        bm.successor = None
        successor.persistent, bm.persistent = bm.persistent, False
        bm.busy = False
        self.remove(bm)
        return successor

    def reclaim(self, bm: DirtyBitmap) -> DirtyBitmap:
        """bdrv_reclaim_dirty_bitmap: OR the successor back in; `bm` records as the successor did."""
        successor = bm.successor
        if successor is None:
            raise QemuError("Cannot reclaim a successor when none is present")
        bm.merge_from(successor)
        bm.disabled = successor.disabled
        bm.busy = False
        self.remove(successor)
        bm.successor = None
        return bm

    # ---- query --------------------------------------------------------------------------------
    @staticmethod
    def info(bm: DirtyBitmap) -> dict[str, Any]:
        """BlockDirtyInfo as QEMU 7.2 emits it (key order as on the wire)."""
        out: dict[str, Any] = {}
        if bm.name is not None:
            out["name"] = bm.name
        out["recording"] = bm.recording
        out["persistent"] = bm.persistent and not bm.migration
        out["busy"] = bm.busy
        out["granularity"] = bm.granularity
        out["count"] = bm.count()
        if bm.inconsistent:
            out["inconsistent"] = True
        return out

    def query(self) -> list[dict[str, Any]]:
        """bdrv_query_dirty_bitmaps: info for every bitmap, in list order."""
        return [self.info(bm) for bm in self._list]


# ---- qcow2 persistence limits (block/qcow2-bitmap.c) --------------------------------------------
QCOW2_MAX_BITMAPS = 65535
QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS
BME_MAX_TABLE_SIZE = 0x8000000
BME_MAX_PHYS_SIZE = 0x20000000
BME_MIN_GRANULARITY_BITS = 9
BME_MAX_GRANULARITY_BITS = 31
BME_MAX_NAME_SIZE = 1023


def _dir_entry_size(name: str) -> int:
    """calc_dir_entry_size: a bitmap directory entry (24-byte header + name), 8-byte aligned."""
    return (24 + len(name.encode("utf-8", "surrogatepass")) + 7) & ~7


def qcow2_can_store_new_dirty_bitmap(bitmaps: DirtyBitmapSet, name: str, granularity: int, *,
                                     length: int, cluster_size: int, qcow_version: int) -> None:
    """qcow2_co_can_store_new_dirty_bitmap: may `name` become a persistent bitmap of this image?

    Raises QemuError with the reason; the caller prefixes "Can't make bitmap '<n>' persistent
    in '<node>': " to every reason except the duplicate name, as QEMU does.
    """
    if bitmaps.find(name) is not None:
        raise QemuError(qerror.BITMAP_EXISTS % name)
    if qcow_version < 3:
        raise PersistenceRefused("Cannot store dirty bitmaps in qcow2 v2 files")
    bits = granularity.bit_length() - 1
    if bits > BME_MAX_GRANULARITY_BITS:
        raise PersistenceRefused(f"Granularity exceeds maximum ({1 << BME_MAX_GRANULARITY_BITS} bytes)")
    if bits < BME_MIN_GRANULARITY_BITS:
        raise PersistenceRefused(f"Granularity is under minimum ({1 << BME_MIN_GRANULARITY_BITS} bytes)")
    bitmap_bytes = ((length + granularity - 1) // granularity + 7) // 8
    if bitmap_bytes > BME_MAX_PHYS_SIZE or bitmap_bytes > BME_MAX_TABLE_SIZE * cluster_size:
        raise PersistenceRefused("Too much space will be occupied by the bitmap. Use larger granularity")
    if len(name.encode("utf-8", "surrogatepass")) > BME_MAX_NAME_SIZE:
        raise PersistenceRefused(f"Name length exceeds maximum ({BME_MAX_NAME_SIZE} characters)")
    stored = [bm for bm in bitmaps if bm.persistent and not bm.migration and bm.name is not None]
    if len(stored) + 1 > QCOW2_MAX_BITMAPS:
        raise PersistenceRefused("Maximum number of persistent bitmaps is already reached")
    directory = sum(_dir_entry_size(bm.name or "") for bm in stored) + _dir_entry_size(name)
    if directory > QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
        raise PersistenceRefused("Not enough space in the bitmap directory")


class PersistenceRefused(QemuError):
    """A reason qcow2 cannot store a new persistent bitmap (gets QEMU's error_prepend prefix)."""


def merge_dirty_bitmap(dest: DirtyBitmap, src: DirtyBitmap) -> None:
    """bdrv_merge_dirty_bitmap: checked merge of `src` into `dest` (dest unchanged on error)."""
    dest.check(BITMAP_DEFAULT)
    src.check(BITMAP_ALLOW_RO)
    if src.size != dest.size:
        raise QemuError(f"Bitmaps are of different sizes (destination size is {dest.size}, source "
                        f"size is {src.size}) and can't be merged")
    dest.merge_from(src)
