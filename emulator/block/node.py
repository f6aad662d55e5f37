"""BlockNode: a node of the block graph (QEMU's BlockDriverState).

A node has a driver ("file", "raw", "qcow2", "blkdebug", "null-co", "copy-before-write"), a node
name, children by role ("file", "backing", "image"), dirty bitmaps and op blockers.  Drivers
subclass it and implement the `_`-prefixed hooks; the public I/O methods add what QEMU's generic block layer (block/io.c) adds around a
driver: request checks, write generations and dirty-bitmap marking.

BlockNode implements the Storage protocol, so a format driver can sit on any node.
"""

from __future__ import annotations

import errno
import functools
from typing import Any

from emulator.error import QemuError

from .dirty_bitmap import DirtyBitmapSet
from .permissions import ROLE_COW, ROLE_DATA, ROLE_FILTERED, ROLE_METADATA, default_perms

# Block status flags (as QEMU's BDRV_BLOCK_*).
BLOCK_DATA = 0x01
BLOCK_ZERO = 0x02
BLOCK_ALLOCATED = 0x10

@functools.lru_cache(maxsize=8)
def _zeroes(length: int) -> bytes:
    return bytes(length)


def buffer_is_zero(data: bytes) -> bool:
    """util/bufferiszero.c's buffer_is_zero: one memcmp with a zero buffer of the same length
    (bytes.count(0) looks at every byte in a loop, about twenty times slower)."""
    return data == _zeroes(len(data))


#: QAPI BlockOpType (qapi/block-core.json): the op names of BlockNode.op_block / op_check.
BLOCK_OP_TYPES = (
    "backup-source", "backup-target", "change", "commit-source", "commit-target", "dataplane",
    "drive-del", "eject", "external-snapshot", "internal-snapshot", "internal-snapshot-delete",
    "mirror-source", "mirror-target", "resize", "stream", "replace",
)
#: What a backing node still allows while it is one (bdrv_backing_attach): commit, stream, backup.
BACKING_ALLOWED_OPS = frozenset({"commit-target", "stream", "backup-source", "backup-target"})


