"""VMDK sparse extents (QEMU's block/vmdk.c), as far as backups to VMDK need them.

Supported: one hosted sparse extent ("KDMV" header, the descriptor in the same file) as
qemu-img creates for subformat=monolithicSparse and streamOptimized, with its grain directory,
redundant grain directory and grain tables.  streamOptimized extents store every grain
compressed (a grain marker: guest sector, size, then zlib data), appended at the end of the
file; a grain cannot be written twice there ("Could not write to allocated cluster for
streamOptimized"), as in QEMU.  Split, flat and VMFS extents, backing files and the GD-at-end
layout of foreign streamOptimized files are refused.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib

from emulator.error import QemuError

from .storage import Storage

VMDK4_MAGIC = b"KDMV"
SECTOR = 512
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
FLAG_RGD = 1 << 1
FLAG_COMPRESS = 1 << 16
FLAG_MARKER = 1 << 17
GTE_ZEROED = 1
GD_AT_END = 0xFFFFFFFFFFFFFFFF
_MARKER = struct.Struct("<QI")


def is_vmdk(head: bytes) -> bool:
    return head[:4] == VMDK4_MAGIC


_DESCRIPTOR = """# Disk DescriptorFile
version=1
CID={cid:x}
parentCID=ffffffff
createType="{create_type}"

