"""Backup failures: an I/O error that fails an incremental backup, every argument error of
drive-backup / blockdev-backup, and the refusals while a backup owns the node, its target and its
bitmap.  After each refusal nothing has changed: no job, the bitmap as it was.
"""

from __future__ import annotations

from typing import Any

from conformance.recipes import recipe
from conformance.steps import (
    IO_ERROR,
    WRITES_A,
    WRITES_B,
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

#: 124's write set A dirties 7 granules of 64 KiB; A and B together 25.
WRITES_A_BYTES = 7 * 65536
WRITES_AB_BYTES = 25 * 65536
BUSY_BITMAP = "Bitmap 'bitmap0' is currently in use by another operation and cannot be used"


async def _expect_error(vm: VM, command: str, args: dict[str, Any], desc: str,
                        error_class: str = "GenericError") -> None:
    """Run a command that must be refused with exactly this class and text."""
    reply = await vm.qmp(command, args)
    assert reply.get("error") == {"class": error_class, "desc": desc}, (command, args, reply)


async def test_incremental_read_error_then_retry(vm: VM) -> None:
    """Ports iotest 124 ``test_incremental_failure``: drive0 is qcow2 over blkdebug
    (blockdev-add); the flush after set A arms a one-shot EIO on the next data read, so the
    incremental reports BLOCK_JOB_ERROR {action report, operation read} and ends with
    BLOCK_JOB_COMPLETED {error: Input/output error}; bitmap0 is reclaimed (7 granules, not busy).
    After set B a retry copies A ∪ B (25 clusters), clears bitmap0, and its chain equals the
    drive."""
    drive0 = await launch_without_drive(vm)
    await vm.cmd("blockdev-add", blkdebug_node_options(drive0))
    await vm.cmd("drive-backup", job_id="drive0", device="drive0", sync="full", format="qcow2",
                 target=str(drive0.backup))
    assert await wait_qmp_backup(vm, "drive0")
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    await hmp_io_writes(vm, "drive0", WRITES_A)

    failed = img_create(vm, vm.path("drive0.bitmap0.inc0.qcow2"), parent=drive0.backup)
    await vm.cmd("drive-backup", job_id="drive0", device="drive0", sync="incremental",
                 bitmap="bitmap0", format="qcow2", mode="existing", target=str(failed))
    error = await vm.event_wait("BLOCK_JOB_ERROR", {"data": {"device": "drive0"}})
    assert error["data"] == {"device": "drive0", "action": "report", "operation": "read"}
    completed = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": "drive0"}})
    assert (completed["data"]["error"], completed["data"]["len"]) == (IO_ERROR, WRITES_A_BYTES)
    await vm.wait_job_end("drive0")
    assert await vm.cmd("query-block-jobs") == []
    bitmap = find_bitmap(await node_bitmaps(vm), "drive0", "bitmap0")
    assert (bitmap["count"], bitmap["busy"], bitmap["recording"]) == (WRITES_A_BYTES, False, True)
    failed.unlink()

    await hmp_io_writes(vm, "drive0", WRITES_B)
    retry = img_create(vm, vm.path("drive0.bitmap0.inc1.qcow2"), parent=drive0.backup)
    await vm.cmd("drive-backup", job_id="drive0", device="drive0", sync="incremental",
                 bitmap="bitmap0", format="qcow2", mode="existing", target=str(retry))
    completed = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": "drive0"}})
    assert completed["data"]["len"] == completed["data"]["offset"] == WRITES_AB_BYTES
    await vm.wait_job_end("drive0")
    bitmap = find_bitmap(await node_bitmaps(vm), "drive0", "bitmap0")
    assert (bitmap["count"], bitmap["busy"]) == (0, False)
    await vm.shutdown()

    assert compare_images(vm.tools, retry, drive0.file)


async def test_backup_argument_errors(vm: VM) -> None:
    """Ports iotest 124 ``test_sync_dirty_bitmap_missing`` / ``_not_found`` (the target file is
    created before the arguments are validated) and pins every other argument error of
    drive-backup and blockdev-backup (docs/qemu-7.2-observations.md section 4,
    docs/backup-and-bitmaps.md section 2), including which check wins when several apply (a
    ``top`` backup of a drive without backing file is checked as ``full``).  No job starts and
    bitmap0 is untouched."""
    await launch_with_drive0(vm)
    existing = img_create(vm, vm.path("target.qcow2"))
    vm.tools.create(vm.path("target.img"), "raw", "64M").check()
    small = recipe("raw-1M").build(vm.tools, vm.path("small.img"))
    loose = img_create(vm, vm.path("loose.qcow2"))
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    await vm.cmd("blockdev-add", {"node-name": "loose", "driver": "qcow2",
                                  "file": {"driver": "file", "filename": str(loose)}})

    # 124-8 and 124-9: absolute-paths mode, the target is created first.
    await _expect_error(vm, "drive-backup", {"device": "drive0", "sync": "incremental",
                                             "format": "qcow2", "target": str(vm.path("err.qcow2"))},
                        "must provide a valid bitmap name for 'incremental' sync mode")
    await _expect_error(vm, "drive-backup", {"device": "drive0", "sync": "incremental",
                                             "bitmap": "unknown", "format": "qcow2",
                                             "target": str(vm.path("err.qcow2"))},
                        "Bitmap 'unknown' could not be found")
    assert vm.path("err.qcow2").exists()

    base = {"device": "drive0", "format": "qcow2", "mode": "existing", "target": str(existing)}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sync": "bitmap"}, "must provide a valid bitmap name for 'bitmap' sync mode"),
        ({"sync": "full", "bitmap": "bitmap0"},
         "Bitmap sync mode must be given when providing a bitmap"),
        ({"sync": "bitmap", "bitmap": "bitmap0"},
         "Bitmap sync mode must be given when providing a bitmap"),
        ({"sync": "none", "bitmap": "bitmap0"},
         "Bitmap sync mode must be given when providing a bitmap"),
        ({"sync": "bitmap", "bitmap": "nosuch", "bitmap-mode": "never"},
         "Bitmap 'nosuch' could not be found"),
        ({"sync": "incremental", "bitmap": "bitmap0", "bitmap-mode": "never"},
         "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'"),
        ({"sync": "incremental", "bitmap": "bitmap0", "bitmap-mode": "always"},
         "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'"),
        ({"sync": "full", "bitmap-mode": "on-success"},
         "Cannot specify bitmap sync mode without a bitmap"),
        ({"sync": "none", "bitmap": "bitmap0", "bitmap-mode": "on-success"},
         "sync mode 'none' does not produce meaningful bitmap outputs"),
        ({"sync": "full", "bitmap": "bitmap0", "bitmap-mode": "never"},
         "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'"),
        ({"sync": "top", "bitmap": "bitmap0", "bitmap-mode": "never"},
         "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'"),
        ({"sync": "full", "speed": -1}, "Parameter 'speed' expects a non-negative value"),
        ({"sync": "full", "job-id": "0abc"}, "Invalid job ID '0abc'"),
        ({"sync": "full", "job-id": ""}, "Invalid job ID ''"),
        ({"sync": "bogus"}, "Parameter 'sync' does not accept value 'bogus'"),
        ({}, "Parameter 'sync' is missing"),
        ({"sync": "full", "target": str(vm.path("does-not-exist.qcow2"))},
         f"Could not open '{vm.path('does-not-exist.qcow2')}': No such file or directory"),
        ({"sync": "full", "device": "nodev"}, "Cannot find device='nodev' nor node-name='nodev'"),
        ({"sync": "full", "format": "raw", "target": str(vm.path("target.img")), "compress": True},
         "Compression is not supported for this drive "),
        ({"sync": "full", "format": "raw", "target": str(small)},
         "Source and target image have different sizes"),
    ]
    for extra, desc in cases:
        await _expect_error(vm, "drive-backup", {**base, **extra}, desc)

    # A node without a BlockBackend has no device name to default the job id to.
    await _expect_error(vm, "drive-backup", {"device": "loose", "sync": "full", "format": "qcow2",
                                             "mode": "existing", "target": str(existing)},
                        "Invalid job ID ''")
    await _expect_error(vm, "blockdev-backup", {"device": "drive0", "target": "nonode",
                                                "sync": "full"},
                        "Cannot find device='nonode' nor node-name='nonode'")
    await _expect_error(vm, "blockdev-backup", {"device": "drive0", "target": "node0",
                                                "sync": "full"},
                        "Source and target cannot be the same")
    await _expect_error(vm, "blockdev-backup", {"device": "drive0", "target": "loose",
                                                "sync": "incremental", "bitmap": "nosuch"},
                        "Bitmap 'nosuch' could not be found")

    assert await vm.cmd("query-jobs") == []
    bitmap = find_bitmap(await device_bitmaps(vm), "node0", "bitmap0")
    assert (bitmap["count"], bitmap["busy"], bitmap["recording"]) == (0, False, True)