class BlockNode:
    """Base class of every block driver node."""

    driver: str = ""
    #: True for format drivers (qcow2, raw), whose `file` child is a protocol node.
    is_format: bool = False
    #: True for filters (blkdebug) that pass I/O through to a single child.
    is_filter: bool = False

    def __init__(self, node_name: str, *, read_only: bool = False, auto_named: bool = False) -> None:
        self.node_name = node_name
        self.auto_named = auto_named
        self.read_only = read_only
        self.children: dict[str, BlockNode] = {}
        self.parents: list[Any] = []  # BlockNodes, backends or jobs holding a reference
        self.dirty_bitmaps = DirtyBitmapSet()
        self.op_blockers: dict[str, list[str]] = {}
        self.monitor_owned = False  # created by blockdev-add
        self.implicit = False  # an automatically inserted filter the user did not name
        self.options: dict[str, Any] = {}  # the options it was opened with (for query output)
        # !BDRV_O_INACTIVE: nothing here inactivates a node yet (no migration, no
        # blockdev-set-active), so every node stays active; 10.0 reports it in queries.
        self.active = True
        #: BDRV_O_UNMAP (discard=unmap): without it, discard requests do nothing at all.
        self.unmap = False
        # QEMU's bs->write_gen / bs->flushed_gen: a flush with nothing written since is cheap.
        self.write_gen = 0
        self.flushed_gen = 0

    # ---- graph --------------------------------------------------------------------------------
    def attach_child(self, role: str, child: BlockNode) -> None:
        self.children[role] = child
        child.parents.append(self)

    def detach_child(self, role: str) -> None:
        child = self.children.pop(role, None)
        if child is not None and self in child.parents:
            child.parents.remove(self)

    @property
    def file(self) -> BlockNode | None:
        return self.children.get("file")

    @property
    def backing(self) -> BlockNode | None:
        return self.children.get("backing")

    def filtered_child(self) -> BlockNode | None:
        """The child that carries the data of a filter node (QEMU's bdrv_filter_child)."""
        return self.children.get("image") or self.children.get("file") if self.is_filter else None

    def iter_subtree(self) -> list[BlockNode]:
        seen: list[BlockNode] = []

        def walk(n: BlockNode) -> None:
            if n in seen:
                return
            seen.append(n)
            for c in n.children.values():
                walk(c)

        walk(self)
        return seen

    # ---- permissions (QEMU's .bdrv_child_perm) --------------------------------------------------
    def child_role(self, role: str) -> int:
        """The BdrvChildRole bits of the child attached as `role` (bdrv_default_perms' rule)."""
        if role == "backing":
            return ROLE_COW
        if self.is_filter:
            return ROLE_FILTERED
        return ROLE_DATA | ROLE_METADATA

    def child_perm(self, role: str, perm: int, shared: int) -> tuple[int, int]:
        """What this node needs from (and shares on) its child `role`, given its parents' needs."""
        return default_perms(self.child_role(role), perm, shared, not self.read_only)

    # ---- op blockers (QEMU's bdrv_op_block / bdrv_op_is_blocked) -------------------------------
    def op_block(self, op: str, reason: str) -> None:
        self.op_blockers.setdefault(op, []).append(reason)

    def op_unblock(self, op: str, reason: str) -> None:
        reasons = self.op_blockers.get(op, [])
        if reason in reasons:
            reasons.remove(reason)

    def device_or_node_name(self) -> str:
        """bdrv_get_device_or_node_name: the name of a device whose root this is, else the node name."""
        for parent in self.parents:
            if getattr(parent, "is_backend", False):
                return str(parent.name)
        return self.node_name

    def block_all_ops(self, reason: str, *, allow: frozenset[str] = frozenset()) -> None:
        for op in BLOCK_OP_TYPES:
            if op not in allow:
                self.op_block(op, reason)

    def unblock_all_ops(self, reason: str) -> None:
        for op in BLOCK_OP_TYPES:
            self.op_unblock(op, reason)

    def op_check(self, op: str) -> None:
        reasons = self.op_blockers.get(op)
        if reasons:
            raise QemuError(f"Node '{self.device_or_node_name()}' is busy: {reasons[0]}")

    # ---- driver hooks ---------------------------------------------------------------------------
    def _length(self) -> int:
        raise NotImplementedError

    def _pread(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def _pwrite(self, offset: int, data: bytes) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self._pwrite(offset, bytes(length))

    def _discard(self, offset: int, length: int) -> None:
        pass

    def _flush_to_os(self) -> None:
        """Write cached driver data (e.g. qcow2 metadata) down to the child."""

    def _flush_to_disk(self) -> None:
        """Make this node's own data durable (fsync for a host file)."""

    def _flush(self) -> None:
        """Drivers that flush everything in one call (QEMU's .bdrv_co_flush) override this."""
        raise NotImplementedError

    def _truncate(self, size: int) -> None:
        raise QemuError("Image format driver does not support resize")

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        """Return (bytes, flags) for the extent starting at `offset` (BLOCK_* flags)."""
        return length, BLOCK_DATA | BLOCK_ALLOCATED

    # ---- public I/O (QEMU's block/io.c around the driver) ---------------------------------------
    def length(self) -> int:
        return self._length()

    def _check_request(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise OSError(errno.EIO, "Input/output error")

    def pread(self, offset: int, length: int) -> bytes:
        self._check_request(offset, length)
        if length == 0:
            return b""
        return self._pread(offset, length)

    def _before_write(self, offset: int, length: int) -> None:
        if self.read_only:
            raise OSError(errno.EPERM, "Operation not permitted")

    def pwrite(self, offset: int, data: bytes) -> None:
        self._check_request(offset, len(data))
        if not data:
            return
        self._before_write(offset, len(data))
        self._pwrite(offset, data)
        self.write_gen += 1
        self.dirty_bitmaps.mark_dirty(offset, len(data))

    def supports_compressed_writes(self) -> bool:
        """bdrv_supports_compressed_writes: the driver can, and a filter's child can too."""
        if not self.can_compress:
            return False
        child = self.filtered_child()
        return child.supports_compressed_writes() if child is not None else True

    #: Whether the driver implements compressed writes (QEMU's .bdrv_co_pwritev_compressed_part).
    can_compress: bool = False

    def _pwrite_compressed(self, offset: int, data: bytes) -> None:
        child = self.filtered_child()
        if child is None:
            raise OSError(errno.ENOTSUP, "Operation not supported")
        child.pwrite_compressed(offset, data)

    def pwrite_compressed(self, offset: int, data: bytes) -> None:
        """A BDRV_REQ_WRITE_COMPRESSED write (backup with compress=true): whole clusters."""
        self._check_request(offset, len(data))
        if not data:
            return
        self._before_write(offset, len(data))
        self._pwrite_compressed(offset, data)
        self.write_gen += 1
        self.dirty_bitmaps.mark_dirty(offset, len(data))

    def pwrite_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        self._check_request(offset, length)
        if not length:
            return
        self._before_write(offset, length)
        self._pwrite_zeroes(offset, length, may_unmap)
        self.write_gen += 1
        self.dirty_bitmaps.mark_dirty(offset, length)

    def discard(self, offset: int, length: int) -> None:
        """bdrv_co_pdiscard: a no-op (not even dirtying bitmaps) unless opened with discard=unmap."""
        self._check_request(offset, length)
        if not length or not self.unmap:
            return
        self._before_write(offset, length)
        self._discard(offset, length)
        self.write_gen += 1
        self.dirty_bitmaps.mark_dirty(offset, length)

    def primary_child(self) -> BlockNode | None:
        return self.children.get("file") or self.children.get("image")

    def flush(self) -> None:
        """QEMU's bdrv_co_flush: flush_to_os, then (if written since) flush_to_disk, then children.

        blkdebug sees "flush_to_os" and, only when something was written since the last flush,
        "flush_to_disk" on the primary child — iotest 124's set-state rule depends on that.
        """
        current = self.write_gen
        if type(self)._flush is not BlockNode._flush:
            self._flush()
            self.flushed_gen = current
            return
        primary = self.primary_child()
        if primary is not None:
            primary.debug_event("flush_to_os")
        self._flush_to_os()
        if self.flushed_gen != current:
            if primary is not None:
                primary.debug_event("flush_to_disk")
            self._flush_to_disk()
        for child in list(self.children.values()):
            if not child.read_only:
                child.flush()
        self.flushed_gen = current

    def truncate(self, size: int) -> None:
        self._truncate(size)
        self.dirty_bitmaps.truncate(size)

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        return self._block_status(offset, length)

    def debug_event(self, event: str) -> None:
        """blkdebug hook: a no-op except on blkdebug nodes."""

    def close(self) -> None:
        """Release host resources (file descriptors, locks)."""
        for role in list(self.children):
            self.detach_child(role)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node_name!r}>"
