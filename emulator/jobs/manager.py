"""JobManager: the job list of one emulator instance (QEMU's global `jobs` list and helpers).

Owns job-id validation, lookup and iteration (newest first, as QEMU's head-inserted list),
the events sink, cancel-all on shutdown, and waiting helpers for tests.  One manager per emulator;
nothing here is global, so several emulators can share a process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from emulator.cutils import id_wellformed
from emulator.error import QemuError

from .blockjob import BlockJob
from .job import Job, JobEventSink, JobStatus, NullJobEventSink


class JobManager:
    """All jobs of one emulator."""

    def __init__(self, events: JobEventSink | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._jobs: list[Job] = []  # newest first
        #: Set by cancel_all_sync: waits for stopped I/O requests give up (see Job.wait_io).
        self.exiting = False
        self.events: JobEventSink = events if events is not None else NullJobEventSink()
        self._loop = loop
        self._waiters: list[asyncio.Future[None]] = []

    # ---- event loop -----------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop job timers and bottom halves run on: the running loop at first use."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.get_running_loop()
        return self._loop

    @loop.setter
    def loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ---- the job list -----------------------------------------------------------------------------
    def check_new_job_id(self, job_id: str | None, internal: bool = False) -> None:
        """job_create's id checks, with QEMU's messages."""
        if job_id is not None:
            if internal:
                raise QemuError("Cannot specify job ID for internal job")
            if not id_wellformed(job_id):
                raise QemuError(f"Invalid job ID '{job_id}'")
            if self.get(job_id) is not None:
                raise QemuError(f"Job ID '{job_id}' already in use")
        elif not internal:
            raise QemuError("An explicit job ID is required")

    def register(self, job: Job) -> None:
        """Called by Job.__init__: head-insert (drained sections reach a job through its nodes)."""
        self._jobs.insert(0, job)

    def unregister(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        self.notify_change()

    def get(self, job_id: str) -> Job | None:
        """job_get: the job with that id, or None."""
        for job in self._jobs:
            if job.id is not None and job.id == job_id:
                return job
        return None

    def __iter__(self) -> Iterator[Job]:
        """Jobs in QEMU's order (most recently created first)."""
        return iter(list(self._jobs))

    def __len__(self) -> int:
        return len(self._jobs)

    def block_jobs(self) -> list[BlockJob]:
        """Block jobs (BlockJob instances), in list order, as block_job_next walks them."""
        return [job for job in self._jobs if isinstance(job, BlockJob)]

    # ---- shutdown -------------------------------------------------------------------------------
    def cancel_all_sync(self) -> None:
        """job_cancel_sync_all: force-cancel every job and wait for each to finish (QEMU exit).

        Requests stopped at blkdebug breakpoints are let go first: the emulator exits instead of
        hanging in the final drain as QEMU would."""
        self.exiting = True
        for _ in range(10_000):
            if not self._jobs:
                return
            job = self._jobs[0]
            job.cancel_sync(force=True)
            if self._jobs and self._jobs[0] is job and job.status is JobStatus.CONCLUDED:
                job.cancel(True)  # concluded and kept: cancel means dismiss
            if self._jobs and self._jobs[0] is job:
                raise RuntimeError(f"job {job.id!r} survived cancel_all_sync")
        raise RuntimeError("cancel_all_sync did not converge")

    # ---- waiting (for tests and the in-process harness) -----------------------------------------
    def notify_change(self) -> None:
        """Wake wait_until() callers: a job changed status, suspended or left."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds, re-checking after every job change; TimeoutError after `timeout` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("condition not reached")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                if not predicate():
                    raise TimeoutError("condition not reached") from None

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no job can make progress on its own: every job is gone, concluded, pending,
        user-paused and parked, or ready/standby."""

        def idle() -> bool:
            for job in self._jobs:
                if job.status in (JobStatus.CONCLUDED, JobStatus.PENDING, JobStatus.READY):
                    continue
                if job.status in (JobStatus.PAUSED, JobStatus.STANDBY) and job.user_paused:
                    continue
                if job.status is JobStatus.CREATED and not job.started:
                    continue
                return False
            return True

        await self.wait_until(idle, timeout)
