"""Offline image helpers: probe, create and open raw/qcow2 images with their backing chains.

Used by `blocktxn img` / `blocktxn io` and by code that creates backup targets.  An OpenedImage
is a whole chain (top image plus its backing images, opened read-only) seen through the top
image, the way a BlockBackend sees it in qemu-img and qemu-io.
"""

from __future__ import annotations

import errno
import os
from typing import Self

from emulator import qerror
from emulator.error import QemuError

from .dirty_bitmap import DirtyBitmapSet
from .file import FileStorage
from .node import BLOCK_ALLOCATED, BLOCK_ZERO, sectors_to_bytes
from .qcow2 import QCOW_MAGIC, Qcow2Image
from .storage import Storage
from .vmdk import is_vmdk

FORMATS = ("qcow2", "raw")
MAX_BACKING_DEPTH = 64


def probe_format(storage: Storage) -> str:
    """Guess the format from the contents, as bdrv_probe_all does for the formats we know."""
    head = storage.pread(0, 8)
    if head[:4] == QCOW_MAGIC and int.from_bytes(head[4:8], "big") >= 2:
        return "qcow2"
    if is_vmdk(head):
        return "vmdk"
    return "raw"


def backing_path(image_filename: str, backing: str) -> str:
    """Resolve a backing file name relative to the image's directory (QEMU's path_combine)."""
    if os.path.isabs(backing) or ":" in backing.split("/", 1)[0]:
        return backing
    base = os.path.dirname(image_filename)
    return os.path.join(base, backing) if base else backing


def creation_message(filename: str, fmt: str, size: int, *, backing_file: str | None = None,
                     backing_fmt: str | None = None, cluster_size: int | None = None) -> str:
    """The "Formatting ..." line qemu-img create (and QEMU's drive-backup) prints."""
    if fmt in ("raw", "file"):
        return f"Formatting '{filename}', fmt={fmt} size={size}"
    if fmt == "vmdk":
        return f"Formatting '{filename}', fmt=vmdk size={size} compat6=off hwversion=undefined"
    parts = [f"Formatting '{filename}', fmt=qcow2", f"cluster_size={cluster_size or 65536}",
             "extended_l2=off", "compression_type=zlib", f"size={size}"]
    # qemu_opts_print escapes commas in string values by doubling them.
    if backing_file:
        parts.append(f"backing_file={backing_file.replace(',', ',,')}")
    if backing_fmt:
        parts.append(f"backing_fmt={backing_fmt.replace(',', ',,')}")
    parts += ["lazy_refcounts=off", "refcount_bits=16"]
    return " ".join(parts)


def create_image(filename: str, fmt: str, size: int, *, backing_file: str | None = None,
                 backing_fmt: str | None = None, cluster_size: int | None = None) -> str:
    """Create (or overwrite) an image file; returns the "Formatting ..." line to print.

    Does not open the backing file (like `qemu-img create -u`); callers that want the size or a
    validity check from the backing use open_image_chain first.
    """
    if fmt not in FORMATS and fmt not in ("file", "vmdk"):  # "file": the protocol driver
        raise QemuError(f"Unknown file format '{fmt}'")
    if fmt == "vmdk" and backing_file:
        raise QemuError("VMDK images with a backing file are not supported by the emulator")
    if fmt in ("raw", "file") and backing_file:
        raise QemuError(f"Backing file not supported for file format '{fmt}'")
    if fmt == "raw" and cluster_size is not None:
        raise QemuError(qerror.INVALID_PARAMETER % "cluster_size")
    if size < 0:
        raise QemuError("Image size must be less than 8 EiB!")
    message = creation_message(filename, fmt, size, backing_file=backing_file, backing_fmt=backing_fmt,
                               cluster_size=cluster_size)
    if fmt == "qcow2":
        Qcow2Image.validate_cluster_size(cluster_size or 65536)  # before the file is created
    rounded = (size + 511) // 512 * 512
    storage = FileStorage(filename, create=True, no_flush=True)
    try:
        if fmt in ("raw", "file"):
            storage.truncate(rounded)
        elif fmt == "vmdk":
            from .vmdk import create as create_vmdk

            create_vmdk(storage, rounded, os.path.basename(filename))
        else:
            Qcow2Image.create(storage, rounded, cluster_size=cluster_size or 65536,
                              backing_file=backing_file, backing_fmt=backing_fmt)
    finally:
        storage.close()
    return message


