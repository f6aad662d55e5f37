"""Port of QEMU's tests/unit/test-blockjob-txn.c to the emulator's job core, plus the cases
upstream lacks (three jobs, cancel while waiting, manual finalize, cancel at pending, ...).

As upstream: a test block job on a null-co node runs N iterations — each a 0 ns sleep
(`use_timer`) or a bare yield that only a hand-made enter() resumes — stops early when
cancelled and returns a preset rc; its completion callback records the result (-ECANCELED
when it was cancelled with rc 0).  The event loop is run until every result is in.
Besides the results, every case asserts each job's exact event sequence.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import JobEventRecorder as Recorder

from emulator.block.drivers import NullCoNode
from emulator.jobs import BlockJob, Job, JobManager, JobStatus, JobTxn

EINPROGRESS = -errno.EINPROGRESS
EIO = -errno.EIO
ECANCELED = -errno.ECANCELED


class TestBlockJob(BlockJob):
    """upstream's TestBlockJob: `iterations` sleeps or yields, then `rc`."""

    __test__ = False
    job_type = "backup"

    def __init__(self, manager: JobManager, job_id: str, *, iterations: int, use_timer: bool,
                 rc: int, txn: JobTxn | None, **kwargs: Any) -> None:
        self.iterations = iterations
        self.use_timer = use_timer
        self.rc = rc
        self.result = EINPROGRESS
        super().__init__(manager, job_id, NullCoNode(f"null-{job_id}", read_zeroes=True),
                         txn=txn, cb=self._record_result, **kwargs)

    async def run(self) -> int:
        while self.iterations:
            self.iterations -= 1
            if self.use_timer:
                await self.sleep_ns(0)
            else:
                await self.yield_()
            if self.is_cancelled():
                break
        return self.rc

    @staticmethod
    def _record_result(job: Job, ret: int) -> None:
        """test_block_job_cb."""
        assert isinstance(job, TestBlockJob)
        if not ret and job.is_cancelled():
            ret = ECANCELED
        job.result = ret


class Harness:
    """A JobManager with a recorder, numbering jobs job0, job1, ... as upstream does."""

    def __init__(self) -> None:
        self.events = Recorder()
        self.manager = JobManager(self.events)
        self.counter = 0

    def start_job(self, iterations: int, use_timer: bool, rc: int, txn: JobTxn | None,
                  **kwargs: Any) -> TestBlockJob:
        """test_block_job_start (create only; the test calls start())."""
        job = TestBlockJob(self.manager, f"job{self.counter}", iterations=iterations,
                           use_timer=use_timer, rc=rc, txn=txn, **kwargs)
        self.counter += 1
        return job

    async def run_until_results(self, *jobs: TestBlockJob) -> None:
        await self.manager.wait_until(lambda: all(j.result != EINPROGRESS for j in jobs), timeout=5)


def run(scenario: Callable[[Harness], Coroutine[Any, Any, None]]) -> Harness:
    harness = Harness()
    asyncio.run(asyncio.wait_for(scenario(harness), 10))
    return harness


SUCCESS = ["created", "running", "waiting", "pending", "COMPLETED", "concluded", "null"]
EIO_FAIL = ["created", "running", "aborting", "COMPLETED(Input/output error)", "concluded", "null"]
CANCELLED = ["created", "running", "aborting", "CANCELLED", "concluded", "null"]
CANCELLED_AFTER_WAITING = ["created", "running", "waiting", "aborting", "CANCELLED", "concluded", "null"]


# ---- /single/* -----------------------------------------------------------------------------------
@pytest.mark.parametrize("expected, sequence", [
    (0, SUCCESS), (EIO, EIO_FAIL), (ECANCELED, CANCELLED),
], ids=["success", "failure", "cancel"])
def test_single_job(expected: int, sequence: list[str]) -> None:
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        job = h.start_job(1, True, expected, txn)
        job.start()
        if expected == ECANCELED:
            job.cancel(False)
        await h.run_until_results(job)
        assert job.result == expected
        txn.unref()
        assert txn.refcnt == 0 and not txn.jobs

    h = run(scenario)
    assert h.events.of("job0") == sequence
    assert len(h.manager) == 0


