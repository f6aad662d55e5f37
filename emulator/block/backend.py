"""BlockBackend: the named device a `-drive id=X` creates (QEMU's BlockBackend).

Its name is the *device name*; I/O addressed to the device goes to its root node.  Nodes added with
blockdev-add have no backend, so their device name is "".
"""

from __future__ import annotations

from .node import BlockNode


class BlockBackend:
    """A device with a root node."""

    is_backend = True

    def __init__(self, name: str, root: BlockNode) -> None:
        self.name = name
        self.root = root
        root.parents.append(self)
        #: The attached device's qdev id or path (None while no device uses the backend).
        self.dev: str | None = None
        self.removable = False

    def attach_dev(self, qdev: str, *, removable: bool = False) -> None:
        """blk_attach_dev: a device now uses this backend; query-block reports it as `qdev`."""
        self.dev = qdev
        self.removable = removable

    def detach_dev(self) -> None:
        """blk_detach_dev: the device went away."""
        self.dev = None
        self.removable = False

    def detach(self) -> None:
        if self in self.root.parents:
            self.root.parents.remove(self)

    def __repr__(self) -> str:
        return f"<BlockBackend {self.name!r} root={self.root.node_name!r}>"