class OpenedImage:
    """An image and its opened backing chain, with Storage-style guest I/O on the top image."""

    def __init__(self, filename: str, fmt: str, file: FileStorage, qcow2: Qcow2Image | None,
                 backing: OpenedImage | None, *, read_only: bool, discard: bool = False) -> None:
        self.filename = filename
        self.format = fmt
        self.file = file
        self.qcow2 = qcow2
        self.backing = backing
        self.read_only = read_only
        #: Whether guest discards reach the image (QEMU's discard=unmap); off by default as in QEMU.
        self.discard_enabled = discard
        #: Persistent bitmaps of a writable top qcow2: kept current by writes and stored at close,
        #: as qemu-io/qemu-img do (instead of invalidating them).
        self.bitmaps: DirtyBitmapSet | None = None
        if qcow2 is not None:
            qcow2.set_backing(backing)

    # ---- metadata -----------------------------------------------------------------------------
    @property
    def backing_format(self) -> str | None:
        return self.qcow2.backing_format if self.qcow2 else None

    @property
    def cluster_size(self) -> int | None:
        return self.qcow2.cluster_size if self.qcow2 else None

    def chain(self) -> list[OpenedImage]:
        """This image and its backing images, top first."""
        out: list[OpenedImage] = []
        img: OpenedImage | None = self
        while img is not None:
            out.append(img)
            img = img.backing
        return out

    # ---- guest I/O ----------------------------------------------------------------------------
    def length(self) -> int:
        """bdrv_getlength of the top image: whole sectors, so a raw file's partial last
        sector counts in full (a 1000-byte raw image is 1024 bytes long, as in QEMU)."""
        return sectors_to_bytes(self.qcow2.size if self.qcow2 else self.file.length())

    def _check(self, offset: int, length: int, write: bool) -> None:
        if write and self.read_only:
            raise OSError(errno.EPERM, "Operation not permitted")
        if offset < 0 or length < 0 or offset + length > self.length():
            raise OSError(errno.EIO, "Input/output error")

    def pread(self, offset: int, length: int) -> bytes:
        if self.qcow2:
            return self.qcow2.pread(offset, length)
        return self.file.pread(offset, length)

    def _mark_dirty(self, offset: int, length: int) -> None:
        if self.bitmaps is not None:
            self.bitmaps.mark_dirty(offset, length)

    def pwrite(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data), True)
        if self.qcow2:
            self.qcow2.pwrite(offset, data)
        else:
            self.file.pwrite(offset, data)
        self._mark_dirty(offset, len(data))

    def pwrite_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        self._check(offset, length, True)
        if self.qcow2:
            self.qcow2.pwrite_zeroes(offset, length, may_unmap)
        else:
            self.file.pwrite(offset, bytes(length))
        self._mark_dirty(offset, length)

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length, True)
        if not self.discard_enabled:
            return
        if self.qcow2:
            self.qcow2.discard(offset, length)
            self._mark_dirty(offset, length)

    def flush(self) -> None:
        if self.read_only:
            return
        if self.qcow2:
            self.qcow2.flush()
        else:
            self.file.flush()

    def truncate(self, size: int) -> None:
        if self.read_only:
            raise OSError(errno.EPERM, "Operation not permitted")
        if self.qcow2:
            self.qcow2.truncate(size)
        else:
            self.file.truncate(size)

    def debug_event(self, event: str) -> None:
        """Storage protocol hook (no blkdebug offline)."""

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """(bytes, flags) of the top image only; flags 0 means "look in the backing image"."""
        if offset >= self.length() or length <= 0:
            return 0, 0
        if self.qcow2:
            return self.qcow2.block_status(offset, length)
        return self.file.block_status(offset, min(length, self.length() - offset))

    def mapping(self, offset: int, length: int) -> tuple[int, int, int | None]:
        """(bytes, flags, host offset) of the top image, for qemu-img map."""
        if self.qcow2:
            return self.qcow2.mapping(offset, length)
        n, flags = self.block_status(offset, length)
        return n, flags, offset

    def layer_status(self, offset: int, length: int) -> tuple[int, int, int | None]:
        """(bytes, flags, host offset) of this image alone, as bdrv_block_status reports it:
        an unallocated range reads as ZERO (not ALLOCATED) when there is no backing image or the
        range lies past the backing image's end."""
        n, flags, host = self.mapping(offset, length)
        if n and not flags & BLOCK_ALLOCATED:
            if self.backing is None:
                flags |= BLOCK_ZERO
            else:
                blen = self.backing.length()
                if offset >= blen:
                    flags |= BLOCK_ZERO
                else:
                    n = min(n, blen - offset)
        return n, flags, host

    def status_above(self, offset: int, length: int) -> tuple[int, int]:
        """(bytes, flags) through the whole chain (bdrv_block_status_above with base NULL)."""
        img = self
        while True:
            n, flags, _host = img.layer_status(offset, length)
            if not n or flags & BLOCK_ALLOCATED or img.backing is None:
                return n, flags
            if flags & BLOCK_ZERO:  # past the end of the backing image: zeros "allocated" here
                return n, flags | BLOCK_ALLOCATED
            length = n
            img = img.backing

    def is_zero_fast(self, offset: int, length: int) -> bool:
        """True if the chain's metadata alone says [offset, offset+length) reads as zeros."""
        if self.qcow2:
            return self.qcow2.is_zero_fast(offset, length)
        end = min(offset + length, self.length())
        while offset < end:
            n, flags = self.file.block_status(offset, end - offset)
            if not n or not flags & BLOCK_ZERO:
                return False
            offset += n
        return True

    def close(self) -> None:
        """Close the whole chain (storing the top image's persistent bitmaps first)."""
        if self.bitmaps is not None and self.qcow2 is not None:
            self.qcow2.bitmap_store.store(self.bitmaps, writable=True)
            self.bitmaps = None
        for img in self.chain():
            if img.qcow2:
                img.qcow2.close()
            img.file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_image_chain(filename: str, fmt: str | None = None, *, read_only: bool = True,
                     backing: bool = True, discard: bool = False, _depth: int = 0,
                     _seen: frozenset[str] = frozenset()) -> OpenedImage:
    """Open `filename` (format `fmt` or probed) and, unless backing=False, its backing chain.

    Errors are QemuErrors with QEMU's inner texts (callers add "Could not open 'F': " as qemu-img
    does); a missing backing file is "Could not open backing file: Could not open 'B': ...".
    """
    if fmt is not None and fmt not in FORMATS:
        raise QemuError(qerror.UNKNOWN_DRIVER % fmt)
    real = os.path.realpath(filename)
    if real in _seen or _depth > MAX_BACKING_DEPTH:
        raise QemuError(f"Backing file loop detected at '{filename}'")
    file = FileStorage(filename, read_only=read_only)
    try:
        fmt = fmt or probe_format(file)
        keep = fmt == "qcow2" and not read_only
        qcow2 = Qcow2Image.open(file, read_only=read_only, keep_bitmaps=keep) if fmt == "qcow2" else None
        back: OpenedImage | None = None
        if qcow2 is not None and qcow2.backing_file and backing:
            path = backing_path(filename, qcow2.backing_file)
            try:
                back = open_image_chain(path, qcow2.backing_format, read_only=True, _depth=_depth + 1,
                                        _seen=_seen | {real})
            except QemuError as e:
                raise QemuError(qerror.COULD_NOT_OPEN_BACKING % e.desc) from None
        opened = OpenedImage(filename, fmt, file, qcow2, back, read_only=read_only, discard=discard)
        if keep and qcow2 is not None:
            opened.bitmaps = DirtyBitmapSet()
            qcow2.bitmap_store.load(opened.bitmaps, writable=True)
        return opened
    except BaseException:
        file.close()
        raise
