"""BlockGraph: every node and device of one emulator, and how they are opened and found.

Mirrors QEMU's block.c / blockdev.c: blockdev-add and -blockdev open a tree of nodes from
BlockdevOptions; -drive creates a BlockBackend over a format node over a file node; lookups go
device name first, then node name (bdrv_lookup_bs).  Auto-generated node names follow QEMU's
id_generate(): "#block" + a counter + two random digits.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from typing import Any

from emulator import qerror
from emulator.cutils import id_wellformed
from emulator.error import QemuError

from . import blkdebug, copy_before_write, drivers, throttle  # noqa: F401  (they register drivers)
from .backend import BlockBackend
from .drain import (
    attach_parent,
    drain_all_begin,
    drain_all_end,
    drained_begin,
    drained_end,
    move_parent,
)
from .file import ImageLockError
from .image import probe_format
from .node import DRIVERS, BlockNode
from .permissions import check_perms

_LOG = logging.getLogger(__name__)

def protocol_options(filename: str) -> dict[str, Any]:
    """A legacy filename's protocol node: "blkdebug:CFG:IMAGE", "null-co://", else a host file."""
    if filename.startswith("blkdebug:"):
        return BlockGraph._legacy_blkdebug_options(filename)
    if filename in ("null-co://", "null-aio://"):
        return {"driver": "null-co"}
    return {"driver": "file", "filename": filename}


