"""The copy-before-write filter (QEMU 7.2's block/copy-before-write.c), as a graph node.

A backup job inserts it above its source: every write that reaches the source *through the
filter* (the device's I/O) first lets the job copy the old data of the clusters it touches to the
target, which makes the backup a point-in-time image.  It is an implicit filter: query-block skips
it, query-named-block-nodes shows it, and lookups by device name reach it (as in QEMU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .dirty_bitmap import DirtyBitmap
from .node import BlockNode
from .permissions import (
    PERM_ALL,
    PERM_CONSISTENT_READ,
    PERM_RESIZE,
    PERM_WRITE,
    ROLE_DATA,
    ROLE_FILTERED,
)

CopyHook = Callable[[int, int], None]


class CopyBeforeWriteNode(BlockNode):
    """Filter driver "copy-before-write": child "file" is the source, "target" the backup target."""

    driver = "copy-before-write"
    is_filter = True

    def __init__(self, node_name: str, source: BlockNode, target: BlockNode, copy_hook: CopyHook,
                 *, cluster_size: int, auto_named: bool = False,
                 adopt_bitmaps: Sequence[DirtyBitmap] = ()) -> None:
        """`adopt_bitmaps` move from the source to the filter before the filter's own are made
        (QEMU 10.0's cbw_open creates the block-copy bitmap on the filter node first)."""
        super().__init__(node_name, auto_named=auto_named)
        # QEMU 7.2 does not mark the filter implicit: query-block shows it above the drive's node.
        self.copy_hook = copy_hook
        self.attach_child("file", source)
        self.attach_child("target", target)
        # cbw_open's done_bitmap and access_bitmap (the latter starts fully dirty): QEMU lists
        # them on the filter node while the job runs.
        size = source.length()
        for bitmap in adopt_bitmaps:
            self.dirty_bitmaps.take(bitmap, source.dirty_bitmaps)
        self.cluster_size = cluster_size
        self.done_bitmap = self.dirty_bitmaps.create(None, cluster_size, size, disabled=True)
        self.access_bitmap = self.dirty_bitmaps.create(None, cluster_size, size, disabled=True)
        self.access_bitmap.set_dirty(0, size)

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

    def _length(self) -> int:
        return self.source.length()

    def _pread(self, offset: int, length: int) -> bytes:
        return self.source.pread(offset, length)

    def _copy_before_write(self, offset: int, length: int) -> None:
        """cbw_do_copy_before_write: copy the old data, then mark the clusters done."""
        self.copy_hook(offset, length)
        start = offset - offset % self.cluster_size
        end = -(-(offset + length) // self.cluster_size) * self.cluster_size
        self.done_bitmap.set_dirty(start, min(end, self.done_bitmap.size) - start)

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