def test_single_job_in_private_txn() -> None:
    """A job created without a txn gets a private one (job_create)."""
    async def scenario(h: Harness) -> None:
        job = h.start_job(1, True, 0, None)
        assert job.txn is not None and job.txn.jobs == [job]
        private = job.txn
        job.start()
        await h.run_until_results(job)
        assert job.result == 0 and private.refcnt == 0

    assert run(scenario).events.of("job0") == SUCCESS


# ---- /pair/* -------------------------------------------------------------------------------------
def pair(expected1: int, expected2: int) -> Harness:
    """test_pair_jobs: job0 1 iteration, job1 2 iterations, caller's txn ref dropped at once."""
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        job1 = h.start_job(1, True, expected1, txn)
        job2 = h.start_job(2, True, expected2, txn)
        job1.start()
        job2.start()
        # Release our reference now, as upstream does, to catch use-after-free.
        txn.unref()
        if expected1 == ECANCELED:
            job1.cancel(False)
        if expected2 == ECANCELED:
            job2.cancel(False)
        await h.run_until_results(job1, job2)
        want1, want2 = expected1, expected2
        if expected1 != 0:
            want2 = ECANCELED
        elif expected2 != 0:
            want1 = ECANCELED
        assert (job1.result, job2.result) == (want1, want2)
        assert txn.refcnt == 0 and not txn.jobs

    return run(scenario)


def test_pair_success() -> None:
    h = pair(0, 0)
    assert h.events.of("job0") == SUCCESS
    assert h.events.of("job1") == SUCCESS
    # pending only once both wait; finalisation in txn-list order: last created first.
    tail = [e for e in h.events.log if e[1] not in ("created", "running")]
    assert tail == [
        ("job0", "waiting"), ("job1", "waiting"),
        ("job1", "pending"), ("job0", "pending"),
        ("job1", "COMPLETED"), ("job1", "concluded"), ("job1", "null"),
        ("job0", "COMPLETED"), ("job0", "concluded"), ("job0", "null"),
    ]


def test_pair_failure_first_job_fails_while_other_runs() -> None:
    h = pair(EIO, 0)
    assert h.events.of("job0") == EIO_FAIL
    assert h.events.of("job1") == CANCELLED
    tail = [e for e in h.events.log if e[1] not in ("created", "running")]
    assert tail == [
        ("job0", "aborting"), ("job1", "aborting"),
        ("job1", "CANCELLED"), ("job1", "concluded"), ("job1", "null"),
        ("job0", "COMPLETED(Input/output error)"), ("job0", "concluded"), ("job0", "null"),
    ]


def test_pair_failure_after_other_finished() -> None:
    """job0 succeeds first (waiting), then job1 fails: job0 is still reported cancelled."""
    h = pair(0, EIO)
    assert h.events.of("job0") == CANCELLED_AFTER_WAITING
    assert h.events.of("job1") == EIO_FAIL
    tail = [e for e in h.events.log if e[1] not in ("created", "running")]
    assert tail == [
        ("job0", "waiting"), ("job1", "aborting"),
        ("job1", "COMPLETED(Input/output error)"), ("job1", "concluded"), ("job1", "null"),
        ("job0", "aborting"), ("job0", "CANCELLED"), ("job0", "concluded"), ("job0", "null"),
    ]


def test_pair_cancel_first() -> None:
    h = pair(ECANCELED, 0)
    assert h.events.of("job0") == CANCELLED
    assert h.events.of("job1") == CANCELLED
    tail = [e for e in h.events.log if e[1] not in ("created", "running")]
    # As real QEMU's c1: the cancelled job first, then the partner, finalised head first.
    assert tail == [
        ("job0", "aborting"), ("job1", "aborting"),
        ("job1", "CANCELLED"), ("job1", "concluded"), ("job1", "null"),
        ("job0", "CANCELLED"), ("job0", "concluded"), ("job0", "null"),
    ]


