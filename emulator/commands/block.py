"""Block graph QMP commands: blockdev-add/-del, query-block, query-named-block-nodes, block_resize."""

from __future__ import annotations

from typing import Any

from emulator import qerror
from emulator.block.drain import attach_parent, detach_parent, drained
from emulator.block.filename import node_filename
from emulator.block.image import backing_path
from emulator.block.node import BlockNode
from emulator.block.permissions import PERM_ALL, PERM_RESIZE, TemporaryUser, check_perms
from emulator.error import QemuError
from emulator.machine import Machine

from . import block_schema  # noqa: F401  (registers the BlockdevOptions types)
from .registry import qmp_command


# ---- BlockDeviceInfo / ImageInfo as QEMU 7.2 builds them (block/qapi.c) ------------------------
def image_info(node: BlockNode, *, with_backing_image: bool = True,
               file_format_specific: bool = False) -> dict[str, Any]:
    """ImageInfo of `node` (bdrv_query_image_info); `file_format_specific` is the profile's
    flag for the ImageInfoSpecific of protocol nodes (10.0's {"type": "file", "data": {}})."""
    info: dict[str, Any] = {
        "virtual-size": node.length(),  # bdrv_getlength: whole sectors (BlockNode.length)
        "filename": node_filename(node),
        "format": node.driver,
    }
    driver_info = node.get_info()
    if driver_info is not None:
        info["dirty-flag"] = False
    actual = node.allocated_file_size()
    if actual is not None:
        info["actual-size"] = actual
    if driver_info is not None and driver_info.cluster_size:
        info["cluster-size"] = driver_info.cluster_size
    specific = node.specific_info()
    if specific is not None and (file_format_specific or not node.is_protocol):
        info["format-specific"] = specific
    if node.backing_file:
        info["backing-filename"] = node.backing_file
        info["full-backing-filename"] = backing_path(node_filename(node), node.backing_file)
        if node.backing_format:
            info["backing-filename-format"] = node.backing_format
    below = filtered_or_cow_child(node)
    if with_backing_image and below is not None:
        info["backing-image"] = image_info(below, with_backing_image=True,
                                           file_format_specific=file_format_specific)
    return info


def filtered_or_cow_child(node: BlockNode) -> BlockNode | None:
    """bdrv_filter_or_cow_bs: a filter's data child, else the COW backing."""
    if node.is_filter:
        return node.primary_child()
    return node.backing


def _backing_depth(node: BlockNode) -> int:
    depth = 0
    current = filtered_or_cow_child(node)
    while current is not None:
        depth += 1
        current = filtered_or_cow_child(current)
    return depth


def device_info(machine: Machine, node: BlockNode, *, flat: bool = False) -> dict[str, Any]:
    """BlockDeviceInfo of `node` (bdrv_block_device_info)."""
    profile = machine.profile
    info: dict[str, Any] = {
        "file": node_filename(node),
        "node-name": node.node_name,
        "ro": node.read_only,
        "drv": node.driver,
        "encrypted": False,
        "detect_zeroes": node.options.get("detect-zeroes", "off"),
        "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "image": image_info(node, with_backing_image=not flat,
                            file_format_specific=profile.file_format_specific),
        "cache": {"writeback": True, "direct": False, "no-flush": False},
        "write_threshold": 0,
        "backing_file_depth": 0 if flat else _backing_depth(node),
    }
    if profile.node_active_field:
        info["active"] = node.active
    backing = node.backing
    if backing is not None:
        info["backing_file"] = node_filename(backing)
    bitmaps = [node.dirty_bitmaps.info(bm) for bm in node.dirty_bitmaps]
    if bitmaps:
        info["dirty-bitmaps"] = bitmaps
    return info


@qmp_command("query-block")
def qmp_query_block(machine: Machine) -> list[dict[str, Any]]:
    result = []
    for backend in machine.block.backends.values():
        # bdrv_query_info: BlockInfo's members in QAPI order.
        dev = getattr(backend, "dev", None)
        # blk_dev_has_removable_media: no device, or one with removable media.
        removable = True if not dev else bool(getattr(backend, "removable", False))
        entry: dict[str, Any] = {"device": backend.name}
        if dev:
            entry["qdev"] = dev
        entry.update({"type": "unknown", "removable": removable, "locked": False})
        root = backend.root
        if root is not None:
            child = root.filtered_child()
            while root.implicit and child is not None:  # bdrv_skip_implicit_filters
                root, child = child, child.filtered_child()
            entry["inserted"] = device_info(machine, root)
        if dev and removable:
            entry["tray_open"] = False
        if dev:
            entry["io-status"] = "ok"
        result.append(entry)
    return result


@qmp_command("query-named-block-nodes", {"*flat": "bool"})
def qmp_query_named_block_nodes(machine: Machine, flat: bool = False) -> list[dict[str, Any]]:
    # QEMU builds this list by prepending, so the newest node comes first.
    return [device_info(machine, node, flat=flat) for node in reversed(machine.block.nodes)]


@qmp_command("blockdev-add", "BlockdevOptions")
def qmp_blockdev_add(machine: Machine, **options: Any) -> None:
    # Arguments arrive with Python names at the top level; BlockdevOptions wants QAPI names.
    machine.block.blockdev_add({key.replace("_", "-") if key != "new_state" else key: value
                                for key, value in options.items()})


@qmp_command("blockdev-reopen", {"options": ["BlockdevOptions"]})
def qmp_blockdev_reopen(machine: Machine, options: list[dict[str, Any]]) -> None:
    """Change the options of existing nodes; the emulator can change read-only."""
    machine.block.reopen(options)


@qmp_command("blockdev-del", {"node-name": "str"})
def qmp_blockdev_del(machine: Machine, node_name: str) -> None:
    machine.block.blockdev_del(node_name)


@qmp_command("block_resize", {"*device": "str", "*node-name": "str", "size": "int"})
def qmp_block_resize(machine: Machine, size: int, device: str | None = None,
                     node_name: str | None = None) -> None:
    node = _lookup_resize_target(machine, device, node_name)
    if size < 0:
        raise QemuError(qerror.INVALID_PARAMETER_VALUE % ("size", "a >0 size"))
    if node.op_blockers.get("resize"):
        if machine.profile.resize_busy_as_device_in_use:
            raise QemuError(qerror.DEVICE_IN_USE % (device if device is not None else '(null)'))
        node.op_check("resize")
    # blk_new_with_bs(bs, BLK_PERM_RESIZE, BLK_PERM_ALL): every other user must allow resizing.
    user = TemporaryUser(PERM_RESIZE, PERM_ALL)
    machine.block.graph_wrlock()  # 10.0: blk_new_with_bs attaches under the graph write lock
    attach_parent(node, user)
    try:
        check_perms([node])
    finally:
        detach_parent(node, user)
    try:
        if node.read_only:
            raise QemuError(f"Node '{node.node_name}' is read only")
        with drained(node):  # qmp_block_resize: bdrv_drained_begin around blk_truncate
            node.truncate(size)
    finally:
        machine.block.graph_wrlock()  # 10.0: blk_unref of that BlockBackend


def _lookup_resize_target(machine: Machine, device: str | None, node_name: str | None) -> BlockNode:
    if device is not None:
        backend = machine.block.find_backend(device)
        if backend is not None:
            return backend.root_or_error()
    if node_name is not None:
        node = machine.block.find_node(node_name)
        if node is not None:
            return node
    dev = device or ""
    name = node_name or ""
    raise QemuError(qerror.DEVICE_OR_NODE_NOT_FOUND % (dev, name))


__all__ = ["device_info", "image_info"]
