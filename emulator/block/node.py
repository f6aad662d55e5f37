"""BlockNode: a node of the block graph (QEMU's BlockDriverState), and the driver table.

A node has a driver ("file", "raw", "qcow2", "blkdebug", "null-co", "copy-before-write", ...), a
node name, children by role ("file", "backing", "image"), dirty bitmaps and op blockers.  Each
driver is a subclass registered with @block_driver, as QEMU's drivers are BlockDriver tables:
what differs between drivers is a class attribute or a hook method of the subclass (QEMU's
BlockDriver fields and callbacks), never a test of the driver's name in the callers.  The hooks:

- open (.bdrv_open): build the node from its BlockdevOptions, through a NodeOpener (the graph);
- the `_`-prefixed I/O hooks, wrapped by the public I/O methods with what QEMU's generic block
  layer (block/io.c) adds around a driver: request checks, write generations, dirty bitmaps;
- child_role / child_perm (.bdrv_child_perm);
- get_info (.bdrv_co_get_info: the cluster size), allocated_file_size
  (.bdrv_co_get_allocated_file_size), specific_info (.bdrv_get_specific_info);
- strong_runtime_opts, exact_filename_hook and open_options (.bdrv_refresh_filename's parts);
- backing_file / backing_format / supports_backing, check_reopen, reopen, child_replaced;
- co_create (.bdrv_co_create: blockdev-create), for the drivers that implement it.

BlockNode implements the Storage protocol, so a format driver can sit on any node.
"""

from __future__ import annotations

import errno
import functools
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from emulator.error import QemuError

from .dirty_bitmap import DirtyBitmapSet
from .drain import attach_parent, detach_parent
from .permissions import ROLE_COW, ROLE_DATA, ROLE_FILTERED, ROLE_METADATA, default_perms

# Block status flags (as QEMU's BDRV_BLOCK_*).
BLOCK_DATA = 0x01
BLOCK_ZERO = 0x02
BLOCK_ALLOCATED = 0x10

#: QEMU's BDRV_SECTOR_SIZE: a node's length is kept in whole sectors (bs->total_sectors).
BDRV_SECTOR_SIZE = 512


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


@dataclass(frozen=True)
class DriverInfo:
    """BlockDriverInfo (bdrv_get_info), as far as the emulator's callers read it."""

    #: 0 when the driver has no clusters (file-posix) or reports none.
    cluster_size: int = 0


class NodeOpener(Protocol):
    """What a driver's open() uses of the graph that opens it (BlockGraph)."""

    #: Every node, in name-assignment order (a driver that names itself before its children
    #: inserts itself at the slot it had then).
    nodes: list[BlockNode]
    #: throttle-group objects by id.
    throttle_groups: dict[str, Any]
    #: QEMU 10.0's copy-before-write keeps its block-copy bitmap on the filter (7.2: the source).
    copy_bitmap_on_filter: bool

    def lookup_bs(self, name: str) -> BlockNode:
        """bdrv_lookup_bs: a device's root node, else the node of that name."""
        ...

    def open_child(self, ref: Any, *, read_only: bool) -> BlockNode:
        """A BlockdevRef: open the inline options, or look the reference up."""
        ...

    def generate_node_name(self) -> str:
        """The next automatic node name (QEMU's id_generate)."""
        ...

    def register_opened(self, node: BlockNode, options: dict[str, Any],
                        slot: int | None = None) -> BlockNode:
        """Record an opened node with its options: named automatically and appended, or (for a
        driver that named itself before its children) inserted at `slot`."""
        ...

    def open_backing(self, node: BlockNode, ref: Any) -> None:
        """Attach `node`'s backing: the "backing" option (a BlockdevRef, or None for none), or
        with `...` the chain its image header names (bdrv_open_backing_file)."""
        ...

    def debug_print(self, text: str) -> None:
        """Print one of the block layer's own stdout messages (blkdebug's breakpoint lines)."""
        ...


