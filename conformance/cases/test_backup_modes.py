"""Backup sync modes and bitmap modes on a qcow2 drive, and copy-before-write under writes.

Every case starts from iotest 124's drive0 (64M qcow2 with the offline default patterns, as
``-drive id=drive0,node-name=node0``), checks each backup's events, the bitmap's count after it,
and — after ``quit``, so that nothing is written any more — that each target (read through its
backing chain) equals the source as it was when the backup started: either the live image
(nothing was written since) or a reference made offline from the same recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conformance.recipes import recipe
from conformance.steps import (
    WRITES_A,
    WRITES_B,
    compare_images,
    device_bitmaps,
    find_bitmap,
    hmp_io_writes,
    img_create,
    launch_with_drive0,
    wait_qmp_backup,
)
from conformance.vm import VM

IMAGE_SIZE = 64 * 1024 * 1024
#: 124's write set A dirties 7 granules of 64 KiB, set B 23 (see docs/upstream-cases.md A.1).
WRITES_A_BYTES = 7 * 65536
WRITES_B_BYTES = 23 * 65536


async def _bitmap_count(vm: VM, name: str = "bitmap0") -> int:
    """The bitmap's dirty byte count on node0, from query-block (no job may be running)."""
    return int(find_bitmap(await device_bitmaps(vm), "node0", name)["count"])


async def _backup(vm: VM, job_id: str, **args: Any) -> dict[str, Any]:
    """drive-backup of drive0 (must be accepted), then its BLOCK_JOB_COMPLETED data (success
    required) once the job is gone."""
    await vm.cmd("drive-backup", job_id=job_id, device="drive0", format="qcow2", **args)
    completed = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": job_id}})
    await vm.wait_job_end(job_id)
    assert "error" not in completed["data"], completed
    assert completed["data"]["offset"] == completed["data"]["len"]
    return dict(completed["data"])


async def _anchor(vm: VM, job_id: str = "anchor") -> Path:
    """Full backup of drive0 into a target QEMU creates (the base of every incremental)."""
    target = vm.path("drive0.full.qcow2")
    done = await _backup(vm, job_id, sync="full", target=str(target))
    assert done["len"] == IMAGE_SIZE
    return target


async def _bitmap_backup(vm: VM, job_id: str, parent: Path, **args: Any) -> tuple[Path, int]:
    """A bitmap-driven backup of drive0 into a new target backed by `parent`; returns the
    target and the number of bytes the job copied (its len)."""
    target = img_create(vm, vm.path(f"drive0.{job_id}.qcow2"), parent=parent)
    done = await _backup(vm, job_id, mode="existing", target=str(target), **args)
    return target, int(done["len"])


async def test_sync_full(vm: VM) -> None:
    """Pins 124's anchor backup (``create_anchor_backup``): after HMP writes (set A), a
    ``sync=full`` drive-backup into a target QEMU creates copies the whole 64M disk (len ==
    offset == 64M although most of it is unallocated), leaves no job behind, and the target
    equals the source (nothing written since) and holds set A's patterns."""
    drive0 = await launch_with_drive0(vm)
    await hmp_io_writes(vm, "drive0", WRITES_A)
    target = await _anchor(vm, "drive0")
    assert await vm.cmd("query-block-jobs") == []
    await vm.shutdown()

    assert compare_images(vm.tools, target, drive0.file)
    with vm.tools.io_session(target, "qcow2", read_only=True) as session:
        for pattern, offset, length in WRITES_A:
            output = session.run(f"read -P {pattern} {offset} {length}")
            assert "Pattern verification failed" not in output, output


async def test_sync_full_with_bitmap(vm: VM) -> None:
    """Pins ``sync=full`` combined with a bitmap (docs/qemu-7.2-observations.md, scenario a): with
    ``bitmap-mode=on-success`` the full backup copies all 64M and the bitmap is cleared (count 0);
    with ``always`` the same.  Each target equals the source."""
    drive0 = await launch_with_drive0(vm)
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    targets = []
    for mode in ("on-success", "always"):
        await hmp_io_writes(vm, "drive0", WRITES_A)
        assert await _bitmap_count(vm) == WRITES_A_BYTES
        target = vm.path(f"drive0.full-{mode}.qcow2")
        done = await _backup(vm, f"full-{mode}", sync="full", bitmap="bitmap0",
                             bitmap_mode=mode, target=str(target))
        assert done["len"] == IMAGE_SIZE
        assert await _bitmap_count(vm) == 0
        targets.append(target)
    await vm.shutdown()

    for target in targets:
        assert compare_images(vm.tools, target, drive0.file)


