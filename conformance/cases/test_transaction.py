"""The QMP ``transaction`` command: grouped incremental backups (iotest 124's transaction cases),
all-or-nothing rollback of failed prepares, the ``abort`` action, grouped-mode refusals,
bitmap actions, and manual finalisation of a grouped JobTxn.

Images follow iotest 124: drive0 and drive1 are 64 MiB qcow2 images with 124's offline
patterns; set A (drive0) and set A' (drive1) dirty 7 granules (458752 bytes) of a 64 KiB
bitmap.  drive0 is always a ``-drive`` with node-name node0.  drive1 is a ``-drive`` (node1)
where nothing fails, and a ``blockdev-add`` qcow2 node over blkdebug with 124's rules where a
read must fail: the flush after set A' moves blkdebug to state 2, where the next data read
fails once with EIO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance.recipes import recipe
from conformance.vm import VM

GRANULE_COUNT_SET_A = 458752  # 7 granules of 64 KiB: set A dirties clusters 0, 256-259, 511, 512
FULL_LEN = 67108864

#: iotest 124's write sets (hmp_io_writes): (pattern, offset, length) per drive.
WRITE_SETS_A = {
    "drive0": (("0xab", "0", "512"), ("0xfe", "16M", "256k"), ("0x64", "32736k", "64k")),
    "drive1": (("0xba", "0", "512"), ("0xef", "16M", "256k"), ("0x46", "32736k", "64k")),
}
NODE_OF = {"drive0": "node0", "drive1": "node1"}
IO_ERROR = "Input/output error"


# ---- set-up ----------------------------------------------------------------------------------

def _image(vm: VM, drive: str) -> Path:
    return vm.path(f"{drive}.qcow2")


def _full_target(vm: VM, drive: str) -> Path:
    return vm.path(f"{drive}.full.backup.qcow2")


def _inc_target(vm: VM, drive: str, n: int) -> Path:
    return vm.path(f"{drive}.bitmap0.inc{n}.qcow2")


def _build_images(vm: VM, drives: tuple[str, ...] = ("drive0", "drive1")) -> None:
    for drive in drives:
        recipe(f"iotest124-{drive}").build(vm.tools, _image(vm, drive))


def _add_plain_drive(vm: VM, drive: str) -> None:
    vm.add_drive(_image(vm, drive), fmt="qcow2", drive_id=drive, node_name=NODE_OF[drive])


def blkdebug_qcow2_node(node_name: str, image: Path) -> dict[str, Any]:
    """iotest 124's blkdebug node: data reads fail once (EIO) after the first flush."""
    return {
        "node-name": node_name,
        "driver": "qcow2",
        "file": {
            "driver": "blkdebug",
            "image": {"driver": "file", "filename": str(image)},
            "set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}],
            "inject-error": [{"event": "read_aio", "errno": 5, "state": 2,
                              "immediately": False, "once": True}],
        },
    }


async def launch_drives(vm: VM, *, blkdebug_drive1: bool = False,
                        drives: tuple[str, ...] = ("drive0", "drive1")) -> None:
    """Build the 124 images, start the target with drive0 (and drive1 as a -drive, or added
    afterwards with blockdev-add over blkdebug)."""
    _build_images(vm, drives)
    for drive in drives:
        if drive != "drive1" or not blkdebug_drive1:
            _add_plain_drive(vm, drive)
    await vm.launch()
    if blkdebug_drive1 and "drive1" in drives:
        assert await vm.cmd("blockdev-add", blkdebug_qcow2_node("drive1", _image(vm, "drive1"))) == {}


def _action(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}


def _bitmap_add(drive: str, name: str = "bitmap0", **extra: Any) -> dict[str, Any]:
    return _action("block-dirty-bitmap-add", node=drive, name=name, **extra)


def _full_backup(vm: VM, drive: str) -> dict[str, Any]:
    """124's create_anchor_backup as an action: the target is created by QEMU."""
    return _action("drive-backup", **{"job-id": drive}, device=drive, sync="full",
                   format="qcow2", target=str(_full_target(vm, drive)))


