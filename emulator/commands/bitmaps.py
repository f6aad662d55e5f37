"""The block-dirty-bitmap-* QMP commands and transaction actions (QEMU 7.2's
block/monitor/bitmap-qmp-cmds.c and the bitmap actions of blockdev.c).

Checks run in QEMU's order so the first failing one gives QEMU's message.  Bitmaps live on the
node that `node` names: through a device name that is the device's root node (which, while a
backup runs, is the backup's filter node, as in QEMU).

Transaction actions: the block-dirty-bitmap-{add,remove,clear,enable,disable,merge} kinds register
themselves in registry.TRANSACTION_ACTIONS; `transaction_action(machine, kind, data)` builds one.
abort() is safe to call whether or not prepare() succeeded.
"""

from __future__ import annotations

from typing import Any

from emulator import qerror
from emulator.block.dirty_bitmap import (
    BITMAP_ALLOW_RO,
    BITMAP_BUSY,
    BITMAP_DEFAULT,
    BITMAP_RO,
    DirtyBitmap,
    PersistenceRefused,
    default_granularity,
    granularity_valid,
    merge_dirty_bitmap,
)
from emulator.block.node import BlockNode
from emulator.error import QemuError
from emulator.jobs.txn import JobTxn
from emulator.machine import Machine
from emulator.transaction import BaseAction

from .registry import TRANSACTION_ACTIONS, qapi_types, qmp_command
from .registry import transaction_action as register_action

qapi_types(
    {"struct": "BlockDirtyBitmap", "data": {"node": "str", "name": "str"}},
    {"struct": "BlockDirtyBitmapAdd", "data": {
        "node": "str", "name": "str", "*granularity": "uint32", "*persistent": "bool",
        "*disabled": "bool"}},
    {"alternate": "BlockDirtyBitmapOrStr", "data": {"local": "str", "external": "BlockDirtyBitmap"}},
    {"struct": "BlockDirtyBitmapMerge", "data": {
        "node": "str", "target": "str", "bitmaps": ["BlockDirtyBitmapOrStr"]}},
)


# ---- lookups ------------------------------------------------------------------------------------
def device_or_node_name(machine: Machine, node: BlockNode) -> str:
    """bdrv_get_device_or_node_name."""
    return machine.block.device_name(node) or node.node_name


def lookup_bitmap(machine: Machine, node: str, name: str) -> tuple[DirtyBitmap, BlockNode]:
    """block_dirty_bitmap_lookup: the bitmap `name` on the node `node` names."""
    try:
        bs = machine.block.lookup_bs(node)
    except QemuError:
        raise QemuError(qerror.NODE_NOT_FOUND % node) from None
    bitmap = bs.dirty_bitmaps.find(name)
    if bitmap is None:
        raise QemuError(qerror.DIRTY_BITMAP_NOT_FOUND % name)
    return bitmap, bs


def _check_can_store(machine: Machine, bs: BlockNode, name: str, granularity: int) -> None:
    """bdrv_can_store_new_dirty_bitmap: the driver's check (qcow2 has one), else ENOTSUP."""
    who = device_or_node_name(machine, bs)
    try:
        if not bs.can_store_new_dirty_bitmap(name, granularity):
            raise QemuError(f"Can't store persistent bitmaps to {who}: Operation not supported")
    except PersistenceRefused as exc:
        raise QemuError(f"Can't make bitmap '{name}' persistent in '{who}': {exc.desc}") from None


# ---- the operations (shared by the commands and the transaction actions) -----------------------
def bitmap_add(machine: Machine, node: str, name: str, granularity: int | None = None,
               persistent: bool = False, disabled: bool = False) -> DirtyBitmap:
    """qmp_block_dirty_bitmap_add."""
    if not name:
        raise QemuError("Bitmap name cannot be empty")
    bs = machine.block.lookup_bs(node)
    if granularity is not None:
        if not granularity_valid(granularity):
            raise QemuError(qerror.GRANULARITY_INVALID)
    else:
        granularity = default_granularity(bs.cluster_size_info())
    if persistent:
        _check_can_store(machine, bs, name, granularity)
    bitmap = bs.dirty_bitmaps.create(name, granularity, bs.length())
    if disabled:
        bitmap.disabled = True
    bitmap.persistent = persistent
    return bitmap


