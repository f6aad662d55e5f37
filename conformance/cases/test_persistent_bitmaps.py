"""Persistent dirty bitmaps stored in the qcow2 image: written at close, loaded (and marked
in_use) at open, removed from the image at once; checked on disk with qemu-img info/check."""

from __future__ import annotations

import json
from typing import Any

from conformance.recipes import recipe
from conformance.vm import VM


def _bitmaps(nodes: list[dict[str, Any]], node_name: str) -> list[dict[str, Any]]:
    node = next(n for n in nodes if n["node-name"] == node_name)
    return list(node.get("dirty-bitmaps", []))


async def test_persistent_bitmaps_stored_at_quit(vm: VM) -> None:
    """Persistent bitmaps (default and 512-byte granularity, one disabled then enabled) record
    guest writes next to a transient one (writes are whole clusters, so that the host allocation
    qemu-img info reports as actual-size is the same on both targets); nothing reaches the image before ``quit``, after which
    ``qemu-img info`` lists the persistent ones (flags, granularity) and ``qemu-img check`` finds
    the image clean.  A duplicate name and a persistent bitmap on a raw node are refused."""
    image = recipe("qcow2-64M").build(vm.tools, vm.path("drive0.qcow2"))
    raw = recipe("raw-1M").build(vm.tools, vm.path("drive1.raw"))
    vm.add_drive(image, fmt="qcow2", drive_id="drive0", node_name="node0")
    vm.add_drive(raw, fmt="raw", drive_id="drive1", node_name="node1")
    await vm.launch()

    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="pb0", persistent=True)
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="pb1", granularity=512,
                 persistent=True, disabled=True)
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="transient", granularity=4096)
    refused = [
        await vm.qmp("block-dirty-bitmap-add", node="drive0", name="pb0", persistent=True),
        await vm.qmp("block-dirty-bitmap-add", node="drive1", name="pb0", persistent=True),
    ]
    assert all(reply["error"]["class"] == "GenericError" for reply in refused)

    await vm.hmp_qemu_io("drive0", "write -P 0x11 0 64k")
    await vm.cmd("block-dirty-bitmap-enable", node="drive0", name="pb1")
    await vm.hmp_qemu_io("drive0", "write -P 0x22 128k 64k")
    await vm.hmp_qemu_io("drive0", "write -P 0x33 40M 1M")
    block = await vm.cmd("query-block")
    counts = {b["name"]: b["count"] for b in block[0]["inserted"]["dirty-bitmaps"]}
    assert counts == {"pb0": 2 * 65536 + 1048576, "pb1": 65536 + 1048576,
                      "transient": 2 * 65536 + 1048576}
    assert "bitmaps" not in block[0]["inserted"]["image"]["format-specific"]["data"]
    await vm.shutdown()

    # qemu-img info's JSON lists the stored bitmaps (its host-dependent actual-size is masked, F6).
    info = json.loads(vm.tools.info(image, "qcow2", json_output=True).stdout)
    stored = info["format-specific"]["data"]["bitmaps"]
    assert sorted(b["name"] for b in stored) == ["pb0", "pb1"]
    assert vm.tools.check(image, "qcow2").returncode == 0


async def test_persistent_bitmaps_reopen_and_remove(vm: VM) -> None:
    """blockdev-del stores a node's persistent bitmaps; blockdev-add of the same image loads them
    with their counts, recording state and granularity and marks them in-use on disk (seen in
    query-named-block-nodes' format-specific data); block-dirty-bitmap-remove deletes one from
    the image at once; after quit the image is clean and lists the rest."""
    image = recipe("qcow2-64M").build(vm.tools, vm.path("disk0.qcow2"))
    options = {"driver": "qcow2", "node-name": "disk0",
               "file": {"driver": "file", "filename": str(image)}}
    await vm.launch()
    await vm.cmd("blockdev-add", options)
    await vm.cmd("block-dirty-bitmap-add", node="disk0", name="keep", persistent=True)
    await vm.cmd("block-dirty-bitmap-add", node="disk0", name="drop", granularity=4096,
                 persistent=True, disabled=True)
    await vm.hmp("qemu-io disk0 \"write -P 0x44 64k 64k\"")
    await vm.hmp("qemu-io disk0 \"write -P 0x55 10M 64k\"")
    await vm.cmd("blockdev-del", node_name="disk0")
    vm.tools.info(image, "qcow2", json_output=True)

    await vm.cmd("blockdev-add", options)
    nodes = await vm.cmd("query-named-block-nodes")
    assert {b["name"]: (b["count"], b["recording"]) for b in _bitmaps(nodes, "disk0")} == {
        "keep": (2 * 65536, True), "drop": (0, False)}
    vm.tools.info(image, "qcow2", json_output=True, force_share=True)
    await vm.cmd("block-dirty-bitmap-remove", node="disk0", name="drop")
    vm.tools.info(image, "qcow2", json_output=True, force_share=True)
    await vm.hmp("qemu-io disk0 \"write -P 0x66 20M 64k\"")
    await vm.cmd("query-named-block-nodes")
    await vm.shutdown()

    vm.tools.info(image, "qcow2")
    assert vm.tools.check(image, "qcow2").returncode == 0