def _incremental(vm: VM, drive: str, n: int, **extra: Any) -> dict[str, Any]:
    """124's create_incremental as an action: into the prepared inc<n> (mode existing)."""
    return _action("drive-backup", **{"job-id": drive}, device=drive, sync="incremental",
                   bitmap="bitmap0", format="qcow2", mode="existing",
                   target=str(_inc_target(vm, drive, n)), **extra)


async def transaction(vm: VM, actions: list[dict[str, Any]],
                      completion_mode: str | None = None) -> dict[str, Any]:
    """Run ``transaction``; return the raw reply (``return`` or ``error``)."""
    args: dict[str, Any] = {"actions": actions}
    if completion_mode is not None:
        args["properties"] = {"completion-mode": completion_mode}
    return await vm.qmp("transaction", args)


async def wait_backup(vm: VM, job_id: str, error: str | None = None) -> dict[str, Any]:
    """Wait for the job's BLOCK_JOB_COMPLETED and its end (``null``); check the outcome like
    124's wait_qmp_backup: no error means offset == len."""
    event = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": job_id}})
    await vm.wait_job_end(job_id)
    data: dict[str, Any] = event["data"]
    if error is None:
        assert "error" not in data, data
        assert data["offset"] == data["len"], data
    else:
        assert data.get("error") == error, data
    return data


async def wait_cancelled(vm: VM, job_id: str) -> dict[str, Any]:
    """Wait for the job's BLOCK_JOB_CANCELLED and its end (``null``)."""
    event = await vm.event_wait("BLOCK_JOB_CANCELLED", {"data": {"device": job_id}})
    await vm.wait_job_end(job_id)
    return dict(event["data"])


async def anchor_with_bitmaps(vm: VM, drives: tuple[str, ...]) -> None:
    """bitmap0 on every drive plus its anchor full backup, in one individual-mode transaction
    (grouped mode refuses bitmap-add); both jobs complete with len == offset == 64 MiB."""
    actions = [_bitmap_add(drive) for drive in drives] + [_full_backup(vm, drive) for drive in drives]
    assert await transaction(vm, actions) == {"return": {}}
    for drive in drives:
        assert (await wait_backup(vm, drive))["len"] == FULL_LEN
    assert await vm.cmd("query-block-jobs") == []


async def write_set_a(vm: VM, drives: tuple[str, ...]) -> None:
    """124's hmp_io_writes: set A on drive0, set A' on drive1, each followed by a flush."""
    for drive in drives:
        for pattern, offset, length in WRITE_SETS_A[drive]:
            await vm.hmp_qemu_io(drive, f"write -P {pattern} {offset} {length}")
        await vm.hmp_qemu_io(drive, "flush")


def prepare_incremental_targets(vm: VM, drives: tuple[str, ...], n: int) -> None:
    """124's prepare_backup: inc<n> backed by the full backup (the chain for inc0)."""
    for drive in drives:
        target = _inc_target(vm, drive, n)
        target.unlink(missing_ok=True)
        vm.tools.create(target, "qcow2", "64M", backing=_full_target(vm, drive),
                        backing_fmt="qcow2").check()


async def bitmap_counts(vm: VM) -> dict[str, int]:
    """``bitmap0``'s count per node, from query-named-block-nodes (flat)."""
    nodes = await vm.cmd("query-named-block-nodes", flat=True)
    return {node["node-name"]: bitmap["count"] for node in nodes
            for bitmap in node.get("dirty-bitmaps", []) if bitmap.get("name") == "bitmap0"}


async def drive_bitmaps(vm: VM, drive: str = "drive0") -> dict[str, dict[str, Any]]:
    """The named bitmaps of a -drive, from query-block (``inserted.dirty-bitmaps``)."""
    for device in await vm.cmd("query-block"):
        if device["device"] == drive:
            return {bitmap["name"]: bitmap for bitmap in device["inserted"].get("dirty-bitmaps", [])
                    if "name" in bitmap}
    raise AssertionError(f"no device {drive} in query-block")


def assert_chain_equals_image(vm: VM, drive: str, n: int) -> None:
    """124's check_backups for the last incremental: inc<n> read through its backing chain
    holds exactly what the drive holds (run after shutdown)."""
    result = vm.tools.compare(_inc_target(vm, drive, n), _image(vm, drive), "qcow2")
    assert result.returncode == 0, result.output


