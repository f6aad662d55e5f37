"""Drain points: which commands pause a running backup job, and how often (issue 13).

QEMU emits a ``paused``/``running`` pair for a running job each time a drained section reaches it:
a section on a node reaches every job attached to that node or to one of its ancestors
(bdrv_parent_drained_begin and bdrv_child_cb_drained_begin up the graph; child_job_drained_begin
pauses the job).  On QEMU 7.2 the number of pairs is deterministic, and the 7.2 goldens keep them
(rule J1 applies to 10.0 only; see conformance/compare/normalize.py).  Each case holds a full
backup still with ``speed: 1`` and runs one family of commands next to it; scripts/drain_probe.py
shows the same steps one by one on real QEMU and the emulator.

Measured on real QEMU 7.2.22 (scripts/drain_probe.py --runs 2, identical in both runs; and the
repeated suite runs of scripts/repeat_runs.py):
- qmp_transaction's bdrv_drain_all: one pair per running job, whatever the actions;
- drive-backup / blockdev-backup / blockdev-snapshot-sync prepare: bdrv_drained_begin on the
  source (or the snapshotted node) until .clean: one more pair for the jobs above that node, even
  when the command then fails (a busy node, a job id in use, a missing bitmap);
- HMP qemu-io on a node name: two pairs for the jobs above the node (its temporary BlockBackend);
  on a device name: none;
- quit: bdrv_drain_all_begin, then job_cancel_sync_all: ``paused running aborting``;
- bitmap commands, queries, job-pause/resume, block-job-set-speed: none.
"""

from __future__ import annotations

from conformance.differential.steps import launch_scenario, wait_first_chunk, wait_statuses
from conformance.vm import VM

EXISTING = {"format": "qcow2", "mode": "existing"}


async def start_held_backup(vm: VM, job_id: str, device: str) -> None:
    """A full drive-backup of `device` into a fresh qcow2, held still by speed=1."""
    vm.tools.create(vm.path(f"{job_id}.qcow2"), "qcow2", "4M").check()
    await vm.cmd("drive-backup", {"job-id": job_id, "device": device, "sync": "full",
                                  "target": str(vm.path(f"{job_id}.qcow2")), "speed": 1, **EXISTING})
    await wait_first_chunk(vm, job_id)


async def test_drain_hmp_qemu_io(vm: VM) -> None:
    """qemu-io through the device drive0 drains nothing; through the node name node0 (below the
    backup's copy-before-write filter) it drains node0 twice per command, read, write or flush;
    through the node of the other drive it reaches no job."""
    await launch_scenario(vm)
    await start_held_backup(vm, "j1", "drive0")
    await vm.hmp_qemu_io("drive0", "read 0 512")
    await vm.hmp_qemu_io("drive0", "flush")
    await vm.hmp_qemu_io("node0", "read 0 512")
    await vm.hmp_qemu_io("node0", "write -P 0x7 64k 4k")
    await vm.hmp_qemu_io("node0", "flush")
    await vm.hmp_qemu_io("drive1", "read 0 512")
    await vm.cmd("job-cancel", id="j1")
    await vm.wait_job_end("j1")
    await vm.shutdown()


async def test_drain_backup_prepare(vm: VM) -> None:
    """Every drive-backup is a one-action transaction: bdrv_drain_all (a pair for j1 and j4), then
    the action drains its source until .clean (a second pair for the jobs above it), also when it
    fails; a job created there starts paused (``created running paused running``)."""
    await launch_scenario(vm)
    await start_held_backup(vm, "j1", "drive0")
    vm.tools.create(vm.path("spare.qcow2"), "qcow2", "4M").check()
    for job_id, device, error in (
            ("j2", "drive0", "Node 'drive0' is busy: block device is in use by block job: backup"),
            ("j1", "node0", "Job ID 'j1' already in use")):
        reply = await vm.qmp("drive-backup", {"job-id": job_id, "device": device, "sync": "full",
                                              "target": str(vm.path("spare.qcow2")), **EXISTING})
        assert reply["error"]["desc"] == error, reply
    reply = await vm.qmp("drive-backup", {"job-id": "j3", "device": "drive1", "sync": "incremental",
                                          "bitmap": "nosuch", "target": str(vm.path("spare.qcow2")),
                                          **EXISTING})
    assert reply["error"]["desc"] == "Bitmap 'nosuch' could not be found", reply
    await start_held_backup(vm, "j4", "drive1")
    vm.tools.create(vm.path("j5.qcow2"), "qcow2", "4M").check()
    await vm.cmd("drive-backup", {"job-id": "j5", "device": "drive1", "sync": "none",
                                  "target": str(vm.path("j5.qcow2")), **EXISTING})
    await wait_statuses(vm, {"j5": "running"})
    for job_id in ("j5", "j4", "j1"):
        await vm.cmd("job-cancel", id=job_id)
        await vm.wait_job_end(job_id)
    await vm.shutdown()


async def test_drain_transactions_and_bitmaps(vm: VM) -> None:
    """A transaction pauses every running job once (bdrv_drain_all), even an empty one or one
    that aborts; the bitmap commands on their own drain nothing."""
    await launch_scenario(vm)
    await start_held_backup(vm, "j1", "drive0")
    await vm.cmd("transaction", actions=[])
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="b0")
    await vm.cmd("block-dirty-bitmap-clear", node="drive0", name="b0")
    await vm.cmd("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": "drive1", "name": "t1"}},
        {"type": "block-dirty-bitmap-clear", "data": {"node": "drive0", "name": "b0"}}])
    reply = await vm.qmp("transaction", actions=[{"type": "abort", "data": {}}])
    assert reply["error"]["desc"] == "Transaction aborted using Abort action", reply
    await vm.cmd("block-dirty-bitmap-remove", node="drive0", name="b0")
    await vm.cmd("block-job-set-speed", device="j1", speed=2)
    await vm.cmd("query-block-jobs")
    await vm.cmd("job-cancel", id="j1")
    await vm.wait_job_end("j1")
    await vm.shutdown()


async def test_drain_at_quit(vm: VM) -> None:
    """quit: qemu_cleanup begins a drain-all section (never ended) and then cancels every job;
    the running job pauses, then the cancel re-enters it (``paused running aborting``); a
    user-paused job is already parked and shows only its cancel."""
    await launch_scenario(vm)
    await start_held_backup(vm, "j1", "drive0")
    await start_held_backup(vm, "j2", "drive1")
    await vm.cmd("job-pause", id="j2")
    await wait_statuses(vm, {"j2": "paused"})
    await vm.shutdown()