def bitmap_remove(machine: Machine, node: str, name: str, *, release: bool = True
                  ) -> tuple[DirtyBitmap, BlockNode]:
    """block_dirty_bitmap_remove: checks, then (if `release`) frees the bitmap."""
    bitmap, bs = lookup_bitmap(machine, node, name)
    bitmap.check(BITMAP_BUSY | BITMAP_RO)
    if bitmap.persistent and not bitmap.skip_store:
        # bdrv_remove_persistent_dirty_bitmap: the image forgets it now, even inside a
        # transaction (an aborted removal stores it again at close).
        remove = getattr(bs, "remove_persistent_dirty_bitmap", None)
        if remove is not None:
            remove(name)
    if release:
        bs.dirty_bitmaps.remove(bitmap)
    return bitmap, bs


def bitmap_merge(machine: Machine, node: str, target: str, bitmaps: list[Any]
                 ) -> tuple[DirtyBitmap, Any]:
    """block_dirty_bitmap_merge: OR every source into `target`; returns (target, saved bits).

    Sources are merged into a scratch bitmap first, so a missing or busy source leaves the
    target untouched.  (QEMU 7.2 itself crashes on an empty `bitmaps` list; here that merges
    nothing.)
    """
    dst, bs = lookup_bitmap(machine, node, target)
    anon = DirtyBitmap(None, dst.granularity, bs.length())
    for source in bitmaps:
        if isinstance(source, str):
            src = bs.dirty_bitmaps.find(source)
            if src is None:
                raise QemuError(qerror.DIRTY_BITMAP_NOT_FOUND % source)
        else:
            src, _ = lookup_bitmap(machine, source["node"], source["name"])
        dst.check(BITMAP_DEFAULT)  # QEMU 7.2.x merges into the target: its check comes first
        merge_dirty_bitmap(anon, src)
    backup = dst.save_bits()
    merge_dirty_bitmap(dst, anon)
    return dst, backup


def _lookup_checked(machine: Machine, node: str, name: str, flags: int) -> DirtyBitmap:
    bitmap, _ = lookup_bitmap(machine, node, name)
    bitmap.check(flags)
    return bitmap


# ---- QMP commands ---------------------------------------------------------------------------------
@qmp_command("block-dirty-bitmap-add", "BlockDirtyBitmapAdd")
def qmp_block_dirty_bitmap_add(machine: Machine, node: str, name: str, granularity: int | None = None,
                               persistent: bool = False, disabled: bool = False) -> None:
    bitmap_add(machine, node, name, granularity, persistent, disabled)


@qmp_command("block-dirty-bitmap-remove", "BlockDirtyBitmap")
def qmp_block_dirty_bitmap_remove(machine: Machine, node: str, name: str) -> None:
    bitmap_remove(machine, node, name)


@qmp_command("block-dirty-bitmap-clear", "BlockDirtyBitmap")
def qmp_block_dirty_bitmap_clear(machine: Machine, node: str, name: str) -> None:
    _lookup_checked(machine, node, name, BITMAP_DEFAULT).clear()


@qmp_command("block-dirty-bitmap-enable", "BlockDirtyBitmap")
def qmp_block_dirty_bitmap_enable(machine: Machine, node: str, name: str) -> None:
    _lookup_checked(machine, node, name, BITMAP_ALLOW_RO).disabled = False


@qmp_command("block-dirty-bitmap-disable", "BlockDirtyBitmap")
def qmp_block_dirty_bitmap_disable(machine: Machine, node: str, name: str) -> None:
    _lookup_checked(machine, node, name, BITMAP_ALLOW_RO).disabled = True


@qmp_command("block-dirty-bitmap-merge", "BlockDirtyBitmapMerge")
def qmp_block_dirty_bitmap_merge(machine: Machine, node: str, target: str, bitmaps: list[Any]) -> None:
    bitmap_merge(machine, node, target, bitmaps)


# ---- transaction actions (blockdev.c's block_dirty_bitmap_*_prepare/commit/abort) -----------------
@qmp_command("x-debug-block-dirty-bitmap-sha256", "BlockDirtyBitmap")
def qmp_x_debug_block_dirty_bitmap_sha256(machine: Machine, node: str, name: str) -> dict[str, str]:
    """Debug digest of a bitmap's bits (BlockDirtyBitmapSha256), for comparing bitmaps in tests."""
    bitmap, _ = lookup_bitmap(machine, node, name)
    return {"sha256": bitmap.sha256()}