def event_mark(vm: VM) -> int:
    """A position in the session's events, for job_events(since=...)."""
    return len(vm.log.events())


def job_events(vm: VM, job_id: str, since: int = 0) -> list[str]:
    """Names of the events recorded for one job since `since` (statuses for
    JOB_STATUS_CHANGE, the event name for BLOCK_JOB_*)."""
    names = []
    for event in vm.log.events()[since:]:
        data = event.get("data", {})
        if event["event"] == "JOB_STATUS_CHANGE" and data.get("id") == job_id:
            names.append(data["status"])
        elif event["event"].startswith("BLOCK_JOB_") and job_id in (data.get("device"), data.get("id")):
            names.append(event["event"])
    return names


# ---- grouped incremental backups (iotest 124) ------------------------------------------------

async def test_grouped_incremental_success(vm: VM) -> None:
    """The successful grouped incremental backup of two drives (iotest 124
    test_transaction_failure's set-up and retry, without the failure): bitmaps and anchor
    full backups first, in one individual-mode transaction (grouped refuses bitmap-add); set A
    on both drives; then one grouped transaction of two incrementals: both jobs COMPLETED with
    len == offset == 7 granules, both bitmaps cleared to 0, nothing left in query-block-jobs,
    and each incremental chain equals its drive."""
    drives = ("drive0", "drive1")
    await launch_drives(vm)
    await anchor_with_bitmaps(vm, drives)
    await write_set_a(vm, drives)
    assert {name: bitmap["count"] for name, bitmap in (await drive_bitmaps(vm, "drive0")).items()} \
        == {"bitmap0": GRANULE_COUNT_SET_A}
    prepare_incremental_targets(vm, drives, 0)

    reply = await transaction(vm, [_incremental(vm, drive, 0) for drive in drives], "grouped")
    assert reply == {"return": {}}
    for drive in drives:
        assert (await wait_backup(vm, drive))["len"] == GRANULE_COUNT_SET_A
    assert await vm.cmd("query-block-jobs") == []
    for drive in drives:
        assert (await drive_bitmaps(vm, drive))["bitmap0"]["count"] == 0
    await vm.shutdown()
    for drive in drives:
        assert_chain_equals_image(vm, drive, 0)


@pytest.mark.upstream("iotest 124: test_transaction_failure")
async def test_grouped_incremental_failure_then_retry(vm: VM) -> None:
    """Ports iotest 124's test_transaction_failure: drive1 is qcow2 over blkdebug, so drive1's
    incremental gets one EIO.  The grouped transaction returns {}; drive1 reports
    BLOCK_JOB_ERROR {read, report} and COMPLETED with "Input/output error", drive0 is CANCELLED
    (whether or not it had finished copying); both bitmaps are kept (7 granules each).  The
    identical transaction with fresh targets then succeeds (the rule fired once), clears both
    bitmaps, and both chains equal their drives: the failed group lost no dirty bits."""
    drives = ("drive0", "drive1")
    await launch_drives(vm, blkdebug_drive1=True)
    await anchor_with_bitmaps(vm, drives)
    # 124: after the anchors nothing but job status changes is pending
    assert [event for event in vm.get_events() if event["event"] != "JOB_STATUS_CHANGE"] == []
    await write_set_a(vm, drives)
    prepare_incremental_targets(vm, drives, 0)

    actions = [_incremental(vm, drive, 0) for drive in drives]
    mark = event_mark(vm)
    assert await transaction(vm, actions, "grouped") == {"return": {}}
    error = await vm.event_wait("BLOCK_JOB_ERROR", {"data": {"device": "drive1"}})
    assert error["data"] == {"device": "drive1", "action": "report", "operation": "read"}
    await wait_backup(vm, "drive1", error=IO_ERROR)
    await wait_cancelled(vm, "drive0")
    assert await vm.cmd("query-block-jobs") == []
    assert await bitmap_counts(vm) == {"node0": GRANULE_COUNT_SET_A, "drive1": GRANULE_COUNT_SET_A}
    assert "BLOCK_JOB_PENDING" not in job_events(vm, "drive0", mark) + job_events(vm, "drive1", mark)

    prepare_incremental_targets(vm, drives, 0)  # 124 deletes the failed targets and retries
    assert await transaction(vm, actions, "grouped") == {"return": {}}
    for drive in drives:
        assert (await wait_backup(vm, drive))["len"] == GRANULE_COUNT_SET_A
    assert await vm.cmd("query-block-jobs") == []
    assert await bitmap_counts(vm) == {"node0": 0, "drive1": 0}
    await vm.shutdown()
    for drive in drives:
        assert_chain_equals_image(vm, drive, 0)


