"""The job state machine as seen through backup jobs: cancel, pause/resume, set-speed,
stop-on-error, manual finalize/dismiss, and job verbs refused in the wrong state or for an unknown
job.

A job is held still deterministically with ``speed=1``: the rate limiter lets the first cluster
through and then delays the next one for hours, so a user pause (waited for by its ``paused``
event) always finds exactly 65536 bytes copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conformance.steps import (
    WRITES_A,
    blkdebug_node_options,
    compare_images,
    device_bitmaps,
    find_bitmap,
    hmp_io_writes,
    img_create,
    launch_with_drive0,
    launch_without_drive,
    node_bitmaps,
    wait_qmp_backup,
)
from conformance.vm import VM

IMAGE_SIZE = 64 * 1024 * 1024
#: 124's write set A dirties 7 granules of 64 KiB.
WRITES_A_BYTES = 7 * 65536


async def _bitmap0(vm: VM) -> dict[str, Any]:
    """bitmap0 of node0 from query-block (only while no job has a filter above node0)."""
    return dict(find_bitmap(await device_bitmaps(vm), "node0", "bitmap0"))


async def _anchor_and_dirty(vm: VM) -> Path:
    """124's preamble: anchor full backup of drive0, bitmap0 added, write set A; returns the
    anchor's path."""
    full = vm.path("drive0.full.qcow2")
    await vm.cmd("drive-backup", job_id="anchor", device="drive0", sync="full", format="qcow2",
                 target=str(full))
    assert await wait_qmp_backup(vm, "anchor")
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    await hmp_io_writes(vm, "drive0", WRITES_A)
    return full


async def _start_incremental(vm: VM, job_id: str, parent: Path, **args: Any) -> Path:
    """Start an incremental backup of drive0 through bitmap0 into a new target backed by
    `parent`."""
    target = img_create(vm, vm.path(f"drive0.{job_id}.qcow2"), parent=parent)
    await vm.cmd("drive-backup", job_id=job_id, device="drive0", sync="incremental",
                 bitmap="bitmap0", format="qcow2", mode="existing", target=str(target), **args)
    return target


async def _user_pause(vm: VM, job_id: str) -> None:
    """``job-pause`` and wait until the job has actually paused.  Only for a job held still by
    its speed limit: events received so far (the start's drain pause among them) are dropped."""
    vm.get_events()
    await vm.cmd("job-pause", id=job_id)
    await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": job_id, "status": "paused"}})


async def test_cancel_incremental_keeps_bitmap(vm: VM) -> None:
    """Pins a user cancel of a running incremental backup (docs/qemu-7.2-observations.md, c3): the
    speed-limited job ends with BLOCK_JOB_CANCELLED (len 458752) and no job is left; bitmap0 is
    reclaimed (all 7 granules still dirty, not busy), so a retry copies the same 7 clusters,
    succeeds and clears it; the retry's chain equals the drive."""
    drive0 = await launch_with_drive0(vm)
    full = await _anchor_and_dirty(vm)

    await _start_incremental(vm, "inc", full, speed=1)
    await vm.cmd("block-job-cancel", device="inc")
    cancelled = await vm.event_wait("BLOCK_JOB_CANCELLED", {"data": {"device": "inc"}})
    assert cancelled["data"]["len"] == WRITES_A_BYTES
    await vm.wait_job_end("inc")
    assert await vm.cmd("query-block-jobs") == []
    bitmap = await _bitmap0(vm)
    assert (bitmap["count"], bitmap["busy"], bitmap["recording"]) == (WRITES_A_BYTES, False, True)

    retry = img_create(vm, vm.path("drive0.retry.qcow2"), parent=full)
    await vm.cmd("drive-backup", job_id="retry", device="drive0", sync="incremental",
                 bitmap="bitmap0", format="qcow2", mode="existing", target=str(retry))
    completed = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": "retry"}})
    assert completed["data"]["len"] == completed["data"]["offset"] == WRITES_A_BYTES
    await vm.wait_job_end("retry")
    assert (await _bitmap0(vm))["count"] == 0
    await vm.shutdown()

    assert compare_images(vm.tools, retry, drive0.file)