# Extent description
RW {sectors} SPARSE "{name}"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "{cylinders}"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
ddb.toolsVersion = "2147483647"
"""


def create(file: Storage, size: int, name: str, subformat: str = "monolithicSparse",
           cid: int | None = None) -> None:
    """vmdk_co_do_create + vmdk_init_extent for a hosted sparse extent: header, descriptor,
    redundant and primary grain directories with their grain tables, padded to a grain."""
    if subformat not in ("monolithicSparse", "streamOptimized"):
        raise QemuError(f"VMDK subformat '{subformat}' is not supported by the emulator")
    sectors = -(-size // SECTOR)
    granularity, gtes = 128, 512
    gt_size = (gtes * 4 + SECTOR - 1) // SECTOR
    gt_count = max(1, -(-sectors // (gtes * granularity)))
    gd_sectors = -(-(gt_count * 4) // SECTOR)
    desc_offset, desc_size = 1, 20
    rgd_offset = desc_offset + desc_size
    gd_offset = rgd_offset + gd_sectors + gt_size * gt_count
    overhead = -(-(gd_offset + gd_sectors + gt_size * gt_count) // granularity) * granularity
    stream = subformat == "streamOptimized"
    flags = 3 | ((FLAG_COMPRESS | FLAG_MARKER) if stream else 0)
    header = _HEADER.pack(VMDK4_MAGIC, 3 if stream else 1, flags, sectors, granularity,
                          desc_offset, desc_size, gtes, rgd_offset, gd_offset, overhead, 0,
                          b"\n \r\n", 1 if stream else 0)
    if cid is None:
        cid = int.from_bytes(os.urandom(4), "little")
    descriptor = _DESCRIPTOR.format(cid=cid, create_type=subformat, sectors=sectors, name=name,
                                    cylinders=sectors // (16 * 63)).encode()
    file.truncate(0)
    file.pwrite(0, header.ljust(SECTOR, b"\0") + descriptor.ljust(desc_size * SECTOR, b"\0"))
    for directory in (rgd_offset, gd_offset):
        entries = [directory + gd_sectors + i * gt_size for i in range(gt_count)]
        file.pwrite(directory * SECTOR, struct.pack(f"<{gt_count}I", *entries))
    file.truncate(overhead * SECTOR)


class VmdkImage:
    """An open sparse VMDK: guest reads, writes (compressed on streamOptimized) and size."""

    def __init__(self, file: Storage, *, read_only: bool = False) -> None:
        self.file = file
        self.read_only = read_only
        raw = file.pread(0, _HEADER.size)
        (magic, version, flags, capacity, granularity, desc_offset, desc_size, gtes, rgd_offset,
         gd_offset, overhead, _unclean, _chars, compress_algorithm) = _HEADER.unpack(raw)
        if magic != VMDK4_MAGIC:
            raise QemuError("Image not in VMDK format")
        if version > 3:
            raise QemuError(f"Unsupported VMDK version {version}")
        if gd_offset == GD_AT_END:
            raise QemuError("VMDK images with the grain directory at the end are not supported "
                            "by the emulator")
        if not granularity or granularity & (granularity - 1) or granularity > 0x20000:
            raise QemuError("Invalid granularity, image may be corrupt")
        self.flags = flags
        self.size = capacity * SECTOR
        self.cluster_sectors = granularity
        self.cluster_size = granularity * SECTOR
        self.gtes = gtes
        self.compressed = bool(compress_algorithm) and bool(flags & FLAG_COMPRESS)
        self.has_marker = bool(flags & FLAG_MARKER)
        self.rgd_sector = rgd_offset if flags & FLAG_RGD else 0
        descriptor = file.pread(desc_offset * SECTOR, desc_size * SECTOR)
        self.create_type = self._descriptor_value(descriptor, "createType")
        self.cid = int(self._descriptor_value(descriptor, "CID") or "0", 16)
        self.parent_cid = int(self._descriptor_value(descriptor, "parentCID") or "ffffffff", 16)
        span = gtes * self.cluster_size
        self.l1_size = (self.size + span - 1) // span
        self.gd = list(struct.unpack(f"<{self.l1_size}I",
                                     file.pread(gd_offset * SECTOR, 4 * self.l1_size)))
        self.rgd = (list(struct.unpack(f"<{self.l1_size}I",
                                       file.pread(self.rgd_sector * SECTOR, 4 * self.l1_size)))
                    if self.rgd_sector else [])
        del overhead
        # vmdk_add_extent: new grains go after everything in the file (whole grains).
        sectors = -(-file.length() // SECTOR)
        self.next_cluster_sector = -(-sectors // granularity) * granularity
        self._tables: dict[int, list[int]] = {}

    @staticmethod
    def _descriptor_value(descriptor: bytes, key: str) -> str:
        text = descriptor.split(b"\0", 1)[0].decode("latin-1")
        for line in text.splitlines():
            if line.startswith(f"{key}="):
                return line.split("=", 1)[1].strip().strip('"')
        return ""

    def format_specific(self, filename: str) -> dict[str, object]:
        """ImageInfoSpecificVmdk (vmdk_get_specific_info) for the one hosted extent."""
        extent: dict[str, object] = {"filename": filename, "format": "",
                                     "virtual-size": self.size, "cluster-size": self.cluster_size}
        if self.compressed:
            extent["compressed"] = True
        return {"create-type": self.create_type, "cid": self.cid, "parent-cid": self.parent_cid,
                "extents": [extent]}

    # ---- grain tables -------------------------------------------------------------------------
    def _table(self, l1_index: int) -> list[int] | None:
        sector = self.gd[l1_index]
        if not sector:
            return None
        table = self._tables.get(sector)
        if table is None:
            table = list(struct.unpack(f"<{self.gtes}I",
                                       self.file.pread(sector * SECTOR, 4 * self.gtes)))
            self._tables[sector] = table
        return table

    def _locate(self, offset: int) -> tuple[int, int]:
        span = self.gtes * self.cluster_size
        return offset // span, (offset % span) // self.cluster_size

    def _set_entry(self, offset: int, value: int) -> None:
        """vmdk_L2update: the grain table entry, and its copy under the redundant directory."""
        l1_index, l2_index = self._locate(offset)
        table = self._table(l1_index)
        if table is None:
            raise OSError(errno.ENOTSUP, "VMDK grain table allocation is not supported by the "
                                         "emulator")
        table[l2_index] = value
        packed = struct.pack("<I", value)
        self.file.pwrite(self.gd[l1_index] * SECTOR + 4 * l2_index, packed)
        if self.rgd and self.rgd[l1_index]:
            self.file.pwrite(self.rgd[l1_index] * SECTOR + 4 * l2_index, packed)

    def _entry(self, offset: int) -> int:
        l1_index, l2_index = self._locate(offset)
        table = self._table(l1_index)
        return 0 if table is None else table[l2_index]

    # ---- reads --------------------------------------------------------------------------------
    def _grain(self, entry: int) -> bytes:
        """A whole grain's data (decompressed on compressed extents)."""
        if not self.compressed:
            return self.file.pread(entry * SECTOR, self.cluster_size)
        head = self.file.pread(entry * SECTOR, _MARKER.size if self.has_marker else 0)
        if self.has_marker:
            _lba, size = _MARKER.unpack(head)
            data = self.file.pread(entry * SECTOR + _MARKER.size, size)
        else:
            data = self.file.pread(entry * SECTOR, 2 * self.cluster_size)
        try:
            out = zlib.decompressobj().decompress(data, self.cluster_size)
        except zlib.error:
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from None
        return out.ljust(self.cluster_size, b"\0")

    def pread(self, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        pos, end = offset, offset + length
        while pos < end:
            grain_start = pos - pos % self.cluster_size
            stop = min(end, grain_start + self.cluster_size)
            entry = self._entry(pos) if pos < self.size else 0
            if entry in (0, GTE_ZEROED):
                parts.append(bytes(stop - pos))
            else:
                parts.append(self._grain(entry)[pos - grain_start:stop - grain_start])
            pos = stop
        return b"".join(parts)

    def allocated(self, offset: int) -> bool:
        return self._entry(offset) not in (0, GTE_ZEROED)

    # ---- writes -------------------------------------------------------------------------------
    def pwrite(self, offset: int, data: bytes) -> None:
        """vmdk_pwritev: grain by grain; new grains are appended (compressed if the extent is)."""
        if self.read_only:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        if offset < 0 or offset + len(data) > self.size:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        pos = 0
        while pos < len(data):
            guest = offset + pos
            grain_start = guest - guest % self.cluster_size
            n = min(len(data) - pos, grain_start + self.cluster_size - guest)
            self._write_grain(grain_start, guest - grain_start, data[pos:pos + n])
            pos += n

    def _write_grain(self, grain_start: int, skip: int, piece: bytes) -> None:
        entry = self._entry(grain_start)
        allocated = entry not in (0, GTE_ZEROED)
        if self.compressed:
            if allocated:
                raise OSError(errno.EIO, "Could not write to allocated cluster for "
                                         "streamOptimized")
            whole = piece if skip == 0 and len(piece) == self.cluster_size else \
                bytes(skip) + piece + bytes(self.cluster_size - skip - len(piece))
            payload = zlib.compress(whole)
            sector = self.next_cluster_sector
            record = (_MARKER.pack(grain_start // SECTOR, len(payload)) if self.has_marker
                      else b"") + payload
            self.file.pwrite(sector * SECTOR, record)
            self.next_cluster_sector = -(-(sector * SECTOR + len(record)) // SECTOR)
            self._set_entry(grain_start, sector)
            return
        if allocated:
            self.file.pwrite(entry * SECTOR + skip, piece)
            return
        whole = bytes(skip) + piece + bytes(self.cluster_size - skip - len(piece))
        sector = self.next_cluster_sector
        self.next_cluster_sector += self.cluster_sectors
        self.file.pwrite(sector * SECTOR, whole)
        self._set_entry(grain_start, sector)

    def flush(self) -> None:
        if not self.read_only:
            self.file.flush()

    def close(self) -> None:
        """The EOF signal of vmdk_co_pwritev_compressed: the file ends on a sector boundary."""
        if self.read_only or not self.compressed:
            return
        length = self.file.length()
        if length % SECTOR:
            self.file.truncate(length + SECTOR - length % SECTOR)