async def test_grouped_user_cancel(vm: VM) -> None:
    """A user cancel in a grouped transaction (the seed's "If the user cancels job1 then job2
    will also be cancelled and vice versa"): both incrementals held still by speed=1,
    ``block-job-cancel drive0`` ends both jobs with BLOCK_JOB_CANCELLED (never COMPLETED) and
    both bitmaps keep their 7 granules."""
    drives = ("drive0", "drive1")
    await launch_drives(vm)
    await anchor_with_bitmaps(vm, drives)
    await write_set_a(vm, drives)
    prepare_incremental_targets(vm, drives, 0)

    actions = [_incremental(vm, drive, 0, speed=1) for drive in drives]
    mark = event_mark(vm)
    assert await transaction(vm, actions, "grouped") == {"return": {}}
    assert await vm.cmd("block-job-cancel", device="drive0") == {}
    for drive in drives:
        cancelled = await wait_cancelled(vm, drive)
        assert cancelled["len"] == GRANULE_COUNT_SET_A and cancelled["speed"] == 1
    assert "BLOCK_JOB_COMPLETED" not in job_events(vm, "drive0", mark) + job_events(vm, "drive1", mark)
    assert await vm.cmd("query-block-jobs") == []
    for drive in drives:
        assert (await drive_bitmaps(vm, drive))["bitmap0"]["count"] == GRANULE_COUNT_SET_A


@pytest.mark.qemu_varies("10.0", reason=(
    "drive1's injected EIO (blkdebug, once, after the flush) failed the job in only 12 of 23 runs "
    "of real 10.0.2; in the other 11 the job completed without error. 7.2.22 failed it in every "
    "one of 16 runs"))
async def test_individual_incremental_failure(vm: VM) -> None:
    """The same two incrementals and the same EIO on drive1 in ``individual`` mode (the
    default): drive0's job completes on its own and clears its bitmap, drive1's fails
    ("Input/output error") and keeps its 7 granules; retrying drive1 alone succeeds."""
    drives = ("drive0", "drive1")
    await launch_drives(vm, blkdebug_drive1=True)
    await anchor_with_bitmaps(vm, drives)
    await write_set_a(vm, drives)
    prepare_incremental_targets(vm, drives, 0)

    reply = await transaction(vm, [_incremental(vm, drive, 0) for drive in drives], "individual")
    assert reply == {"return": {}}
    error = await vm.event_wait("BLOCK_JOB_ERROR", {"data": {"device": "drive1"}})
    assert error["data"] == {"device": "drive1", "action": "report", "operation": "read"}
    await wait_backup(vm, "drive1", error=IO_ERROR)
    assert (await wait_backup(vm, "drive0"))["len"] == GRANULE_COUNT_SET_A
    assert await bitmap_counts(vm) == {"node0": 0, "drive1": GRANULE_COUNT_SET_A}

    prepare_incremental_targets(vm, ("drive1",), 0)
    assert await transaction(vm, [_incremental(vm, "drive1", 0)]) == {"return": {}}
    assert (await wait_backup(vm, "drive1"))["len"] == GRANULE_COUNT_SET_A
    assert await bitmap_counts(vm) == {"node0": 0, "drive1": 0}
    await vm.shutdown()
    for drive in drives:
        assert_chain_equals_image(vm, drive, 0)


# ---- rollback of a failed prepare, and the abort action --------------------------------------

