"""External snapshots as transaction actions: blockdev-snapshot-sync and blockdev-snapshot."""

from __future__ import annotations

from conformance.recipes import recipe
from conformance.vm import VM


async def test_snapshot_sync_in_transactions(vm: VM) -> None:
    """A snapshot-sync together with a bitmap add commits both (the device now shows the overlay
    with the old image as its backing); the same kind of transaction ending in ``abort`` undoes the
    snapshot (the device is back on its image; QEMU leaves the created overlay file behind) and the
    bitmap; grouped mode refuses the action; writes after the snapshot land in the overlay."""
    image = recipe("iotest124-drive0").build(vm.tools, vm.path("drive0.qcow2"))
    vm.add_drive(image, fmt="qcow2", drive_id="drive0", node_name="node0")
    await vm.launch()

    await vm.cmd("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "bitmap0"}},
        {"type": "blockdev-snapshot-sync",
         "data": {"device": "drive0", "snapshot-file": str(vm.path("snap1.qcow2")),
                  "snapshot-node-name": "snap1", "format": "qcow2"}}])
    inserted = (await vm.cmd("query-block"))[0]["inserted"]
    assert inserted["node-name"] == "snap1" and inserted["backing_file_depth"] == 1

    reply = await vm.qmp("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "bitmap1"}},
        {"type": "blockdev-snapshot-sync",
         "data": {"device": "drive0", "snapshot-file": str(vm.path("snap2.qcow2")),
                  "snapshot-node-name": "snap2"}},
        {"type": "abort", "data": {}}])
    assert reply["error"]["desc"] == "Transaction aborted using Abort action"
    inserted = (await vm.cmd("query-block"))[0]["inserted"]
    assert inserted["node-name"] == "snap1"

    reply = await vm.qmp("transaction", actions=[
        {"type": "blockdev-snapshot-sync",
         "data": {"device": "drive0", "snapshot-file": str(vm.path("snap3.qcow2"))}}],
        properties={"completion-mode": "grouped"})
    assert "error" in reply
    for bad in ({"node-name": "node0", "snapshot-file": str(vm.path("x.qcow2"))},
                {"device": "nodev", "snapshot-file": str(vm.path("x.qcow2"))},
                {"device": "drive0", "snapshot-file": str(vm.path("x.qcow2")),
                 "snapshot-node-name": "node0"}):
        assert "error" in await vm.qmp("blockdev-snapshot-sync", bad)

    await vm.hmp_qemu_io("drive0", "write -P 0x99 0 64k")
    await vm.hmp_qemu_io("drive0", "flush")
    await vm.shutdown()
    vm.tools.qemu_io(vm.path("snap1.qcow2"), "qcow2", ["read -P 0x99 0 64k", "read -P 0xd5 1M 32k"],
                     read_only=True).check()
    vm.tools.qemu_io(image, "qcow2", ["read -P 0x41 0 512"], read_only=True).check()


async def test_blockdev_snapshot_with_added_overlay(vm: VM) -> None:
    """blockdev-snapshot puts a node added with ``backing: null`` on top of the device; an overlay
    that already has a backing image, or one that is a device's node, is refused."""
    image = recipe("iotest124-drive0").build(vm.tools, vm.path("drive0.qcow2"))
    vm.tools.create(vm.path("overlay.qcow2"), "qcow2", "64M").check()
    vm.add_drive(image, fmt="qcow2", drive_id="drive0", node_name="node0")
    await vm.launch()
    assert "error" in await vm.qmp("blockdev-snapshot", node="node0", overlay="node0")
    await vm.cmd("blockdev-add", driver="qcow2", node_name="ovl", backing=None,
                 file={"driver": "file", "filename": str(vm.path("overlay.qcow2"))})
    await vm.cmd("blockdev-snapshot", node="node0", overlay="ovl")
    inserted = (await vm.cmd("query-block"))[0]["inserted"]
    assert inserted["node-name"] == "ovl" and inserted["backing_file_depth"] == 1
    assert "error" in await vm.qmp("blockdev-snapshot", node="ovl", overlay="ovl")
