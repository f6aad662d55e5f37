r"""A cancelled ``drive-backup sync=none`` releases the node it created for its target.

drive-backup sync=none opens the new target and attaches the source node as its backing file
(bdrv_set_backing_hd), which blocks most operations on the source "as backing hd" of the target
-- blockdev-del of the source included (BLOCK_OP_TYPE_DRIVE_DEL).  When the job ends (here by
block-job-cancel) QEMU drops the job's reference to the target; the target node closes, its
backing child is unref'd (bdrv_backing_detach) and the source is free again: blockdev-del of it
succeeds and nothing is left in query-named-block-nodes.

The emulator closed the target but left its backing blocker on the source, so the blockdev-del
after the cancel failed with "Node 'src' is busy: node is used as backing hd of '#block…'".

Deterministic: the job (speed=1, sync=none: it copies only what guest writes touch, and there
are none) stays running until the cancel.  Run 5 times against each real QEMU (``./blocktxn
conform --target qemu --qemu BIN -k test_divergence_cancelled_sync_none_target``): 5/5 passed
on QEMU 7.2.22, 5/5 on QEMU 10.0.2.

Record the golden from real QEMU with
``./blocktxn record-golden -k test_divergence_cancelled_sync_none_target``.
"""

from __future__ import annotations

from conformance.differential.steps import wait_statuses
from conformance.vm import VM


async def test_divergence_cancelled_sync_none_target(vm: VM) -> None:
    """blockdev-del of the source fails while the sync=none job runs (the target uses it as
    its backing file) and succeeds once the cancelled job has released its target."""
    source = vm.path("src.qcow2")
    vm.tools.create(source, "qcow2", "4M").check()
    vm.tools.qemu_io(source, "qcow2", ["write -P 0x5a 0 64k"]).check()
    await vm.launch()
    await vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src",
                                  "file": {"driver": "file", "filename": str(source)}})
    await vm.qmp("drive-backup", {"job-id": "j1", "device": "src", "sync": "none",
                                  "format": "qcow2", "target": str(vm.path("t1.qcow2")),
                                  "speed": 1})
    await wait_statuses(vm, {"j1": "running"})
    await vm.qmp("query-named-block-nodes", {"flat": True})
    # While the job runs the target holds the source as its backing file.
    await vm.qmp("blockdev-del", {"node-name": "src"})

    await vm.qmp("block-job-cancel", {"device": "j1"})
    await vm.wait_job_end("j1")
    await vm.qmp("query-named-block-nodes", {"flat": True})
    await vm.qmp("blockdev-del", {"node-name": "src"})
    await vm.qmp("query-named-block-nodes", {"flat": True})
    # The source can be opened again: nothing of the old graph holds its image.
    await vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src",
                                  "file": {"driver": "file", "filename": str(source)}})
    await vm.qmp("query-named-block-nodes", {"flat": True})
    await vm.shutdown()

    vm.tools.info(vm.path("t1.qcow2"), "qcow2")
    vm.tools.check(vm.path("t1.qcow2"), "qcow2")