async def test_sync_top(vm: VM) -> None:
    """Pins ``sync=top`` over a backing chain: drive0 is an empty overlay of base.qcow2 (124's
    patterns); after HMP writes into the overlay, a drive-backup ``sync=top`` into a target QEMU
    creates gets base.qcow2 as its backing file and copies only the 5 clusters allocated in the
    overlay (len 327680); the target's own allocation is exactly those clusters and its chain
    equals the source chain."""
    base = recipe("iotest124-drive0").build(vm.tools, vm.path("base.qcow2"))
    overlay = img_create(vm, vm.path("drive0.qcow2"), parent=base)
    vm.add_drive(overlay, fmt="qcow2", drive_id="drive0", node_name="node0")
    await vm.launch()
    await hmp_io_writes(vm, "drive0", [("0x11", "0", "512"), ("0x22", "16M", "256k")])

    target = vm.path("drive0.top.qcow2")
    done = await _backup(vm, "top", sync="top", target=str(target))
    assert done["len"] == 5 * 65536
    await vm.shutdown()

    info = vm.tools.info(target, "qcow2").check()
    assert f"backing file: {base}" in info.stdout
    with vm.tools.io_session(target, "qcow2", read_only=True) as session:
        allocation = session.run("map")
        for command in ("read -P 0x11 0 512", "read -P 0 512 65024", "read -P 0x22 16M 256k",
                        "read -P 0xdc 32M 124k"):
            output = session.run(command)
            assert "Pattern verification failed" not in output, output
    assert allocation.split("\n")[0].startswith("64 KiB (0x10000) bytes     allocated"), allocation
    assert compare_images(vm.tools, target, overlay)


async def test_sync_none_copy_before_write(vm: VM) -> None:
    """Pins ``sync=none``: the target QEMU creates has the source as its backing file and the job
    copies nothing in the background (len 64M, offset 0); each guest write first copies the old
    clusters it touches to the target (offset 327680 after writes covering 5 clusters).  After
    ``block-job-cancel`` (BLOCK_JOB_CANCELLED) the target's chain still shows the source as it was
    when the job started: it equals a copy built offline from the same recipe, while the source
    itself no longer does."""
    drive0 = await launch_with_drive0(vm)
    reference = recipe("iotest124-drive0").build(vm.tools, vm.path("reference.qcow2"))
    target = vm.path("drive0.none.qcow2")
    await vm.cmd("drive-backup", job_id="none", device="drive0", sync="none", format="qcow2",
                 target=str(target))
    [job] = await vm.cmd("query-block-jobs")
    assert (job["device"], job["len"], job["offset"], job["status"]) == ("none", IMAGE_SIZE, 0,
                                                                         "running")

    await hmp_io_writes(vm, "drive0", [("0x11", "0", "512"), ("0x22", "32M", "256k")])
    [job] = await vm.cmd("query-block-jobs")
    assert job["offset"] == 5 * 65536

    await vm.cmd("block-job-cancel", device="none")
    cancelled = await vm.event_wait("BLOCK_JOB_CANCELLED", {"data": {"device": "none"}})
    assert cancelled["data"]["len"] == IMAGE_SIZE
    await vm.wait_job_end("none")
    assert await vm.cmd("query-block-jobs") == []
    await vm.shutdown()

    info = vm.tools.info(target, "qcow2").check()
    assert f"backing file: {drive0.file}" in info.stdout
    assert compare_images(vm.tools, target, reference)
    assert not compare_images(vm.tools, drive0.file, reference)
    with vm.tools.io_session(target, "qcow2", read_only=True) as session:
        for command in ("read -P 0x41 0 512", "read -P 0xdc 32M 124k", "read -P 0 32892k 132k"):
            output = session.run(command)
            assert "Pattern verification failed" not in output, output


