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
from collections.abc import Callable
from typing import Any

from emulator.block.blkdebug import RequestSuspended, SuspendedRequest, suspendable
from emulator.block.copy_before_write import copy_cluster_size
from emulator.block.dirty_bitmap import DirtyBitmap
from emulator.block.node import BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_ZERO, BlockNode, buffer_is_zero

from .blockjob import BlockJob
from .job import JobList

#: Largest block-copy task (BLOCK_COPY_MAX_BUFFER: buffered read+write copies up to 1 MiB).
COPY_SIZE = 1024 * 1024
#: Tasks one block-copy call runs in parallel (BLOCK_COPY_MAX_WORKERS).
MAX_WORKERS = 64


class BackupJob(BlockJob):
    """One backup job from `source` to `target`."""

    job_type = "backup"

    def __init__(
        self,
        manager: JobList,
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
        compress: bool = False,
        max_workers: int = MAX_WORKERS,
        max_chunk: int = 0,
        bitmap_home: BlockNode | None = None,
        min_cluster_size: int = 0,
        discard_source: bool = False,
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
        #: compress=true: data reaches the target as compressed writes (BDRV_REQ_WRITE_COMPRESSED),
        #: one job cluster per copy task as block-copy does; zeroes stay plain zero writes.
        self.compress = compress
        self.len = source.length()
        self.cluster_size = copy_cluster_size(target, min_cluster_size)
        #: QEMU 10.0's discard-source: copied clusters are discarded on the source.
        self.discard_source = discard_source
        #: block_copy_chunk_size: COPY_READ_WRITE_CLUSTER (one cluster a task) when compressing.
        self.copy_size = self.cluster_size if compress else COPY_SIZE
        # x-perf: how many copy tasks run at once, and the largest task (0: no extra limit).
        self.max_workers = max_workers
        if max_chunk:
            self.copy_size = min(self.copy_size, max(max_chunk, self.cluster_size))
        super().__init__(manager, job_id, None, **job_args)
        # QEMU holds the source only through the copy-before-write filter (whose ops it blocks):
        # a second backup of the same source is accepted.
        self.add_node(source, block_ops=False)
        self.add_node(target, role="target")
        #: Copy tasks stopped at a blkdebug breakpoint: (offset, length, zeroes, request).
        self._suspended: list[tuple[int, int, bool, SuspendedRequest]] = []
        # block_copy_state_new's copy bitmap: on the source in QEMU 7.2; QEMU 10.0 puts it on the
        # copy-before-write filter, created before the filter's own bitmaps (`bitmap_home`).
        self._bitmap_home = bitmap_home or source
        self.copy_bitmap: DirtyBitmap = self._bitmap_home.dirty_bitmaps.create(
            None, self.cluster_size, self.len, disabled=True, oldest=bitmap_home is not None)
        self._init_copy_bitmap()
        self.progress_set_remaining(self.copy_bitmap.count())

    # ---- setup --------------------------------------------------------------------------------
    def _init_copy_bitmap(self) -> None:
        if self.sync == "bitmap":
            assert self.sync_bitmap is not None
            for start, length in self.sync_bitmap.dirty_extents(0, self.len):
                self.copy_bitmap.set_dirty(start, length)
        else:  # full, top and none: every cluster (none copies only what guest writes touch)
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

    # ---- copying (QEMU's block-copy) --------------------------------------------------------
    def _task_extent(self, start: int, length: int) -> tuple[int, int]:
        """block_copy_block_status: shrink a task to one status extent (whole clusters).

        Returns (bytes, flags); flags tell whether the extent reads as zeros.  The task first
        covers whole clusters (block_copy_task_create aligns its bytes up), also past the end of
        an image whose size is not a multiple of the cluster size."""
        length = _align_up(length, self.cluster_size)
        n, flags = self.source.block_status(start, min(length, self.len - start))
        if not flags & BLOCK_ALLOCATED and self.source.backing is None:
            flags |= BLOCK_ZERO  # unallocated with nothing below reads as zeros
        if n < self.cluster_size:
            return self.cluster_size, BLOCK_DATA | BLOCK_ALLOCATED
        if start + n >= self.len:
            n = _align_up(n, self.cluster_size)
        else:
            n = _align_down(n, self.cluster_size)
        return min(n, length), flags

    def _do_copy(self, offset: int, length: int, zeroes: bool) -> None:
        """block_copy_do_copy: read+write, or write zeroes; raise OSError / _TargetError."""
        n = min(offset + length, self.len) - offset
        if not zeroes:
            data = self.source.pread(offset, n)
            zeroes = buffer_is_zero(data)  # the target is opened with detect-zeroes=unmap
        try:
            if zeroes:
                self.target.pwrite_zeroes(offset, n, may_unmap=True)
            elif self.compress:
                self.target.pwrite_compressed(offset, data)
            else:
                self.target.pwrite(offset, data)
        except OSError as exc:
            raise _TargetError(exc) from exc

    def _run_task(self, offset: int, length: int, zeroes: bool,
                  can_suspend: bool = True) -> OSError | None:
        """One block-copy task: its bits are cleared while it runs and set again if it fails."""
        self.copy_bitmap.reset_dirty(offset, length)
        try:
            if can_suspend:
                with suspendable():
                    self._do_copy(offset, length, zeroes)
            else:
                self._do_copy(offset, length, zeroes)
        except RequestSuspended as exc:
            # In flight but stopped: its clusters stay claimed until the request goes on.
            self._suspended.append((offset, length, zeroes, exc.request))
            return None
        except _TargetError as exc:
            self.copy_bitmap.set_dirty(offset, length)
            exc.error.is_read = False  # type: ignore[attr-defined]
            return exc.error
        except OSError as exc:
            self.copy_bitmap.set_dirty(offset, length)
            exc.is_read = True  # type: ignore[attr-defined]
            return exc
        if self.discard_source:
            try:
                self.source.discard(offset, min(offset + length, self.len) - offset)
            except OSError:
                pass  # block_copy_task_entry ignores the discard's result
        # block_copy_task_entry: progress_work_done(t->req.bytes), the task's whole clusters
        self.progress_update(length)
        return None

    def copy_before_write(self, offset: int, length: int) -> None:
        """Called by the copy-before-write filter before a guest write: copy the old data of the
        not-yet-copied clusters it touches (block_copy with ignore_ratelimit), or fail the write."""
        start = _align_down(offset, self.cluster_size)
        end = min(_align_up(offset + length, self.cluster_size), self.len)
        self._finish_suspended_in(start, end)
        while True:
            area = self.copy_bitmap.next_dirty_area(start, end, self.copy_size)
            if area is None:
                return
            n, flags = self._task_extent(*area)
            error = self._run_task(area[0], n, _reads_as_zeroes(flags), can_suspend=False)
            if error is not None:
                raise error
            start = area[0] + n

    def _finish_suspended_in(self, start: int, end: int) -> None:
        """A guest write must not overtake the copy of its clusters: QEMU waits for the stopped
        task; the emulator (whose guest I/O cannot wait) completes that task now."""
        for task in list(self._suspended):
            offset, length, zeroes, _request = task
            if offset < end and start < offset + length:
                self._suspended.remove(task)
                error = self._run_task(offset, length, zeroes, can_suspend=False)
                if error is not None:
                    raise error

    async def _wait_suspended(self, first_error: OSError | None) -> OSError | None:
        """Let the stopped tasks go on once their breakpoints release them."""
        while self._suspended:
            offset, length, zeroes, request = self._suspended.pop(0)
            await self.wait_io(lambda request=request: request.released)  # type: ignore[misc]
            error = self._run_task(offset, length, zeroes)
            if error is not None and first_error is None:
                first_error = error
        return first_error

    async def _block_copy_call(self) -> OSError | None:
        """One background block_copy call over the whole image (block_copy_dirty_clusters).

        Tasks are started in bursts of up to MAX_WORKERS without waiting for each other, as
        QEMU's aio task pool does: a failure stops only the creation of *later* bursts, so the
        tasks of the burst it happened in still complete.  With a speed limit, the rate limiter
        is asked before each task and the call sleeps until the limit allows the next one.
        """
        offset = 0
        first_error: OSError | None = None
        in_burst = 0
        # A pause request ends the call like a cancel (backup_pause -> block_copy_call_cancel):
        # no new task starts, the running ones finish, and the job pauses at its next pause
        # point; after the resume a new call copies what is left.
        while offset < self.len and not self.is_cancelled() and not self.should_pause():
            if in_burst >= self.max_workers:
                in_burst = 0
                if first_error is not None:
                    break
            area = self.copy_bitmap.next_dirty_area(offset, self.len, self.copy_size)
            if area is None:
                break
            n, flags = self._task_extent(*area)
            if self.sync == "top" and not flags & BLOCK_ALLOCATED:
                self.copy_bitmap.reset_dirty(area[0], n)
                self.progress_set_remaining(self.copy_bitmap.count())
                offset = area[0] + n
                continue
            if self.speed:
                delay = self.limit.calculate_delay(0)
                if delay > 0:
                    if first_error is not None:
                        break
                    in_burst = 0
                    await self.sleep_ns(delay)
                    continue
                self.limit.calculate_delay(n)
            error = self._run_task(area[0], n, _reads_as_zeroes(flags))
            if error is not None and first_error is None:
                first_error = error
            in_burst += 1
            offset = area[0] + n
            await self.sleep_ns(0)
        return await self._wait_suspended(first_error)

    async def run(self) -> int:
        """backup_run + backup_loop: copy until done; on an I/O error apply the error policy."""
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
            error = await self._block_copy_call()
            if self.is_cancelled():
                return 0
            if self.should_pause():
                # backup_pause cancelled the call while it ran: block_copy_call_cancelled() is
                # checked before success or failure, so the job pauses (job_sleep_ns) and a new
                # call does what is left, even when this one had already copied everything.
                continue
            if error is None:
                if self.copy_bitmap.count() == 0:
                    return 0
                continue
            is_read = getattr(error, "is_read", True)
            code = error.errno or errno_mod.EIO
            policy = self.on_source_error if is_read else self.on_target_error
            if self.error_action(policy, is_read, code) == "report":
                return -code

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
        if self.copy_bitmap in list(self._bitmap_home.dirty_bitmaps):
            self._bitmap_home.dirty_bitmaps.remove(self.copy_bitmap)
        try:
            self.target.flush()
        except OSError:
            pass
        super().clean()
        if self._release is not None:
            self._release()
            self._release = None


def _reads_as_zeroes(flags: int) -> bool:
    return bool(flags & BLOCK_ZERO) and not flags & BLOCK_DATA


class _TargetError(Exception):
    """An I/O error on the target (reported with operation "write")."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _align_down(value: int, alignment: int) -> int:
    return value - value % alignment


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment
