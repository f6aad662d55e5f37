"""The block layer's permission system (QEMU's BLK_PERM_* on BdrvChild edges, block.c).

Every edge from a user to a node carries a *perm* (what the user does to the node) and a
*shared* mask (what it lets the other users of that node do).  A node's parents are other nodes
(each driver derives its children's perms from what its own parents want: bdrv_child_perm),
BlockBackends (devices, `-drive`), block jobs, and short-lived users such as block_resize.

Perms are recomputed from the graph on every check rather than cached on edges: the graph is
small and this keeps every graph change (attach, replace, detach) free of bookkeeping.  A check
walks the changed nodes' subtree in QEMU's topological order (bdrv_topological_dfs) and fails
with the first conflict bdrv_parent_perms_conflict would find, in QEMU's words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from emulator.error import QemuError


class BlockNode(Protocol):
    """What the permission system needs of a node (emulator.block.node.BlockNode has it; this
    module does not import node.py, which uses it)."""

    node_name: str
    read_only: bool
    parents: list[Any]

    @property
    def children(self) -> Mapping[str, BlockNode]: ...

    def child_perm(self, role: str, perm: int, shared: int) -> tuple[int, int]: ...


def _is_node(parent: Any) -> bool:
    """A parent that is a node (it derives its children's perms), not a backend, job or user."""
    return callable(getattr(parent, "child_perm", None))

PERM_CONSISTENT_READ = 0x01
PERM_WRITE = 0x02
PERM_WRITE_UNCHANGED = 0x04
PERM_RESIZE = 0x08
PERM_ALL = 0x0F

#: DEFAULT_PERM_PASSTHROUGH / DEFAULT_PERM_UNCHANGED of block.c.
PERM_PASSTHROUGH = PERM_ALL
PERM_UNCHANGED = PERM_ALL & ~(PERM_WRITE | PERM_RESIZE)

#: QAPI BlockPermission names (take-child-perms, unshare-child-perms) and their bits.
QAPI_PERMS = {"consistent-read": PERM_CONSISTENT_READ, "write": PERM_WRITE,
              "write-unchanged": PERM_WRITE_UNCHANGED, "resize": PERM_RESIZE}

_NAMES = ((PERM_CONSISTENT_READ, "consistent read"), (PERM_WRITE, "write"),
          (PERM_WRITE_UNCHANGED, "write unchanged"), (PERM_RESIZE, "resize"))

#: Child roles (BdrvChildRole) that decide bdrv_default_perms' rule.
ROLE_DATA = 0x01
ROLE_METADATA = 0x02
ROLE_FILTERED = 0x04
ROLE_COW = 0x08


def perm_names(perm: int) -> str:
    """bdrv_perm_names: "consistent read, write" etc., in QEMU's fixed order."""
    return ", ".join(name for bit, name in _NAMES if perm & bit)


def qapi_perms(names: list[str]) -> int:
    """A BlockPermission list as a mask."""
    mask = 0
    for name in names:
        mask |= QAPI_PERMS[name]
    return mask


# ---- bdrv_default_perms and its three rules ---------------------------------------------------
def filter_default_perms(perm: int, shared: int) -> tuple[int, int]:
    """bdrv_filter_default_perms: pass everything through, and always share the harmless perms."""
    return perm & PERM_PASSTHROUGH, (shared & PERM_PASSTHROUGH) | PERM_UNCHANGED


def cow_default_perms(perm: int, shared: int) -> tuple[int, int]:
    """bdrv_default_perms_for_cow: a backing file is only read; it may change only if the
    parents allow the overlay to change."""
    nshared = (PERM_WRITE | PERM_RESIZE) if shared & PERM_WRITE else 0
    return perm & PERM_CONSISTENT_READ, nshared | PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED


def storage_default_perms(perm: int, shared: int, role: int, writable: bool) -> tuple[int, int]:
    """bdrv_default_perms_for_storage: a format's metadata child is written and resized by the
    format itself (so nobody else may), a data child follows the parents' writes."""
    perm, shared = filter_default_perms(perm, shared)
    if role & ROLE_METADATA:
        if writable:
            perm |= PERM_WRITE | PERM_RESIZE
        perm |= PERM_CONSISTENT_READ
        shared &= ~(PERM_WRITE | PERM_RESIZE)
    if role & ROLE_DATA:
        shared &= ~PERM_RESIZE
        if perm & PERM_WRITE_UNCHANGED:
            perm |= PERM_WRITE
        if perm & PERM_WRITE:
            perm |= PERM_RESIZE
    return perm, shared


def default_perms(role: int, perm: int, shared: int, writable: bool) -> tuple[int, int]:
    """bdrv_default_perms: pick the rule by the child's role."""
    if role & ROLE_FILTERED:
        return filter_default_perms(perm, shared)
    if role & ROLE_COW:
        return cow_default_perms(perm, shared)
    return storage_default_perms(perm, shared, role, writable)


# ---- users that are not nodes -----------------------------------------------------------------
class TemporaryUser:
    """A short-lived anonymous BlockBackend (block_resize's, HMP qemu-io's on a node name)."""

    def __init__(self, perm: int, shared: int = PERM_ALL) -> None:
        self.perm = perm
        self.shared_perm = shared

    def perm_edge(self, node: BlockNode) -> tuple[str, int, int]:
        return "root", self.perm, self.shared_perm

    def parent_desc(self) -> str:
        return "an unnamed block device"


@dataclass
class Edge:
    """One parent->child use of a node with its perms (QEMU's BdrvChild, as far as perms go)."""

    parent: Any
    role: str
    child: BlockNode
    perm: int
    shared: int

    def user_desc(self) -> str:
        """bdrv_child_user_desc: "node 'X'", "block device 'd'", "backup job 'j'"..."""
        if _is_node(self.parent):
            return f"node '{self.parent.node_name}'"
        return str(self.parent.parent_desc())


class PermissionState:
    """Perms of every edge reaching a set of nodes, computed top-down from the users."""

    def __init__(self) -> None:
        self._cumulative: dict[int, tuple[int, int]] = {}
        self._edges: dict[int, list[Edge]] = {}

    def parent_edges(self, node: BlockNode) -> list[Edge]:
        """The node's parents, newest first (QEMU head-inserts bs->parents)."""
        cached = self._edges.get(id(node))
        if cached is not None:
            return cached
        edges: list[Edge] = []
        seen: set[int] = set()
        for parent in reversed(node.parents):
            if id(parent) in seen:
                continue
            seen.add(id(parent))
            if _is_node(parent):
                pperm, pshared = self.cumulative(parent)
                for role, child in parent.children.items():
                    if child is node:
                        perm, shared = parent.child_perm(role, pperm, pshared)
                        edges.append(Edge(parent, role, node, perm, shared))
            elif hasattr(parent, "perm_edge"):
                role, perm, shared = parent.perm_edge(node)
                edges.append(Edge(parent, role, node, perm, shared))
        self._edges[id(node)] = edges
        return edges

    def cumulative(self, node: BlockNode) -> tuple[int, int]:
        """bdrv_get_cumulative_perm: OR of the parents' perms, AND of what they share."""
        cached = self._cumulative.get(id(node))
        if cached is not None:
            return cached
        self._cumulative[id(node)] = (0, PERM_ALL)  # cycle guard; the graph is a DAG
        perm, shared = 0, PERM_ALL
        for edge in self.parent_edges(node):
            perm |= edge.perm
            shared &= edge.shared
        self._cumulative[id(node)] = (perm, shared)
        return perm, shared


def topological_order(roots: list[BlockNode]) -> list[BlockNode]:
    """bdrv_topological_dfs over the roots' subtrees: every node before its children."""
    found: set[int] = set()
    out: list[BlockNode] = []

    def dfs(node: BlockNode) -> None:
        if id(node) in found:
            return
        found.add(id(node))
        for child in node.children.values():
            dfs(child)
        out.append(node)

    for root in roots:
        dfs(root)
    out.reverse()
    return out


def conflict_error(node: BlockNode, edges: list[Edge]) -> QemuError | None:
    """bdrv_parent_perms_conflict: the first pair (a, b) where a does not share what b needs."""
    for a in edges:
        for b in edges:
            if a is b or (b.perm & a.shared) == b.perm:
                continue
            name = node.node_name
            return QemuError(
                f"Permission conflict on node '{name}': permissions "
                f"'{perm_names(b.perm & ~a.shared)}' are both required by {b.user_desc()} "
                f"(uses node '{name}' as '{b.role}' child) and unshared by {a.user_desc()} "
                f"(uses node '{name}' as '{a.role}' child).")
    return None


def check_perms(roots: list[BlockNode]) -> None:
    """bdrv_refresh_perms over the roots' subtrees: raise QEMU's error for the first problem."""
    state = PermissionState()
    for node in topological_order(roots):
        edges = state.parent_edges(node)
        error = conflict_error(node, edges)
        if error is not None:
            raise error
        perm, _ = state.cumulative(node)
        if perm & (PERM_WRITE | PERM_WRITE_UNCHANGED) and node.read_only:
            raise QemuError("Block node is read-only")


def node_perms(node: BlockNode) -> tuple[int, int]:
    """The cumulative (perm, shared) of a node as its users stand now."""
    return PermissionState().cumulative(node)


def edges_of(node: BlockNode) -> list[Edge]:
    """The node's parent edges with their perms (newest first), for tests and diagnostics."""
    return PermissionState().parent_edges(node)
