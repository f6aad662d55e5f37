"""QEMU's unit test tests/unit/test-blockjob-txn.c at the QMP level (docs/upstream-cases.md, section B).

Upstream's test jobs run N event-loop iterations and return a preset code; here a member is a
``drive-backup`` (sync=full, into an existing qcow2 target) of a 4 MiB qcow2 node, and the
members of one test form one grouped ``transaction``:
- success (rc 0): the backup simply runs to the end;
- failure (rc -EIO): the source is qcow2 over blkdebug, and a data read fails once with EIO;
- cancel (rc -ECANCELED): the job is held still with ``speed: 1`` and ``block-job-cancel``ed;
- a longer-running member (upstream's extra iterations): ``speed: 1`` until released with
  ``block-job-set-speed``.
Upstream's result codes map to events: 0 = BLOCK_JOB_COMPLETED without error, -EIO =
BLOCK_JOB_COMPLETED with "Input/output error", -ECANCELED = BLOCK_JOB_CANCELLED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance.recipes import recipe
from conformance.vm import VM

MEMBER_LEN = 4194304  # the whole 4 MiB source is copied by sync=full
IO_ERROR = "Input/output error"


# ---- set-up ----------------------------------------------------------------------------------

def _read_error_rules(failing: str) -> dict[str, Any]:
    """blkdebug rules: one data read fails once with EIO — the first one ("first-read"), or
    the second one ("second-read": the first read_aio moves blkdebug from state 1 to 2, where
    the rule fires, as in iotest 257's intermediate failure)."""
    rule: dict[str, Any] = {"event": "read_aio", "errno": 5, "immediately": False, "once": True}
    if failing == "first-read":
        return {"inject-error": [rule]}
    assert failing == "second-read", failing
    return {"set-state": [{"event": "read_aio", "state": 1, "new_state": 2}],
            "inject-error": [{**rule, "state": 2}]}


async def add_member_source(vm: VM, index: int, *, failing: str | None = None) -> Path:
    """Create src<index> (the recipe image) and add it as a qcow2 node, optionally over
    blkdebug (`failing` = "first-read" or "second-read"); also create its empty target."""
    image = recipe("blockjob-txn-member").build(vm.tools, vm.path(f"src{index}.qcow2"))
    vm.tools.create(vm.path(f"tgt{index}.qcow2"), "qcow2", "4M").check()
    protocol: dict[str, Any] = {"driver": "file", "filename": str(image)}
    if failing is not None:
        protocol = {"driver": "blkdebug", "image": protocol,
                    **_read_error_rules(failing)}
    node = {"node-name": f"src{index}", "driver": "qcow2", "file": protocol}
    assert await vm.cmd("blockdev-add", node) == {}
    return image


def member(vm: VM, index: int, **extra: Any) -> dict[str, Any]:
    """The drive-backup action of member job<index>: src<index> -> tgt<index>."""
    data = {"job-id": f"job{index}", "device": f"src{index}", "sync": "full", "format": "qcow2",
            "mode": "existing", "target": str(vm.path(f"tgt{index}.qcow2")), **extra}
    return {"type": "drive-backup", "data": data}


async def start_grouped(vm: VM, actions: list[dict[str, Any]]) -> None:
    """One grouped transaction holding all members; it must succeed."""
    reply = await vm.cmd("transaction", actions=actions, properties={"completion-mode": "grouped"})
    assert reply == {}


async def expect_success(vm: VM, job_id: str) -> None:
    """Result 0: BLOCK_JOB_COMPLETED without error, offset == len, then the job's end."""
    event = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": job_id}})
    assert "error" not in event["data"], event
    assert event["data"]["offset"] == event["data"]["len"] == MEMBER_LEN
    await vm.wait_job_end(job_id)


async def expect_failure(vm: VM, job_id: str) -> None:
    """Result -EIO: BLOCK_JOB_ERROR {read, report}, then BLOCK_JOB_COMPLETED with the error."""
    error = await vm.event_wait("BLOCK_JOB_ERROR", {"data": {"device": job_id}})
    assert error["data"] == {"device": job_id, "action": "report", "operation": "read"}
    event = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": job_id}})
    assert event["data"].get("error") == IO_ERROR, event
    await vm.wait_job_end(job_id)


async def expect_cancelled(vm: VM, job_id: str) -> None:
    """Result -ECANCELED: BLOCK_JOB_CANCELLED (and never BLOCK_JOB_COMPLETED)."""
    event = await vm.event_wait("BLOCK_JOB_CANCELLED", {"data": {"device": job_id}})
    assert event["data"]["len"] == MEMBER_LEN
    await vm.wait_job_end(job_id)
    completed = [e for e in vm.log.events() if e["event"] == "BLOCK_JOB_COMPLETED"
                 and e["data"]["device"] == job_id]
    assert completed == [], completed


def _statuses(vm: VM, job_id: str) -> list[str]:
    """The job's JOB_STATUS_CHANGE statuses as received, without the `paused` `running` pairs
    of drained sections (how many a transaction causes is QEMU's business, not the case's)."""
    statuses: list[str] = []
    for event in vm.log.events():
        if event["event"] == "JOB_STATUS_CHANGE" and event["data"]["id"] == job_id:
            status = event["data"]["status"]
            if status == "running" and statuses[-1:] == ["paused"]:
                statuses.pop()
            else:
                statuses.append(status)
    return statuses


async def expect_no_jobs(vm: VM) -> None:
    assert await vm.cmd("query-block-jobs") == []


def assert_copied(vm: VM, index: int) -> None:
    """After shutdown: tgt<index> holds exactly what src<index> holds."""
    result = vm.tools.compare(vm.path(f"tgt{index}.qcow2"), vm.path(f"src{index}.qcow2"), "qcow2")
    assert result.returncode == 0, result.output


# ---- /single ---------------------------------------------------------------------------------

@pytest.mark.upstream("test-blockjob-txn: /single/success")
async def test_single_success(vm: VM) -> None:
    """/single/success: one job alone in a (grouped, one-action) transaction ends with result
    0: BLOCK_JOB_COMPLETED without error, len == offset; the target equals the source."""
    await vm.launch()
    await add_member_source(vm, 0)
    await start_grouped(vm, [member(vm, 0)])
    await expect_success(vm, "job0")
    await expect_no_jobs(vm)
    await vm.shutdown()
    assert_copied(vm, 0)


@pytest.mark.upstream("test-blockjob-txn: /single/failure")
async def test_single_failure(vm: VM) -> None:
    """/single/failure: a lone job whose run fails with EIO reports exactly that error
    (BLOCK_JOB_ERROR {read, report}, BLOCK_JOB_COMPLETED "Input/output error")."""
    await vm.launch()
    await add_member_source(vm, 0, failing="first-read")
    await start_grouped(vm, [member(vm, 0)])
    await expect_failure(vm, "job0")
    await expect_no_jobs(vm)


@pytest.mark.upstream("test-blockjob-txn: /single/cancel")
async def test_single_cancel(vm: VM) -> None:
    """/single/cancel: a lone job cancelled right after its start ends -ECANCELED:
    BLOCK_JOB_CANCELLED, never COMPLETED."""
    await vm.launch()
    await add_member_source(vm, 0)
    await start_grouped(vm, [member(vm, 0, speed=1)])
    assert await vm.cmd("block-job-cancel", device="job0") == {}
    await expect_cancelled(vm, "job0")
    await expect_no_jobs(vm)


# ---- /pair -----------------------------------------------------------------------------------

@pytest.mark.upstream("test-blockjob-txn: /pair/success")
async def test_pair_success(vm: VM) -> None:
    """/pair/success: two jobs of different lengths in one txn both end with result 0 (the
    shorter one waits for the longer one, then both are finalised); both targets are
    copies of their sources."""
    await vm.launch()
    await add_member_source(vm, 0)
    await add_member_source(vm, 1)
    await start_grouped(vm, [member(vm, 0), member(vm, 1, speed=10 * MEMBER_LEN)])
    for job_id in ("job0", "job1"):
        await expect_success(vm, job_id)
    await expect_no_jobs(vm)
    await vm.shutdown()
    assert_copied(vm, 0)
    assert_copied(vm, 1)


@pytest.mark.upstream("test-blockjob-txn: /pair/failure")
async def test_pair_failure_first_member(vm: VM) -> None:
    """/pair/failure, first ordering (-EIO, 0): job0 fails with EIO while job1 (held by
    speed=1) is still running; job0 reports its error and job1 is cancelled (-ECANCELED)."""
    await vm.launch()
    await add_member_source(vm, 0, failing="first-read")
    await add_member_source(vm, 1)
    await start_grouped(vm, [member(vm, 0), member(vm, 1, speed=1)])
    await expect_failure(vm, "job0")
    await expect_cancelled(vm, "job1")
    await expect_no_jobs(vm)


@pytest.mark.upstream("test-blockjob-txn: /pair/failure")
async def test_pair_failure_second_member(vm: VM) -> None:
    """/pair/failure, second ordering (0, -EIO): job0 finishes its copy first (JOB_STATUS_CHANGE
    `waiting`), then job1 — held by speed=1 after its first chunk (one data cluster, read
    fine), released with block-job-set-speed — fails with EIO at its second data read; job1
    reports its error and job0's success is overridden: BLOCK_JOB_CANCELLED.  (The source
    cannot be armed mid-job with a write + flush as in iotest 124: HMP qemu-io on a node
    under a running backup gets a write-permission conflict.)"""
    await vm.launch()
    await add_member_source(vm, 0)
    await add_member_source(vm, 1, failing="second-read")
    await start_grouped(vm, [member(vm, 0), member(vm, 1, speed=1)])
    await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": "job0", "status": "waiting"}})
    assert await vm.cmd("block-job-set-speed", device="job1", speed=0) == {}
    await expect_failure(vm, "job1")
    await expect_cancelled(vm, "job0")
    await expect_no_jobs(vm)


async def _pair_cancel(vm: VM, cancelled: str) -> None:
    """Both members held by speed=1; cancelling `cancelled` must end both with -ECANCELED."""
    await vm.launch()
    await add_member_source(vm, 0)
    await add_member_source(vm, 1)
    await start_grouped(vm, [member(vm, 0, speed=1), member(vm, 1, speed=1)])
    assert await vm.cmd("block-job-cancel", device=cancelled) == {}
    for job_id in ("job0", "job1"):
        await expect_cancelled(vm, job_id)
    await expect_no_jobs(vm)


@pytest.mark.upstream("test-blockjob-txn: /pair/cancel")
async def test_pair_cancel_first_member(vm: VM) -> None:
    """/pair/cancel, first run: with both jobs held by speed=1, cancelling job0 ends both jobs
    with -ECANCELED (BLOCK_JOB_CANCELLED each, no COMPLETED)."""
    await _pair_cancel(vm, "job0")


@pytest.mark.upstream("test-blockjob-txn: /pair/cancel")
async def test_pair_cancel_second_member(vm: VM) -> None:
    """/pair/cancel, second run: with both jobs held by speed=1, cancelling job1 ends both
    jobs with -ECANCELED (BLOCK_JOB_CANCELLED each, no COMPLETED)."""
    await _pair_cancel(vm, "job1")


# ---- /pair/fail-cancel-race ------------------------------------------------------------------

@pytest.mark.upstream("test-blockjob-txn: /pair/fail-cancel-race")
async def test_pair_cancel_after_partner_finished(vm: VM) -> None:
    """/pair/fail-cancel-race, sequential form (runs on both targets): job1 has already
    finished its copy (`waiting`) when job0, held by speed=1, is cancelled; job1's success is
    overridden and both end -ECANCELED (BLOCK_JOB_CANCELLED each, no COMPLETED)."""
    await vm.launch()
    await add_member_source(vm, 0)
    await add_member_source(vm, 1)
    await start_grouped(vm, [member(vm, 0, speed=1), member(vm, 1)])
    await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": "job1", "status": "waiting"}})
    assert await vm.cmd("block-job-cancel", device="job0") == {}
    for job_id in ("job0", "job1"):
        await expect_cancelled(vm, job_id)
    await expect_no_jobs(vm)


@pytest.mark.upstream("test-blockjob-txn: /pair/fail-cancel-race")
async def test_pair_fail_cancel_race(vm: VM) -> None:
    """/pair/fail-cancel-race: job0 is cancelled, then job1 runs to the end of its copy, and
    only then does job0 act on its cancel; both must end -ECANCELED.

    Upstream cancels job1 (here job0), steps job2 (here job1) by hand until its coroutine has
    returned, and only then runs the main loop that completes job1.  Over QMP the jobs are held
    at exact points instead, with blkdebug breakpoints:
    - both sources are qcow2 over blkdebug with `break read_aio`, both jobs have speed=1, so
      each job's first copy task (the 64 KiB data cluster at 0) stops in its data read and no
      second task starts; query-block-jobs shows both running at offset 0;
    - job0 is cancelled while its read is stopped: a backup waits for its in-flight copy
      before it returns, so job0 stays `running` (busy) and cannot complete;
    - job1's read is resumed and its speed limit lifted: job1 copies to the end and finishes
      (`waiting`, offset == len) while job0 is still running with its cancel pending;
    - job0's read is resumed: job0 returns, its completion aborts the transaction, and job1's
      finished copy is overridden: BLOCK_JOB_CANCELLED for both (job0 at offset 65536, job1
      at len), no BLOCK_JOB_COMPLETED.
    The race is thus taken on every run.  What QMP cannot hold is job1 between its coroutine's
    return and its job_exit bottom half, so job1 reaches `waiting` before job0's completion
    instead of being completed from inside it (upstream's job_finish_sync on job2).

    Why the set-up is as it is (each seen on real QEMU): the sources are -drive backends, as
    HMP qemu-io on a bare node name attaches a temporary BlockBackend whose removal drains the
    node, which waits forever for the stopped read.  Each source's first cluster is read once
    before the breakpoint, so the job's read needs no L2 table load (thread-pool I/O) and
    stops synchronously inside `transaction`: blkdebug's "Suspended request" line then always
    belongs to that command (7.2 resumes the jobs in action order, 10.0 newest first), not to
    whichever command runs when a late read gets there.  Debian's QEMU has no qtest
    accelerator, which would silence those lines.

    Runs, every one on the asserted path: real QEMU 7.2.22 and 10.0.2: 20 of 20 each (10
    before recording, normalized logs identical run to run; 10 against the goldens); emulator:
    10 of 10 per profile in-process and 3 of 3 with --emulator-process.  Before the warm-up
    read, 10 runs gave 5 (7.2) and 3 (10.0) different logs: only the line placement varied."""
    for index in (0, 1):
        image = recipe("blockjob-txn-member").build(vm.tools, vm.path(f"src{index}.qcow2"))
        vm.tools.create(vm.path(f"tgt{index}.qcow2"), "qcow2", "4M").check()
        vm.add_drive(f"blkdebug::{image}", fmt="qcow2", drive_id=f"src{index}")
    await vm.launch()
    for index in (0, 1):
        assert "read 65536/65536 bytes at offset 0" in await vm.hmp_qemu_io(f"src{index}",
                                                                             "read 0 64k")
        assert await vm.hmp_qemu_io(f"src{index}", f"break read_aio job{index}_read") == ""
    await start_grouped(vm, [member(vm, 0, speed=1), member(vm, 1, speed=1)])
    for index in (0, 1):
        assert await vm.hmp_qemu_io(f"src{index}", f"wait_break job{index}_read") == ""

    def state(jobs: list[dict[str, Any]]) -> dict[str, tuple[str, bool, int]]:
        return {job["device"]: (job["status"], job["busy"], job["offset"]) for job in jobs}

    # Both held inside their first data read: nothing copied yet.
    assert state(await vm.cmd("query-block-jobs")) == {
        "job0": ("running", False, 0), "job1": ("running", False, 0)}
    assert await vm.cmd("block-job-cancel", device="job0") == {}
    # The cancel is accepted, but job0 waits for its stopped read; job1 is still held.
    assert state(await vm.cmd("query-block-jobs")) == {
        "job0": ("running", True, 0), "job1": ("running", False, 0)}
    assert await vm.hmp_qemu_io("src1", "resume job1_read") == \
        "blkdebug: Resuming request 'job1_read'\n"
    assert await vm.cmd("block-job-set-speed", device="job1", speed=0) == {}
    await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": "job1", "status": "waiting"}})
    # job1 has finished its copy while job0's cancel is still pending: the race's window.
    assert state(await vm.cmd("query-block-jobs")) == {
        "job0": ("running", True, 0), "job1": ("waiting", False, MEMBER_LEN)}
    assert await vm.hmp_qemu_io("src0", "resume job0_read") == \
        "blkdebug: Resuming request 'job0_read'\n"
    for job_id in ("job0", "job1"):
        await expect_cancelled(vm, job_id)
    await expect_no_jobs(vm)
    offsets = {e["data"]["device"]: e["data"]["offset"] for e in vm.log.events()
               if e["event"] == "BLOCK_JOB_CANCELLED"}
    assert offsets == {"job0": 65536, "job1": MEMBER_LEN}
    # job1 went `waiting` (its own success) before the abort; job0 never did.
    assert _statuses(vm, "job1") == ["created", "running", "waiting", "aborting", "concluded",
                                     "null"]
    assert _statuses(vm, "job0") == ["created", "running", "aborting", "concluded", "null"]
