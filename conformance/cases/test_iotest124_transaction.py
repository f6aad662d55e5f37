"""iotest 124, ``TestIncrementalBackup``: bitmaps and backups started by ``transaction``.

Each case starts like upstream's ``setUp``: a 64M qcow2 drive0 with 124's default pattern,
``-drive id=drive0,node-name=node0``.  The failure cases add drive1 with blockdev-add over
blkdebug: the HMP ``flush`` after its writes arms a one-time EIO on the next data read.
"""

from __future__ import annotations

from conformance.steps import (
    DRIVE1_WRITES_A,
    IO_ERROR,
    WRITES_A,
    WRITES_B,
    add_bitmap,
    add_node,
    assert_no_active_block_jobs,
    assert_no_pending_events,
    blkdebug_node_options,
    check_backups,
    create_anchor_backup,
    create_incremental,
    hmp_io_writes,
    launch_with_drive0,
    make_reference_backup,
    prepare_backup,
    transaction_bitmap_clear,
    transaction_drive_backup,
    wait_qmp_backup,
    wait_qmp_backup_cancelled,
    wait_until_completed,
    write_default_pattern,
)
from conformance.vm import VM

GROUPED = {"completion-mode": "grouped"}


async def test_incremental_transaction(vm: VM) -> None:
    """Ports 124 ``test_incremental_transaction``: one transaction clears bitmap0 (dirty with
    write set A) and bitmap1 (added after the writes) and starts a full backup, all at one
    instant; the job completes alone, and incrementals of write set B through either bitmap,
    each backed by that full backup, equal their references and the drive."""
    drive0 = await launch_with_drive0(vm)
    bitmap0 = await add_bitmap(vm, "bitmap0", drive0)
    await hmp_io_writes(vm, drive0.id, WRITES_A)
    bitmap1 = await add_bitmap(vm, "bitmap1", drive0)

    assert await vm.cmd("transaction", actions=[
        transaction_bitmap_clear(bitmap0.drive.id, bitmap0.name),
        transaction_bitmap_clear(bitmap1.drive.id, bitmap1.name),
        transaction_drive_backup(drive0.id, drive0.backup, sync="full", format=drive0.fmt),
    ]) == {}
    await wait_until_completed(vm, drive0.id)

    await hmp_io_writes(vm, drive0.id, WRITES_B)
    # Both bitmaps should be correctly in sync.
    await create_incremental(vm, bitmap0)
    await create_incremental(vm, bitmap1)
    await vm.shutdown()
    check_backups(vm.tools, [bitmap0, bitmap1])


async def do_transaction_failure_test(vm: VM, race: bool = False) -> None:
    """124's ``do_transaction_failure_test``: a grouped transaction of two incrementals in
    which drive1's fails; with ``race``, drive0 has nothing to copy and is already done."""
    drive0 = await launch_with_drive0(vm)
    # A second drive with its own pattern, behind blkdebug, as node drive1.
    drive1 = add_node(vm, "drive1")
    write_default_pattern(vm, drive1)
    assert await vm.cmd("blockdev-add", blkdebug_node_options(drive1)) == {}

    # Bitmaps and full backups for both drives (blkdebug is still in state 1).
    dr0bm0 = await add_bitmap(vm, "bitmap0", drive0)
    dr1bm0 = await add_bitmap(vm, "bitmap0", drive1)
    await create_anchor_backup(vm, drive0)
    await create_anchor_backup(vm, drive1)
    await assert_no_active_block_jobs(vm)
    assert_no_pending_events(vm)

    # Emulate some writes; drive1's flush moves blkdebug to state 2.
    if not race:
        await hmp_io_writes(vm, drive0.id, WRITES_A)
    await hmp_io_writes(vm, drive1.id, DRIVE1_WRITES_A)

    target0 = prepare_backup(vm, dr0bm0)
    target1 = prepare_backup(vm, dr1bm0)

    # One incremental per drive, expecting drive1's to fail.  In the race variant drive0's job
    # has nothing to copy and must still be cancelled by drive1's failure.
    transaction = [
        transaction_drive_backup(drive0.id, target0, sync="incremental", format=drive0.fmt,
                                 mode="existing", bitmap=dr0bm0.name),
        transaction_drive_backup(drive1.id, target1, sync="incremental", format=drive1.fmt,
                                 mode="existing", bitmap=dr1bm0.name),
    ]
    assert await vm.cmd("transaction", actions=transaction, properties=GROUPED) == {}

    # drive0's backup is cancelled and drive1's completes with an error.
    await wait_qmp_backup_cancelled(vm, drive0.id)
    assert not await wait_qmp_backup(vm, drive1.id, IO_ERROR)
    error = await vm.event_wait("BLOCK_JOB_ERROR")
    assert error["data"] == {"device": drive1.id, "action": "report", "operation": "read"}
    assert_no_pending_events(vm)
    await assert_no_active_block_jobs(vm)

    # Delete drive0's finished target and drive1's failed one.
    dr0bm0.del_target()
    dr1bm0.del_target()
    if race:
        # Only the race was under test: no second transaction.
        await vm.shutdown()
        return

    target0 = prepare_backup(vm, dr0bm0)
    target1 = prepare_backup(vm, dr1bm0)
    # Re-run the exact same transaction: the EIO was injected once, so both succeed now.
    assert await vm.cmd("transaction", actions=transaction, properties=GROUPED) == {}
    assert await wait_qmp_backup(vm, drive0.id)
    assert await wait_qmp_backup(vm, drive1.id)
    await make_reference_backup(vm, dr0bm0)
    await make_reference_backup(vm, dr1bm0)
    await assert_no_active_block_jobs(vm)
    assert_no_pending_events(vm)

    # Both bitmaps were kept through the failed group, so both chains are complete.
    await vm.shutdown()
    check_backups(vm.tools, [dr0bm0, dr1bm0])


async def test_transaction_failure(vm: VM) -> None:
    """Ports 124 ``test_transaction_failure``: in a grouped transaction of incrementals of
    drive0 and drive1, drive1's source read fails (BLOCK_JOB_ERROR report/read, COMPLETED with
    "Input/output error") and drive0's job is cancelled; no other event or job remains.  Both
    bitmaps are reclaimed: the same transaction re-run into fresh targets succeeds on both, and
    both chains equal their references and drives."""
    await do_transaction_failure_test(vm)


async def test_transaction_failure_race(vm: VM) -> None:
    """Ports 124 ``test_transaction_failure_race``: as test_transaction_failure, but drive0's
    bitmap is clean, so its job finishes copying before drive1 fails; it must still end
    CANCELLED (never COMPLETED), with the same events for drive1 and nothing left over."""
    await do_transaction_failure_test(vm, race=True)
