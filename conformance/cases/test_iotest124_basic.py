"""iotest 124, ``TestIncrementalBackup``: incremental chains, target geometry, argument errors.

Each case starts like upstream's ``setUp``: a 64M qcow2 drive0 with 124's default pattern,
``-drive id=drive0,node-name=node0`` (``if=none``: the harness machine has no bus for virtio).
"""

from __future__ import annotations

from typing import Any

import pytest
from qemu.qmp import ExecuteError

from conformance.steps import (
    WRITES_A,
    WRITES_B,
    Bitmap,
    add_bitmap,
    assert_bitmap_status,
    assert_no_active_block_jobs,
    check_backups,
    create_anchor_backup,
    create_incremental,
    device_bitmaps,
    do_qmp_backup,
    hmp_io_writes,
    img_create,
    launch_with_drive0,
    make_reference_backup,
    prepare_backup,
)
from conformance.vm import VM


async def do_incremental_simple(vm: VM, **bitmap_args: Any) -> None:
    """Anchor, bitmap0, a hollow incremental, then one incremental after each write set."""
    drive0 = await launch_with_drive0(vm)
    await create_anchor_backup(vm, drive0)
    bitmap0 = await add_bitmap(vm, "bitmap0", drive0, **bitmap_args)
    # Sanity: a "hollow" incremental backup (the bitmap is still clean).
    await create_incremental(vm, bitmap0)
    # One complete overwrite, one new segment, one partial overlap.
    await hmp_io_writes(vm, drive0.id, WRITES_A)
    await create_incremental(vm, bitmap0)
    # Three more writes, one of each kind.
    await hmp_io_writes(vm, drive0.id, WRITES_B)
    await create_incremental(vm, bitmap0)
    await vm.shutdown()
    check_backups(vm.tools, [bitmap0])


async def test_incremental_simple(vm: VM) -> None:
    """Ports 124 ``test_incremental_simple``: three incremental backups (empty, write set A,
    write set B) through a default-granularity bitmap each hold exactly the writes since the
    previous backup: every incremental, read through its backing chain, equals a full reference
    backup taken right after it, and the last equals the drive."""
    await do_incremental_simple(vm)


async def test_small_granularity(vm: VM) -> None:
    """Ports 124 ``test_small_granularity``: the same chain with a 32 KiB-granularity bitmap
    (finer than the 64 KiB cluster the backup copies) is still correct."""
    await do_incremental_simple(vm, granularity=32768)


async def test_large_granularity(vm: VM) -> None:
    """Ports 124 ``test_large_granularity``: the same chain with a 128 KiB-granularity bitmap
    (each dirty bit covers two backup clusters) is still correct."""
    await do_incremental_simple(vm, granularity=131072)


async def test_larger_cluster_target(vm: VM) -> None:
    """Ports 124 ``test_larger_cluster_target``: backups into 128 KiB-cluster targets, the
    incremental one without a backing file, default job ids (the device id).  The bitmap counts
    the 7 dirty 64 KiB granules of write set A; after the incremental and an unsafe rebase onto
    the full backup, the chain equals the reference and the drive, so whole target clusters were
    written."""
    drive0 = await launch_with_drive0(vm)

    # A cluster_size=128k full backup / "anchor" backup.
    img_create(vm, drive0.backup, cluster_size="128k")
    assert await do_qmp_backup(vm, device=drive0.id, sync="full", format=drive0.fmt,
                               target=str(drive0.backup), mode="existing")

    # Overwriting [32736k, 32800k) dirties the granules at 32M-64k and 32M; 32M+64k stays clean.
    bitmap0 = await add_bitmap(vm, "bitmap0", drive0)
    await hmp_io_writes(vm, drive0.id, WRITES_A)
    assert_bitmap_status(await device_bitmaps(vm), "node0", bitmap0.name, {
        "name": "bitmap0", "count": 458752, "granularity": 65536, "persistent": False})

    # A cluster_size=128k incremental target without a backing file.
    target, _ = bitmap0.new_target()
    img_create(vm, target, bitmap0.drive.fmt, cluster_size="128k")
    assert await do_qmp_backup(vm, device=bitmap0.drive.id, sync="incremental",
                               bitmap=bitmap0.name, format=bitmap0.drive.fmt, target=str(target),
                               mode="existing")
    await make_reference_backup(vm, bitmap0)

    # Add the backing file, then compare.
    vm.tools.img("rebase", "-f", drive0.fmt, "-u", "-b", str(drive0.backup), "-F", drive0.fmt,
                 str(target)).check()
    await vm.shutdown()
    check_backups(vm.tools, [bitmap0])


async def test_sync_dirty_bitmap_missing(vm: VM) -> None:
    """Ports 124 ``test_sync_dirty_bitmap_missing``: an incremental drive-backup without a
    bitmap is refused with a GenericError and starts no job."""
    drive0 = await launch_with_drive0(vm)
    await assert_no_active_block_jobs(vm)
    reply = await vm.qmp("drive-backup", device=drive0.id, sync="incremental", format=drive0.fmt,
                         target=str(vm.path("err.qcow2")))
    assert reply["error"]["class"] == "GenericError"
    assert reply["error"]["desc"] == "must provide a valid bitmap name for 'incremental' sync mode"
    await assert_no_active_block_jobs(vm)


async def test_sync_dirty_bitmap_not_found(vm: VM) -> None:
    """Ports 124 ``test_sync_dirty_bitmap_not_found``: an incremental drive-backup naming a
    bitmap that does not exist is refused with a GenericError and starts no job."""
    drive0 = await launch_with_drive0(vm)
    await assert_no_active_block_jobs(vm)
    reply = await vm.qmp("drive-backup", device=drive0.id, sync="incremental", bitmap="unknown",
                         format=drive0.fmt, target=str(vm.path("err.qcow2")))
    assert reply["error"]["class"] == "GenericError"
    assert reply["error"]["desc"] == "Bitmap 'unknown' could not be found"
    await assert_no_active_block_jobs(vm)


async def test_sync_dirty_bitmap_bad_granularity(vm: VM) -> None:
    """Ports 124 ``test_sync_dirty_bitmap_bad_granularity``: a granularity that is not a power
    of two (64000) is refused and no bitmap is created."""
    drive0 = await launch_with_drive0(vm)
    await assert_no_active_block_jobs(vm)
    with pytest.raises(ExecuteError) as refused:
        await add_bitmap(vm, "bitmap0", drive0, granularity=64000)
    assert refused.value.error_class == "GenericError"
    assert str(refused.value) == "Granularity must be power of 2 and at least 512"
    assert await device_bitmaps(vm) == {}


async def test_growing_before_backup(vm: VM) -> None:
    """Ports 124 ``test_growing_before_backup``: after block_resize to 65M, a write past the
    old end (64M, 64k) is recorded by the bitmap and copied by the next incremental backup into
    a 65M target backed by the 64M full backup; the chain equals the reference and the drive."""
    drive0 = await launch_with_drive0(vm)
    await assert_no_active_block_jobs(vm)
    await create_anchor_backup(vm, drive0)
    bitmap0: Bitmap = await add_bitmap(vm, "bitmap0", drive0)
    await vm.cmd("block_resize", device=drive0.id, size=65 * 1048576)

    # Dirty the image past the old end (qemu-io's default pattern, no flush, as upstream).
    output = await vm.hmp_qemu_io(drive0.id, "write 64M 64k")
    assert output.startswith("wrote "), output

    target = prepare_backup(vm, bitmap0, size="65M")
    await create_incremental(vm, bitmap0, target=target)
    await vm.shutdown()
    check_backups(vm.tools, [bitmap0])
