"""blockdev-snapshot-sync of a node that nothing uses (added with blockdev-add, no device):
QEMU opens the overlay and appends it above the node, but when the transaction is over the
overlay's only reference is the one the prepare took, and external_snapshot_clean drops it.  The
overlay is closed at once; its node name is gone and the snapshotted node is left as it was.

Found by scripts/drain_probe.py (probe "graph"): after such a snapshot, real QEMU 7.2.22 answered
a drive-backup of the overlay with "Cannot find device='snap1' nor node-name='snap1'" while the
emulator started the job.  Goldens recorded with ./blocktxn record-golden from real QEMU 7.2.22 and
10.0.2.
"""

from __future__ import annotations

from conformance.differential.steps import launch_scenario
from conformance.vm import VM


async def test_divergence_snapshot_unattached_node(vm: VM) -> None:
    await launch_scenario(vm)
    await vm.cmd("blockdev-snapshot-sync", {"node-name": "drive1", "snapshot-file":
                                            str(vm.path("snap1.qcow2")), "format": "qcow2",
                                            "snapshot-node-name": "snap1"})
    nodes = await vm.cmd("query-named-block-nodes", flat=True)
    names = sorted(node["node-name"] for node in nodes if not node["node-name"].startswith("#"))
    await vm.qmp("blockdev-del", {"node-name": "snap1"})
    # The snapshotted node itself is still there and usable.
    await vm.hmp_qemu_io("drive1", "read 0 512")
    await vm.cmd("blockdev-del", {"node-name": "drive1"})
    await vm.shutdown()
    vm.tools.info(vm.path("snap1.qcow2"), "qcow2")
    assert "snap1" not in names and "drive1" in names, names