#: The block drivers by name (QEMU's bdrv_find_format over the registered BlockDrivers).
DRIVERS: dict[str, type[BlockNode]] = {}

_Driver = TypeVar("_Driver", bound="type[BlockNode]")


def block_driver(cls: _Driver) -> _Driver:
    """Class decorator: register a BlockNode subclass as the driver named by its `driver`."""
    if cls.driver in DRIVERS:
        raise ValueError(f"block driver {cls.driver} registered twice")
    DRIVERS[cls.driver] = cls
    return cls


def implements(driver: type[BlockNode], hook: str) -> bool:
    """Whether `driver` has its own `hook` (QEMU: the BlockDriver callback is not NULL)."""
    own: Any = getattr(driver, hook)
    base: Any = getattr(BlockNode, hook)
    return getattr(own, "__func__", own) is not getattr(base, "__func__", base)


def sectors_to_bytes(length: int) -> int:
    """`length` rounded up to a whole number of sectors (QEMU's DIV_ROUND_UP(len, 512) * 512)."""
    return -(-length // BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE


class BlockNode:
    """Base class of every block driver node."""

    driver: str = ""
    #: True for format drivers (qcow2, raw), whose `file` child is a protocol node.
    is_format: bool = False
    #: True for filters (blkdebug) that pass I/O through to a single child.
    is_filter: bool = False
    #: Drivers that open a protocol (QEMU's .bdrv_file_open: file, null-co, blkdebug): a format
    #: node over one may take its exact filename; they report their own allocated size.
    is_protocol: bool = False
    #: .strong_runtime_opts: options that change what the node shows enough to need a json:
    #: filename; a trailing "." matches every flattened key with that prefix.
    strong_runtime_opts: tuple[str, ...] = ()
    #: .supports_backing: the driver has a COW backing child (blockdev-snapshot's overlay).
    supports_backing: bool = False

    def __init__(self, node_name: str, *, read_only: bool = False, auto_named: bool = False) -> None:
        self.node_name = node_name
        self.auto_named = auto_named
        self.read_only = read_only
        self.children: dict[str, BlockNode] = {}
        self.parents: list[Any] = []  # BlockNodes, backends or jobs holding a reference
        #: Drained sections this node is in (bs->quiesce_counter; see drain.py), and per parent
        #: edge the drained_begin callbacks it got (BdrvChild.parent_quiesce_counter).
        self.quiesce_counter = 0
        self.parent_quiesce: dict[int, int] = {}
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
        """bdrv_attach_child: a child drained now quiesces this node too (drain saldo)."""
        self.children[role] = child
        attach_parent(child, self)

    def detach_child(self, role: str) -> None:
        child = self.children.pop(role, None)
        if child is not None:
            detach_parent(child, self)

    @property
    def file(self) -> BlockNode | None:
        return self.children.get("file")

    @property
    def backing(self) -> BlockNode | None:
        return self.children.get("backing")

    def filtered_child(self) -> BlockNode | None:
        """The child that carries the data of a filter node (QEMU's bdrv_filter_child)."""
        return self.children.get("image") or self.children.get("file") if self.is_filter else None

    # ---- the driver table (BlockDriver fields and callbacks) -------------------------------------
    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        """.bdrv_open: the node for `options` (its BlockdevOptions), children opened through
        `graph`; `name` is "" when `auto_named`."""
        raise NotImplementedError(f"block driver {cls.driver} cannot be opened")

    @classmethod
    def co_create(cls, graph: NodeOpener, options: dict[str, Any]) -> None:
        """.bdrv_co_create: write a new image as `options` (its BlockdevCreateOptions, QAPI
        member names) say; runs in blockdev-create's job."""
        raise NotImplementedError(f"block driver {cls.driver} cannot create images")

    @property
    def backing_file(self) -> str:
        """bs->backing_file: the backing file name the image header gives ("" for none)."""
        return ""

    @property
    def backing_format(self) -> str:
        """bs->backing_format: the backing format the image header gives ("" for none)."""
        return ""

    def get_info(self) -> DriverInfo | None:
        """bdrv_co_get_info: the driver's .bdrv_co_get_info; without one a filter answers for its
        child, and other drivers fail with ENOTSUP (None)."""
        if self.is_filter:
            child = self.filtered_child()
            return child.get_info() if child is not None else None
        return None

    def cluster_size_info(self) -> int:
        """bdrv_get_info's cluster size: 0 when the driver has none or cannot tell (ENOTSUP)."""
        info = self.get_info()
        return info.cluster_size if info is not None else 0

    def allocated_file_size(self) -> int | None:
        """bdrv_co_get_allocated_file_size: protocol drivers report their own (None: ENOTSUP),
        filters their child's, other drivers the sum of their non-COW children's."""
        if self.is_protocol:
            return None
        if self.is_filter:
            child = self.primary_child()
            return child.allocated_file_size() if child is not None else None
        total = 0
        for role, child in self.children.items():
            if role == "backing":
                continue
            size = child.allocated_file_size()
            if size is None:
                return None
            total += size
        return total

    def specific_info(self) -> dict[str, Any] | None:
        """.bdrv_get_specific_info: ImageInfoSpecific ({"type": ..., "data": ...}) or None."""
        return None

    def open_options(self) -> dict[str, Any]:
        """bs->options without the children: what append_strong_runtime_options reads."""
        return {key: value for key, value in self.options.items() if key not in self.children}

    def exact_filename_hook(self) -> str | None:
        """.bdrv_refresh_filename: the exact filename the driver itself sets, or None to use
        the generic rule (emulator/block/filename.py)."""
        return None

    def can_store_new_dirty_bitmap(self, name: str, granularity: int) -> bool:
        """.bdrv_co_can_store_new_dirty_bitmap: False when the driver has none (persistent
        bitmaps unsupported); a driver that refuses raises dirty_bitmap.PersistenceRefused."""
        return False

    def set_backing(self, backing: BlockNode | None) -> None:
        """bdrv_set_backing_hd, for drivers that support backing files."""
        raise NotImplementedError(f"block driver {self.driver} has no backing file")

    def check_reopen(self, options: dict[str, Any]) -> None:
        """bdrv_reopen_prepare's refusal of options the driver cannot change."""

    def child_replaced(self, role: str, new: BlockNode) -> None:
        """The child `role` is now `new` (bdrv_replace_node moved the edge): drivers that hold
        their children elsewhere too (a qcow2 codec) follow."""

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
        """bdrv_getlength: the driver's length rounded up to whole 512-byte sectors.

        refresh_total_sectors stores DIV_ROUND_UP(drv->bdrv_getlength(), 512) in
        bs->total_sectors and bdrv_getlength returns total_sectors * 512, so a 1000-byte raw
        file is a 1024-byte node (query-block, backups, the I/O bounds); the bytes past the end
        of the file read as zeros and a write there grows the file."""
        return sectors_to_bytes(self._length())

    def _check_request(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise OSError(errno.EIO, "Input/output error")

    def pread(self, offset: int, length: int) -> bytes:
        self._check_request(offset, length)
        if length == 0:
            return b""
        return self._pread(offset, length)

    def _before_write(self, offset: int, length: int) -> None:
        """bdrv_aligned_pwritev's refusal (a read-only bitmap would miss the write: EPERM), then
        bdrv_co_write_req_prepare's (a read-only node).  Through QMP and HMP the permission
        system refuses first ("Block node is read-only", measured on 7.2.22 and 10.0.2: read-only
        bitmaps exist only on read-only nodes), so these are the last line of defence."""
        if self.dirty_bitmaps.has_readonly():
            raise OSError(errno.EPERM, "Operation not permitted")
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
        """bdrv_co_pdiscard: EPERM with a read-only bitmap, else a no-op (not even dirtying
        bitmaps) unless opened with discard=unmap."""
        if self.dirty_bitmaps.has_readonly():
            raise OSError(errno.EPERM, "Operation not permitted")
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