async def test_user_pause_resume_and_set_speed(vm: VM) -> None:
    """Pins user pause and resume of a speed-limited full backup: ``job-pause`` -> status
    ``paused`` in query-jobs and ``paused: true`` in query-block-jobs (65536 bytes copied); a second
    pause and a non-force ``block-job-cancel`` of the paused job are refused; set-speed while
    paused is reflected in query-block-jobs; ``block-job-resume`` -> running again; set-speed 0
    lets it complete (BLOCK_JOB_COMPLETED with speed 0) and the target equals the drive."""
    drive0 = await launch_with_drive0(vm)
    target = vm.path("drive0.full.qcow2")
    await vm.cmd("drive-backup", job_id="full", device="drive0", sync="full", format="qcow2",
                 target=str(target), speed=1)

    await _user_pause(vm, "full")
    [job] = await vm.cmd("query-jobs")
    assert (job["status"], job["current-progress"], job["total-progress"]) == (
        "paused", 65536, IMAGE_SIZE)
    [block_job] = await vm.cmd("query-block-jobs")
    assert (block_job["status"], block_job["paused"], block_job["offset"], block_job["speed"],
            block_job["io-status"]) == ("paused", True, 65536, 1, "ok")

    again = await vm.qmp("job-pause", id="full")
    assert again["error"] == {"class": "GenericError", "desc": "Job is already paused"}
    refused = await vm.qmp("block-job-cancel", device="full")
    assert refused["error"]["desc"] == "The block job for device 'full' is currently paused"

    await vm.cmd("block-job-set-speed", device="full", speed=1024)
    [block_job] = await vm.cmd("query-block-jobs")
    assert (block_job["speed"], block_job["paused"]) == (1024, True)

    await vm.cmd("block-job-resume", device="full")
    await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": "full", "status": "running"}})
    [job] = await vm.cmd("query-jobs")
    assert job["status"] == "running"

    await vm.cmd("block-job-set-speed", device="full", speed=0)
    completed = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": "full"}})
    assert (completed["data"]["len"], completed["data"]["offset"], completed["data"]["speed"]) == (
        IMAGE_SIZE, IMAGE_SIZE, 0)
    await vm.wait_job_end("full")
    await vm.shutdown()

    assert compare_images(vm.tools, target, drive0.file)


async def test_source_error_stop_then_resume(vm: VM) -> None:
    """Ports iotest 124 ``test_incremental_pause``: drive0 is qcow2 over blkdebug (blockdev-add);
    after the anchor backup and set A (whose flush arms a one-shot EIO on the next data read), an
    incremental with ``on-source-error=stop`` reports BLOCK_JOB_ERROR {action stop, operation
    read} and pauses: query-block-jobs shows it paused with io-status ``failed`` and bitmap0 busy
    with its 7 granules.  ``block-job-resume`` retries, the job completes, bitmap0 is cleared,
    and the incremental chain equals the drive."""
    drive0 = await launch_without_drive(vm)
    await vm.cmd("blockdev-add", blkdebug_node_options(drive0))
    await vm.cmd("drive-backup", job_id="drive0", device="drive0", sync="full", format="qcow2",
                 target=str(drive0.backup))
    assert await wait_qmp_backup(vm, "drive0")
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    await hmp_io_writes(vm, "drive0", WRITES_A)
    bitmap = find_bitmap(await node_bitmaps(vm), "drive0", "bitmap0")
    assert (bitmap["count"], bitmap["busy"], bitmap["recording"]) == (WRITES_A_BYTES, False, True)

    target = img_create(vm, vm.path("drive0.bitmap0.inc0.qcow2"), parent=drive0.backup)
    await vm.cmd("drive-backup", job_id="drive0", device="drive0", sync="incremental",
                 bitmap="bitmap0", format="qcow2", mode="existing", target=str(target),
                 on_source_error="stop")
    error = await vm.event_wait("BLOCK_JOB_ERROR", {"data": {"device": "drive0"}})
    assert error["data"] == {"device": "drive0", "action": "stop", "operation": "read"}
    await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": "drive0", "status": "paused"}})
    [block_job] = await vm.cmd("query-block-jobs")
    assert (block_job["status"], block_job["paused"], block_job["io-status"]) == (
        "paused", True, "failed")
    bitmap = find_bitmap(await node_bitmaps(vm), "drive0", "bitmap0")
    assert (bitmap["count"], bitmap["busy"], bitmap["recording"]) == (WRITES_A_BYTES, True, True)

    await vm.cmd("block-job-resume", device="drive0")
    assert await wait_qmp_backup(vm, "drive0")
    bitmap = find_bitmap(await node_bitmaps(vm), "drive0", "bitmap0")
    assert (bitmap["count"], bitmap["busy"], bitmap["recording"]) == (0, False, True)
    await vm.shutdown()

    assert compare_images(vm.tools, target, drive0.file)


