"""The job state machine: QEMU 7.2's transition and verb tables, the lifecycle event sequences
(success, failure, cancel, pause/resume, stop-on-error, manual finalize/dismiss, cancel at
pending), the drain effect, speed and the rate limiter — with test drivers, no block I/O.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import JobEventRecorder as Recorder

from emulator.block.drain import drained
from emulator.block.drivers import NullCoNode
from emulator.error import QemuError
from emulator.jobs import (
    BLOCK_OP_TYPES,
    BlockJob,
    Job,
    JobManager,
    JobStatus,
    JobVerb,
    RateLimit,
    transition_allowed,
    verb_allowed,
)

# QEMU 7.2 job.c, copied as the matrices they are: rows = from/verb, columns U C R P Y S W D X E N.
_COLUMNS = "UCRPYSWDXEN"
_STATUS_BY_LETTER = dict(zip(_COLUMNS, JobStatus, strict=True))
QEMU_JOB_STT = {
    "U": "0 1 0 0 0 0 0 0 0 0 0",
    "C": "0 0 1 0 0 0 0 0 1 0 1",
    "R": "0 0 0 1 1 0 1 0 1 0 0",
    "P": "0 0 1 0 0 0 0 0 0 0 0",
    "Y": "0 0 0 0 0 1 1 0 1 0 0",
    "S": "0 0 0 0 1 0 0 0 0 0 0",
    "W": "0 0 0 0 0 0 0 1 1 0 0",
    "D": "0 0 0 0 0 0 0 0 1 1 0",
    "X": "0 0 0 0 0 0 0 0 1 1 0",
    "E": "0 0 0 0 0 0 0 0 0 0 1",
    "N": "0 0 0 0 0 0 0 0 0 0 0",
}
QEMU_JOB_VERB_TABLE = {
    JobVerb.CANCEL: "0 1 1 1 1 1 1 1 0 0 0",
    JobVerb.PAUSE: "0 1 1 1 1 1 0 0 0 0 0",
    JobVerb.RESUME: "0 1 1 1 1 1 0 0 0 0 0",
    JobVerb.SET_SPEED: "0 1 1 1 1 1 0 0 0 0 0",
    JobVerb.COMPLETE: "0 0 0 0 1 1 0 0 0 0 0",  # standby since 6.2; checked on real 7.2
    JobVerb.FINALIZE: "0 0 0 0 0 0 0 1 0 0 0",
    JobVerb.DISMISS: "0 0 0 0 0 0 0 0 0 1 0",
}
TRANSITION_CASES = [
    (_STATUS_BY_LETTER[row], _STATUS_BY_LETTER[col], bit == "1")
    for row, bits in QEMU_JOB_STT.items()
    for col, bit in zip(_COLUMNS, bits.split(), strict=True)
]
VERB_CASES = [
    (verb, _STATUS_BY_LETTER[col], bit == "1")
    for verb, bits in QEMU_JOB_VERB_TABLE.items()
    for col, bit in zip(_COLUMNS, bits.split(), strict=True)
]


class StepJob(Job):
    """A job that does `steps` units of work, each ended by a manual yield (the test enters it)
    or a 0 ns sleep, checking for cancellation like a real driver; returns `rc`."""

    job_type = "create"

    def __init__(self, manager: JobManager, job_id: str | None, *, steps: int = 3,
                 use_timer: bool = False, rc: int = 0, **kwargs: Any) -> None:
        super().__init__(manager, job_id, **kwargs)
        self.steps = steps
        self.use_timer = use_timer
        self.rc = rc
        self.done = 0
        self.hooks: list[str] = []

    async def run(self) -> int:
        self.progress_set_remaining(self.steps)
        while self.done < self.steps:
            if self.use_timer:
                await self.sleep_ns(0)
            else:
                await self.yield_()
            if self.is_cancelled():
                return 0
            self.done += 1
            self.progress_update(1)
        return self.rc

    def prepare(self) -> int:
        self.hooks.append("prepare")
        return 0

    def commit(self) -> None:
        self.hooks.append("commit")

    def abort(self) -> None:
        self.hooks.append("abort")

    def clean(self) -> None:
        self.hooks.append("clean")


class ErrorJob(BlockJob):
    """A block job whose first read fails with EIO, handled by `on_error` (block_job_error_action)."""

    job_type = "backup"

    def __init__(self, manager: JobManager, job_id: str, on_error: str, **kwargs: Any) -> None:
        super().__init__(manager, job_id, NullCoNode(f"n-{job_id}"), **kwargs)
        self.on_error = on_error
        self.failures = 1

    async def run(self) -> int:
        while True:
            await self.pause_point()
            if self.is_cancelled():
                return 0
            if self.failures:
                self.failures -= 1
                if self.error_action(self.on_error, True, errno.EIO) == "report":
                    return -errno.EIO
                continue
            return 0


def run(scenario: Callable[[JobManager, Recorder], Coroutine[Any, Any, None]]) -> Recorder:
    events = Recorder()
    manager = JobManager(events)
    asyncio.run(asyncio.wait_for(scenario(manager, events), 10))
    return events


def step(job: Job, times: int = 1) -> None:
    for _ in range(times):
        job.enter()


# ---- tables --------------------------------------------------------------------------------------
@pytest.mark.parametrize("s0, s1, allowed", TRANSITION_CASES,
                         ids=[f"{a.value}->{b.value}" for a, b, _ in TRANSITION_CASES])
def test_transition_table(s0: JobStatus, s1: JobStatus, allowed: bool) -> None:
    assert transition_allowed(s0, s1) is allowed
    job = StepJob(JobManager(), "job0")
    job.status = s0
    if allowed:
        job._transition(s1)
        assert job.status is s1
    else:
        with pytest.raises(AssertionError, match="illegal transition"):
            job._transition(s1)


@pytest.mark.parametrize("verb, status, allowed", VERB_CASES,
                         ids=[f"{v.value}@{s.value}" for v, s, _ in VERB_CASES])
def test_verb_table(verb: JobVerb, status: JobStatus, allowed: bool) -> None:
    assert verb_allowed(verb, status) is allowed
    job = StepJob(JobManager(), "job0")
    job.status = status
    if allowed:
        job.apply_verb(verb)
    else:
        with pytest.raises(QemuError) as info:
            job.apply_verb(verb)
        assert info.value.desc == (
            f"Job 'job0' in state '{status.value}' cannot accept command verb '{verb.value}'")
        assert info.value.error_class == "GenericError"


def test_status_change_events_only_for_changes_and_named_jobs() -> None:
    events = Recorder()
    manager = JobManager(events)
    job = StepJob(manager, "job0")
    job._transition(JobStatus.ABORTING)
    job._transition(JobStatus.ABORTING)  # allowed no-op: no event
    internal = StepJob(manager, None, internal=True)
    internal.early_fail()
    assert events.log == [("job0", "created"), ("job0", "aborting")]


@pytest.mark.parametrize("job_id, message", [
    ("", "Invalid job ID ''"), ("0abc", "Invalid job ID '0abc'"), ("a b", "Invalid job ID 'a b'"),
    ("é", "Invalid job ID 'é'"), ("x\n", "Invalid job ID 'x\n'"),
    (None, "An explicit job ID is required"),
])
def test_job_id_checks(job_id: str | None, message: str) -> None:
    with pytest.raises(QemuError, match=f"^{message}$"):
        StepJob(JobManager(), job_id)


def test_duplicate_job_id_and_list_order() -> None:
    manager = JobManager()
    first = StepJob(manager, "a.b-c_9")
    second = StepJob(manager, "job1")
    with pytest.raises(QemuError, match="^Job ID 'job1' already in use$"):
        StepJob(manager, "job1")
    assert list(manager) == [second, first]  # newest first, as QEMU's list
    assert manager.get("a.b-c_9") is first and manager.get("nosuch") is None
    with pytest.raises(QemuError, match="^Cannot specify job ID for internal job$"):
        StepJob(manager, "x", internal=True)


# ---- lifecycles ----------------------------------------------------------------------------------
def test_success_sequence_and_hooks() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = StepJob(manager, "job0", steps=2)
        job.start()
        assert job.status is JobStatus.RUNNING and not job.busy
        step(job, 2)
        assert job.deferred_to_main_loop and job.status is JobStatus.RUNNING
        await manager.wait_until(lambda: job.status is JobStatus.NULL)
        assert job.hooks == ["prepare", "commit", "clean"]
        assert (job.progress_current, job.progress_total) == (2, 2)
        assert len(manager) == 0

    events = run(scenario)
    assert events.of("job0") == ["created", "running", "waiting", "pending", "COMPLETED",
                                 "concluded", "null"]


def test_failure_sequence_keeps_error_until_dismissed() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = StepJob(manager, "job0", steps=1, use_timer=True, rc=-errno.EIO, auto_dismiss=False)
        job.start()
        await manager.wait_until(lambda: job.status is JobStatus.CONCLUDED)
        assert job.hooks == ["abort", "clean"]
        assert job.job_info() == {"id": "job0", "type": "create", "status": "concluded",
                                  "current-progress": 1, "total-progress": 1,
                                  "error": "Input/output error"}
        with pytest.raises(QemuError, match="cannot accept command verb 'cancel'"):
            job.user_cancel(True)
        job.dismiss()
        assert len(manager) == 0

    events = run(scenario)
    assert events.of("job0") == ["created", "running", "aborting",
                                 "COMPLETED(Input/output error)", "concluded", "null"]


def test_driver_error_message_and_exceptions() -> None:
    class Failing(StepJob):
        async def run(self) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = Failing(manager, "job0")
        job.start()
        await manager.wait_until(lambda: job.status is JobStatus.NULL)
        assert job.ret == -errno.ENOSPC

    events = run(scenario)
    assert events.of("job0")[-3] == "COMPLETED(No space left on device)"


def test_cancel_running_job() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = StepJob(manager, "job0", steps=5, auto_dismiss=False)
        job.start()
        step(job)
        job.user_cancel(False)  # no .cancel driver: behaves as a force-cancel
        assert job.is_cancelled()
        await manager.wait_until(lambda: job.status is JobStatus.CONCLUDED)
        assert job.error == "Operation canceled" and job.hooks == ["abort", "clean"]
        assert job.cancel_sync() == -errno.ECANCELED  # concluded: cancel = dismiss
        assert job.status is JobStatus.NULL

    events = run(scenario)
    assert events.of("job0") == ["created", "running", "aborting", "CANCELLED", "concluded", "null"]


def test_soft_cancel_is_ignored_after_work_is_done() -> None:
    class SoftCancel(StepJob):
        def driver_cancel(self, force: bool) -> bool:
            return force  # a driver with soft-cancel semantics (mirror)

    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = SoftCancel(manager, "job0", steps=1)
        job.start()
        step(job)
        assert job.deferred_to_main_loop
        job.cancel(False)
        assert not job.cancel_requested()
        await manager.wait_until(lambda: job.status is JobStatus.NULL)

    events = run(scenario)
    assert events.of("job0")[-3:] == ["COMPLETED", "concluded", "null"]


def test_cancel_before_start_emits_no_block_job_event() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = StepJob(manager, "job0", auto_dismiss=False)
        assert job.cancel_sync(force=True) == -errno.ECANCELED
        assert job.status is JobStatus.NULL  # never started: always dismissed
        assert job.hooks == ["abort", "clean"]

    assert run(scenario).of("job0") == ["created", "aborting", "concluded", "null"]


def test_user_pause_resume() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = StepJob(manager, "job0", steps=2)
        job.start()
        with pytest.raises(QemuError, match="^Can't resume a job that was not paused$"):
            job.user_resume()
        job.user_pause()
        # The pause takes effect at the job's next pause point (here: at once, it was yielding).
        assert job.status is JobStatus.PAUSED and job.paused
        with pytest.raises(QemuError, match="^Job is already paused$"):
            job.user_pause()
        job.user_resume()
        assert job.status is JobStatus.RUNNING
        step(job, 2)
        await manager.wait_until(lambda: job.status is JobStatus.NULL)

    events = run(scenario)
    assert events.of("job0") == ["created", "running", "paused", "running", "waiting", "pending",
                                 "COMPLETED", "concluded", "null"]


def test_user_pause_before_start() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = StepJob(manager, "job0", steps=1)
        job.user_pause()
        job.start()
        assert job.status is JobStatus.PAUSED  # stopped at job_co_entry's pause point
        job.user_resume()
        step(job)
        await manager.wait_until(lambda: job.status is JobStatus.NULL)

    assert run(scenario).of("job0")[:4] == ["created", "running", "paused", "running"]


def test_cancel_user_paused_job_resumes_it() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = StepJob(manager, "job0", steps=3)
        job.start()
        job.user_pause()
        job.user_cancel(True)
        assert not job.user_paused and job.pause_count == 0
        await manager.wait_until(lambda: job.status is JobStatus.NULL)

    assert run(scenario).of("job0") == ["created", "running", "paused", "running", "aborting",
                                        "CANCELLED", "concluded", "null"]


def test_stop_on_error_then_resume() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = ErrorJob(manager, "job0", "stop")
        job.start()
        assert job.status is JobStatus.PAUSED and job.user_paused
        info = job.info()
        assert info["io-status"] == "failed" and info["paused"] is True
        job.user_resume()
        assert job.iostatus == "ok"
        await manager.wait_until(lambda: job.status is JobStatus.NULL)

    assert run(scenario).of("job0") == ["created", "running", "ERROR(read,stop)", "paused",
                                        "running", "waiting", "pending", "COMPLETED",
                                        "concluded", "null"]


@pytest.mark.parametrize("on_error, err, action, iostatus", [
    ("report", errno.EIO, "report", "ok"), ("ignore", errno.EIO, "ignore", "ok"),
    ("stop", errno.EIO, "stop", "failed"), ("stop", errno.ENOSPC, "stop", "nospace"),
    ("enospc", errno.EIO, "report", "ok"), ("enospc", errno.ENOSPC, "stop", "nospace"),
    ("auto", errno.EIO, "report", "ok"), ("auto", errno.ENOSPC, "stop", "nospace"),
])
def test_error_action_policies(on_error: str, err: int, action: str, iostatus: str) -> None:
    events = Recorder()
    job = ErrorJob(JobManager(events), "job0", on_error)
    assert job.error_action(on_error, False, err) == action
    assert events.log[-1] == ("job0", f"ERROR(write,{action})")
    assert job.iostatus == iostatus
    assert job.user_paused is (action == "stop")


def test_error_report_fails_job() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = ErrorJob(manager, "job0", "report")
        job.start()
        await manager.wait_until(lambda: job.status is JobStatus.NULL)

    assert run(scenario).of("job0") == ["created", "running", "ERROR(read,report)", "aborting",
                                        "COMPLETED(Input/output error)", "concluded", "null"]


def test_manual_finalize_and_dismiss() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = StepJob(manager, "job0", steps=1, use_timer=True, auto_finalize=False,
                      auto_dismiss=False)
        job.start()
        with pytest.raises(QemuError, match="in state 'running' cannot accept command verb 'finalize'"):
            job.finalize()
        await manager.wait_until(lambda: job.status is JobStatus.PENDING)
        assert job.hooks == []
        with pytest.raises(QemuError, match="in state 'pending' cannot accept command verb 'dismiss'"):
            job.dismiss()
        job.finalize()
        assert job.status is JobStatus.CONCLUDED and job.hooks == ["prepare", "commit", "clean"]
        job.dismiss()
        assert len(manager) == 0

    assert run(scenario).of("job0") == ["created", "running", "waiting", "pending", "PENDING",
                                        "COMPLETED", "concluded", "null"]


def test_cancel_at_pending() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = StepJob(manager, "job0", steps=1, use_timer=True, auto_finalize=False)
        job.start()
        await manager.wait_until(lambda: job.status is JobStatus.PENDING)
        job.user_cancel(True)
        assert job.hooks == ["abort", "clean"]

    assert run(scenario).of("job0") == ["created", "running", "waiting", "pending", "PENDING",
                                        "aborting", "CANCELLED", "concluded", "null"]


def test_complete_verb() -> None:
    class Mirrorish(StepJob):
        supports_complete = True

        def driver_complete(self) -> None:
            self.hooks.append("complete")

    async def scenario(manager: JobManager, events: Recorder) -> None:
        plain = StepJob(manager, "plain")
        plain.start()
        plain.status = JobStatus.READY  # as if its driver reached ready
        with pytest.raises(QemuError, match="^The active block job 'plain' cannot be completed$"):
            plain.complete()
        plain.status = JobStatus.RUNNING
        job = Mirrorish(manager, "job0")
        job.start()
        job.transition_to_ready()
        job.user_pause()
        assert job.status is JobStatus.STANDBY
        job.complete()  # accepted in standby in QEMU 7.2
        job.user_resume()
        assert job.status is JobStatus.READY and job.hooks == ["complete"]
        manager.cancel_all_sync()
        assert len(manager) == 0

    assert run(scenario).of("job0")[:5] == ["created", "running", "ready", "READY", "standby"]


# ---- speed, op blockers, rate limit ----------------------------------------------------------------
def test_block_job_speed_and_blockers() -> None:
    manager = JobManager()
    node = NullCoNode("src")
    with pytest.raises(QemuError, match="^Parameter 'speed' expects a non-negative value$"):
        ErrorJob(manager, "bad", "report", speed=-1)
    assert len(manager) == 0
    job = ErrorJob.__new__(ErrorJob)
    BlockJob.__init__(job, manager, "job0", node, speed=1024)
    assert job.speed == 1024 and job.limit.slice_quota == 102
    for op in BLOCK_OP_TYPES:
        if op == "dataplane":
            node.op_check(op)
        else:
            with pytest.raises(QemuError, match="^Node 'src' is busy: block device is in use by "
                                                "block job: backup$"):
                node.op_check(op)
    with pytest.raises(QemuError, match="^Parameter 'speed' expects a non-negative value$"):
        job.set_speed(-1)
    job.status = JobStatus.PENDING
    with pytest.raises(QemuError, match="in state 'pending' cannot accept command verb 'set-speed'"):
        job.set_speed(-1)  # the verb check comes first
    job.status = JobStatus.CREATED
    job.early_fail()
    assert node.op_blockers == {op: [] for op in BLOCK_OP_TYPES} and job not in node.parents


def test_raising_speed_kicks_sleeping_job() -> None:
    class Sleeper(BlockJob):
        job_type = "backup"

        async def run(self) -> int:
            await self.sleep_ns(3600 * 10**9)
            return 0

    async def scenario(manager: JobManager, events: Recorder) -> None:
        job = Sleeper(manager, "job0", NullCoNode("n"), speed=10)
        job.start()
        assert job.timer_pending()
        job.set_speed(5)  # slower: no kick
        assert job.timer_pending()
        job.set_speed(0)  # unlimited: kick
        await manager.wait_until(lambda: job.status is JobStatus.NULL, timeout=2)

    run(scenario)


def test_ratelimit() -> None:
    now = [1_000_000_000]
    limit = RateLimit(clock=lambda: now[0])
    assert limit.calculate_delay(10**9) == 0  # disabled
    limit.set_speed(1000, 100_000_000)  # 100 bytes per 100 ms slice
    assert limit.slice_quota == 100
    assert limit.calculate_delay(50) == 0
    assert limit.calculate_delay(50) == 100_000_000  # quota used up: wait for the slice end
    now[0] += 100_000_000
    # Still the (stretched) slice: 350 bytes = 3.5 slices from its start, 250 ms from now.
    assert limit.calculate_delay(250) == 250_000_000
    now[0] += 250_000_001
    assert limit.calculate_delay(10) == 0  # a new slice
    limit.set_speed(1, 100_000_000)
    assert limit.slice_quota == 1  # at least one byte per slice


def test_node_held_without_op_blockers_still_drains() -> None:
    """add_node(block_ops=False): no op blockers (backup's source), but drains reach the job."""
    async def scenario(manager: JobManager, events: Recorder) -> None:
        class Yielder(BlockJob):
            job_type = "backup"

            async def run(self) -> int:
                await self.yield_()
                return 0

        source, target = NullCoNode("src"), NullCoNode("dst")
        job = Yielder(manager, "job0")
        job.add_node(source, block_ops=False)
        job.add_node(target)
        source.op_check("backup-source")
        with pytest.raises(QemuError, match="^Node 'dst' is busy"):
            target.op_check("backup-target")
        job.start()
        with drained(source):
            assert job.status is JobStatus.PAUSED
        job.enter()
        await manager.wait_until(lambda: job.status is JobStatus.NULL)
        assert not target.op_blockers["backup-target"] and job not in source.parents

    assert run(scenario).of("job0")[:4] == ["created", "running", "paused", "running"]


def test_wait_idle_and_timeout() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        parked = StepJob(manager, "parked", steps=3, use_timer=True)
        pending = StepJob(manager, "pending", steps=2, use_timer=True, auto_finalize=False)
        parked.start()
        pending.start()
        parked.user_pause()
        await manager.wait_idle(timeout=2)
        assert parked.status is JobStatus.PAUSED and pending.status is JobStatus.PENDING
        with pytest.raises(TimeoutError):
            await manager.wait_until(lambda: False, timeout=0.05)
        manager.cancel_all_sync()

    run(scenario)
