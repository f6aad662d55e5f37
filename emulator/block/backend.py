"""BlockBackend: the named device a `-drive id=X` creates (QEMU's BlockBackend).

Its name is the *device name*; I/O addressed to the device goes to its root node.  Nodes added with
blockdev-add have no backend, so their device name is "".
"""

from __future__ import annotations

from emulator.error import QemuError

from .node import BlockNode
from .permissions import PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE, check_perms


class BlockBackend:
    """A device with a root node."""

    is_backend = True

    def __init__(self, name: str, root: BlockNode) -> None:
        self.name = name
        self.root = root
        root.parents.append(self)
        #: The backend's use of its root (blk_new_open for -drive: read, and write unless
        #: read-only, sharing everything; a device narrows it with set_perm()).
        self.perm = PERM_CONSISTENT_READ | (0 if root.read_only else PERM_WRITE)
        self.shared_perm = PERM_ALL
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

    def perm_edge(self, node: BlockNode) -> tuple[str, int, int]:
        return "root", self.perm, self.shared_perm

    def parent_desc(self) -> str:
        """blk_root_get_parent_desc."""
        if self.name:
            return f"block device '{self.name}'"
        dev = getattr(self, "dev", None)
        return f"block device '{dev}'" if dev else "an unnamed block device"

    def set_perm(self, perm: int, shared: int) -> None:
        """blk_set_perm: change what this backend needs and shares; on a conflict raise QEMU's
        error (QemuError) and keep the old perms."""
        old = (self.perm, self.shared_perm)
        self.perm, self.shared_perm = perm, shared
        try:
            check_perms([self.root])
        except QemuError:
            self.perm, self.shared_perm = old
            raise

    def detach(self) -> None:
        if self in self.root.parents:
            self.root.parents.remove(self)

    def __repr__(self) -> str:
        return f"<BlockBackend {self.name!r} root={self.root.node_name!r}>"