async def _drive0_with_dirty_bitmap0(vm: VM, drives: tuple[str, ...] = ("drive0", "drive1")) -> None:
    """Both drives, bitmap0 on drive0 holding set A (7 granules)."""
    await launch_drives(vm, drives=drives)
    assert await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0") == {}
    await write_set_a(vm, ("drive0",))


def _existing_full_backup(vm: VM, job_id: str, drive: str, name: str) -> dict[str, Any]:
    """A full drive-backup into a target made beforehand with qemu-img (mode existing)."""
    target = vm.path(name)
    vm.tools.create(target, "qcow2", "64M").check()
    return _action("drive-backup", **{"job-id": job_id}, device=drive, sync="full",
                   format="qcow2", mode="existing", target=str(target))


async def _assert_rolled_back_job(vm: VM, job_id: str) -> None:
    """A job created by an action and removed by the transaction's rollback: never started,
    so `created aborting concluded null` and no BLOCK_JOB_* event."""
    await vm.wait_job_end(job_id)
    assert job_events(vm, job_id) == ["created", "aborting", "concluded", "null"]


async def test_failed_prepare_rolls_back_earlier_actions(vm: VM) -> None:
    """All or nothing: an incremental drive-backup naming an unknown bitmap, last in the list,
    fails its prepare ("Bitmap 'nosuch' could not be found") and every earlier action is rolled
    back: the bitmap added earlier is gone, the cleared bitmap0 has its 7 granules back, and the
    backup job created earlier ends `created aborting concluded null` without any BLOCK_JOB_*
    event; no job is left."""
    await _drive0_with_dirty_bitmap0(vm)
    target = vm.path("drive0.inc.qcow2")
    vm.tools.create(target, "qcow2", "64M").check()
    actions = [
        _bitmap_add("drive0", "bitmap1"),
        _action("block-dirty-bitmap-clear", node="drive0", name="bitmap0"),
        _existing_full_backup(vm, "backup1", "drive1", "drive1.full.qcow2"),
        _action("drive-backup", **{"job-id": "backup0"}, device="drive0", sync="incremental",
                bitmap="nosuch", format="qcow2", mode="existing", target=str(target)),
    ]
    reply = await transaction(vm, actions)
    assert reply["error"] == {"class": "GenericError", "desc": "Bitmap 'nosuch' could not be found"}
    await _assert_rolled_back_job(vm, "backup1")
    bitmaps = await drive_bitmaps(vm, "drive0")
    assert list(bitmaps) == ["bitmap0"]
    assert bitmaps["bitmap0"]["count"] == GRANULE_COUNT_SET_A
    assert await vm.cmd("query-block-jobs") == []


async def test_abort_action_individual(vm: VM) -> None:
    """The ``abort`` action in individual mode: alone it fails with "Transaction aborted using
    Abort action"; after a bitmap-add, a bitmap-clear, a bitmap-disable and a backup it rolls
    all of them back (no new bitmap, bitmap0's bits back and still recording, the backup job
    never started)."""
    await _drive0_with_dirty_bitmap0(vm)
    aborted = {"class": "GenericError", "desc": "Transaction aborted using Abort action"}
    assert (await transaction(vm, [_action("abort")]))["error"] == aborted

    actions = [
        _bitmap_add("drive0", "bitmap1"),
        _action("block-dirty-bitmap-clear", node="drive0", name="bitmap0"),
        _action("block-dirty-bitmap-disable", node="drive0", name="bitmap0"),
        _existing_full_backup(vm, "backup1", "drive1", "drive1.full.qcow2"),
        _action("abort"),
    ]
    assert (await transaction(vm, actions, "individual"))["error"] == aborted
    await _assert_rolled_back_job(vm, "backup1")
    bitmaps = await drive_bitmaps(vm, "drive0")
    assert list(bitmaps) == ["bitmap0"]
    assert bitmaps["bitmap0"]["count"] == GRANULE_COUNT_SET_A
    assert bitmaps["bitmap0"]["recording"] is True
    assert await vm.cmd("query-block-jobs") == []