async def test_manual_finalize_and_dismiss(vm: VM) -> None:
    """Pins ``auto-finalize=false auto-dismiss=false`` (docs/qemu-7.2-observations.md, f1): the job stops
    at ``pending`` with BLOCK_JOB_PENDING; query-jobs shows it pending with full progress and
    bitmap0 is still busy; dismiss is refused at pending; ``job-finalize`` emits
    BLOCK_JOB_COMPLETED and ``concluded`` and clears bitmap0; finalize is refused at concluded;
    ``job-dismiss`` removes it (``null``) and a second dismiss finds no job."""
    drive0 = await launch_with_drive0(vm)
    full = await _anchor_and_dirty(vm)
    target = await _start_incremental(vm, "inc", full, auto_finalize=False, auto_dismiss=False)

    pending = await vm.event_wait("BLOCK_JOB_PENDING", {"data": {"id": "inc"}})
    assert pending["data"] == {"id": "inc", "type": "backup"}
    assert await vm.cmd("query-jobs") == [{"id": "inc", "type": "backup", "status": "pending",
                                           "current-progress": WRITES_A_BYTES,
                                           "total-progress": WRITES_A_BYTES}]
    [block_job] = await vm.cmd("query-block-jobs")
    assert (block_job["status"], block_job["auto-finalize"], block_job["auto-dismiss"]) == (
        "pending", False, False)
    bitmap = find_bitmap(await node_bitmaps(vm), "node0", "bitmap0")
    assert (bitmap["count"], bitmap["busy"]) == (WRITES_A_BYTES, True)
    refused = await vm.qmp("job-dismiss", id="inc")
    assert refused["error"]["desc"] == "Job 'inc' in state 'pending' cannot accept command verb 'dismiss'"

    await vm.cmd("job-finalize", id="inc")
    completed = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": "inc"}})
    assert completed["data"]["offset"] == completed["data"]["len"] == WRITES_A_BYTES
    await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": "inc", "status": "concluded"}})
    [job] = await vm.cmd("query-jobs")
    assert job["status"] == "concluded" and "error" not in job
    assert (await _bitmap0(vm))["count"] == 0
    refused = await vm.qmp("job-finalize", id="inc")
    assert refused["error"]["desc"] == "Job 'inc' in state 'concluded' cannot accept command verb 'finalize'"

    await vm.cmd("job-dismiss", id="inc")
    await vm.wait_job_end("inc")
    assert await vm.cmd("query-jobs") == []
    gone = await vm.qmp("job-dismiss", id="inc")
    assert gone["error"] == {"class": "GenericError", "desc": "Job not found"}
    await vm.shutdown()

    assert compare_images(vm.tools, target, drive0.file)


async def test_cancel_at_pending_keeps_bitmap(vm: VM) -> None:
    """Pins a cancel at ``pending`` (docs/qemu-7.2-observations.md, f3/f6): with auto-finalize=false and
    auto-dismiss=false, ``job-cancel`` of the pending job gives ``aborting``, BLOCK_JOB_CANCELLED
    (although everything was copied) and ``concluded``; query-jobs then reports the job concluded
    with error ``Operation canceled``; bitmap0 is reclaimed (7 granules, not busy) and a retry
    clears it.  The retry's chain equals the drive."""
    drive0 = await launch_with_drive0(vm)
    full = await _anchor_and_dirty(vm)
    await _start_incremental(vm, "inc", full, auto_finalize=False, auto_dismiss=False)
    await vm.event_wait("BLOCK_JOB_PENDING", {"data": {"id": "inc"}})

    await vm.cmd("job-cancel", id="inc")
    cancelled = await vm.event_wait("BLOCK_JOB_CANCELLED", {"data": {"device": "inc"}})
    assert cancelled["data"]["len"] == WRITES_A_BYTES
    await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": "inc", "status": "concluded"}})
    [job] = await vm.cmd("query-jobs")
    assert (job["status"], job.get("error")) == ("concluded", "Operation canceled")
    bitmap = await _bitmap0(vm)
    assert (bitmap["count"], bitmap["busy"]) == (WRITES_A_BYTES, False)
    await vm.cmd("job-dismiss", id="inc")
    await vm.wait_job_end("inc")

    retry = img_create(vm, vm.path("drive0.retry.qcow2"), parent=full)
    await vm.cmd("drive-backup", job_id="retry", device="drive0", sync="incremental",
                 bitmap="bitmap0", format="qcow2", mode="existing", target=str(retry))
    assert await wait_qmp_backup(vm, "retry")
    assert (await _bitmap0(vm))["count"] == 0
    await vm.shutdown()

    assert compare_images(vm.tools, retry, drive0.file)


