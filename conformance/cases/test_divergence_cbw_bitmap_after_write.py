r"""A guest write through the device while a speed-limited full backup holds after its
first copy task: query-block then shows the copy-before-write node's two anonymous
bitmaps; QEMU 7.2 counts 65536 in the second one (the cluster the write touched),
the emulator 0.

Found by the differential fuzzer (``blocktxn fuzz``): real QEMU 7.2 and the emulator
diverged (reply) at step 2 of this scenario.

What differed when it was found (reference = real QEMU, candidate = emulator):

    --- qemu (reference)
    +++ emulator (candidate)
    @@ -1,2 +1,2 @@
     -> {"execute": "query-block"}
    -<- {"return": [{"device": "drive0", "inserted": {"backing_file_depth": 1, "bps": 0, "bps_rd": 0, "bps_wr": 0, "cache": {"direct": false, "no-flush": false, "writeback": true}, "detect_zeroes": "off", "dirty-bitmaps": [{"busy": false, "count": 4194304, "granularity": 65536, "persistent": false, "recording": false}, {"busy": false, "count": 65536, "granularity": 65536, "persistent": false, "recording": false}], "drv": "copy-before-write", "encrypted": false, "file": "TEST_DIR/drive0.qcow2", "image": {"actual-size": "MASKED", "backing-image": {"actual-size": "MASKED", "cluster-size": 65536, "dirty-flag": false, "filename": "TEST_DIR/drive0.qcow2", "format": "qcow2", "format-specific": {"data": {"compat": "1.1", "compression-type": "zlib", "corrupt": false, "extended-l2": false, "lazy-refcounts": false, "refcount-bits": 16}, "type": "qcow2"}, "virtual-size": 4194304}, "cluster-size": 65536, "dirty-flag": false, "filename": "TEST_DIR/drive0.qcow2", "format": "copy-before-write", "virtual-size": 4194304}, "iops": 0, "iops_rd": 0, "iops_wr": 0, "node-name": "#blockNNN", "ro": false, "write_threshold": 0}, "locked": false, "removable": true, "type": "unknown"}]}
    +<- {"return": [{"device": "drive0", "inserted": {"backing_file_depth": 1, "bps": 0, "bps_rd": 0, "bps_wr": 0, "cache": {"direct": false, "no-flush": false, "writeback": true}, "detect_zeroes": "off", "dirty-bitmaps": [{"busy": false, "count": 4194304, "granularity": 65536, "persistent": false, "recording": false}, {"busy": false, "count": 0, "granularity": 65536, "persistent": false, "recording": false}], "drv": "copy-before-write", "encrypted": false, "file": "TEST_DIR/drive0.qcow2", "image": {"actual-size": "MASKED", "backing-image": {"actual-size": "MASKED", "cluster-size": 65536, "dirty-flag": false, "filename": "TEST_DIR/drive0.qcow2", "format": "qcow2", "format-specific": {"data": {"compat": "1.1", "compression-type": "zlib", "corrupt": false, "extended-l2": false, "lazy-refcounts": false, "refcount-bits": 16}, "type": "qcow2"}, "virtual-size": 4194304}, "cluster-size": 65536, "dirty-flag": false, "filename": "TEST_DIR/drive0.qcow2", "format": "copy-before-write", "virtual-size": 4194304}, "iops": 0, "iops_rd": 0, "iops_wr": 0, "node-name": "#blockNNN", "ro": false, "write_threshold": 0}, "locked": false, "removable": true, "type": "unknown"}]}

Record the golden from real QEMU with ``./blocktxn record-golden -k test_divergence_cbw_bitmap_after_write``.
"""

from __future__ import annotations

from conformance.differential.steps import (
    launch_scenario,
    wait_first_chunk,
    wait_statuses,
)
from conformance.vm import VM


async def test_divergence_cbw_bitmap_after_write(vm: VM) -> None:
    """Replays the minimal scenario on the drives of conformance.differential.steps."""
    await launch_scenario(vm)
    # j1: full backup of drive0, held by speed=1
    await vm.qmp('drive-backup', {'job-id': 'j1', 'device': 'drive0', 'sync': 'full', 'format': 'qcow2', 'target': str(vm.path('j1.qcow2')), 'speed': 1})
    await wait_first_chunk(vm, 'j1')
    await wait_statuses(vm, {'j1': 'running'})
    # qemu-io drive0: write into cluster 0
    await vm.hmp_qemu_io('drive0', 'write -P 0xa5 10736 13352')
    # query-block
    await vm.qmp('query-block')
    # qemu-io drive0: write into cluster 2
    await vm.hmp_qemu_io('drive0', 'write -P 0xa5 131072 512')
    # query-block
    await vm.qmp('query-block')
    # teardown: job-cancel j1
    await vm.qmp('job-cancel', {'id': 'j1'})
    await wait_statuses(vm, {'j1': 'null'})
    # teardown: every bitmap
    await vm.qmp('query-block')
    await vm.qmp('query-named-block-nodes', {'flat': True})
    await vm.shutdown()
