"""The byte-level interface that image format drivers sit on (QEMU's BdrvChild, reduced).

A qcow2 or raw driver reads and writes its `file` child and reads its `backing` through this
protocol.  BlockNode implements it, and so does FileStorage (a plain host file), so the same
format code serves the emulator's block graph and the offline qemu-img/qemu-io tools.
"""

from __future__ import annotations

from typing import Protocol


class Storage(Protocol):
    """What a format driver needs from the node below it."""

    def pread(self, offset: int, length: int) -> bytes:
        """Read exactly `length` bytes; bytes past the end read as zeros.  Raises OSError on I/O error."""
        ...

    def pwrite(self, offset: int, data: bytes) -> None:
        """Write all of `data` (growing the storage if needed).  Raises OSError on I/O error."""
        ...

    def flush(self) -> None:
        """Make previous writes durable (fsync for host files)."""
        ...

    def length(self) -> int:
        """Current size in bytes."""
        ...

    def truncate(self, size: int) -> None:
        """Set the size (grow with zeros or shrink)."""
        ...

    def debug_event(self, event: str) -> None:
        """Raise a blkdebug event (BlkdebugEvent name, e.g. "read_aio", "flush_to_disk") on this child.

        A format driver calls it where QEMU's drivers call BLKDBG_EVENT(bs->file, ...); it is a
        no-op except on a blkdebug node.
        """
        ...
