"""The driver table (emulator/block/node.py): a driver is one BlockNode subclass registered with
@block_driver, and the graph, the file names and the queries reach it only through its hooks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from emulator.block.filename import node_filename
from emulator.block.graph import BlockGraph
from emulator.block.node import (
    DRIVERS,
    BlockNode,
    DriverInfo,
    NodeOpener,
    block_driver,
    implements,
)
from emulator.commands.bitmaps import bitmap_add
from emulator.commands.block import image_info
from emulator.machine import Machine


class ZeroNode(BlockNode):
    """A protocol driver that reads zeros, with a made-up cluster size."""

    driver = "x-blocktxn-zero"
    is_protocol = True
    strong_runtime_opts = ("size",)

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        node = cls(name, auto_named=auto_named)
        node.size = int(options.get("size", 1 << 20))
        return graph.register_opened(node, options)

    def _length(self) -> int:
        return self.size

    def _pread(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def get_info(self) -> DriverInfo:
        return DriverInfo(cluster_size=8192)

    def allocated_file_size(self) -> int:
        return 0

    def exact_filename_hook(self) -> str:
        return "" if self.options.get("size") else "x-blocktxn-zero://"


@pytest.fixture
def zero_driver() -> Iterator[None]:
    block_driver(ZeroNode)
    try:
        yield
    finally:
        del DRIVERS[ZeroNode.driver]


@pytest.mark.usefixtures("zero_driver")
def test_a_new_driver_is_one_class() -> None:
    machine = Machine()
    graph: BlockGraph = machine.block
    node = graph.blockdev_add({"driver": "x-blocktxn-zero", "node-name": "z0"})
    raw = graph.blockdev_add({"driver": "raw", "node-name": "r0", "file": "z0"})
    sized = graph.blockdev_add({"driver": "x-blocktxn-zero", "node-name": "z1", "size": 4096})
    assert node.pread(0, 4) == bytes(4)
    assert node_filename(node) == "x-blocktxn-zero://"
    assert node_filename(raw) == "x-blocktxn-zero://"  # a format over a protocol takes its name
    assert node_filename(sized) == 'json:{"driver": "x-blocktxn-zero", "size": 4096}'
    info = image_info(raw)
    assert (info["cluster-size"], info["dirty-flag"], info["actual-size"]) == (8192, False, 0)
    bitmap_add(machine, "r0", "b")  # default granularity: the cluster size, within [4k, 64k]
    assert raw.dirty_bitmaps.find("b").granularity == 8192  # type: ignore[union-attr]
    machine.close()


def test_every_driver_has_a_unique_name_and_an_open() -> None:
    assert {"file", "raw", "qcow2", "vmdk", "null-co", "blkdebug", "copy-before-write",
            "snapshot-access", "throttle"} <= set(DRIVERS)
    for name, driver in DRIVERS.items():
        assert driver.driver == name
        assert driver.open.__func__ is not BlockNode.open.__func__, name  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="registered twice"):
        block_driver(DRIVERS["raw"])
    creators = {name for name, driver in DRIVERS.items() if implements(driver, "co_create")}
    assert creators == {"file", "qcow2", "vmdk"}  # what blockdev-create can make