def grouped_refusal(vm: VM, kind: str) -> str:
    """The text of an action's refusal in grouped mode: 7.2 capitalizes "Transaction"."""
    word = "Transaction" if vm.qemu_version < (10, 0) else "transaction"
    return f"Action '{kind}' does not support {word} property completion-mode = grouped"


async def test_abort_action_grouped(vm: VM) -> None:
    """The ``abort`` action in grouped mode.  QEMU 7.2 accepts it in the grouped check, so alone
    it fails with "Transaction aborted using Abort action", and after a backup action it rolls
    the job back (`created aborting concluded null`, no BLOCK_JOB_* event).  QEMU 10.0 refuses
    it in the grouped check like any non-backup action, before any action is prepared, so no
    job is ever created.  After bitmap actions the grouped refusal of block-dirty-bitmap-add
    comes first, and nothing is created.

    Only ONE backup action precedes the abort: with two never-started jobs in one grouped
    JobTxn, QEMU 7.2's rollback deadlocks (the first job's cancel aborts the txn, which then
    waits forever for the other never-started job to finish; the command never replies)."""
    await _drive0_with_dirty_bitmap0(vm)
    if vm.qemu_version < (10, 0):
        aborted = {"class": "GenericError", "desc": "Transaction aborted using Abort action"}
    else:
        aborted = {"class": "GenericError", "desc": grouped_refusal(vm, "abort")}
    assert (await transaction(vm, [_action("abort")], "grouped"))["error"] == aborted

    actions = [_existing_full_backup(vm, "backup1", "drive1", "drive1.full.qcow2"), _action("abort")]
    assert (await transaction(vm, actions, "grouped"))["error"] == aborted
    if vm.qemu_version < (10, 0):
        await _assert_rolled_back_job(vm, "backup1")

    reply = await transaction(vm, [_bitmap_add("drive0", "bitmap1"), _action("abort")], "grouped")
    assert reply["error"]["desc"] == grouped_refusal(vm, "block-dirty-bitmap-add")
    assert list(await drive_bitmaps(vm, "drive0")) == ["bitmap0"]
    assert await vm.cmd("query-block-jobs") == []


# ---- refusals and argument errors ------------------------------------------------------------

async def test_grouped_refuses_bitmap_actions(vm: VM) -> None:
    """Grouped mode accepts only backup actions (and abort): the bitmap actions add, clear,
    disable, merge and remove are refused ("Action '<type>' does not support Transaction
    property completion-mode = grouped") and nothing happens: no bitmap is created, changed or
    removed, and a backup action listed before the refused one is rolled back (QEMU 7.2 checks
    in each action's prepare, so the backup job is created and then cancelled unstarted; QEMU
    10.0 checks every action before preparing any, so no job is created).

    block-dirty-bitmap-enable is left out: in QEMU 7.2 any enable action whose prepare fails
    (grouped refusal, unknown bitmap) crashes QEMU with SIGSEGV in its abort hook."""
    await _drive0_with_dirty_bitmap0(vm)
    assert await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap1") == {}

    def refusal(kind: str) -> str:
        return grouped_refusal(vm, kind)

    reply = await transaction(vm, [_bitmap_add("drive0", "bitmap2")], "grouped")
    assert reply["error"] == {"class": "GenericError", "desc": refusal("block-dirty-bitmap-add")}
    reply = await transaction(vm, [_action("block-dirty-bitmap-clear", node="drive0",
                                           name="bitmap0")], "grouped")
    assert reply["error"] == {"class": "GenericError", "desc": refusal("block-dirty-bitmap-clear")}
    actions = [_existing_full_backup(vm, "backup1", "drive1", "drive1.full.qcow2"),
               _bitmap_add("drive0", "bitmap2")]
    reply = await transaction(vm, actions, "grouped")
    assert reply["error"] == {"class": "GenericError", "desc": refusal("block-dirty-bitmap-add")}
    if vm.qemu_version < (10, 0):  # 7.2 refuses in prepare, after the backup's job was created
        await _assert_rolled_back_job(vm, "backup1")
    else:  # 10.0 refuses before any action is prepared
        assert await vm.cmd("query-jobs") == []
    bitmaps = await drive_bitmaps(vm, "drive0")
    assert sorted(bitmaps) == ["bitmap0", "bitmap1"]
    assert bitmaps["bitmap0"]["count"] == GRANULE_COUNT_SET_A

    others = [
        _action("block-dirty-bitmap-disable", node="drive0", name="bitmap0"),
        _action("block-dirty-bitmap-merge", node="drive0", target="bitmap1", bitmaps=["bitmap0"]),
        _action("block-dirty-bitmap-remove", node="drive0", name="bitmap1"),
    ]
    for action in others:
        reply = await transaction(vm, [action], "grouped")
        assert reply["error"] == {"class": "GenericError", "desc": refusal(action["type"])}
    bitmaps = await drive_bitmaps(vm, "drive0")
    assert {name: (bitmap["count"], bitmap["recording"]) for name, bitmap in bitmaps.items()} == {
        "bitmap0": (GRANULE_COUNT_SET_A, True), "bitmap1": (0, True)}
    assert await vm.cmd("query-block-jobs") == []