def test_pair_cancel_second() -> None:
    h = pair(0, ECANCELED)
    assert h.events.of("job1") == CANCELLED
    # job0 finished its single iteration before job1's cancellation was processed.
    assert h.events.of("job0") in (CANCELLED, CANCELLED_AFTER_WAITING)
    assert h.events.log[-3:] == [("job0", "CANCELLED"), ("job0", "concluded"), ("job0", "null")]


def test_pair_fail_cancel_race() -> None:
    """/pair/fail-cancel-race: job1 (id job0) is cancelled, then job2 (id job1) is stepped by
    hand until its coroutine has returned -- its job_exit bottom half scheduled, not run -- and
    only then does the main loop run.  Both must end -ECANCELED.

    Each step asserts where the jobs are, so the test fails if the interleaving is not the
    racy one: job2 finishes its own work (rc 0, not cancelled) after job1's cancel, and is
    completed from inside job1's txn abort (job_finish_sync), never reaching `waiting`."""
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        job1 = h.start_job(1, True, ECANCELED, txn)
        job2 = h.start_job(2, False, 0, txn)
        job1.start()
        job2.start()
        # Both suspended in their first iteration: job1 on its 0 ns timer, job2 in a bare yield.
        assert job1.timer_pending() and not job1.busy and job1.iterations == 0
        assert not job2.timer_pending() and not job2.busy and job2.iterations == 1
        job1.cancel(False)
        # job_cancel enters job1 at once: it stops, returns, and defers its job_exit.
        assert job1.is_cancelled() and job1.deferred_to_main_loop
        assert job1.status is JobStatus.RUNNING and job1.result == EINPROGRESS
        # Now make job2 finish before the main loop runs job1's completion.
        job2.enter()
        assert job2.iterations == 0 and not job2.deferred_to_main_loop and not job2.busy
        job2.enter()
        assert job2.deferred_to_main_loop and job2.status is JobStatus.RUNNING
        assert job2.ret == 0 and not job2.is_cancelled()  # its own success, not a cancel
        assert job2.result == EINPROGRESS and job1.result == EINPROGRESS
        assert h.events.log == [("job0", "created"), ("job1", "created"),
                                ("job0", "running"), ("job1", "running")]
        await h.run_until_results(job1, job2)
        assert (job1.result, job2.result) == (ECANCELED, ECANCELED)
        assert job2.is_cancelled()  # cancelled by job1's abort after its run had returned
        txn.unref()
        assert txn.refcnt == 0

    h = run(scenario)
    # job1's completion runs first and aborts the txn; job2's pending job_exit runs inside that
    # abort (no `waiting`), and job2 (list head) is finalised first.
    assert h.events.log[4:] == [
        ("job0", "aborting"), ("job1", "aborting"),
        ("job1", "CANCELLED"), ("job1", "concluded"), ("job1", "null"),
        ("job0", "CANCELLED"), ("job0", "concluded"), ("job0", "null"),
    ]


# ---- beyond upstream -----------------------------------------------------------------------------
@pytest.mark.parametrize("failing", [0, 1, 2])
def test_three_jobs_one_fails(failing: int) -> None:
    """Whichever member fails, it alone reports its error; the rest are cancelled."""
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        jobs = [h.start_job(i + 1, True, EIO if i == failing else 0, txn) for i in range(3)]
        txn.unref()
        for job in jobs:
            job.start()
        await h.run_until_results(*jobs)
        assert [j.result for j in jobs] == [EIO if i == failing else ECANCELED for i in range(3)]

    h = run(scenario)
    for i in range(3):
        seq = h.events.of(f"job{i}")
        if i == failing:
            assert seq == EIO_FAIL
        else:
            assert seq in (CANCELLED, CANCELLED_AFTER_WAITING)
            assert seq == (CANCELLED_AFTER_WAITING if i < failing else CANCELLED)
    # Finalisation: list order (job2, job1, job0); the failing one's abort runs the others.
    finals = [jid for jid, what in h.events.log if what.startswith(("COMPLETED", "CANCELLED"))]
    assert finals == ["job2", "job1", "job0"]