class BitmapAction(BaseAction):
    """Base of the bitmap transaction actions: the QMP `data` and what prepare did."""

    def __init__(self, machine: Machine, kind: str, data: dict[str, Any],
                 txn: JobTxn | None = None) -> None:
        self.machine = machine
        self.data = data
        self.bitmap: DirtyBitmap | None = None
        #: The bits prepare replaced (clear, merge), put back by abort.
        self.backup: Any = None

    def prepare(self) -> None:
        raise NotImplementedError


@register_action("block-dirty-bitmap-add")
class BitmapAddAction(BitmapAction):
    """Add the bitmap in prepare; abort deletes it."""

    def prepare(self) -> None:
        d = self.data
        self.bitmap = bitmap_add(self.machine, d["node"], d["name"], d.get("granularity"),
                                 bool(d.get("persistent", False)), bool(d.get("disabled", False)))
        self.node = self.machine.block.lookup_bs(d["node"])

    def abort(self) -> None:
        if self.bitmap is not None and self.bitmap in self.node.dirty_bitmaps:
            self.node.dirty_bitmaps.remove(self.bitmap)
            self.bitmap = None


@register_action("block-dirty-bitmap-clear")
class BitmapClearAction(BitmapAction):
    """Clear in prepare keeping the old bits; abort puts them back."""

    def prepare(self) -> None:
        bitmap = _lookup_checked(self.machine, self.data["node"], self.data["name"], BITMAP_DEFAULT)
        self.backup = bitmap.save_bits()
        bitmap.clear()
        self.bitmap = bitmap

    def abort(self) -> None:
        if self.bitmap is not None:
            self.bitmap.restore_bits(self.backup)

    def commit(self) -> None:
        self.backup = None


@register_action("block-dirty-bitmap-enable")
class BitmapEnableAction(BitmapAction):
    """Enable (or, with enable=False, disable) in prepare; abort restores the previous state."""

    enable = True

    def prepare(self) -> None:
        bitmap = _lookup_checked(self.machine, self.data["node"], self.data["name"], BITMAP_ALLOW_RO)
        self.was_enabled = not bitmap.disabled
        bitmap.disabled = not self.enable
        self.bitmap = bitmap

    def abort(self) -> None:
        if self.bitmap is not None:
            self.bitmap.disabled = not self.was_enabled


@register_action("block-dirty-bitmap-disable")
class BitmapDisableAction(BitmapEnableAction):
    enable = False


@register_action("block-dirty-bitmap-merge")
class BitmapMergeAction(BitmapAction):
    """Merge in prepare keeping the target's old bits; abort restores them."""

    def prepare(self) -> None:
        d = self.data
        self.bitmap, self.backup = bitmap_merge(self.machine, d["node"], d["target"], d["bitmaps"])

    def abort(self) -> None:
        if self.bitmap is not None:
            self.bitmap.restore_bits(self.backup)

    def commit(self) -> None:
        self.backup = None


@register_action("block-dirty-bitmap-remove")
class BitmapRemoveAction(BitmapAction):
    """Mark busy (and not to be stored) in prepare; commit frees it, abort un-marks it."""

    def prepare(self) -> None:
        bitmap, self.node = bitmap_remove(self.machine, self.data["node"], self.data["name"],
                                          release=False)
        bitmap.skip_store = True
        bitmap.busy = True
        self.bitmap = bitmap

    def abort(self) -> None:
        if self.bitmap is not None:
            self.bitmap.skip_store = False
            self.bitmap.busy = False

    def commit(self) -> None:
        if self.bitmap is not None:
            self.bitmap.busy = False
            self.node.dirty_bitmaps.remove(self.bitmap)


def transaction_action(machine: Machine, kind: str, data: dict[str, Any]) -> BitmapAction:
    """The transaction action object for a block-dirty-bitmap-* action of `transaction`."""
    action = TRANSACTION_ACTIONS[kind].factory(machine, kind, data, None)
    assert isinstance(action, BitmapAction)
    return action


__all__ = ["BITMAP_RO", "BitmapAction", "bitmap_add", "bitmap_merge", "bitmap_remove",
           "device_or_node_name", "lookup_bitmap", "transaction_action"]