async def test_transaction_argument_errors(vm: VM) -> None:
    """Argument checking of ``transaction``: completion-mode bogus and action type bogus are
    refused with QEMU's texts, an action without ``data`` is refused, and an empty action list
    succeeds in both modes doing nothing."""
    await launch_drives(vm, drives=("drive0",))
    reply = await transaction(vm, [_action("abort")], "bogus")
    assert reply["error"] == {"class": "GenericError",
                              "desc": "Parameter 'completion-mode' does not accept value 'bogus'"}
    reply = await transaction(vm, [{"type": "bogus", "data": {}}])
    assert reply["error"] == {"class": "GenericError",
                              "desc": "Parameter 'type' does not accept value 'bogus'"}
    reply = await transaction(vm, [{"type": "block-dirty-bitmap-add"}])
    assert reply["error"] == {"class": "GenericError", "desc": "Parameter 'actions[0].data' is missing"}
    for mode in (None, "individual", "grouped"):
        assert await transaction(vm, [], mode) == {"return": {}}
    assert await drive_bitmaps(vm, "drive0") == {}


async def test_bitmap_actions(vm: VM) -> None:
    """block-dirty-bitmap-enable, -disable, -merge and -remove as transaction actions
    (individual mode): committed together they disable bitmap0, enable the disabled bitmap2,
    merge bitmap0's 7 granules into bitmap1 and remove bitmap3; the same list followed by
    ``abort`` changes nothing."""
    await launch_drives(vm, drives=("drive0",))
    for name, extra in (("bitmap0", {}), ("bitmap1", {}), ("bitmap2", {"disabled": True}),
                        ("bitmap3", {})):
        assert await vm.cmd("block-dirty-bitmap-add", node="drive0", name=name, **extra) == {}
    await write_set_a(vm, ("drive0",))

    def summary(bitmaps: dict[str, dict[str, Any]]) -> dict[str, tuple[int, bool]]:
        return {name: (bitmap["count"], bitmap["recording"]) for name, bitmap in bitmaps.items()}

    before = {"bitmap0": (GRANULE_COUNT_SET_A, True), "bitmap1": (GRANULE_COUNT_SET_A, True),
              "bitmap2": (0, False), "bitmap3": (GRANULE_COUNT_SET_A, True)}
    assert summary(await drive_bitmaps(vm)) == before
    assert await vm.cmd("block-dirty-bitmap-clear", node="drive0", name="bitmap1") == {}
    before["bitmap1"] = (0, True)

    actions = [
        _action("block-dirty-bitmap-disable", node="drive0", name="bitmap0"),
        _action("block-dirty-bitmap-enable", node="drive0", name="bitmap2"),
        _action("block-dirty-bitmap-merge", node="drive0", target="bitmap1", bitmaps=["bitmap0"]),
        _action("block-dirty-bitmap-remove", node="drive0", name="bitmap3"),
    ]
    reply = await transaction(vm, [*actions, _action("abort")])
    assert reply["error"]["desc"] == "Transaction aborted using Abort action"
    assert summary(await drive_bitmaps(vm)) == before

    assert await transaction(vm, actions) == {"return": {}}
    assert summary(await drive_bitmaps(vm)) == {
        "bitmap0": (GRANULE_COUNT_SET_A, False), "bitmap1": (GRANULE_COUNT_SET_A, True),
        "bitmap2": (0, True)}