async def test_errors_while_backup_runs(vm: VM) -> None:
    """Pins what a running (speed-limited) incremental backup of drive0 refuses: another backup of
    the device drive0 (its node is busy), a job id already in use, its target as another job's
    target (write lock), and bitmap0 for a second backup or for remove / clear / enable / disable /
    merge / a transaction clear (busy).  A second backup of the same node addressed by its node
    name is accepted and runs alongside.  After cancelling both, bitmap0 is reclaimed intact."""
    await launch_with_drive0(vm)
    drive1 = recipe("iotest124-drive1").build(vm.tools, vm.path("drive1.qcow2"))
    await vm.cmd("blockdev-add", {"node-name": "node1", "driver": "qcow2",
                                  "file": {"driver": "file", "filename": str(drive1)}})
    targets = {name: img_create(vm, vm.path(f"{name}.qcow2")) for name in ("t0", "t1", "t2")}
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    await hmp_io_writes(vm, "drive0", WRITES_A)
    await vm.cmd("drive-backup", job_id="job0", device="drive0", sync="incremental",
                 bitmap="bitmap0", format="qcow2", mode="existing", target=str(targets["t0"]),
                 speed=1)

    existing = {"format": "qcow2", "mode": "existing"}
    await _expect_error(vm, "drive-backup", {"job-id": "job1", "device": "drive0", "sync": "full",
                                             "target": str(targets["t1"]), **existing},
                        "Node 'drive0' is busy: block device is in use by block job: backup")
    await _expect_error(vm, "drive-backup", {"job-id": "job0", "device": "node1", "sync": "full",
                                             "target": str(targets["t1"]), **existing},
                        "Job ID 'job0' already in use")
    await _expect_error(vm, "drive-backup", {"job-id": "job1", "device": "node1", "sync": "full",
                                             "target": str(targets["t0"]), **existing},
                        'Failed to get "write" lock')
    await _expect_error(vm, "drive-backup", {"job-id": "job1", "device": "node0",
                                             "sync": "incremental", "bitmap": "bitmap0",
                                             "target": str(targets["t1"]), **existing},
                        BUSY_BITMAP)
    await _expect_error(vm, "drive-backup", {"job-id": "job1", "device": "node0", "sync": "bitmap",
                                             "bitmap": "bitmap0", "bitmap-mode": "never",
                                             "target": str(targets["t1"]), **existing},
                        BUSY_BITMAP)
    for command in ("block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
                    "block-dirty-bitmap-enable", "block-dirty-bitmap-disable"):
        await _expect_error(vm, command, {"node": "node0", "name": "bitmap0"}, BUSY_BITMAP)
    await _expect_error(vm, "block-dirty-bitmap-merge",
                        {"node": "node0", "target": "bitmap0", "bitmaps": ["bitmap0"]},
                        BUSY_BITMAP)
    await _expect_error(vm, "transaction", {"actions": [
        {"type": "block-dirty-bitmap-clear", "data": {"node": "node0", "name": "bitmap0"}}]},
        BUSY_BITMAP)

    await vm.cmd("drive-backup", {"job-id": "job2", "device": "node0", "sync": "full",
                                  "target": str(targets["t2"]), "speed": 1, **existing})
    for job_id in ("job0", "job2"):
        await vm.cmd("job-cancel", id=job_id)
        await vm.event_wait("BLOCK_JOB_CANCELLED", {"data": {"device": job_id}})
        await vm.wait_job_end(job_id)
    assert await vm.cmd("query-jobs") == []
    bitmap = find_bitmap(await device_bitmaps(vm), "node0", "bitmap0")
    assert (bitmap["count"], bitmap["busy"], bitmap["recording"]) == (WRITES_A_BYTES, False, True)