def test_three_jobs_success_order() -> None:
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        jobs = [h.start_job(3 - i, True, 0, txn) for i in range(3)]  # job0 is the slowest
        for job in jobs:
            job.start()
        await h.run_until_results(*jobs)
        assert [j.result for j in jobs] == [0, 0, 0]
        txn.unref()

    h = run(scenario)
    tail = [e for e in h.events.log if e[1] not in ("created", "running")]
    assert tail[:3] == [("job2", "waiting"), ("job1", "waiting"), ("job0", "waiting")]
    assert tail[3:6] == [("job2", "pending"), ("job1", "pending"), ("job0", "pending")]
    assert [jid for jid, what in tail if what == "COMPLETED"] == ["job2", "job1", "job0"]


def test_cancel_member_in_waiting_phase() -> None:
    """A member that finished (waiting) can still be cancelled; that aborts the whole txn."""
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        quick = h.start_job(1, True, 0, txn)
        slow = h.start_job(1, False, 0, txn)  # only advances when entered by hand
        quick.start()
        slow.start()
        await h.manager.wait_until(lambda: quick.status is JobStatus.WAITING)
        quick.user_cancel(False)
        await h.run_until_results(quick, slow)
        assert (quick.result, slow.result) == (ECANCELED, ECANCELED)
        txn.unref()

    h = run(scenario)
    assert h.events.of("job0") == CANCELLED_AFTER_WAITING
    assert h.events.of("job1") == CANCELLED


def test_transaction_of_one_job() -> None:
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        job = h.start_job(3, True, EIO, txn)
        txn.unref()
        job.start()
        await h.run_until_results(job)
        assert job.result == EIO

    assert run(scenario).events.of("job0") == EIO_FAIL


def test_manual_finalize_finalizes_whole_txn() -> None:
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        job0 = h.start_job(1, True, 0, txn, auto_finalize=False, auto_dismiss=False)
        job1 = h.start_job(2, True, 0, txn, auto_finalize=False, auto_dismiss=False)
        txn.unref()
        job0.start()
        job1.start()
        await h.manager.wait_until(
            lambda: job0.status is JobStatus.PENDING and job1.status is JobStatus.PENDING)
        await asyncio.sleep(0)  # nothing else may happen while pending
        assert job0.result == job1.result == EINPROGRESS
        job0.finalize()  # ONE finalize finalises both, list order (job1 first)
        assert (job0.result, job1.result) == (0, 0)
        assert job0.status is job1.status is JobStatus.CONCLUDED
        job1.dismiss()
        job0.dismiss()
        assert len(h.manager) == 0

    h = run(scenario)
    for jid in ("job0", "job1"):
        assert h.events.of(jid) == ["created", "running", "waiting", "pending", "PENDING",
                                    "COMPLETED", "concluded", "null"]
    finals = [(jid, what) for jid, what in h.events.log if what in ("COMPLETED", "concluded")]
    assert finals == [("job1", "COMPLETED"), ("job1", "concluded"),
                      ("job0", "COMPLETED"), ("job0", "concluded")]


def test_cancel_at_pending_aborts_group() -> None:
    """f3/f6 of docs/qemu-7.2-observations.md: cancel of one pending member cancels all, even
    fully done ones."""
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        job0 = h.start_job(1, True, 0, txn, auto_finalize=False)
        job1 = h.start_job(1, True, 0, txn, auto_finalize=False, auto_dismiss=False)
        txn.unref()
        job0.start()
        job1.start()
        await h.manager.wait_until(lambda: job1.status is JobStatus.PENDING)
        job0.user_cancel(True)
        assert (job0.result, job1.result) == (ECANCELED, ECANCELED)
        assert job1.status is JobStatus.CONCLUDED and job1.error == "Operation canceled"
        job1.dismiss()

    h = run(scenario)
    assert h.events.of("job0") == ["created", "running", "waiting", "pending", "PENDING",
                                   "aborting", "CANCELLED", "concluded", "null"]
    assert h.events.of("job1") == ["created", "running", "waiting", "pending", "PENDING",
                                   "aborting", "CANCELLED", "concluded", "null"]


