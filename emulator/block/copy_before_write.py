"""The copy-before-write filter (QEMU's block/copy-before-write.c), as a graph node.

Every write that reaches the source *through the filter* first copies the old data of the
clusters it touches to the target, so the target (read back through a snapshot-access node, or
left behind by a backup job) is the image as it was when the filter was put in place.

Two ways to get one:
- a backup job inserts it above its source, and the job's copy bitmap decides what still needs
  copying (`copy_hook` is the job's copy_before_write);
- blockdev-add of driver "copy-before-write" (options file, target, bitmap, on-cbw-error,
  cbw-timeout): the node then keeps its own block-copy state.

A failed (or timed-out, with cbw-timeout) copy either fails the guest write
(on-cbw-error=break-guest-write, the default) or lets it through and breaks the snapshot
(break-snapshot): snapshot reads then fail with EACCES.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from emulator import qerror
from emulator.error import QemuError

from .dirty_bitmap import DirtyBitmap
from .filename import node_filename
from .node import BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_ZERO, BlockNode, NodeOpener, block_driver, buffer_is_zero
from .permissions import (
    PERM_ALL,
    PERM_CONSISTENT_READ,
    PERM_RESIZE,
    PERM_WRITE,
    ROLE_DATA,
    ROLE_FILTERED,
)
from .throttle import io_background, io_deadline

CopyHook = Callable[[int, int], None]

#: BLOCK_COPY_MAX_BUFFER: the largest read+write copy task.
COPY_CHUNK = 1024 * 1024
CLUSTER_SIZE_DEFAULT = 64 * 1024


def copy_cluster_size(target: BlockNode, min_cluster_size: int = 0) -> int:
    """block_copy_calculate_cluster_size: at least 64 KiB (or QEMU 10.0's min-cluster-size),
    else the target's cluster size as bdrv_get_info reports it."""
    return max(CLUSTER_SIZE_DEFAULT, min_cluster_size, target.cluster_size_info())


def cluster_size_unknown(target: BlockNode) -> bool:
    """When block_copy_calculate_cluster_size warns that it uses the default: bdrv_get_info
    fails on the target (ENOTSUP) and the target has no backing file."""
    return target.get_info() is None and target.backing is None


def _bitmap_option(graph: NodeOpener, ref: dict[str, Any] | None) -> DirtyBitmap | None:
    """The `bitmap` option (block_dirty_bitmap_lookup's texts)."""
    if ref is None:
        return None
    try:
        node = graph.lookup_bs(ref["node"])
    except QemuError:
        raise QemuError(qerror.NODE_NOT_FOUND % ref["node"]) from None
    bitmap = node.dirty_bitmaps.find(ref["name"])
    if bitmap is None:
        raise QemuError(qerror.DIRTY_BITMAP_NOT_FOUND % ref["name"])
    return bitmap


def check_min_cluster_size(value: int) -> None:
    """block_copy_state_new's check of min-cluster-size (QEMU 10.0)."""
    if value and value & (value - 1):
        raise QemuError("Cannot create block-copy-state: min-cluster-size needs to be a power "
                        "of 2")


@block_driver
class CopyBeforeWriteNode(BlockNode):
    """Filter driver "copy-before-write": child "file" is the source, "target" the copy target."""

    driver = "copy-before-write"
    is_filter = True

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        # QEMU names the filter after its file child is open and before its target is.
        file = graph.open_child(options["file"], read_only=read_only)
        slot = len(graph.nodes)
        if auto_named:
            name = graph.generate_node_name()
        target = graph.open_child(options["target"], read_only=False)
        bitmap = _bitmap_option(graph, options.get("bitmap"))
        min_cluster = int(options.get("min-cluster-size", 0))
        check_min_cluster_size(min_cluster)
        node = cls(name, file, target, None, cluster_size=copy_cluster_size(target, min_cluster),
                   auto_named=auto_named,
                   on_cbw_error=options.get("on-cbw-error", "break-guest-write"),
                   cbw_timeout=int(options.get("cbw-timeout", 0)), bitmap=bitmap,
                   copy_bitmap_on_filter=graph.copy_bitmap_on_filter)
        return graph.register_opened(node, options, slot)

    def __init__(self, node_name: str, source: BlockNode, target: BlockNode,
                 copy_hook: CopyHook | None, *, cluster_size: int, auto_named: bool = False,
                 on_cbw_error: str = "break-guest-write", cbw_timeout: int = 0,
                 bitmap: DirtyBitmap | None = None,
                 copy_bitmap_on_filter: bool = False) -> None:
        super().__init__(node_name, auto_named=auto_named)
        # QEMU 7.2 does not mark the filter implicit: query-block shows it above the drive's node.
        self.copy_hook: CopyHook = copy_hook or self._block_copy
        self.on_cbw_error = on_cbw_error
        self.cbw_timeout_ns = cbw_timeout * 1_000_000_000
        #: The first copy error under break-snapshot (-errno): snapshot reads fail from then on.
        self.snapshot_error = 0
        self.attach_child("file", source)
        self.attach_child("target", target)
        size = source.length()
        self.cluster_size = cluster_size
        # cbw_open's done_bitmap and access_bitmap (the latter starts fully dirty): QEMU lists
        # them on the filter node.
        self.done_bitmap = self.dirty_bitmaps.create(None, cluster_size, size, disabled=True)
        self.access_bitmap = self.dirty_bitmaps.create(None, cluster_size, size, disabled=True)
        self.access_bitmap.set_dirty(0, size)
        # The block-copy state of a standalone filter: what is still to be copied (all, or the
        # `bitmap` option's dirty clusters).
        self.copy_bitmap: DirtyBitmap | None = None
        if copy_hook is None:
            # block_copy_state_new's bitmap: QEMU 7.2 lists it on the source node, QEMU 10.0 on
            # the filter (created before the filter's own two).
            self._copy_bitmap_home = self if copy_bitmap_on_filter else source
            self.copy_bitmap = self._copy_bitmap_home.dirty_bitmaps.create(
                None, cluster_size, size, disabled=True, oldest=copy_bitmap_on_filter)
            if bitmap is None:
                self.copy_bitmap.set_dirty(0, size)
            else:
                for start, length in bitmap.dirty_extents(0, size):
                    self.copy_bitmap.set_dirty(start, length)

    def exact_filename_hook(self) -> str | None:
        """cbw_refresh_filename: its source's filename."""
        source = self.children.get("file")
        return node_filename(source) if source is not None else None

    # ---- permissions ----------------------------------------------------------------------------
    def child_role(self, role: str) -> int:
        return ROLE_FILTERED if role == "file" else ROLE_DATA

    def child_perm(self, role: str, perm: int, shared: int) -> tuple[int, int]:
        """cbw_child_perm: write the target (sharing all but resize, sizes are checked once);
        on the source, once somebody uses the filter, nobody else may write or resize it."""
        if role != "file":
            return PERM_WRITE, PERM_ALL & ~PERM_RESIZE
        nperm, nshared = super().child_perm(role, perm, shared)
        if self.parents:
            if perm & PERM_WRITE:
                nperm |= PERM_CONSISTENT_READ
            nshared &= ~(PERM_WRITE | PERM_RESIZE)
        return nperm, nshared

    @property
    def source(self) -> BlockNode:
        return self.children["file"]

    @property
    def target(self) -> BlockNode:
        return self.children["target"]

    # ---- block-copy of a standalone filter --------------------------------------------------------
    def _block_copy(self, offset: int, length: int) -> None:
        """block_copy(): copy the still-dirty clusters of [offset, offset+length) in chunks."""
        assert self.copy_bitmap is not None
        end = min(offset + length, self.copy_bitmap.size)
        pos = offset
        while True:
            area = self.copy_bitmap.next_dirty_area(pos, end, COPY_CHUNK)
            if area is None:
                return
            start, n = area
            self.copy_bitmap.reset_dirty(start, n)
            try:
                status_len, flags = self.source.block_status(start, n)
                if status_len >= n and flags & BLOCK_ZERO and not flags & BLOCK_DATA:
                    self.target.pwrite_zeroes(start, n, may_unmap=True)
                else:
                    data = self.source.pread(start, n)
                    if not flags & BLOCK_ALLOCATED and buffer_is_zero(data):
                        self.target.pwrite_zeroes(start, n, may_unmap=True)
                    else:
                        self.target.pwrite(start, data)
            except OSError:
                self.copy_bitmap.set_dirty(start, n)
                raise
            pos = start + n

    # ---- the filter -----------------------------------------------------------------------------
    def _length(self) -> int:
        return self.source.length()

    def _pread(self, offset: int, length: int) -> bytes:
        return self.source.pread(offset, length)

    def close(self) -> None:
        if self.copy_bitmap is not None and "file" in self.children:
            bitmaps = self._copy_bitmap_home.dirty_bitmaps
            if self.copy_bitmap in bitmaps:
                bitmaps.remove(self.copy_bitmap)
        super().close()

    def _copy_before_write(self, offset: int, length: int) -> None:
        """cbw_do_copy_before_write: copy the old data (within cbw-timeout), then mark the
        clusters done; on failure fail the write or break the snapshot."""
        if self.snapshot_error:
            return
        start = offset - offset % self.cluster_size
        end = min(-(-(offset + length) // self.cluster_size) * self.cluster_size,
                  self.done_bitmap.size)
        try:
            with io_deadline(self.cbw_timeout_ns):
                self.copy_hook(start, end - start)
        except OSError as exc:
            if exc.errno == errno.ETIMEDOUT:
                self._finish_timed_out_copy(start, end - start)
            if self.on_cbw_error == "break-guest-write":
                raise
            self.snapshot_error = -(exc.errno or errno.EIO)
            return
        if end > start:
            self.done_bitmap.set_dirty(start, end - start)

    def _finish_timed_out_copy(self, offset: int, length: int) -> None:
        """A timed-out block_copy goes on in the background in QEMU and completes: its data
        reaches the target (the done bitmap is not set: the caller saw the timeout)."""
        try:
            with io_deadline(0), io_background():
                self.copy_hook(offset, length)
        except OSError:
            pass  # a background failure leaves the clusters to copy, as in QEMU

    def _pwrite(self, offset: int, data: bytes) -> None:
        self._copy_before_write(offset, len(data))
        self.source.pwrite(offset, data)

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self._copy_before_write(offset, length)
        self.source.pwrite_zeroes(offset, length, may_unmap)

    def _discard(self, offset: int, length: int) -> None:
        self._copy_before_write(offset, length)
        self.source.discard(offset, length)

    def _truncate(self, size: int) -> None:
        self.source.truncate(size)

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        return self.source.block_status(offset, length)

    def flush(self) -> None:
        self.source.flush()

    # ---- snapshot access (cbw_co_preadv_snapshot) ----------------------------------------------
    def snapshot_read(self, offset: int, length: int) -> bytes:
        """Read the point-in-time image: copied clusters from the target, the rest from the
        source; EACCES once the snapshot is broken or outside the accessible area."""
        if offset < 0 or length < 0 or offset + length > self.length():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        parts: list[bytes] = []
        pos, end = offset, offset + length
        while pos < end:
            if self.snapshot_error or self.access_bitmap.next_zero(pos, end) != -1:
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            cluster_end = min(end, (pos // self.cluster_size + 1) * self.cluster_size)
            child = self.target if self.done_bitmap.is_dirty(pos) else self.source
            parts.append(child.pread(pos, cluster_end - pos))
            pos = cluster_end
        return b"".join(parts)


@block_driver
class SnapshotAccessNode(BlockNode):
    """Driver "snapshot-access": a read-only view of a copy-before-write filter's snapshot."""

    driver = "snapshot-access"

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        file = graph.open_child(options["file"], read_only=read_only)
        return graph.register_opened(cls(name, file, auto_named=auto_named), options)

    def exact_filename_hook(self) -> str | None:
        """snapshot_access_refresh_filename: its file child's filename."""
        file = self.children.get("file")
        return node_filename(file) if file is not None else None

    def __init__(self, node_name: str, file: BlockNode, *, auto_named: bool = False) -> None:
        super().__init__(node_name, auto_named=auto_named)
        self.attach_child("file", file)

    def child_perm(self, role: str, perm: int, shared: int) -> tuple[int, int]:
        """snapshot_access_child_perm: it needs nothing, the snapshot API is enough."""
        return 0, PERM_ALL

    def _cbw(self) -> CopyBeforeWriteNode:
        file = self.children["file"]
        if not isinstance(file, CopyBeforeWriteNode):
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))
        return file

    def _length(self) -> int:
        return self.children["file"].length()

    def _pread(self, offset: int, length: int) -> bytes:
        return self._cbw().snapshot_read(offset, length)

    def _pwrite(self, offset: int, data: bytes) -> None:
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        return length, BLOCK_DATA | BLOCK_ALLOCATED
