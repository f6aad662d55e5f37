r"""drive-backup sync=none with mode=absolute-paths names the source node as the new
target's backing file.  For drive1 (qcow2 over blkdebug) QEMU 7.2 cannot express
the node as a plain file name, so the backing file is a json: filename (in QDict
order, commas doubled) and no backing format is given.

Found by the differential fuzzer (``blocktxn fuzz``): real QEMU 7.2 and the emulator
diverged (reply) at step 0 of this scenario.

What differed when it was found (reference = real QEMU, candidate = emulator):

    --- qemu (reference)
    +++ emulator (candidate)
    @@ -1,3 +1,3 @@
     -> {"arguments": {"device": "drive1", "format": "qcow2", "job-id": "j1", "sync": "none", "target": "TEST_DIR/j1.qcow2"}, "execute": "drive-backup"}
     <- {"return": {}}
    -.. Formatting 'TEST_DIR/j1.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=4194304 backing_file=json:{"driver": "qcow2",, "file": {"inject-error.0.state": 2,, "inject-error.0.immediately": false,, "set-state.0.event": "flush_to_disk",, "inject-error.0.once": true,, "image": {"driver": "file",, "filename": "TEST_DIR/drive1.qcow2"},, "driver": "blkdebug",, "set-state.0.new_state": 2,, "inject-error.0.errno": 5,, "inject-error.0.event": "read_aio",, "set-state.0.state": 1}} backing_fmt=qcow2 lazy_refcounts=off refcount_bits=16
    +.. Formatting 'TEST_DIR/j1.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=4194304 backing_file=TEST_DIR/drive1.qcow2 backing_fmt=qcow2 lazy_refcounts=off refcount_bits=16

Record the golden from real QEMU with ``./blocktxn record-golden -k test_divergence_new_target_backing``.
"""

from __future__ import annotations

from conformance.differential.steps import (
    launch_scenario,
    wait_statuses,
)
from conformance.vm import VM


async def test_divergence_new_target_backing(vm: VM) -> None:
    """Replays the minimal scenario on the drives of conformance.differential.steps."""
    await launch_scenario(vm)
    # j1: sync=none backup of drive1 into a new image
    await vm.qmp('drive-backup', {'job-id': 'j1', 'device': 'drive1', 'sync': 'none', 'format': 'qcow2', 'target': str(vm.path('j1.qcow2'))})
    await wait_statuses(vm, {'j1': 'running'})
    # teardown: job-cancel j1
    await vm.qmp('job-cancel', {'id': 'j1'})
    await wait_statuses(vm, {'j1': 'null'})
    # teardown: every bitmap
    await vm.qmp('query-block')
    await vm.qmp('query-named-block-nodes', {'flat': True})
    await vm.shutdown()
