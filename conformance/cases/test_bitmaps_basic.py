"""Dirty bitmap add / query / remove on a qcow2 drive, with the argument errors."""

from __future__ import annotations

from typing import Any

from conformance.recipes import recipe
from conformance.vm import VM


async def test_bitmap_add_query_remove(vm: VM) -> None:
    """Bitmaps added with ``node=drive0`` appear in query-block under ``inserted.dirty-bitmaps``
    of node0 with the right granularity and count; a duplicate name and granularities 1000, 0
    and 2^32 are refused with QEMU's texts and change nothing; removal takes a bitmap away and a
    missing one is reported."""
    image = recipe("qcow2-64M").build(vm.tools, vm.path("drive0.qcow2"))
    vm.add_drive(image, fmt="qcow2", drive_id="drive0", node_name="node0")
    await vm.launch()

    async def bitmaps() -> list[dict[str, Any]]:
        block = await vm.cmd("query-block")
        return list(block[0]["inserted"].get("dirty-bitmaps", []))

    assert await bitmaps() == []
    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    assert [b["granularity"] for b in await bitmaps()] == [65536]

    for granularity in (None, 1000, 0, 2**32):
        args: dict[str, Any] = {"node": "drive0", "name": "bitmap0" if granularity is None else "bitmap1"}
        if granularity is not None:
            args["granularity"] = granularity
        reply = await vm.qmp("block-dirty-bitmap-add", args)
        assert reply["error"]["class"] == "GenericError"
    assert len(await bitmaps()) == 1

    await vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap1", granularity=512)
    assert sorted(b["name"] for b in await bitmaps()) == ["bitmap0", "bitmap1"]
    await vm.hmp_qemu_io("drive0", "write -P 0x11 0 4k")
    counts = {b["name"]: b["count"] for b in await bitmaps()}
    assert counts == {"bitmap0": 65536, "bitmap1": 4096}

    await vm.cmd("block-dirty-bitmap-remove", node="drive0", name="bitmap0")
    assert [b["name"] for b in await bitmaps()] == ["bitmap1"]
    reply = await vm.qmp("block-dirty-bitmap-remove", node="drive0", name="bitmap0")
    assert reply["error"]["desc"] == "Dirty bitmap 'bitmap0' not found"
    await vm.cmd("block-dirty-bitmap-remove", node="node0", name="bitmap1")
    assert await bitmaps() == []
