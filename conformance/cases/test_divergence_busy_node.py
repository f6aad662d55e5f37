r"""A second drive-backup of a node that a live backup job uses is refused by the
op blocker before anything else: QEMU 7.2 checks it early ("Early check to avoid
creating target" in drive_backup_prepare), so no target file is created and no
argument error (bitmap, bitmap-mode) is reported first.

Found by the differential fuzzer (``blocktxn fuzz``): real QEMU 7.2 and the emulator
diverged (reply) at step 1 of this scenario.

What differed when it was found (reference = real QEMU, candidate = emulator):

    --- qemu (reference)
    +++ emulator (candidate)
    @@ -1,2 +1,3 @@
     -> {"arguments": {"device": "drive0", "format": "qcow2", "job-id": "j2", "sync": "full", "target": "TEST_DIR/j2.qcow2"}, "execute": "drive-backup"}
     <- {"error": {"class": "GenericError", "desc": "Node 'drive0' is busy: block device is in use by block job: backup"}}
    +.. Formatting 'TEST_DIR/j2.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=4194304 lazy_refcounts=off refcount_bits=16

Record the golden from real QEMU with ``./blocktxn record-golden -k test_divergence_busy_node``.
"""

from __future__ import annotations

from conformance.differential.steps import (
    launch_scenario,
    wait_first_chunk,
    wait_statuses,
)
from conformance.vm import VM


async def test_divergence_busy_node(vm: VM) -> None:
    """Replays the minimal scenario on the drives of conformance.differential.steps."""
    await launch_scenario(vm)
    # j1: full backup of drive0, held by speed=1
    await vm.qmp('drive-backup', {'job-id': 'j1', 'device': 'drive0', 'sync': 'full', 'format': 'qcow2', 'target': str(vm.path('j1.qcow2')), 'speed': 1})
    await wait_first_chunk(vm, 'j1')
    await wait_statuses(vm, {'j1': 'running'})
    # j2: full backup of the same node
    await vm.qmp('drive-backup', {'job-id': 'j2', 'device': 'drive0', 'sync': 'full', 'format': 'qcow2', 'target': str(vm.path('j2.qcow2'))})
    # j3: incremental backup of the same node with an unknown bitmap
    await vm.qmp('drive-backup', {'job-id': 'j3', 'device': 'drive0', 'sync': 'incremental', 'format': 'qcow2', 'target': str(vm.path('j3.qcow2')), 'bitmap': 'nosuch'})
    # j4: sync=none with a bitmap-mode but no bitmap
    await vm.qmp('drive-backup', {'job-id': 'j4', 'device': 'drive0', 'sync': 'none', 'format': 'qcow2', 'target': str(vm.path('j4.qcow2')), 'bitmap-mode': 'never'})
    # teardown: job-cancel j1
    await vm.qmp('job-cancel', {'id': 'j1'})
    await wait_statuses(vm, {'j1': 'null'})
    # teardown: every bitmap
    await vm.qmp('query-block')
    await vm.qmp('query-named-block-nodes', {'flat': True})
    await vm.shutdown()
    # j2.qcow2 exists on one target only.
    vm.tools.info(vm.path('j2.qcow2'), 'qcow2')
    # j3.qcow2 exists on one target only.
    vm.tools.info(vm.path('j3.qcow2'), 'qcow2')
    # j4.qcow2 exists on one target only.
    vm.tools.info(vm.path('j4.qcow2'), 'qcow2')
