"""Drained sections, as QEMU 7.2's block/io.c and block.c implement them.

A drained section on a node quiesces the node and, through the parent callbacks, everything
above it: ``bdrv_drained_begin`` -> ``bdrv_do_drained_begin_quiesce`` bumps the node's
``quiesce_counter`` and calls ``bdrv_parent_drained_begin``, which gives each parent edge one
``drained_begin`` callback.  A parent that is itself a node (``bdrv_child_cb_drained_begin``)
quiesces in turn, so the section reaches every ancestor; a parent that is a block job
(``child_job_drained_begin``) pauses the job (``job_pause``), and ``bdrv_drained_begin``'s poll
waits until the job sits at its pause point.  ``bdrv_drained_end`` undoes each step.

``bdrv_drain_all_begin`` quiesces every node but skips parents that are nodes
(``ignore_bds_parents``): each node is drained on its own.  A node created inside a drain-all
section starts drained (``bdrv_new``).

When an edge moves onto or off a quiesced node (``bdrv_replace_child_noperm``), the parent gets
the difference in ``drained_begin``/``drained_end`` callbacks ("drain saldo"): a job attached to a
drained node is paused at once, and detaching it resumes it.

Parents here are BlockNodes, or any object with ``child_drained_begin(node)`` /
``child_drained_end(node)`` (a block job); others (BlockBackends, temporary users) have no
drain callbacks, as far as anything observable goes.  This module knows nothing of jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class BlockNode(Protocol):
    """What a drained section needs of a node (emulator.block.node.BlockNode has it; this module
    does not import node.py, which calls it)."""

    quiesce_counter: int
    parent_quiesce: dict[int, int]
    parents: list[Any]


class DrainedParent(Protocol):
    """A parent with BdrvChildClass drain callbacks (child_job's, for a block job)."""

    def child_drained_begin(self, node: BlockNode) -> None: ...

    def child_drained_end(self, node: BlockNode) -> None: ...


def _is_node(parent: Any) -> bool:
    return hasattr(parent, "quiesce_counter") and hasattr(parent, "children")


def _parents_newest_first(node: BlockNode) -> list[Any]:
    """bs->parents is head-inserted: QEMU walks the newest parent first."""
    return list(reversed(node.parents))


def _parent_begin_single(node: BlockNode, parent: Any) -> None:
    """bdrv_parent_drained_begin_single: one more drained section for this parent edge."""
    node.parent_quiesce[id(parent)] = node.parent_quiesce.get(id(parent), 0) + 1
    if _is_node(parent):
        _quiesce_begin(parent)  # bdrv_child_cb_drained_begin
        return
    callback = getattr(parent, "child_drained_begin", None)
    if callback is not None:
        callback(node)


def _parent_end_single(node: BlockNode, parent: Any) -> None:
    """bdrv_parent_drained_end_single."""
    count = node.parent_quiesce.get(id(parent), 0)
    assert count > 0, f"drained_end without begin on {node!r} for {parent!r}"
    if count == 1:
        del node.parent_quiesce[id(parent)]
    else:
        node.parent_quiesce[id(parent)] = count - 1
    if _is_node(parent):
        _quiesce_end(parent)  # bdrv_child_cb_drained_end
        return
    callback = getattr(parent, "child_drained_end", None)
    if callback is not None:
        callback(node)


def _quiesce_begin(node: BlockNode, ignore_node_parents: bool = False) -> None:
    """bdrv_do_drained_begin_quiesce."""
    node.quiesce_counter += 1
    for parent in _parents_newest_first(node):
        if ignore_node_parents and _is_node(parent):
            continue
        _parent_begin_single(node, parent)


def _quiesce_end(node: BlockNode, ignore_node_parents: bool = False) -> None:
    """bdrv_do_drained_end."""
    assert node.quiesce_counter > 0, f"drained_end on {node!r}, which is not drained"
    node.quiesce_counter -= 1
    for parent in _parents_newest_first(node):
        if ignore_node_parents and _is_node(parent):
            continue
        if node.parent_quiesce.get(id(parent), 0) > 0:
            _parent_end_single(node, parent)


def drained_begin(node: BlockNode) -> None:
    """bdrv_drained_begin: quiesce `node` and its ancestors; jobs above it pause.  (QEMU's poll
    is implicit: a paused job is entered at once and runs to its pause point.)"""
    _quiesce_begin(node)


def drained_end(node: BlockNode) -> None:
    """bdrv_drained_end."""
    _quiesce_end(node)


@contextmanager
def drained(node: BlockNode) -> Iterator[None]:
    """A bdrv_drained_begin/end pair around a block."""
    drained_begin(node)
    try:
        yield
    finally:
        drained_end(node)


def drain_all_begin(nodes: Iterable[BlockNode]) -> None:
    """bdrv_drain_all_begin: every node quiesced on its own (parents that are nodes skipped)."""
    for node in list(nodes):
        _quiesce_begin(node, ignore_node_parents=True)


def drain_all_end(nodes: Iterable[BlockNode]) -> None:
    """bdrv_drain_all_end."""
    for node in list(nodes):
        if node.quiesce_counter > 0:
            _quiesce_end(node, ignore_node_parents=True)


# ---- edges moving onto or off quiesced nodes (bdrv_replace_child_noperm's drain saldo) ----------

def attach_parent(node: BlockNode, parent: Any) -> None:
    """`parent` starts using `node`: it gets one drained_begin per section `node` is in."""
    node.parents.append(parent)
    for _ in range(node.quiesce_counter):
        _parent_begin_single(node, parent)


def detach_parent(node: BlockNode, parent: Any) -> None:
    """`parent` stops using `node`: the sections it got through this edge end for it."""
    if parent not in node.parents:
        return
    node.parents.remove(parent)
    count = node.parent_quiesce.get(id(parent), 0)
    for _ in range(count):
        _parent_end_single(node, parent)


def move_parent(old: BlockNode, new: BlockNode, parent: Any) -> None:
    """`parent`'s edge moves from `old` to `new` (bdrv_replace_child_noperm): begins first for
    sections only `new` is in, ends last for sections only `old` was in."""
    count = old.parent_quiesce.pop(id(parent), 0)
    saldo = new.quiesce_counter - count
    old.parents.remove(parent)
    new.parents.append(parent)
    if count:
        new.parent_quiesce[id(parent)] = new.parent_quiesce.get(id(parent), 0) + count
    for _ in range(max(saldo, 0)):
        _parent_begin_single(new, parent)
    for _ in range(max(-saldo, 0)):
        _parent_end_single(new, parent)