async def test_job_verbs_in_wrong_states(vm: VM) -> None:
    """Pins the verb refusals on a running backup (docs/jobs-and-transactions.md, section 1): finalize,
    dismiss and complete (job-* and block-job-*) are refused in state ``running`` with QEMU's
    text, resume of a job that is not paused is refused, and so is a negative speed; none of them
    disturbs the job, which then pauses with its first cluster copied and is cancelled."""
    await launch_with_drive0(vm)
    await vm.cmd("drive-backup", job_id="job0", device="drive0", sync="full", format="qcow2",
                 target=str(vm.path("drive0.full.qcow2")), speed=1)
    refusals: list[tuple[str, dict[str, Any], str]] = [
        ("job-finalize", {"id": "job0"}, "Job 'job0' in state 'running' cannot accept command verb 'finalize'"),
        ("block-job-finalize", {"id": "job0"}, "Job 'job0' in state 'running' cannot accept command verb 'finalize'"),
        ("job-dismiss", {"id": "job0"}, "Job 'job0' in state 'running' cannot accept command verb 'dismiss'"),
        ("block-job-dismiss", {"id": "job0"}, "Job 'job0' in state 'running' cannot accept command verb 'dismiss'"),
        ("job-complete", {"id": "job0"}, "Job 'job0' in state 'running' cannot accept command verb 'complete'"),
        ("block-job-complete", {"device": "job0"}, "Job 'job0' in state 'running' cannot accept command verb 'complete'"),
        ("job-resume", {"id": "job0"}, "Can't resume a job that was not paused"),
        ("block-job-resume", {"device": "job0"}, "Can't resume a job that was not paused"),
        ("block-job-set-speed", {"device": "job0", "speed": -1}, "Parameter 'speed' expects a non-negative value"),
    ]
    for command, args, desc in refusals:
        reply = await vm.qmp(command, args)
        assert reply["error"] == {"class": "GenericError", "desc": desc}, (command, reply)
    await _user_pause(vm, "job0")
    assert await vm.cmd("query-jobs") == [{"id": "job0", "type": "backup", "status": "paused",
                                           "current-progress": 65536,
                                           "total-progress": IMAGE_SIZE}]

    await vm.cmd("job-cancel", id="job0")
    await vm.event_wait("BLOCK_JOB_CANCELLED", {"data": {"device": "job0"}})
    await vm.wait_job_end("job0")
    assert await vm.cmd("query-jobs") == []


async def test_unknown_job_ids(vm: VM) -> None:
    """Pins the lookup errors for a job id that does not exist: every job-* verb answers
    GenericError ``Job not found``; the block-job-* verbs that take ``device`` answer DeviceNotActive
    ``Block job 'nosuch' not found``, and so do block-job-finalize/-dismiss although they take
    ``id``."""
    await launch_with_drive0(vm)
    for command in ("job-cancel", "job-pause", "job-resume", "job-complete", "job-finalize",
                    "job-dismiss"):
        reply = await vm.qmp(command, id="nosuch")
        assert reply["error"] == {"class": "GenericError", "desc": "Job not found"}, command
    for command, args in (("block-job-cancel", {}), ("block-job-pause", {}),
                          ("block-job-resume", {}), ("block-job-complete", {}),
                          ("block-job-set-speed", {"speed": 0})):
        reply = await vm.qmp(command, {"device": "nosuch", **args})
        assert reply["error"] == {"class": "DeviceNotActive",
                                  "desc": "Block job 'nosuch' not found"}, command
    for command in ("block-job-finalize", "block-job-dismiss"):
        reply = await vm.qmp(command, id="nosuch")
        assert reply["error"] == {"class": "DeviceNotActive",
                                  "desc": "Block job 'nosuch' not found"}, command
    assert await vm.cmd("query-jobs") == []
    assert await vm.cmd("query-block-jobs") == []