async def test_incremental_chain(vm: VM) -> None:
    """Ports iotest 124 ``test_incremental_simple``: anchor full backup, bitmap0 added, a hollow
    incremental (len 0), then set A -> incremental (7 clusters) and set B -> incremental (23
    clusters); each incremental clears the bitmap, a reference full backup follows the second one,
    and after shutdown every incremental chain equals what the drive held at that point."""
    drive0 = await launch_with_drive0(vm)
    full = await _anchor(vm)
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")

    inc0, copied = await _bitmap_backup(vm, "inc0", full, sync="incremental", bitmap="bitmap0")
    assert copied == 0

    await hmp_io_writes(vm, "drive0", WRITES_A)
    assert await _bitmap_count(vm) == WRITES_A_BYTES
    inc1, copied = await _bitmap_backup(vm, "inc1", inc0, sync="incremental", bitmap="bitmap0")
    assert copied == WRITES_A_BYTES
    assert await _bitmap_count(vm) == 0
    ref1 = vm.path("drive0.ref1.qcow2")
    await _backup(vm, "ref1", sync="full", target=str(ref1))

    await hmp_io_writes(vm, "drive0", WRITES_B)
    assert await _bitmap_count(vm) == WRITES_B_BYTES
    inc2, copied = await _bitmap_backup(vm, "inc2", inc1, sync="incremental", bitmap="bitmap0")
    assert copied == WRITES_B_BYTES
    assert await _bitmap_count(vm) == 0
    await vm.shutdown()

    assert compare_images(vm.tools, inc0, full)
    assert compare_images(vm.tools, inc1, ref1)
    assert compare_images(vm.tools, inc2, drive0.file)


async def test_bitmap_mode_on_success(vm: VM) -> None:
    """Pins ``sync=bitmap bitmap-mode=on-success`` (iotest 257's success branch): the backup copies
    the 7 dirty clusters of set A and the bitmap is cleared; the next one (after set B) copies only
    set B's 23 clusters.  Each target chain equals the drive at its backup's start."""
    drive0 = await launch_with_drive0(vm)
    full = await _anchor(vm)
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    await hmp_io_writes(vm, "drive0", WRITES_A)

    first, copied = await _bitmap_backup(vm, "bitmap1", full, sync="bitmap", bitmap="bitmap0",
                                         bitmap_mode="on-success")
    assert copied == WRITES_A_BYTES
    assert await _bitmap_count(vm) == 0
    ref1 = vm.path("drive0.ref1.qcow2")
    await _backup(vm, "ref1", sync="full", target=str(ref1))

    await hmp_io_writes(vm, "drive0", WRITES_B)
    second, copied = await _bitmap_backup(vm, "bitmap2", first, sync="bitmap", bitmap="bitmap0",
                                          bitmap_mode="on-success")
    assert copied == WRITES_B_BYTES
    assert await _bitmap_count(vm) == 0
    await vm.shutdown()

    assert compare_images(vm.tools, first, ref1)
    assert compare_images(vm.tools, second, drive0.file)


async def test_bitmap_mode_never(vm: VM) -> None:
    """Pins ``bitmap-mode=never``: the bitmap is left as it was (count unchanged), so a second
    backup copies set A's clusters again, and after set B a third copies A ∪ B (25 clusters).
    Every target is a differential backup against the anchor and equals the drive at its start."""
    drive0 = await launch_with_drive0(vm)
    full = await _anchor(vm)
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    await hmp_io_writes(vm, "drive0", WRITES_A)

    first, copied = await _bitmap_backup(vm, "never1", full, sync="bitmap", bitmap="bitmap0",
                                         bitmap_mode="never")
    assert copied == WRITES_A_BYTES
    assert await _bitmap_count(vm) == WRITES_A_BYTES
    second, copied = await _bitmap_backup(vm, "never2", full, sync="bitmap", bitmap="bitmap0",
                                          bitmap_mode="never")
    assert copied == WRITES_A_BYTES
    assert await _bitmap_count(vm) == WRITES_A_BYTES

    await hmp_io_writes(vm, "drive0", WRITES_B)
    third, copied = await _bitmap_backup(vm, "never3", full, sync="bitmap", bitmap="bitmap0",
                                         bitmap_mode="never")
    assert copied == 25 * 65536
    assert await _bitmap_count(vm) == 25 * 65536
    await vm.shutdown()

    assert compare_images(vm.tools, first, second)
    assert not compare_images(vm.tools, second, third)
    assert compare_images(vm.tools, third, drive0.file)