class BlockGraph:
    """All nodes (in name-assignment order) and all devices of one emulator."""

    def __init__(self, seed: int | None = None) -> None:
        self.nodes: list[BlockNode] = []
        self.backends: dict[str, BlockBackend] = {}
        self._id_counter = 0
        self._random = random.Random(seed)
        #: QEMU 10.0's copy-before-write keeps its block-copy bitmap on the filter node, 7.2's on
        #: the source (the machine sets this from its version profile).
        self.copy_bitmap_on_filter = False
        #: throttle-group objects by id (object-add / -object), for throttle nodes to join.
        self.throttle_groups: dict[str, Any] = {}
        #: Active drain-all sections (bdrv_drain_all_count).
        self.drain_all_count = 0
        #: QEMU 10.0: graph changes take the graph write lock, which drains every node (the
        #: machine sets this from its version profile).
        self.graph_lock_drains = False
        #: Where the block layer's own stdout messages go (blkdebug's breakpoint lines); the
        #: machine sets it, and leaves it None under the qtest accelerator, as QEMU prints
        #: them only `if (!qtest_enabled())`.
        self.debug_output: Callable[[str], None] | None = None

    def debug_print(self, text: str) -> None:
        """The block layer's own stdout messages (NodeOpener): to debug_output, if any."""
        if self.debug_output is not None:
            self.debug_output(text)

    # ---- names --------------------------------------------------------------------------------
    def generate_node_name(self) -> str:
        """id_generate(ID_BLOCK): "#block" + a counter + two random digits."""
        name = f"#block{self._id_counter}{self._random.randrange(100):02d}"
        self._id_counter += 1
        return name

    def _check_node_name(self, name: str) -> None:
        if not id_wellformed(name):
            raise QemuError(f"Invalid node-name: '{name}'")
        if name in self.backends:
            raise QemuError(f"node-name={name} is conflicting with a device id")
        if self.find_node(name) is not None:
            raise QemuError(f"Duplicate nodes with node-name='{name}'")

    def _register(self, node: BlockNode) -> BlockNode:
        self.nodes.append(node)
        for _ in range(self.drain_all_count):  # bdrv_new: a node born inside drain-all is drained
            drained_begin(node)
        return node

    # ---- drain-all ----------------------------------------------------------------------------
    def drain_all_begin(self) -> None:
        """bdrv_drain_all_begin: every node drained, so every block job pauses."""
        self.drain_all_count += 1
        drain_all_begin(self.nodes)

    def drain_all_end(self) -> None:
        """bdrv_drain_all_end."""
        assert self.drain_all_count > 0
        drain_all_end(self.nodes)
        self.drain_all_count -= 1

    def drain_all(self) -> None:
        """bdrv_drain_all: a drain-all section with nothing in it (one pause per running job)."""
        self.drain_all_begin()
        self.drain_all_end()

    def graph_wrlock(self, sections: int = 1) -> None:
        """QEMU 10.0's graph write lock: bdrv_graph_wrlock begins a drain-all section
        (bdrv_drain_all_begin_nopoll) and ends it, so every block job not in the middle of a
        request pauses and resumes once per section.  QEMU 7.2 has no such drain.

        The number of sections each operation takes was measured on real QEMU 10.0.2 with
        scripts/drain_probe.py (probes graph_changes and graph_calibration), identical in every
        run; the callers name the operation."""
        if self.graph_lock_drains:
            for _ in range(sections):
                self.drain_all()

    def graph_wrlock_opened(self, new_nodes: list[BlockNode]) -> None:
        """Sections taken while a tree of nodes was opened: none for a lone protocol node, and
        for a tree with E child edges (bdrv_open_child attaching each) E + 2 -- measured for
        qcow2/raw over a file or null-co node (3), qcow2 over blkdebug over file and qcow2 with
        a backing node (4)."""
        edges = sum(len(node.children) for node in new_nodes)
        if edges:
            self.graph_wrlock(edges + 2)

    # ---- lookup -------------------------------------------------------------------------------
    def find_node(self, name: str) -> BlockNode | None:
        for node in self.nodes:
            if node.node_name == name:
                return node
        return None

    def find_backend(self, name: str) -> BlockBackend | None:
        return self.backends.get(name)

    def lookup_bs(self, name: str) -> BlockNode:
        """Device name first, then node name (QEMU's bdrv_lookup_bs with device == node_name)."""
        backend = self.backends.get(name)
        if backend is not None:
            return backend.root_or_error()
        node = self.find_node(name)
        if node is None:
            raise QemuError(qerror.DEVICE_OR_NODE_NOT_FOUND % (name, name))
        return node

    def device_name(self, node: BlockNode) -> str:
        """The name of the backend whose root is `node`, or "" (QEMU's bdrv_get_device_name)."""
        for backend in self.backends.values():
            if backend.root is node:
                return backend.name
        return ""

    def backend_of(self, node: BlockNode) -> BlockBackend | None:
        for backend in self.backends.values():
            if backend.root is node:
                return backend
        return None

    # ---- opening ------------------------------------------------------------------------------
    def blockdev_add(self, options: dict[str, Any]) -> BlockNode:
        """Open a tree of nodes from BlockdevOptions (QMP blockdev-add / -blockdev)."""
        if not options.get("node-name"):
            raise QemuError("'node-name' must be specified for the root node")
        added_before = len(self.nodes)
        try:
            node = self._open(options, read_only=bool(options.get("read-only", False)))
            self._apply_discard(node, False, set(map(id, self.nodes[added_before:])))
            # Attaching the new tree's children (possibly existing nodes) refreshes their perms.
            check_perms([node])
        except BaseException:
            self._forget_nodes_after(added_before)
            raise
        node.monitor_owned = True
        self.graph_wrlock_opened(self.nodes[added_before:])
        return node

    def open_options(self, options: dict[str, Any]) -> BlockNode:
        """Open a node tree for the emulator's own use (not monitor-owned); all or nothing."""
        before = len(self.nodes)
        try:
            node = self._open(options, read_only=bool(options.get("read-only", False)))
            self._apply_discard(node, False, set(map(id, self.nodes[before:])))
        except BaseException:
            self._forget_nodes_after(before)
            raise
        self.graph_wrlock_opened(self.nodes[before:])
        return node

    def _forget_nodes_after(self, count: int) -> None:
        for node in self.nodes[count:]:
            try:
                node.close()
            except Exception:  # noqa: BLE001 - best-effort cleanup of a half-opened tree
                _LOG.warning("closing half-opened node %s failed", node.node_name, exc_info=True)
        del self.nodes[count:]

    def open_child(self, ref: Any, *, read_only: bool) -> BlockNode:
        """A BlockdevRef: an inline BlockdevOptions dict or a reference to an existing node."""
        if isinstance(ref, str):
            return self.lookup_bs(ref)  # bdrv_lookup_bs(reference, reference): devices too
        return self._open(ref, read_only=read_only)

    def _name_for(self, options: dict[str, Any]) -> tuple[str, bool]:
        name = options.get("node-name")
        if name:
            self._check_node_name(name)
            return name, False
        return "", True

    def _open(self, options: dict[str, Any], *, read_only: bool) -> BlockNode:
        """bdrv_open: check the name, then let the driver open the node (its .bdrv_open)."""
        driver = options.get("driver")
        read_only = bool(options.get("read-only", read_only))
        name, auto = self._name_for(options)
        driver_class = DRIVERS.get(str(driver))
        if driver_class is None:
            raise QemuError(qerror.UNKNOWN_DRIVER % driver)
        return driver_class.open(self, name, auto, options, read_only)

    def register_opened(self, node: BlockNode, options: dict[str, Any],
                        slot: int | None = None) -> BlockNode:
        """Record an opened node (NodeOpener): named automatically if it has no name yet and
        appended, or inserted at `slot` by a driver that named itself before its children."""
        node.options = options
        if slot is not None:
            self.nodes.insert(slot, node)
            return node
        if node.auto_named:
            node.node_name = self.generate_node_name()
        return self._register(node)

    def open_backing(self, node: BlockNode, backing: Any) -> None:
        """bdrv_open_backing_file: the "backing" option (None: no backing), or with `...` the
        chain the image header names, opened read-only."""
        if backing is None:
            return
        if backing is not ...:
            node.set_backing(self.open_child(backing, read_only=True))
            return
        name = node.backing_file
        if not name:
            return
        path = name if os.path.isabs(name) else os.path.join(
            os.path.dirname(drivers.protocol_filename(node)), name)
        fmt = node.backing_format or None
        try:
            backing_node = self.open_file_and_format(path, fmt, read_only=True)
        except QemuError as exc:
            raise QemuError(qerror.COULD_NOT_OPEN_BACKING % exc.desc) from exc
        node.set_backing(backing_node)

    def open_file_and_format(self, filename: str, fmt: str | None, *, read_only: bool,
                              node_name: str | None = None,
                              extra: dict[str, Any] | None = None) -> BlockNode:
        extra = dict(extra or {})
        file_opts = protocol_options(filename)
        file_node_name = extra.pop("file-node-name", None)
        if file_node_name:
            file_opts["node-name"] = file_node_name
        if fmt is None:
            probe_node = self._open(file_opts, read_only=True)
            try:
                fmt = probe_format(probe_node)
            finally:
                self.nodes.remove(probe_node)
                probe_node.close()
        if fmt == file_opts["driver"]:  # format=file: the protocol node is the top node
            opts = {**file_opts, **{k: v for k, v in extra.items() if k != "backing"}}
        else:
            opts = {"driver": fmt, "file": file_opts, **extra}
        if node_name:
            opts["node-name"] = node_name
        if fmt != file_opts["driver"] and (fmt not in DRIVERS or not DRIVERS[fmt].is_format):
            raise QemuError(qerror.UNKNOWN_DRIVER % fmt)
        before = len(self.nodes)
        try:
            node = self._open(opts, read_only=read_only)
        except QemuError as exc:
            # 10.0, measured (scripts/drain_probe.py, probe target_open_failures): an image whose
            # file cannot be opened costs 3 write-lock sections, one whose file opened but whose
            # image locks or format open failed 6 (the partial tree is deleted again).
            self.graph_wrlock(6 if isinstance(exc, ImageLockError) else 3)
            raise
        self._apply_discard(node, False, set(map(id, self.nodes[before:])))
        self.graph_wrlock_opened(self.nodes[before:])
        return node

    def _apply_discard(self, node: BlockNode, default: bool, new: set[int]) -> None:
        """BDRV_O_UNMAP from the "discard" option (unmap/on).  Without one, a top node ignores
        discards while the children it opens default to unmap (bdrv_inherited_options: "our
        drivers respect unmap policy, so enable it on lower layers"); nodes opened earlier
        keep theirs."""
        if id(node) not in new:
            return
        value = node.options.get("discard")
        node.unmap = default if value is None else value in ("unmap", "on")
        for child in node.children.values():
            self._apply_discard(child, True, new)

    @staticmethod
    def _legacy_blkdebug_options(filename: str) -> dict[str, Any]:
        config, image = blkdebug.parse_blkdebug_filename(filename)
        options: dict[str, Any] = {"driver": "blkdebug", "image": protocol_options(image)}
        if config:
            options["config"] = config
        return options

    def drive_add(self, opts: dict[str, str]) -> BlockBackend:
        """-drive if=none,id=ID,file=F,format=FMT[,node-name=N]: a device over format and file nodes."""
        drive_id = opts.get("id")
        if not drive_id:
            drive_id = self._default_drive_id(opts)
        if drive_id in self.backends:
            raise QemuError(qerror.DUPLICATE_DRIVE_ID % drive_id)
        filename = opts.get("file")
        if not filename:
            raise QemuError("A block device must be specified for \"file\"")
        read_only = opts.get("readonly", opts.get("read-only", "off")) in ("on", "true", "yes")
        before = len(self.nodes)
        try:
            root = self._open_drive_nodes(filename, opts, read_only)
        except BaseException:
            self._forget_nodes_after(before)
            raise
        backend = BlockBackend(drive_id, root)
        self.backends[drive_id] = backend
        return backend

    def _open_drive_nodes(self, filename: str, opts: dict[str, str], read_only: bool) -> BlockNode:
        """-drive's node tree: format= (or driver=) on top, `file.*` options for the protocol
        node, and driver-specific options (blkdebug's align) on the top node, as QEMU's
        blockdev_init passes them."""
        fmt = opts.get("format") or opts.get("driver")
        file_extra = {key[len("file."):]: value for key, value in opts.items()
                      if key.startswith("file.")}
        if fmt == "blkdebug":
            top = self._legacy_blkdebug_options(filename)
            if "align" in opts:
                top["align"] = opts["align"]  # a string, as QEMU keeps -drive options (json: names)
            if opts.get("node-name"):
                top["node-name"] = opts["node-name"]
            if opts.get("discard"):
                top["discard"] = opts["discard"]
            before = len(self.nodes)
            node = self._open(top, read_only=read_only)
            self._apply_discard(node, False, set(map(id, self.nodes[before:])))
            return node
        extra: dict[str, Any] = {}
        if opts.get("discard"):
            extra["discard"] = opts["discard"]
        if file_extra.get("node-name"):
            extra["file-node-name"] = file_extra["node-name"]
        return self.open_file_and_format(filename, fmt, read_only=read_only,
                                         node_name=opts.get("node-name"), extra=extra)

    def empty_drive_add(self, opts: dict[str, str]) -> BlockBackend:
        """-drive without file= (a CD-ROM drive with no medium): a backend with no root."""
        drive_id = opts.get("id") or self._default_drive_id(opts)
        if drive_id in self.backends:
            raise QemuError(qerror.DUPLICATE_DRIVE_ID % drive_id)
        backend = BlockBackend(drive_id, None)
        self.backends[drive_id] = backend
        return backend

    def _default_drive_id(self, opts: dict[str, str]) -> str:
        interface = opts.get("if", "ide")
        index = sum(1 for name in self.backends if name.startswith(interface))
        return f"{interface}{index}-hd0" if interface == "ide" else f"{interface}{index}"

    # ---- reopen -------------------------------------------------------------------------------
    def reopen(self, options_list: list[dict[str, Any]]) -> None:
        """blockdev-reopen (bdrv_reopen_multiple), for what the emulator can change: read-only.

        Every option set must name an existing node and describe it as it is (driver, filename,
        children); options left out take their defaults (read-only off), and implicitly opened
        children follow their parent's read-only flag.  All checks run before anything changes.
        """
        plan: list[tuple[BlockNode, bool]] = []
        for options in options_list:
            name = options.get("node-name")
            if not name:
                raise QemuError("node-name not specified")
            node = self.find_node(name)
            if node is None:
                raise QemuError(qerror.NODE_NAME_NOT_FOUND % name)
            self._plan_reopen(node, options, bool(options.get("read-only", False)), plan)
        going_ro = [node for node, ro in plan if ro and not node.read_only]
        saved = [(node, node.read_only) for node, _ in plan]
        try:
            for node, ro in plan:
                node.read_only = ro
            check_perms([node for node, _ in plan])
        except QemuError as exc:
            if exc.desc == "Block node is read-only" and going_ro:
                name = going_ro[0].node_name
                raise QemuError(f"Read-only block node '{name}' cannot support read-write "
                                "users") from None
            raise
        finally:
            for node, ro in saved:
                node.read_only = ro
        # Read-write: children first (the format needs a writable file); read-only: parents first.
        for node, ro in (reversed(plan) if not any(r for _, r in plan) else plan):
            reopen = getattr(node, "reopen", None)
            if reopen is not None:
                reopen(ro)
            else:
                node.read_only = ro

    def _plan_reopen(self, node: BlockNode, options: dict[str, Any], read_only: bool,
                     plan: list[tuple[BlockNode, bool]]) -> None:
        if options.get("driver") != node.driver:
            raise QemuError("Cannot change the option 'driver'")
        # bdrv_reopen_prepare: a node with a backing file must be given its backing again.
        if node.supports_backing and "backing" not in options and (
                node.backing is not None or node.backing_file):
            raise QemuError(f"backing is missing for '{node.node_name}'")
        node.check_reopen(options)
        plan.append((node, read_only))
        for role, child in node.children.items():
            ref = options.get(role, ...)
            if role == "backing":
                if ref is None or (isinstance(ref, str) and ref != child.node_name):
                    raise QemuError("Changing the backing file is not supported by the emulator")
                continue  # COW children stay read-only
            if isinstance(ref, str):
                if ref != child.node_name:
                    raise QemuError(f"Cannot change the option '{role}'")
                continue
            if isinstance(ref, dict):
                self._plan_reopen(child, ref, bool(ref.get("read-only", read_only)), plan)
            elif not child.monitor_owned:
                self._plan_reopen(child, {**child.options, "driver": child.driver,
                                          **({"filename": child.filename}
                                             if hasattr(child, "filename") else {})},
                                  read_only, plan)

    # ---- filters ------------------------------------------------------------------------------
    def insert_cbw_filter(self, source: BlockNode, target: BlockNode, copy_hook: Any,
                          node_name: str | None = None, *, cluster_size: int = 65536,
                          on_open: Any = None) -> BlockNode:
        """bdrv_cbw_append: put a copy-before-write filter above `source` for its devices."""
        if node_name:
            self._check_node_name(node_name)
        node = copy_before_write.CopyBeforeWriteNode(node_name or "", source, target, copy_hook,
                                                     cluster_size=cluster_size,
                                                     auto_named=not node_name)
        if not node_name:
            node.node_name = self.generate_node_name()
        self._register(node)
        # bdrv_insert_node: open the filter (its children's perms), then move the source's users
        # to it; each step's permission failure carries that step's prefix.
        try:
            check_perms([node])
        except QemuError as exc:
            self._drop_new_filter(node)
            raise QemuError(qerror.COULD_NOT_CREATE_NODE % exc.desc) from None
        if on_open is not None:
            on_open()  # what cbw_open does once its children are attached (block-copy state)
        self.graph_wrlock(3)  # 10.0: bdrv_insert_node's open of the filter and its two children
        self.replace_node(source, node)
        try:
            check_perms([node])
        except QemuError as exc:
            self.replace_node(node, source)
            self._drop_new_filter(node)
            raise QemuError(f"Could not replace node: {exc.desc}") from None
        return node

    def _drop_new_filter(self, node: BlockNode) -> None:
        node.close()
        if node in self.nodes:
            self.nodes.remove(node)

    def remove_filter(self, node: BlockNode) -> None:
        """bdrv_cbw_drop: give the filter's devices back to its child and close the filter."""
        child = node.children.get("file")
        if child is not None:
            self.replace_node(node, child)
        self._delete(node)  # the filter's bdrv_unref

    def replace_node(self, old: BlockNode, new: BlockNode) -> None:
        """bdrv_replace_node: every user of `old` uses `new` instead, except jobs (whose nodes
        stay where they are) and nodes reachable from `new` (should_update_child: moving their
        edge would make a loop, e.g. a sync=none backup target whose backing is the source,
        below the backup's copy-before-write filter).  QEMU walks old's parents newest first and
        head-inserts each into new's list, so they end up in reverse order there.

        bdrv_replace_node_common drains `old` meanwhile: jobs above it pause once (e.g. a backup
        whose filter sits above another backup's filter, when that one is dropped); 10.0 also
        takes the graph write lock for it, inside that drained section (so a job above `old`
        pauses once for both)."""
        drained_begin(old)
        try:
            self.graph_wrlock()
            self._replace_node(old, new)
        finally:
            drained_end(old)

    def _replace_node(self, old: BlockNode, new: BlockNode) -> None:
        below_new: set[int] = set()
        pending = [new]
        while pending:
            node = pending.pop()
            if id(node) not in below_new:
                below_new.add(id(node))
                pending.extend(node.children.values())
        for parent in list(reversed(old.parents)):
            if id(parent) in below_new:
                continue
            if isinstance(parent, BlockNode):
                if old not in parent.children.values():
                    continue
                for role, child in list(parent.children.items()):
                    if child is old:
                        parent.children[role] = new
                        move_parent(old, new, parent)
                        parent.child_replaced(role, new)
            elif getattr(parent, "is_backend", False):
                self.set_backend_root(parent, new)
            elif not hasattr(parent, "job_type"):  # temporary users follow the node
                move_parent(old, new, parent)

    @staticmethod
    def set_backend_root(backend: BlockBackend, root: BlockNode | None) -> None:
        backend.detach()
        backend.root = root
        if root is not None:
            attach_parent(root, backend)

    # ---- removal ------------------------------------------------------------------------------
    def close_nodes(self, nodes: list[BlockNode]) -> None:
        """Close nodes the emulator opened for itself (e.g. a drive-backup target), newest first."""
        for node in reversed(nodes):
            if node in self.nodes:
                self._delete(node)

    def _delete(self, node: BlockNode) -> None:
        """bdrv_delete: close the node and forget it; 10.0 takes one graph write-lock section
        per node deleted."""
        try:
            node.close()
        finally:
            if node in self.nodes:
                self.nodes.remove(node)
                self.graph_wrlock()

    def blockdev_del(self, node_name: str) -> None:
        """qmp_blockdev_del, with QEMU 7.2's checks in its order."""
        node = self.find_node(node_name)
        if node is None:
            raise QemuError(qerror.NODE_NAME_NOT_FOUND % node_name)
        if any(getattr(parent, "is_backend", False) for parent in node.parents):
            raise QemuError(f"Node {node_name} is in use")
        node.op_check("drive-del")
        if not node.monitor_owned:
            raise QemuError(f"Node {node_name} is not owned by the monitor")
        if node.parents:
            raise QemuError(f"Block device {node.device_or_node_name()} is in use")
        self._close_tree(node)

    def _close_tree(self, node: BlockNode) -> None:
        children = list(node.children.values())
        self._delete(node)
        for child in children:
            if not child.parents and not child.monitor_owned:
                self._close_tree(child)

    def close_all(self) -> None:
        """Flush and close everything (QEMU's bdrv_close_all at exit)."""
        for backend in list(self.backends.values()):
            backend.detach()
        self.backends.clear()
        for node in reversed(self.nodes):
            try:
                node.flush()
            except OSError:
                pass
        for node in reversed(list(self.nodes)):
            try:
                node.close()
            except Exception:  # noqa: BLE001 - closing must go on for the other nodes
                _LOG.warning("closing node %s failed", node.node_name, exc_info=True)
        self.nodes.clear()
