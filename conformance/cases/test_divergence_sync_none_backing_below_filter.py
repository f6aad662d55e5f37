"""Found by the differential fuzzer (``blocktxn fuzz --minutes 1 --seed 7`` against QEMU 7.2.22):
the emulator answered query-named-block-nodes during a sync=none backup with an internal
RecursionError, because inserting the backup's filter also moved the target's backing edge onto
the filter (a loop).  QEMU leaves edges reachable from the new node where they are."""

from __future__ import annotations

from conformance.differential.steps import (
    launch_scenario,
    wait_statuses,
)
from conformance.vm import VM


async def test_divergence_sync_none_backing_below_filter(vm: VM) -> None:
    """A sync=none drive-backup into an existing qcow2 makes the source the target's backing;
    inserting the copy-before-write filter above the source must leave that edge alone
    (should_update_child: it is reachable from the filter through its target child), or the
    graph has a loop.  query-named-block-nodes then lists the filter, the target with the
    source as its backing file, and the source."""
    await launch_scenario(vm)
    # block-dirty-bitmap-remove 
    await vm.qmp('block-dirty-bitmap-remove', {'node': 'drive0', 'name': ''})
    # drive-backup j1: none backup of drive0 mode=existing
    vm.tools.create(vm.path('t1.qcow2'), 'qcow2', '4M').check()
    await vm.qmp('drive-backup', {'job-id': 'j1', 'device': 'drive0', 'sync': 'none', 'format': 'qcow2', 'target': str(vm.path('t1.qcow2')), 'mode': 'existing'})
    await wait_statuses(vm, {'j1': 'running'})
    # query-named-block-nodes
    await vm.qmp('query-named-block-nodes', {'flat': True})