# ---- manual finalisation of a grouped transaction --------------------------------------------

async def _grouped_pending(vm: VM, *, auto_dismiss: bool) -> int:
    """Both incrementals in a grouped transaction with auto-finalize=false, waited to `pending`
    (one BLOCK_JOB_PENDING each).  Returns the event mark taken before the transaction."""
    drives = ("drive0", "drive1")
    await launch_drives(vm)
    await anchor_with_bitmaps(vm, drives)
    await write_set_a(vm, drives)
    prepare_incremental_targets(vm, drives, 0)
    actions = [_incremental(vm, drive, 0, **{"auto-finalize": False, "auto-dismiss": auto_dismiss})
               for drive in drives]
    mark = event_mark(vm)
    assert await transaction(vm, actions, "grouped") == {"return": {}}
    for drive in drives:
        pending = await vm.event_wait("BLOCK_JOB_PENDING", {"data": {"id": drive}})
        assert pending["data"] == {"id": drive, "type": "backup"}
    return mark


async def test_grouped_manual_finalize(vm: VM) -> None:
    """auto-finalize=false, auto-dismiss=false in a grouped transaction: both jobs reach
    `pending` (BLOCK_JOB_PENDING each, query-jobs shows both pending with full progress);
    ``job-finalize`` of ONE job finalises the whole txn (both COMPLETED, both `concluded`,
    both bitmaps cleared); each job then needs its own ``job-dismiss``."""
    drives = ("drive0", "drive1")
    mark = await _grouped_pending(vm, auto_dismiss=False)
    jobs = {job["id"]: job for job in await vm.cmd("query-jobs")}
    assert {job_id: job["status"] for job_id, job in jobs.items()} == {
        "drive0": "pending", "drive1": "pending"}
    assert all(job["current-progress"] == job["total-progress"] == GRANULE_COUNT_SET_A
               for job in jobs.values())
    assert "BLOCK_JOB_COMPLETED" not in job_events(vm, "drive0", mark) + job_events(vm, "drive1", mark)

    assert await vm.cmd("job-finalize", id="drive0") == {}
    for drive in drives:
        completed = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": drive}})
        assert completed["data"]["offset"] == completed["data"]["len"] == GRANULE_COUNT_SET_A
        await vm.event_wait("JOB_STATUS_CHANGE", {"data": {"id": drive, "status": "concluded"}})
    jobs = {job["id"]: job for job in await vm.cmd("query-jobs")}
    assert {job_id: job["status"] for job_id, job in jobs.items()} == {
        "drive0": "concluded", "drive1": "concluded"}
    assert await bitmap_counts(vm) == {"node0": 0, "node1": 0}

    for drive in drives:
        assert await vm.cmd("job-dismiss", id=drive) == {}
        await vm.wait_job_end(drive)
    assert await vm.cmd("query-jobs") == []
    await vm.shutdown()
    for drive in drives:
        assert_chain_equals_image(vm, drive, 0)


async def test_grouped_cancel_at_pending(vm: VM) -> None:
    """auto-finalize=false in a grouped transaction, then ``job-cancel`` of one job while both
    are `pending`: the whole txn aborts, both jobs end CANCELLED (after PENDING, never
    COMPLETED), and both bitmaps keep their 7 granules."""
    drives = ("drive0", "drive1")
    mark = await _grouped_pending(vm, auto_dismiss=True)
    assert await vm.cmd("job-cancel", id="drive1") == {}
    for drive in drives:
        cancelled = await wait_cancelled(vm, drive)
        assert cancelled["len"] == GRANULE_COUNT_SET_A
    assert "BLOCK_JOB_COMPLETED" not in job_events(vm, "drive0", mark) + job_events(vm, "drive1", mark)
    assert await vm.cmd("query-jobs") == []
    assert await bitmap_counts(vm) == {"node0": GRANULE_COUNT_SET_A, "node1": GRANULE_COUNT_SET_A}
