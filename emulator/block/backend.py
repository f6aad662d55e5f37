"""BlockBackend: the named device a `-drive id=X` creates (QEMU's BlockBackend).

Its name is the *device name*; I/O addressed to the device goes to its root node.  Nodes added with
blockdev-add have no backend, so their device name is "".
"""

from __future__ import annotations

from emulator.error import QemuError

from .drain import attach_parent, detach_parent
from .node import BlockNode
from .permissions import PERM_ALL, PERM_CONSISTENT_READ, check_perms


class BlockBackend:
    """A device with a root node."""

    is_backend = True

    def __init__(self, name: str, root: BlockNode | None) -> None:
        self.name = name
        #: None for an empty drive (a CD-ROM without medium): lookups say "has no medium".
        self.root = root
        if root is not None:
            attach_parent(root, self)
        #: The backend's use of its root.  A -drive backend only reads until someone writes
        #: through it (real QEMU 7.2: a node unsharing 'write' can be added over a -drive's node;
        #: HMP qemu-io's writes then take 'write' and keep it); devices set theirs (set_perm()).
        self.perm = PERM_CONSISTENT_READ
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
            if self.root is not None:
                check_perms([self.root])
        except QemuError:
            self.perm, self.shared_perm = old
            raise

    def root_or_error(self) -> BlockNode:
        """blk_bs() for a lookup by device name: QEMU's error when the drive is empty."""
        if self.root is None:
            raise QemuError(f"Device '{self.name}' has no medium")
        return self.root

    def detach(self) -> None:
        if self.root is not None:
            detach_parent(self.root, self)

    def __repr__(self) -> str:
        root = self.root.node_name if self.root is not None else None
        return f"<BlockBackend {self.name!r} root={root!r}>"
