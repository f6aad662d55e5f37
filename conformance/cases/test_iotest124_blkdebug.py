"""iotest 124, ``TestIncrementalBackupBlkdebug``: incremental backup over a failing source.

Each case starts like upstream's ``setUp``: drive0's 64M qcow2 image with 124's default pattern
is made, QEMU starts without a drive, and the case adds node drive0 with blockdev-add over
blkdebug (an HMP ``flush`` arms a one-time EIO on the next data read).  The node has no device,
so bitmaps are read from ``query-named-block-nodes``.
"""

from __future__ import annotations

from conformance.steps import (
    WRITES_A,
    WRITES_B,
    add_bitmap,
    assert_bitmap_status,
    blkdebug_node_options,
    check_backups,
    create_anchor_backup,
    create_incremental,
    hmp_io_writes,
    launch_without_drive,
    make_reference_backup,
    node_bitmaps,
    prepare_backup,
    wait_qmp_backup,
)
from conformance.vm import VM


async def test_incremental_failure(vm: VM) -> None:
    """Ports 124 ``test_incremental_failure``: an incremental backup whose source read fails
    ends with "Input/output error" and keeps the bitmap's dirty bits; after write set B the
    next incremental holds A and B, equals its reference and the drive."""
    drive0 = await launch_without_drive(vm)
    assert await vm.cmd("blockdev-add", blkdebug_node_options(drive0)) == {}

    await create_anchor_backup(vm, drive0)
    bitmap0 = await add_bitmap(vm, "bitmap0", drive0)
    # From here on, assume the guest runs and issues I/O.
    await hmp_io_writes(vm, drive0.id, WRITES_A)

    assert not await create_incremental(vm, bitmap0, validate=False)
    await hmp_io_writes(vm, drive0.id, WRITES_B)
    await create_incremental(vm, bitmap0)
    await vm.shutdown()
    check_backups(vm.tools, [bitmap0])


async def test_incremental_pause(vm: VM) -> None:
    """Ports 124 ``test_incremental_pause``: with ``on-source-error=stop`` the failing read
    stops the job (BLOCK_JOB_ERROR stop/read) with the bitmap busy and still counting set A;
    ``block-job-resume`` retries, the job completes, the bitmap is clean and not busy, and the
    incremental equals its reference and the drive."""
    drive0 = await launch_without_drive(vm)
    # The blkdebug script waits for "flush, then read": the flush comes from hmp_io_writes,
    # the read from the block job.
    assert await vm.cmd("blockdev-add", blkdebug_node_options(drive0)) == {}
    await create_anchor_backup(vm, drive0)
    bitmap = await add_bitmap(vm, "bitmap0", drive0)

    # Emulate guest activity.
    await hmp_io_writes(vm, drive0.id, WRITES_A)
    assert_bitmap_status(await node_bitmaps(vm), drive0.id, bitmap.name, {
        "count": 458752, "granularity": 65536, "busy": False, "recording": True})

    # Start the backup.
    parent, _ = bitmap.last_target()
    target = prepare_backup(vm, bitmap, parent)
    assert await vm.cmd("drive-backup", job_id=bitmap.drive.id, device=bitmap.drive.id,
                        sync="incremental", bitmap=bitmap.name, format=bitmap.drive.fmt,
                        target=str(target), mode="existing", on_source_error="stop") == {}

    # Wait for the error.
    event = await vm.event_wait("BLOCK_JOB_ERROR", {"data": {"device": bitmap.drive.id}})
    assert event["data"] == {"device": bitmap.drive.id, "action": "stop", "operation": "read"}
    assert_bitmap_status(await node_bitmaps(vm), drive0.id, bitmap.name, {
        "count": 458752, "granularity": 65536, "busy": True, "recording": True})
    # Not upstream: the stop is a user-visible pause with a failed I/O status (the golden's
    # event list drops paused/running pairs, so this is where the stop shows).
    [job] = await vm.cmd("query-block-jobs")
    assert (job["device"], job["status"], job["paused"], job["io-status"]) == \
        (bitmap.drive.id, "paused", True, "failed")

    # Resume, and check the incremental backup for consistency.
    assert await vm.cmd("block-job-resume", device=bitmap.drive.id) == {}
    assert await wait_qmp_backup(vm, bitmap.drive.id)
    assert_bitmap_status(await node_bitmaps(vm), drive0.id, bitmap.name, {
        "count": 0, "granularity": 65536, "busy": False, "recording": True})

    await make_reference_backup(vm, bitmap)
    await vm.shutdown()
    check_backups(vm.tools, [bitmap])
