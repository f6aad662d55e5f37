"""External snapshots: blockdev-snapshot-sync and blockdev-snapshot (QEMU 7.2's external_snapshot_*).

prepare creates (absolute-paths) and opens the overlay and appends it above the old top node, so
the devices see the overlay; commit makes the old node read-only; abort puts the old node back.
Like QEMU, a file created during prepare stays behind when the transaction is rolled back.
"""

from __future__ import annotations

from typing import Any

from emulator import qerror
from emulator.block.drain import drained_begin, drained_end
from emulator.block.filename import node_filename
from emulator.block.image import create_image
from emulator.block.node import BlockNode
from emulator.commands.backup import QCOW2_CREATE_SECTIONS
from emulator.error import QemuError
from emulator.jobs.txn import JobTxn
from emulator.machine import Machine
from emulator.transaction import BaseAction, run_drained

from .registry import qapi_types, qmp_command, transaction_action

qapi_types(
    {"struct": "BlockdevSnapshot", "data": {"node": "str", "overlay": "str"}},
    {"struct": "BlockdevSnapshotSync", "data": {
        "*device": "str", "*node-name": "str", "snapshot-file": "str",
        "*snapshot-node-name": "str", "*format": "str", "*mode": "NewImageMode"}},
)


def _lookup(machine: Machine, device: str | None, node_name: str | None) -> BlockNode:
    """bdrv_lookup_bs(device, node_name)."""
    graph = machine.block
    if device is not None:
        backend = graph.find_backend(device)
        if backend is not None:
            return backend.root_or_error()
    if node_name is not None:
        node = graph.find_node(node_name)
        if node is not None:
            return node
    raise QemuError(qerror.DEVICE_OR_NODE_NOT_FOUND % (device or '', node_name or ''))


@transaction_action("blockdev-snapshot-sync")
@transaction_action("blockdev-snapshot")
class ExternalSnapshotAction(BaseAction):
    """The blockdev-snapshot-sync / blockdev-snapshot transaction action."""

    def __init__(self, machine: Machine, kind: str, data: dict[str, Any],
                 txn: JobTxn | None = None) -> None:
        self.machine = machine
        self.kind = kind
        self.data = data
        self.old: BlockNode | None = None
        self.new: BlockNode | None = None
        self.new_nodes: list[BlockNode] = []
        self.appended = False
        self.drained = False
        self.committed = False

    def prepare(self) -> None:
        graph = self.machine.block
        data = self.data
        if self.kind == "blockdev-snapshot-sync":
            old = _lookup(self.machine, data.get("device"), data.get("node-name"))
        else:
            old = _lookup(self.machine, data["node"], data["node"])
        self.old = old
        drained_begin(old)  # external_snapshot_prepare: bdrv_drained_begin, paired with .clean
        self.drained = True
        old.op_check("external-snapshot")
        if not old.read_only:
            try:
                old.flush()
            except OSError as exc:
                raise QemuError("Input/output error") from exc
        if self.kind == "blockdev-snapshot-sync":
            fmt = data.get("format", "qcow2")
            snapshot_node_name = data.get("snapshot-node-name")
            if data.get("node-name") is not None and snapshot_node_name is None:
                raise QemuError("New overlay node-name missing")
            if snapshot_node_name is not None and (graph.find_backend(snapshot_node_name)
                                                   or graph.find_node(snapshot_node_name)):
                raise QemuError("New overlay node-name already in use")
            filename = data["snapshot-file"]
            if data.get("mode", "absolute-paths") != "existing":
                message = create_image(filename, fmt, old.length(),
                                       backing_file=node_filename(old), backing_fmt=old.driver)
                graph.graph_wrlock(QCOW2_CREATE_SECTIONS if fmt == "qcow2" else 0)
                if message:
                    self.machine.stdout.write(message if message.endswith("\n") else message + "\n")
            before = len(graph.nodes)
            options: dict[str, Any] = {"driver": fmt, "backing": None,
                                       "file": {"driver": "file", "filename": filename}}
            if snapshot_node_name is not None:
                options["node-name"] = snapshot_node_name
            new = graph.open_options(options)
            self.new_nodes = graph.nodes[before:]
        else:
            new = _lookup(self.machine, data["overlay"], data["overlay"])
            if graph.backend_of(new) is not None:
                raise QemuError("The overlay is already in use")
            new.op_check("external-snapshot")
        self.new = new
        if new.backing is not None:
            raise QemuError("The overlay already has a backing image")
        if not new.supports_backing:
            raise QemuError("The overlay does not support backing images")
        new.set_backing(old)
        graph.graph_wrlock(2)  # 10.0: bdrv_append = bdrv_set_backing_hd + bdrv_replace_node
        for backend in list(graph.backends.values()):
            if backend.root is old:
                graph.set_backend_root(backend, new)
        self.appended = True

    def commit(self) -> None:
        assert self.old is not None
        _set_read_only(self.old)
        self.committed = True

    def abort(self) -> None:
        graph = self.machine.block
        if self.appended and self.new is not None and self.old is not None:
            for backend in list(graph.backends.values()):
                if backend.root is self.new:
                    graph.set_backend_root(backend, self.old)
            self.new.set_backing(None)
        if self.new_nodes:
            graph.close_nodes(self.new_nodes)

    def clean(self) -> None:
        """external_snapshot_clean: the prepare's drained section ends, and the reference the
        prepare took on the overlay is dropped: an overlay nobody uses (the snapshotted node had
        no parent) is closed there and then, leaving the old node as it was."""
        if self.drained and self.old is not None:
            drained_end(self.old)
            self.drained = False
        new = self.new
        if (self.kind == "blockdev-snapshot-sync" and self.committed and new is not None
                and not new.parents and not new.monitor_owned):
            new.set_backing(None)
            self.machine.block.close_nodes(self.new_nodes)


def _set_read_only(node: BlockNode) -> None:
    """bdrv_reopen_set_read_only: the node and the children that inherit its options (those
    opened with it, not ones the monitor added and referenced) become read-only."""
    node.read_only = True
    for role, child in node.children.items():
        if role != "backing" and not child.monitor_owned:
            _set_read_only(child)


def _qapi_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("_", "-"): value for key, value in kwargs.items()}


@qmp_command("blockdev-snapshot-sync", "BlockdevSnapshotSync")
def qmp_blockdev_snapshot_sync(machine: Machine, **kwargs: Any) -> None:
    run_drained(machine.block,
                [ExternalSnapshotAction(machine, "blockdev-snapshot-sync", _qapi_names(kwargs))])


@qmp_command("blockdev-snapshot", "BlockdevSnapshot")
def qmp_blockdev_snapshot(machine: Machine, **kwargs: Any) -> None:
    run_drained(machine.block, [ExternalSnapshotAction(machine, "blockdev-snapshot", _qapi_names(kwargs))])
