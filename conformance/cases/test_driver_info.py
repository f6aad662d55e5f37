"""What a node reports about itself through its driver (QEMU's BlockDriver callbacks): the
ImageInfo of query-named-block-nodes (bdrv_get_info's cluster size and dirty-flag, the
sector-rounded virtual size, the allocated size) for each driver and stack the emulator has, and
the default granularity of a bitmap added on a backup's copy-before-write filter (which asks
bdrv_get_info, that is the filter's child)."""

from __future__ import annotations

from conformance.vm import VM


async def test_driver_info_in_queries(vm: VM) -> None:
    """null-co with a size that is not a multiple of 512 (the virtual size counts whole
    sectors); raw over null-co (no bdrv_get_info below: no dirty-flag) and raw over a qcow2 with
    4 KiB clusters (raw reports its child's cluster size); copy-before-write and snapshot-access
    over null-co (neither answers bdrv_get_info)."""
    vm.tools.create(vm.path("c4k.qcow2"), "qcow2", "1M", options="cluster_size=4096").check()
    await vm.launch()
    await vm.cmd("blockdev-add", driver="null-co", node_name="n1000", size=1000)
    await vm.cmd("blockdev-add", driver="raw", node_name="rawnull",
                 file={"driver": "null-co", "node-name": "nullunder"})
    await vm.cmd("blockdev-add", driver="raw", node_name="rawq",
                 file={"driver": "qcow2", "node-name": "qunder",
                       "file": {"driver": "file", "node-name": "qfile",
                                "filename": str(vm.path("c4k.qcow2"))}})
    await vm.cmd("blockdev-add", driver="null-co", node_name="src", size=1048576)
    await vm.cmd("blockdev-add", driver="null-co", node_name="tgt", size=1048576)
    await vm.cmd("blockdev-add", driver="copy-before-write", node_name="cbw", file="src",
                 target="tgt")
    await vm.cmd("blockdev-add", driver="snapshot-access", node_name="acc", file="cbw")
    await vm.cmd("query-named-block-nodes", flat=True)
    for name in ("acc", "cbw", "tgt", "src", "rawq", "rawnull", "n1000"):
        await vm.cmd("blockdev-del", node_name=name)
    await vm.shutdown()


async def test_bitmap_default_granularity_on_backup_filter(vm: VM) -> None:
    """While a backup runs, the device's root is the copy-before-write filter: a bitmap added
    through the device lives there, and its default granularity is the source's 4 KiB cluster
    size (bdrv_get_info passes through the filter), not the backup's 64 KiB copy cluster."""
    vm.tools.create(vm.path("c4k.qcow2"), "qcow2", "1M", options="cluster_size=4096").check()
    vm.add_drive(vm.path("c4k.qcow2"), fmt="qcow2")
    await vm.launch()
    await vm.cmd("drive-backup", job_id="j", device="drive0", sync="none", format="qcow2",
                 target=str(vm.path("target.qcow2")))
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="b")
    await vm.cmd("query-block")
    await vm.cmd("block-dirty-bitmap-remove", node="drive0", name="b")
    await vm.cmd("job-cancel", id="j")
    await vm.wait_job_end("j")
    await vm.cmd("query-block")
    await vm.shutdown()
