r"""HMP qemu-io addressed to a *node name* while a backup job uses the node: QEMU 7.2
attaches a new BlockBackend to the node, which needs 'write' permission that the
copy-before-write filter does not share, so the command fails with a permission
conflict (and writes nothing).

Found by the differential fuzzer (``blocktxn fuzz``): real QEMU 7.2 and the emulator
diverged (reply) at step 1 of this scenario.

What differed when it was found (reference = real QEMU, candidate = emulator):

    --- qemu (reference)
    +++ emulator (candidate)
    @@ -1,2 +1,4 @@
     -> {"arguments": {"command-line": "qemu-io node0 \"write -P 0x5a 0 65536\""}, "execute": "human-monitor-command"}
    -<- {"return": "Permission conflict on node 'node0': permissions 'write' are both required by an unnamed block device (uses node 'node0' as 'root' child) and unshared by node '#blockNNN' (uses node 'node0' as 'file' child).\r\n"}
    +<- {"return": ""}
    +.. wrote 65536/65536 bytes at offset 0
    +.. 64 KiB, 1 ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)

Record the golden from real QEMU with ``./blocktxn record-golden -k test_divergence_node_io_during_backup``.
"""

from __future__ import annotations

from conformance.differential.steps import (
    launch_scenario,
    wait_first_chunk,
    wait_statuses,
)
from conformance.vm import VM


async def test_divergence_node_io_during_backup(vm: VM) -> None:
    """Replays the minimal scenario on the drives of conformance.differential.steps."""
    await launch_scenario(vm)
    # j1: full backup of drive0, held by speed=1
    await vm.qmp('drive-backup', {'job-id': 'j1', 'device': 'drive0', 'sync': 'full', 'format': 'qcow2', 'target': str(vm.path('j1.qcow2')), 'speed': 1})
    await wait_first_chunk(vm, 'j1')
    await wait_statuses(vm, {'j1': 'running'})
    # qemu-io node0: write
    await vm.hmp_qemu_io('node0', 'write -P 0x5a 0 65536')
    # j2: full backup of drive1, held by speed=1
    await vm.qmp('drive-backup', {'job-id': 'j2', 'device': 'drive1', 'sync': 'full', 'format': 'qcow2', 'target': str(vm.path('j2.qcow2')), 'speed': 1})
    await wait_first_chunk(vm, 'j2')
    await wait_statuses(vm, {'j2': 'running'})
    # qemu-io drive1: write
    await vm.hmp_qemu_io('drive1', 'write -P 0x5a 0 65536')
    # teardown: job-cancel j1
    await vm.qmp('job-cancel', {'id': 'j1'})
    await wait_statuses(vm, {'j1': 'null'})
    # teardown: job-cancel j2
    await vm.qmp('job-cancel', {'id': 'j2'})
    await wait_statuses(vm, {'j2': 'null'})
    # teardown: every bitmap
    await vm.qmp('query-block')
    await vm.qmp('query-named-block-nodes', {'flat': True})
    await vm.shutdown()
    # What real QEMU left in drive0.qcow2, rebuilt byte run by byte run.
    vm.tools.create(vm.path('drive0.expected.qcow2'), 'qcow2', '4194304').check()
    vm.tools.qemu_io(vm.path('drive0.expected.qcow2'), 'qcow2', ['write -P 0x41 0 512', 'write -P 0xd5 1048576 32768', 'write -P 0xdc 3145728 126976']).check()
    vm.tools.compare(vm.path('drive0.qcow2'), vm.path('drive0.expected.qcow2'), 'qcow2')
    # What real QEMU left in drive1.qcow2, rebuilt byte run by byte run.
    vm.tools.create(vm.path('drive1.expected.qcow2'), 'qcow2', '4194304').check()
    vm.tools.qemu_io(vm.path('drive1.expected.qcow2'), 'qcow2', ['write -P 0x14 0 512', 'write -P 0x5d 1048576 32768', 'write -P 0xcd 3145728 126976']).check()
    vm.tools.compare(vm.path('drive1.qcow2'), vm.path('drive1.expected.qcow2'), 'qcow2')
