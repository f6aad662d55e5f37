r"""A speed-limited backup copies exactly one block-copy task before its rate limit
holds it.  QEMU 7.2 sizes that task by the source's block status, and qcow2 ends a
block-status extent where the clusters' host offsets stop being contiguous: after
a write allocating cluster 1 (its host cluster is not next to cluster 0's), the
first task covers only cluster 0 (current-progress 65536), where the emulator
copies both clusters (131072).

Found by the differential fuzzer (``blocktxn fuzz``): real QEMU 7.2 and the emulator
diverged (reply) at step 2 of this scenario.

What differed when it was found (reference = real QEMU, candidate = emulator):

    --- qemu (reference)
    +++ emulator (candidate)
    @@ -1,2 +1,2 @@
     -> {"execute": "query-jobs"}
    -<- {"return": [{"current-progress": 65536, "id": "j1", "status": "running", "total-progress": 4194304, "type": "backup"}]}
    +<- {"return": [{"current-progress": 131072, "id": "j1", "status": "running", "total-progress": 4194304, "type": "backup"}]}

Record the golden from real QEMU with ``./blocktxn record-golden -k test_divergence_first_copy_task``.
"""

from __future__ import annotations

from conformance.differential.steps import (
    launch_scenario,
    wait_first_chunk,
    wait_statuses,
)
from conformance.vm import VM


async def test_divergence_first_copy_task(vm: VM) -> None:
    """Replays the minimal scenario on the drives of conformance.differential.steps."""
    await launch_scenario(vm)
    # qemu-io drive0: write -P 0x00 61440 39936
    await vm.hmp_qemu_io('drive0', 'write -P 0x00 61440 39936')
    # j1: full backup of drive0, held by speed=1
    await vm.qmp('drive-backup', {'job-id': 'j1', 'device': 'drive0', 'sync': 'full', 'format': 'qcow2', 'target': str(vm.path('j1.qcow2')), 'speed': 1})
    await wait_first_chunk(vm, 'j1')
    await wait_statuses(vm, {'j1': 'running'})
    # query-jobs
    await vm.qmp('query-jobs')
    # query-block-jobs
    await vm.qmp('query-block-jobs')
    # teardown: job-cancel j1
    await vm.qmp('job-cancel', {'id': 'j1'})
    await wait_statuses(vm, {'j1': 'null'})
    # teardown: every bitmap
    await vm.qmp('query-block')
    await vm.qmp('query-named-block-nodes', {'flat': True})
    await vm.shutdown()
