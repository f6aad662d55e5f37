r"""``block_resize`` of the source of a running backup fails, whichever way the source is named
and whether it would grow or shrink the image, and the image keeps its size under the job.

How QEMU refuses depends on the node the name resolves to (qmp_block_resize: op blocker
first, then a new BlockBackend asking for BLK_PERM_RESIZE):

- by device name (``device: drive0``): the device's root is now the backup's copy-before-write
  filter, whose operations the job blocks.  QEMU 7.2 answers QERR_DEVICE_IN_USE ("Device
  'drive0' is in use"), 10.0 the op blocker's text ("Node 'drive0' is busy: block device is in
  use by block job: backup") -- the profile flag ``resize_busy_as_device_in_use``;
- by node name (``node-name: node0``) of a full backup's source: no op blocker, but the filter
  does not share 'resize' on its file child: the same permission conflict on both versions;
- by node name of a sync=none backup's source: the new target uses it as its backing file
  (bdrv_backing_attach blocks resize): "Device '(null)' is in use" on 7.2 (the `device`
  argument is NULL), "Node 'node1' is busy: node is used as backing hd of '#block…'" on 10.0.

Once the jobs are cancelled both sources can be resized again.  (The emulator was reported to
return {} here and shrink the image under the job; on the tree this case was written on it
already answered as QEMU in every form above, so the case pins that behaviour.)

Deterministic: the full backup (speed=1) is held after its first copy task and the sync=none
one copies nothing without guest writes, so both stay exactly where they are until cancelled.
Run 5 times against each real QEMU (``./blocktxn conform --target qemu --qemu BIN -k
test_divergence_resize_backup_source``): 5/5 passed on QEMU 7.2.22, 5/5 on QEMU 10.0.2.

Record the golden from real QEMU with
``./blocktxn record-golden -k test_divergence_resize_backup_source``.
"""

from __future__ import annotations

from conformance.differential.steps import wait_first_chunk, wait_statuses
from conformance.vm import VM

MIB = 1024 * 1024


async def test_divergence_resize_backup_source(vm: VM) -> None:
    """Shrinking, growing and same-size resizes of both backups' sources are refused while the
    jobs run; the images keep 4 MiB; after the cancel the resizes go through."""
    for name in ("drive0", "drive1"):
        image = vm.path(f"{name}.qcow2")
        vm.tools.create(image, "qcow2", "4M").check()
        vm.tools.qemu_io(image, "qcow2", ["write -P 0x5a 0 4M"]).check()
    vm.add_drive(vm.path("drive0.qcow2"), fmt="qcow2", drive_id="drive0", node_name="node0")
    vm.add_drive(vm.path("drive1.qcow2"), fmt="qcow2", drive_id="drive1", node_name="node1")
    await vm.launch()
    await vm.qmp("drive-backup", {"job-id": "j1", "device": "drive0", "sync": "full",
                                  "format": "qcow2", "target": str(vm.path("j1.qcow2")),
                                  "speed": 1})
    await wait_first_chunk(vm, "j1")
    await wait_statuses(vm, {"j1": "running"})
    await vm.qmp("drive-backup", {"job-id": "j2", "device": "drive1", "sync": "none",
                                  "format": "qcow2", "target": str(vm.path("j2.qcow2")),
                                  "speed": 1})
    await wait_statuses(vm, {"j2": "running"})

    for size in (2 * MIB, 8 * MIB, 4 * MIB):  # shrink, grow, same size
        await vm.qmp("block_resize", {"device": "drive0", "size": size})
        await vm.qmp("block_resize", {"node-name": "node0", "size": size})
        await vm.qmp("block_resize", {"device": "drive1", "size": size})
        await vm.qmp("block_resize", {"node-name": "node1", "size": size})
    await vm.qmp("query-named-block-nodes", {"flat": True})
    await vm.qmp("query-jobs")

    await vm.qmp("job-cancel", {"id": "j1"})
    await vm.wait_job_end("j1")
    await vm.qmp("job-cancel", {"id": "j2"})
    await vm.wait_job_end("j2")
    await vm.qmp("block_resize", {"node-name": "node0", "size": 2 * MIB})
    await vm.qmp("block_resize", {"device": "drive1", "size": 8 * MIB})
    await vm.qmp("query-block")
    await vm.shutdown()

    vm.tools.info(vm.path("drive0.qcow2"), "qcow2")
    vm.tools.info(vm.path("drive1.qcow2"), "qcow2")
    vm.tools.check(vm.path("drive0.qcow2"), "qcow2")
    vm.tools.check(vm.path("drive1.qcow2"), "qcow2")