async def test_bitmap_mode_always(vm: VM) -> None:
    """Pins ``bitmap-mode=always``: a successful backup clears the bitmap like on-success; a
    cancelled one (speed-limited, user-paused after its first cluster, then cancelled) keeps only
    the clusters it had not copied: set B's 23 clusters minus the one copied (1441792)."""
    drive0 = await launch_with_drive0(vm)
    full = await _anchor(vm)
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    await hmp_io_writes(vm, "drive0", WRITES_A)

    first, copied = await _bitmap_backup(vm, "always1", full, sync="bitmap", bitmap="bitmap0",
                                         bitmap_mode="always")
    assert copied == WRITES_A_BYTES
    assert await _bitmap_count(vm) == 0
    ref1 = vm.path("drive0.ref1.qcow2")
    await _backup(vm, "ref1", sync="full", target=str(ref1))

    await hmp_io_writes(vm, "drive0", WRITES_B)
    target = img_create(vm, vm.path("drive0.always2.qcow2"), parent=first)
    await vm.cmd("drive-backup", job_id="always2", device="drive0", sync="bitmap",
                 bitmap="bitmap0", bitmap_mode="always", format="qcow2", mode="existing",
                 target=str(target), speed=1)
    # Held still by speed=1, the job has only sent its start's status changes (with the drain
    # pause), all before the reply: drop them so that the wait below sees the user pause.
    vm.get_events()
    await vm.cmd("job-pause", id="always2")
    await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": "always2", "status": "paused"}})
    [job] = await vm.cmd("query-jobs")
    assert (job["status"], job["current-progress"], job["total-progress"]) == (
        "paused", 65536, WRITES_B_BYTES)
    await vm.cmd("job-cancel", id="always2")
    await vm.event_wait("BLOCK_JOB_CANCELLED", {"data": {"device": "always2"}})
    await vm.wait_job_end("always2")
    assert await _bitmap_count(vm) == WRITES_B_BYTES - 65536
    await vm.shutdown()

    assert compare_images(vm.tools, first, ref1)
    assert not compare_images(vm.tools, first, drive0.file)


async def test_copy_before_write_point_in_time(vm: VM) -> None:
    """Pins point-in-time semantics under concurrent writes: a speed-limited full backup is
    running (it has copied its first cluster only) while HMP qemu-io overwrites clusters it has
    not copied yet (at 32M and 48M); after ``block-job-set-speed 0`` it completes, and the target
    holds the OLD data there (124's 0xdc pattern, zeroes), equal to a copy of the source built
    offline from the same recipe, while the source holds the new data."""
    drive0 = await launch_with_drive0(vm)
    reference = recipe("iotest124-drive0").build(vm.tools, vm.path("reference.qcow2"))
    target = vm.path("drive0.full.qcow2")
    await vm.cmd("drive-backup", job_id="full", device="drive0", sync="full", format="qcow2",
                 target=str(target), speed=1)
    await hmp_io_writes(vm, "drive0", [("0x99", "32M", "256k"), ("0x77", "48M", "64k")])
    await vm.cmd("block-job-set-speed", device="full", speed=0)
    done = await wait_qmp_backup(vm, "full")
    assert done
    assert await vm.cmd("query-block-jobs") == []
    await vm.shutdown()

    assert compare_images(vm.tools, target, reference)
    with vm.tools.io_session(target, "qcow2", read_only=True) as session:
        for command in ("read -P 0xdc 32M 124k", "read -P 0 32892k 132k", "read -P 0 48M 64k"):
            output = session.run(command)
            assert "Pattern verification failed" not in output, output
    with vm.tools.io_session(drive0.file, "qcow2", read_only=True) as session:
        for command in ("read -P 0x99 32M 256k", "read -P 0x77 48M 64k"):
            output = session.run(command)
            assert "Pattern verification failed" not in output, output
