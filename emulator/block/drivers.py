"""Block drivers as graph nodes: file (protocol), raw, qcow2 and vmdk (formats), null-co.

Each class puts a BlockNode face on a codec: FileStorage for host files, Qcow2Image for qcow2.
The generic behaviour (bitmaps, write notifiers, blkdebug event plumbing) lives in BlockNode;
what is particular to a driver is a class attribute or hook here (see node.py).
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from emulator import qerror
from emulator.error import QemuError

from .dirty_bitmap import qcow2_can_store_new_dirty_bitmap
from .drain import attach_parent, detach_parent
from .file import FileStorage
from .filename import node_filename, strong_options
from .node import (
    BACKING_ALLOWED_OPS,
    BLOCK_ALLOCATED,
    BLOCK_DATA,
    BLOCK_ZERO,
    BlockNode,
    DriverInfo,
    NodeOpener,
    block_driver,
)
from .permissions import (
    PERM_ALL,
    PERM_CONSISTENT_READ,
    PERM_RESIZE,
    PERM_WRITE,
    PERM_WRITE_UNCHANGED,
    ROLE_FILTERED,
    TemporaryUser,
    check_perms,
)
from .qcow2 import Qcow2Image

log = logging.getLogger("emulator.block")


def _creation_file(graph: NodeOpener, ref: Any) -> BlockNode:
    """A BlockdevRef for creation: a node name, or inline options opened for the job only."""
    if isinstance(ref, str):
        return graph.lookup_bs(ref)
    raise QemuError("Inline 'file' options for blockdev-create are not supported by the emulator")


def _write_new_image(file: BlockNode, write: Any) -> None:
    """Call `write()` with 'write' and 'resize' taken on `file`, as the drivers' create
    functions do (blk_new_with_bs(bs, BLK_PERM_WRITE | BLK_PERM_RESIZE, BLK_PERM_ALL))."""
    user = TemporaryUser(PERM_WRITE | PERM_RESIZE, PERM_ALL)
    attach_parent(file, user)
    try:
        check_perms([file])
        write()
    finally:
        detach_parent(file, user)


@block_driver
class FileNode(BlockNode):
    """Protocol driver "file": a host file (QEMU's file-posix)."""

    driver = "file"
    is_protocol = True
    strong_runtime_opts = ("filename",)

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        node = cls(name, options["filename"], read_only=read_only, auto_named=auto_named)
        return graph.register_opened(node, options)

    def __init__(self, node_name: str, filename: str, *, read_only: bool = False,
                 auto_named: bool = False) -> None:
        super().__init__(node_name, read_only=read_only, auto_named=auto_named)
        self.filename = filename
        self.storage = FileStorage(filename, read_only=read_only)
        # QEMU's image locks: we read consistently (and write), others may only read or
        # write-unchanged — so a real qemu-img needs -U on an image the emulator holds, as with QEMU.
        try:
            self.storage.set_perm(PERM_CONSISTENT_READ | (0 if read_only else PERM_WRITE),
                                  PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
        except BaseException:
            self.storage.close()
            raise

    def _length(self) -> int:
        return self.storage.length()

    def _pread(self, offset: int, length: int) -> bytes:
        return self.storage.pread(offset, length)

    def _pwrite(self, offset: int, data: bytes) -> None:
        self.storage.pwrite(offset, data)

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self.storage.pwrite(offset, bytes(length))

    def _flush_to_disk(self) -> None:
        self.storage.flush()

    def _discard(self, offset: int, length: int) -> None:
        self.storage.discard(offset, length)

    def _truncate(self, size: int) -> None:
        self.storage.truncate(size)

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        return self.storage.block_status(offset, length)

    def reopen(self, read_only: bool) -> None:
        """raw_reopen_prepare/commit: a new descriptor with the new access mode and locks."""
        if read_only == self.read_only:
            return
        new = FileStorage(self.filename, read_only=read_only)
        old_locks = (self.storage._locked_perm, self.storage._locked_shared)
        self.storage.set_perm(0, PERM_ALL)  # our own old locks would conflict with the new fd
        try:
            new.set_perm(PERM_CONSISTENT_READ | (0 if read_only else PERM_WRITE),
                         PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
        except BaseException:
            new.close()
            self.storage.set_perm(*old_locks)
            raise
        self.storage.close()
        self.storage = new
        self.read_only = read_only

    def actual_size(self) -> int:
        try:
            return os.stat(self.filename).st_blocks * 512
        except OSError:
            return 0

    @classmethod
    def co_create(cls, graph: NodeOpener, options: dict[str, Any]) -> None:
        """raw_co_create (file-posix): create or truncate the file, then size it."""
        if options.get("preallocation", "off") != "off":
            raise QemuError(qerror.EMULATOR_NO_PREALLOCATION)
        filename = options["filename"]
        try:
            fd = os.open(filename, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise QemuError(f"Could not create '{filename}': {exc.strerror}") from None
        try:
            os.ftruncate(fd, 0)
            os.ftruncate(fd, int(options["size"]))
        except OSError as exc:
            raise QemuError(f"Could not resize file: {exc.strerror}") from None
        finally:
            os.close(fd)

    def get_info(self) -> DriverInfo:
        """raw_co_get_info (file-posix): succeeds, with no cluster size."""
        return DriverInfo()

    def allocated_file_size(self) -> int:
        return self.actual_size()

    def specific_info(self) -> dict[str, Any]:
        """raw_get_specific_info (QEMU 8.0+): extent-size-hint only when one is set (never here)."""
        return {"type": "file", "data": {}}

    def open_options(self) -> dict[str, Any]:
        return {"filename": self.filename, **super().open_options()}

    def exact_filename_hook(self) -> str:
        return self.filename

    def check_reopen(self, options: dict[str, Any]) -> None:
        if options.get("filename") != self.filename:
            raise QemuError("Cannot change the option 'filename'")

    def close(self) -> None:
        self.storage.close()
        super().close()


class _FormatNode(BlockNode):
    """A format driver over a `file` child."""

    is_format = True

    def __init__(self, node_name: str, file: BlockNode, *, read_only: bool = False,
                 auto_named: bool = False) -> None:
        super().__init__(node_name, read_only=read_only, auto_named=auto_named)
        self.attach_child("file", file)

    @property
    def filename(self) -> str:
        return protocol_filename(self.children["file"])


@block_driver
class RawNode(_FormatNode):
    """Format driver "raw": the guest sees its file child as is."""

    driver = "raw"
    strong_runtime_opts = ("offset", "size")

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        file = graph.open_child(options["file"], read_only=read_only)
        return graph.register_opened(cls(name, file, read_only=read_only, auto_named=auto_named),
                                     options)

    def get_info(self) -> DriverInfo | None:
        """raw_co_get_info: the file child's."""
        return self.children["file"].get_info()

    def child_role(self, role: str) -> int:
        return ROLE_FILTERED  # raw without offset/size is a filter for its file

    def child_perm(self, role: str, perm: int, shared: int) -> tuple[int, int]:
        """raw_child_perm: take write/resize on the file only if the parents want them."""
        nperm, nshared = super().child_perm(role, perm, shared)
        nperm = (nperm & ~(PERM_WRITE | PERM_RESIZE)) | (perm & (PERM_WRITE | PERM_RESIZE))
        return nperm, nshared

    def _length(self) -> int:
        return self.children["file"].length()

    def _pread(self, offset: int, length: int) -> bytes:
        self.children["file"].debug_event("read_aio")
        return self.children["file"].pread(offset, length)

    def _pwrite(self, offset: int, data: bytes) -> None:
        self.children["file"].debug_event("write_aio")
        self.children["file"].pwrite(offset, data)

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self.children["file"].pwrite_zeroes(offset, length, may_unmap)

    def _discard(self, offset: int, length: int) -> None:
        self.children["file"].discard(offset, length)

    def _truncate(self, size: int) -> None:
        self.children["file"].truncate(size)

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        return self.children["file"].block_status(offset, length)


class _ImageNode(_FormatNode):
    """A format driver whose codec (`image`: a Qcow2Image or VmdkImage) maps guest offsets to
    its file: size, cluster size and plain reads and writes go straight to it."""

    image: Any

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        file = graph.open_child(options["file"], read_only=read_only)
        return graph.register_opened(cls(name, file, read_only=read_only, auto_named=auto_named),
                                     options)

    @property
    def cluster_size(self) -> int:
        return self.image.cluster_size

    def get_info(self) -> DriverInfo:
        return DriverInfo(cluster_size=self.cluster_size)

    def _length(self) -> int:
        return self.image.size

    def _pread(self, offset: int, length: int) -> bytes:
        return self.image.pread(offset, length)

    def _pwrite(self, offset: int, data: bytes) -> None:
        self.image.pwrite(offset, data)


@block_driver
class VmdkNode(_ImageNode):
    """Format driver "vmdk" (hosted sparse extents, see vmdk.py).  QEMU's vmdk supports backing
    files; the emulator's does not (supports_backing stays False)."""

    driver = "vmdk"
    #: vmdk_co_pwritev_compressed exists for every VMDK (only compressed extents compress).
    can_compress = True

    def __init__(self, node_name: str, file: BlockNode, *, read_only: bool = False,
                 auto_named: bool = False) -> None:
        from .vmdk import VmdkImage

        super().__init__(node_name, file, read_only=read_only, auto_named=auto_named)
        try:
            self.image = VmdkImage(file, read_only=read_only)
        except BaseException:
            super().close()
            raise

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        # No zeroed-grain support here: QEMU's fallback writes a zero buffer.
        self.image.pwrite(offset, bytes(length))

    def _pwrite_compressed(self, offset: int, data: bytes) -> None:
        self.image.pwrite(offset, data)

    @classmethod
    def co_create(cls, graph: NodeOpener, options: dict[str, Any]) -> None:
        """vmdk_co_create for one hosted sparse extent in the `file` node."""
        from .vmdk import create

        for key in ("extents", "backing-file", "zeroed-grain"):
            if options.get(key):
                raise QemuError(qerror.EMULATOR_NO_OPTION % key)
        if options.get("adapter-type", "ide") != "ide" or options.get("hwversion", "4") != "4":
            raise QemuError("VMDK adapter types and hardware versions other than the defaults "
                            "are not supported by the emulator")
        file = _creation_file(graph, options["file"])
        _write_new_image(file, lambda: create(file, int(options["size"]),
                                              os.path.basename(node_filename(file)),
                                              options.get("subformat", "monolithicSparse")))

    def specific_info(self) -> dict[str, Any]:
        return {"type": "vmdk",
                "data": self.image.format_specific(node_filename(self.children["file"]))}

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        grain = self.image.cluster_size
        end = min(offset + length, -(-(offset + 1) // grain) * grain)
        if self.image.allocated(offset):
            return end - offset, BLOCK_DATA | BLOCK_ALLOCATED
        return end - offset, 0

    def close(self) -> None:
        try:
            self.image.close()
        finally:
            super().close()


@block_driver
class Qcow2Node(_ImageNode):
    """Format driver "qcow2" over a Qcow2Image codec; its backing is a child node."""

    driver = "qcow2"
    supports_backing = True

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        file = graph.open_child(options["file"], read_only=read_only)
        node = cls(name, file, read_only=read_only, auto_named=auto_named)
        graph.register_opened(node, options)
        try:
            graph.open_backing(node, options.get("backing", ...))
        except BaseException:
            graph.nodes.remove(node)
            node.close()
            raise
        return node

    @classmethod
    def co_create(cls, graph: NodeOpener, options: dict[str, Any]) -> None:
        """qcow2_co_create: check the options, then write an empty image through the file node."""
        size = int(options["size"])
        cluster_size = int(options.get("cluster-size", 65536))
        Qcow2Image.validate_cluster_size(cluster_size)
        if size % 512:
            raise QemuError(qerror.IMAGE_SIZE_NOT_SECTOR_MULTIPLE)
        if options.get("version", "v3") != "v3":
            raise QemuError("qcow2 version 2 images are not supported by the emulator")
        for key, supported in (("extended-l2", False), ("lazy-refcounts", False),
                               ("data-file-raw", False)):
            if options.get(key, supported) != supported:
                raise QemuError(qerror.EMULATOR_NO_OPTION % key)
        for key in ("data-file", "encrypt"):
            if key in options:
                raise QemuError(qerror.EMULATOR_NO_OPTION % key)
        if int(options.get("refcount-bits", 16)) != 16:
            raise QemuError("Refcount widths other than 16 bits are not supported by the emulator")
        if options.get("compression-type", "zlib") != "zlib":
            raise QemuError("Compression type 'zstd' is not supported by the emulator")
        if options.get("preallocation", "off") != "off":
            raise QemuError(qerror.EMULATOR_NO_PREALLOCATION)
        backing_file = options.get("backing-file")
        backing_fmt = options.get("backing-fmt")
        if backing_fmt and not backing_file:
            raise QemuError(qerror.BACKING_FMT_WITHOUT_FILE)
        file = _creation_file(graph, options["file"])
        _write_new_image(file, lambda: Qcow2Image.create(
            file, size, cluster_size=cluster_size, backing_file=backing_file,
            backing_fmt=backing_fmt))

    @property
    def backing_file(self) -> str:
        return self.image.backing_file or ""

    @property
    def backing_format(self) -> str:
        return self.image.backing_format or ""

    def specific_info(self) -> dict[str, Any]:
        return {"type": "qcow2", "data": self.image.format_specific()}

    def can_store_new_dirty_bitmap(self, name: str, granularity: int) -> bool:
        """qcow2_co_can_store_new_dirty_bitmap."""
        qcow2_can_store_new_dirty_bitmap(self.dirty_bitmaps, name, granularity,
                                         length=self.length(), cluster_size=self.cluster_size,
                                         qcow_version=int(self.image.version))
        return True

    def child_replaced(self, role: str, new: BlockNode) -> None:
        """The codec holds its file and backing Storage directly: point it at the new child."""
        if role == "backing":
            self.image.set_backing(new)
        elif role == "file":
            self.image.file = new

    def __init__(self, node_name: str, file: BlockNode, *, read_only: bool = False,
                 auto_named: bool = False) -> None:
        super().__init__(node_name, file, read_only=read_only, auto_named=auto_named)
        self._backing_blocker: str = ""
        self.image = Qcow2Image.open(file, read_only=read_only, keep_bitmaps=True)
        try:
            # qcow2_do_open: persistent bitmaps come into memory (and in_use onto disk) at open.
            self.image.bitmap_store.load(self.dirty_bitmaps, writable=not read_only)
        except BaseException:
            self.image.close()
            super().close()
            raise

    def set_backing(self, backing: BlockNode | None) -> None:
        """bdrv_set_backing_hd: the backing node is blocked for most operations while it is one."""
        self._detach_backing()
        if backing is not None:
            self._backing_blocker = f"node is used as backing hd of '{self.device_or_node_name()}'"
            backing.block_all_ops(self._backing_blocker, allow=BACKING_ALLOWED_OPS)
            self.attach_child("backing", backing)
        self.image.set_backing(backing)

    def _detach_backing(self) -> None:
        """bdrv_backing_detach: the old backing node is no longer blocked on our account."""
        old = self.children.get("backing")
        if old is not None:
            old.unblock_all_ops(self._backing_blocker)
            self.detach_child("backing")

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self.image.pwrite_zeroes(offset, length, may_unmap)

    can_compress = True

    def _pwrite_compressed(self, offset: int, data: bytes) -> None:
        self.image.write_compressed(offset, data)

    def _discard(self, offset: int, length: int) -> None:
        self.image.discard(offset, length)

    def _truncate(self, size: int) -> None:
        self.image.bitmap_store.truncate_check(self.dirty_bitmaps)
        self.image.truncate(size)

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        return self.image.block_status(offset, length)

    def reopen(self, read_only: bool) -> None:
        """qcow2_reopen_prepare/commit for a read-only change: going read-only stores the
        persistent bitmaps and makes them read-only (qcow2_reopen_bitmaps_ro); going read-write
        marks them in use on disk and writable again (qcow2_reopen_bitmaps_rw)."""
        if read_only == self.read_only:
            return
        if read_only:
            self.image.bitmap_store.store(self.dirty_bitmaps, writable=True, release=False)
            self.image.flush()
            for bitmap in self.dirty_bitmaps:
                if bitmap.persistent:
                    bitmap.readonly = True
            self.image.read_only = True
            self.read_only = True
        else:
            self.image.read_only = False
            self.read_only = False
            self.image.bitmap_store.reopen_rw(self.dirty_bitmaps)

    def remove_persistent_dirty_bitmap(self, name: str) -> None:
        """bdrv_co_remove_persistent_dirty_bitmap: delete `name` from the image now."""
        self.image.bitmap_store.remove(name)

    def store_persistent_dirty_bitmaps(self) -> None:
        """qcow2_inactivate's qcow2_store_persistent_dirty_bitmaps(release_stored=true)."""
        self.image.bitmap_store.store(self.dirty_bitmaps, writable=not self.read_only, release=True)

    def is_zero_fast(self, offset: int, length: int) -> bool:
        return self.image.is_zero_fast(offset, length)

    def close(self) -> None:
        try:
            try:
                self.store_persistent_dirty_bitmaps()
            except (QemuError, OSError) as exc:
                text = exc.desc if isinstance(exc, QemuError) else (exc.strerror or str(exc))
                log.error("Lost persistent bitmaps during inactivation of node '%s': %s",
                          self.device_or_node_name(), text)
            self.image.close()
        finally:
            # bdrv_close unrefs the backing child: a node that outlives us (the source of a
            # drive-backup sync=none whose target goes away with the job) is free again.
            self._detach_backing()
            super().close()


@block_driver
class NullCoNode(BlockNode):
    """Protocol driver "null-co": discards writes, reads zeros (QEMU's block/null.c)."""

    driver = "null-co"
    is_protocol = True
    strong_runtime_opts = ("size", "read-zeroes", "latency-ns")

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        node = cls(name, int(options.get("size", 1 << 30)),
                   read_zeroes=bool(options.get("read-zeroes", False)), auto_named=auto_named)
        return graph.register_opened(node, options)

    def allocated_file_size(self) -> int:
        """null_allocated_file_size."""
        return 0

    def exact_filename_hook(self) -> str:
        """null_refresh_filename: "null-co://" unless an option changes what it shows."""
        _, strong = strong_options(self)
        return "" if strong else "null-co://"

    def __init__(self, node_name: str, size: int = 1 << 30, *, read_zeroes: bool = False,
                 auto_named: bool = False) -> None:
        super().__init__(node_name, auto_named=auto_named)
        self.size = size
        self.read_zeroes = read_zeroes

    def _length(self) -> int:
        return self.size

    def _pread(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def _pwrite(self, offset: int, data: bytes) -> None:
        pass

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        pass

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        flags = BLOCK_ALLOCATED | (BLOCK_ZERO if self.read_zeroes else 0)
        return length, flags



class NoMedium(BlockNode):
    """What a BlockBackend without a medium answers I/O with: -ENOMEDIUM for every request
    (blk_check_byte_request's blk_co_is_available check).  Never part of the graph."""

    driver = ""

    def __init__(self) -> None:
        super().__init__("")

    def _length(self) -> int:
        raise OSError(errno.ENOMEDIUM, os.strerror(errno.ENOMEDIUM))

    def _pread(self, offset: int, length: int) -> bytes:
        raise OSError(errno.ENOMEDIUM, os.strerror(errno.ENOMEDIUM))


def protocol_filename(node: BlockNode) -> str:
    """The host file name under a node (through formats and filters); "" if there is none."""
    seen = 0
    while node is not None and seen < 64:
        if isinstance(node, FileNode):
            return node.filename
        if isinstance(node, NullCoNode):
            return "null-co://"
        child = node.children.get("file") or node.children.get("image")
        if child is None:
            break
        node = child
        seen += 1
    return ""