def test_failed_prepare_aborts_txn() -> None:
    """job_do_finalize: a failing .prepare of one member aborts every member."""
    class FailingPrepare(TestBlockJob):
        def prepare(self) -> int:
            return EIO

    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        job0 = h.start_job(1, True, 0, txn)
        job1 = FailingPrepare(h.manager, "job1", iterations=1, use_timer=True, rc=0, txn=txn)
        txn.unref()
        job0.start()
        job1.start()
        await h.run_until_results(job0, job1)
        assert (job0.result, job1.result) == (ECANCELED, EIO)

    h = run(scenario)
    assert h.events.of("job1") == ["created", "running", "waiting", "pending", "aborting",
                                   "COMPLETED(Input/output error)", "concluded", "null"]
    assert h.events.of("job0") == ["created", "running", "waiting", "pending", "aborting",
                                   "CANCELLED", "concluded", "null"]


def test_never_started_members_are_cancelled_silently() -> None:
    """A grouped transaction rolled back before commit: `created aborting concluded null`, no
    BLOCK_JOB_* event (QEMU 7.2 hangs here with two members; the emulator completes them)."""
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        job0 = h.start_job(1, True, 0, txn)
        job1 = h.start_job(1, True, 0, txn)
        txn.unref()
        # The transaction's abort hooks run last-registered first, as in QEMU 7.2.
        assert job1.cancel_sync(force=True) == ECANCELED
        assert job0.cancel_sync(force=True) == ECANCELED
        assert (job0.result, job1.result) == (ECANCELED, ECANCELED)
        assert len(h.manager) == 0

    h = run(scenario)
    assert h.events.log == [
        ("job0", "created"), ("job1", "created"),
        ("job1", "aborting"), ("job1", "concluded"), ("job1", "null"),
        ("job0", "aborting"), ("job0", "concluded"), ("job0", "null"),
    ]


def test_user_paused_partner_is_resumed_and_cancelled() -> None:
    """c5: cancelling one member force-resumes a user-paused partner: running aborting CANCELLED."""
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        job0 = h.start_job(1000, True, 0, txn)
        job1 = h.start_job(1000, True, 0, txn)
        txn.unref()
        job0.start()
        job1.start()
        job0.user_pause()
        await h.manager.wait_until(lambda: job0.status is JobStatus.PAUSED)
        job1.user_cancel(True)
        await h.run_until_results(job0, job1)
        assert not job0.user_paused

    h = run(scenario)
    assert h.events.of("job0") == ["created", "running", "paused", "running", "aborting",
                                   "CANCELLED", "concluded", "null"]
    assert h.events.of("job1") == CANCELLED


def test_txn_reference_counting() -> None:
    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        jobs = [h.start_job(1, True, 0, txn) for _ in range(2)]
        assert txn.refcnt == 3 and txn.jobs == [jobs[1], jobs[0]]  # head-inserted
        txn.unref()
        for job in jobs:
            job.start()
        await h.run_until_results(*jobs)
        assert txn.refcnt == 0
        with pytest.raises(AssertionError):
            txn.unref()

    run(scenario)


def test_soft_cancel_driver_is_force_cancelled_by_txn_abort() -> None:
    """A failing member force-cancels the others even if their driver would soft-cancel (7.2)."""
    class SoftCancel(TestBlockJob):
        def driver_cancel(self, force: bool) -> bool:
            return force

    async def scenario(h: Harness) -> None:
        txn = JobTxn()
        soft = SoftCancel(h.manager, "soft", iterations=5, use_timer=True, rc=0, txn=txn)
        failing = h.start_job(1, True, EIO, txn)
        txn.unref()
        soft.start()
        failing.start()
        await h.run_until_results(soft, failing)
        assert (soft.result, failing.result) == (ECANCELED, EIO)
        assert soft.is_cancelled()

    h = run(scenario)
    assert h.events.of("soft") == CANCELLED
