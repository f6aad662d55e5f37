"""JobTxn: QEMU's group of jobs that complete together (job.c, job_completed_txn_*).

Every job belongs to exactly one txn; a stand-alone job gets a private one.  Members are
head-inserted, so the list runs from the last-created job to the first, and that is the
order of finalisation.  Success: a member whose work ends well waits; when the last one
arrives, all go `pending` and (unless one needs a manual job-finalize) all are prepared,
then committed and concluded.  Failure: the first member to fail or be cancelled
force-cancels every other member — also ones already waiting or pending — and then
finalises them all with their abort hooks, list head first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class TxnMember(Protocol):
    """What a JobTxn needs from its jobs (Job implements it; txn.py does not import job.py)."""

    id: str | None
    txn: JobTxn | None
    ret: int
    auto_finalize: bool

    def is_completed(self) -> bool: ...

    def cancel_requested(self) -> bool: ...

    def finish_sync(self, finish: Callable[[], None] | None = None) -> int: ...

    def _cancel_async(self, force: bool) -> None: ...

    def _transition_to_waiting(self) -> None: ...

    def _transition_to_pending(self) -> int: ...

    def _prepare(self) -> int: ...

    def _finalize_single(self) -> int: ...


class JobTxn:
    """A transactional group of jobs (QEMU's JobTxn), reference counted like QEMU's."""

    def __init__(self) -> None:
        self.jobs: list[TxnMember] = []
        self.aborting = False
        self.refcnt = 1

    def __repr__(self) -> str:
        return f"<JobTxn {[job.id for job in self.jobs]} refcnt={self.refcnt}>"

    # ---- membership and references ------------------------------------------------------------
    def ref(self) -> None:
        assert self.refcnt > 0, "use of a freed JobTxn"
        self.refcnt += 1

    def unref(self) -> None:
        """Drop a reference; the creator's reference may be dropped at any time after adding jobs."""
        assert self.refcnt > 0, "JobTxn released twice"
        self.refcnt -= 1
        if self.refcnt == 0:
            assert not self.jobs, "JobTxn freed while it still has jobs"

    def add_job(self, job: TxnMember) -> None:
        """job_txn_add_job: head-insert `job`; the job holds a reference until it leaves."""
        assert job.txn is None
        self.ref()
        job.txn = self
        self.jobs.insert(0, job)

    def del_job(self, job: TxnMember) -> None:
        if job.txn is self:
            self.jobs.remove(job)
            job.txn = None
            self.unref()

    def apply(self, fn: Callable[[TxnMember], int]) -> int:
        """job_txn_apply: call `fn` on each member in list order until one returns non-zero."""
        assert self.refcnt > 0
        for job in list(self.jobs):
            rc = fn(job)
            if rc:
                return rc
        return 0

    # ---- grouped completion -------------------------------------------------------------------
    def completed_success(self, job: TxnMember) -> None:
        """job_completed_txn_success: `job` finished well; finalise once every member has."""
        job._transition_to_waiting()
        for other in self.jobs:
            if not other.is_completed():
                return
            assert other.ret == 0
        self.apply(lambda j: j._transition_to_pending())
        if self.apply(lambda j: int(not j.auto_finalize)) == 0:
            self.do_finalize(job)

    def completed_abort(self, job: TxnMember) -> None:
        """job_completed_txn_abort: fail the whole txn because of `job`."""
        if self.aborting:
            return  # another member's failure is already finishing everything
        self.aborting = True
        self.ref()
        for other in list(self.jobs):
            if other is not job:
                # One failure makes every other result meaningless: force-cancel them.
                other._cancel_async(True)
        while self.jobs:
            other = self.jobs[0]
            if not other.is_completed():
                assert other.cancel_requested()
                other.finish_sync()
            other._finalize_single()
        self.unref()

    def do_finalize(self, job: TxnMember) -> None:
        """job_do_finalize: prepare every member; commit all, or abort all if one prepare failed."""
        if self.apply(lambda j: j._prepare()):
            self.completed_abort(job)
        else:
            self.apply(lambda j: j._finalize_single())
