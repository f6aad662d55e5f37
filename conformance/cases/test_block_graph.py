"""The block graph over QMP: blockdev-add of every driver the emulator knows, query-named-block-nodes,
blockdev-del and its refusals, block_resize, and the legacy ``blkdebug:CONFIG:IMAGE`` filename."""

from __future__ import annotations

from typing import Any

from conformance.recipes import recipe
from conformance.vm import VM


def _nodes(reply: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(node["node-name"], node["drv"]) for node in reply]


async def test_blockdev_add_del(vm: VM) -> None:
    """blockdev-add builds raw-over-file, qcow2 (with its backing chain opened from the header) and
    null-co nodes; string references reuse an existing node; query-named-block-nodes lists them
    newest first; blockdev-del refuses a node in use, one it does not know and one the monitor does
    not own, and removes the rest; the node-name rules (missing root name, bad name, duplicate)."""
    base = recipe("qcow2-64M").build(vm.tools, vm.path("base.qcow2"))
    vm.tools.create(vm.path("top.qcow2"), "qcow2", "64M", backing=base, backing_fmt="qcow2").check()
    raw = recipe("raw-1M").build(vm.tools, vm.path("disk.raw"))
    await vm.launch()

    await vm.cmd("blockdev-add", driver="file", filename=str(raw), node_name="rawfile")
    await vm.cmd("blockdev-add", driver="raw", file="rawfile", node_name="raw0")
    await vm.cmd("blockdev-add", driver="qcow2", node_name="top0",
                 file={"driver": "file", "filename": str(vm.path("top.qcow2"))})
    await vm.cmd("blockdev-add", driver="null-co", node_name="null0", size=1048576)
    nodes = await vm.cmd("query-named-block-nodes", flat=True)
    assert ("raw0", "raw") in _nodes(nodes) and ("top0", "qcow2") in _nodes(nodes)
    top = next(node for node in nodes if node["node-name"] == "top0")
    assert top["backing_file"] == str(base)
    await vm.cmd("query-named-block-nodes")

    errors = [
        await vm.qmp("blockdev-add", driver="null-co"),
        await vm.qmp("blockdev-add", driver="null-co", node_name="0bad"),
        await vm.qmp("blockdev-add", driver="null-co", node_name="null0"),
        await vm.qmp("blockdev-add", driver="raw", node_name="raw1", file="nosuch"),
        await vm.qmp("blockdev-add", driver="qcow2", node_name="q1",
                     file={"driver": "file", "filename": str(vm.path("missing.qcow2"))}),
        await vm.qmp("blockdev-del", node_name="rawfile"),
        await vm.qmp("blockdev-del", node_name="nosuch"),
    ]
    assert all("error" in reply for reply in errors)

    assert "error" in await vm.qmp("block_resize", node_name="null0", size=2097152)
    await vm.cmd("block_resize", node_name="raw0", size=2097152)
    assert (await vm.qmp("block_resize", node_name="raw0", size=-1))["error"]["class"] == "GenericError"
    raw0 = next(node for node in await vm.cmd("query-named-block-nodes", flat=True)
                if node["node-name"] == "raw0")
    assert raw0["image"]["virtual-size"] == 2097152
    for name in ("raw0", "rawfile", "top0", "null0"):
        await vm.cmd("blockdev-del", node_name=name)
    assert await vm.cmd("query-named-block-nodes") == []


async def test_legacy_blkdebug_filename(vm: VM) -> None:
    """``-drive file=blkdebug:CONFIG:IMAGE``: the config file's inject-error rule fails the first
    data read with EIO (HMP qemu-io reports it), the next read succeeds (``once``), and the node
    reports the ``blkdebug:CONFIG:IMAGE`` file name."""
    image = recipe("iotest124-drive0").build(vm.tools, vm.path("drive0.qcow2"))
    config = vm.path("blkdebug.conf")
    config.write_text('[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce = "on"\n')
    vm.add_args("-drive", f"if=none,id=drive0,format=qcow2,file=blkdebug:{config}:{image}")
    await vm.launch()
    block = await vm.cmd("query-block")
    assert block[0]["inserted"]["file"] == f"blkdebug:{config}:{image}"
    await vm.hmp_qemu_io("drive0", "read -P 0x41 0 512")
    await vm.hmp_qemu_io("drive0", "read -P 0x41 0 512")
