"""The backup job (QEMU 7.2's block/backup.c over block/block-copy.c and copy-before-write).

What it copies is a *copy bitmap* at job-cluster granularity, made at job creation: every cluster
(full), the clusters allocated in the top layer (top), the sync bitmap's dirty clusters (bitmap),
or nothing (none: only copy-before-write).  The copy-before-write filter the command layer puts
above the source calls copy_before_write() before a guest write lands, which copies the old data
of not-yet-copied clusters to the target (point-in-time semantics): the target is the image as it
was when the job started.  The sync bitmap, if any, is frozen at creation (its
successor records new writes) and settled by commit/abort according to the bitmap mode.
"""

from __future__ import annotations

import errno as errno_mod
from typing import Any, Callable

from emulator.block.dirty_bitmap import DirtyBitmap
from emulator.block.node import BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_ZERO, BlockNode

from .blockjob import BlockJob
from .manager import JobManager

BACKUP_CLUSTER_SIZE_DEFAULT = 64 * 1024
#: Bytes copied per step when unthrottled (QEMU's block-copy uses up to 1 MiB chunks).
MAX_CHUNK = 1024 * 1024


def backup_cluster_size(target: BlockNode) -> int:
    """QEMU's backup_calculate_cluster_size: at least 64 KiB, else the target's cluster size."""
    cluster = getattr(target, "cluster_size", None)
    if not cluster:
        return BACKUP_CLUSTER_SIZE_DEFAULT
    return max(BACKUP_CLUSTER_SIZE_DEFAULT, int(cluster))


