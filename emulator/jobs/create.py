"""The "create" job of blockdev-create (QEMU's blockdev-create.c): image creation as a job.

Its whole work is one call of the driver's create function; progress goes 0/1 -> 1/1 and a
failure becomes the job's error text (query-jobs "error"), as in QEMU.  It is not a block job:
no BLOCK_JOB_* events, auto-dismiss off (JOB_MANUAL_DISMISS).
"""

from __future__ import annotations

from collections.abc import Callable

from .job import Job, JobList


class CreateJob(Job):
    """blockdev_create_run: run `create()` once in the job coroutine."""

    job_type = "create"

    def __init__(self, manager: JobList, job_id: str, create: Callable[[], None]) -> None:
        super().__init__(manager, job_id, auto_finalize=True, auto_dismiss=False)
        self._create = create

    async def run(self) -> int:
        self.progress_set_remaining(1)
        try:
            self._create()  # QemuError / OSError become the job's error (Job._co_entry)
        finally:
            self.progress_update(1)  # QEMU counts the step done whether it failed or not
        return 0