class BackupJob(BlockJob):
    """One backup job from `source` to `target`."""

    job_type = "backup"

    def __init__(
        self,
        manager: JobManager,
        job_id: str | None,
        *,
        source: BlockNode,
        target: BlockNode,
        sync: str,
        sync_bitmap: DirtyBitmap | None,
        bitmap_mode: str | None,
        on_source_error: str = "report",
        on_target_error: str = "report",
        release: Callable[[], None] | None = None,
        **job_args: Any,
    ) -> None:
        """backup_job_create after its argument checks: the job goes `created` here."""
        self.source = source
        self.target = target
        self.sync = sync
        self.sync_bitmap = sync_bitmap
        self.bitmap_mode = bitmap_mode
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        self._release = release
        self.len = source.length()
        self.cluster_size = backup_cluster_size(target)
        self.copy_bitmap: DirtyBitmap | None = None
        super().__init__(manager, job_id, None, **job_args)
        # QEMU holds the source only through the copy-before-write filter (whose ops it blocks):
        # a second backup of the same source is accepted.
        self.add_node(source, block_ops=False)
        self.add_node(target)
        self.copy_bitmap = source.dirty_bitmaps.create(
            None, self.cluster_size, self.len, disabled=True)
        self._init_copy_bitmap()
        self.progress_set_remaining(self.copy_bitmap.count())

    # ---- setup --------------------------------------------------------------------------------
    def _init_copy_bitmap(self) -> None:
        if self.sync == "bitmap":
            assert self.sync_bitmap is not None
            for start, length in self.sync_bitmap.dirty_extents(0, self.len):
                self.copy_bitmap.set_dirty(start, length)
        elif self.sync in ("full", "top"):
            self.copy_bitmap.set_dirty(0, self.len)

    def _skip_unallocated(self) -> None:
        """sync=top: drop clusters not allocated in the top layer (shrinks `len` as QEMU does)."""
        offset = 0
        while offset < self.len:
            n, flags = self.source.block_status(offset, self.len - offset)
            n = max(n, 1)
            if not flags & BLOCK_ALLOCATED:
                start = _align_up(offset, self.cluster_size)
                end = _align_down(offset + n, self.cluster_size) if offset + n < self.len else self.len
                if end > start:
                    self.copy_bitmap.reset_dirty(start, end - start)
            offset += n
        self.progress_set_remaining(self.copy_bitmap.count())

    # ---- copying ------------------------------------------------------------------------------
    def _copy_range(self, offset: int, length: int) -> None:
        """Copy [offset, offset+length) (cluster aligned) from source to target; raise on I/O error."""
        end = min(offset + length, self.len)
        pos = offset
        while pos < end:
            n, flags = self.source.block_status(pos, end - pos)
            n = max(1, min(n, end - pos))
            if flags & BLOCK_ZERO and not flags & BLOCK_DATA:
                try:
                    self.target.pwrite_zeroes(pos, n, may_unmap=True)
                except OSError as exc:
                    raise _TargetError(exc) from exc
            else:
                data = self.source.pread(pos, n)
                try:
                    if data.count(0) == len(data):
                        self.target.pwrite_zeroes(pos, n, may_unmap=True)
                    else:
                        self.target.pwrite(pos, data)
                except OSError as exc:
                    raise _TargetError(exc) from exc
            pos += n

    def _copy_clusters(self, offset: int, length: int) -> int:
        """Copy the dirty clusters of one chunk; clear them; return the bytes done."""
        self._copy_range(offset, length)
        self.copy_bitmap.reset_dirty(offset, length)
        done = min(offset + length, self.len) - offset
        self.progress_update(done)
        return done

    def copy_before_write(self, offset: int, length: int) -> None:
        """Before-write notifier: copy old data of not-yet-copied clusters the write touches."""
        start = _align_down(offset, self.cluster_size)
        end = min(_align_up(offset + length, self.cluster_size), self.len)
        for ext_start, ext_len in list(self.copy_bitmap.dirty_extents(start, end)):
            try:
                self._copy_clusters(ext_start, ext_len)
            except _TargetError as exc:
                raise exc.error from None

    def _next_chunk(self) -> tuple[int, int] | None:
        limit = self.cluster_size if self.speed else MAX_CHUNK
        for start, length in self.copy_bitmap.dirty_extents(0, self.len):
            return start, min(length, limit)
        return None

    async def run(self) -> int:
        if self.sync == "none":
            while not self.is_cancelled():
                await self.yield_()
            return 0
        if self.sync == "top":
            self._skip_unallocated()
        while True:
            await self.pause_point()
            if self.is_cancelled():
                return 0
            chunk = self._next_chunk()
            if chunk is None:
                return 0
            try:
                done = self._copy_clusters(*chunk)
            except _TargetError as exc:
                action = self.error_action(self.on_target_error, False, exc.error.errno or errno_mod.EIO)
                if action == "report":
                    return -(exc.error.errno or errno_mod.EIO)
                continue
            except OSError as exc:
                action = self.error_action(self.on_source_error, True, exc.errno or errno_mod.EIO)
                if action == "report":
                    return -(exc.errno or errno_mod.EIO)
                continue
            await self.rate_limit(done)

    # ---- completion (QEMU's backup_commit / backup_abort / backup_clean) -----------------------
    def _cleanup_sync_bitmap(self, ret: int) -> None:
        bitmap = self.sync_bitmap
        if bitmap is None:
            return
        sync = (ret == 0 or self.bitmap_mode == "always") and self.bitmap_mode != "never"
        bitmaps = self.source.dirty_bitmaps
        settled = bitmaps.abdicate(bitmap) if sync else bitmaps.reclaim(bitmap)
        if ret < 0 and self.bitmap_mode == "always":
            settled.merge_from(self.copy_bitmap)
        self.sync_bitmap = None

    def commit(self) -> None:
        self._cleanup_sync_bitmap(0)

    def abort(self) -> None:
        self._cleanup_sync_bitmap(-1)

    def clean(self) -> None:
        if self.copy_bitmap is not None and self.copy_bitmap in list(self.source.dirty_bitmaps):
            self.source.dirty_bitmaps.remove(self.copy_bitmap)
        try:
            self.target.flush()
        except OSError:
            pass
        super().clean()
        if self._release is not None:
            self._release()
            self._release = None


class _TargetError(Exception):
    """An I/O error on the target (reported with operation "write")."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _align_down(value: int, alignment: int) -> int:
    return value - value % alignment


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment
