"""FileStorage: a host file as the bottom of a block graph (QEMU's file-posix protocol driver).

Format drivers (raw, qcow2) read and write it through the Storage protocol.  Reads past the end
of the file return zeros, writes grow it, `flush` is fdatasync (as QEMU's).  `set_perm` takes QEMU-compatible
image locks (OFD byte-range locks on bytes 100+perm / 200+perm as file-posix does) so that a real
qemu-img refuses an image the emulator holds open, exactly as it refuses one a running QEMU holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from emulator import qerror
from emulator.error import QemuError

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """fallocate(PUNCH_HOLE | KEEP_SIZE) through libc; False where that is not available."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fallocate = libc.fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        return bool(fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset,
                              length) == 0)
    except (OSError, AttributeError):
        return False

from .node import BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_ZERO
from .permissions import PERM_ALL

# file-posix.c locks one byte per permission at these bases (RAW_LOCK_PERM_BASE / SHARED_BASE).
LOCK_PERM_BASE = 100
LOCK_SHARED_BASE = 200
#: Permission names in bit order (BLK_PERM_CONSISTENT_READ .. BLK_PERM_RESIZE).
PERM_NAMES = ("consistent read", "write", "write unchanged", "resize")

# fcntl commands for open-file-description locks (Linux); Python's fcntl module lacks them.
F_OFD_GETLK = 36
F_OFD_SETLK = 37


def open_error(filename: str, err: OSError) -> QemuError:
    """file-posix's open failure text: "Could not open 'F': <strerror>"."""
    return QemuError(qerror.COULD_NOT_OPEN % (filename, os.strerror(err.errno or errno.EIO)))


class ImageLockError(QemuError):
    """An image lock (file-posix's byte-range locks) is held against us: the file itself opened."""


class FileStorage:
    """A host file implementing the Storage protocol with pread/pwrite/fdatasync."""

    def __init__(self, filename: str, *, read_only: bool = False, create: bool = False,
                 no_flush: bool = False) -> None:
        self.filename = filename
        self.read_only = read_only
        #: QEMU's cache.no-flush (BDRV_O_NO_FLUSH): flushes do not reach the disk.  Image creation
        #: uses it, as qemu-img create does (it issues no fsync).
        self.no_flush = no_flush
        flags = os.O_RDONLY if read_only else os.O_RDWR
        if create and not read_only:
            flags |= os.O_CREAT
        flags |= getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd: int | None = os.open(filename, flags, 0o644)
        except OSError as e:
            raise open_error(filename, e) from None
        if os.path.isdir(filename):
            os.close(self._fd)
            self._fd = None
            raise QemuError(qerror.COULD_NOT_OPEN % (filename, os.strerror(errno.EISDIR)))
        self._locked_perm = 0
        self._locked_shared = 0

    # ---- Storage protocol ---------------------------------------------------------------------
    @property
    def fd(self) -> int:
        if self._fd is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return self._fd

    def pread(self, offset: int, length: int) -> bytes:
        """Read `length` bytes; the part past the end of the file reads as zeros."""
        if length <= 0:
            return b""
        data = os.pread(self.fd, length, offset)
        if len(data) == length:
            return data
        # Short read: either EOF or an interrupted read; retry the remainder once, then pad.
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(self.fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        if got < length:
            parts.append(bytes(length - got))
        return b"".join(parts)

    def pwrite(self, offset: int, data: bytes) -> None:
        """Write all of `data`, growing the file if needed."""
        if self.read_only:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def flush(self) -> None:
        """raw_co_flush_to_disk: qemu_fdatasync (data, and the metadata needed to read it back;
        fsync also wrote the timestamps, for nothing QEMU promises)."""
        if not self.no_flush:
            os.fdatasync(self.fd)

    def length(self) -> int:
        return os.fstat(self.fd).st_size

    def truncate(self, size: int) -> None:
        if self.read_only:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        os.ftruncate(self.fd, size)

    def discard(self, offset: int, length: int) -> None:
        """handle_aiocb_discard: punch a hole (the range then reads as zeros); where the file
        system cannot, write zeros, which reads the same."""
        if self.read_only:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        end = min(offset + length, self.length())
        if end <= offset:
            return
        if _punch_hole(self.fd, offset, end - offset):
            return
        pos = offset
        while pos < end:
            n = min(end - pos, 1 << 20)
            self.pwrite(pos, bytes(n))
            pos += n

    def debug_event(self, event: str) -> None:
        """blkdebug hook; a host file has no rules."""

    def allocated_size(self) -> int:
        """Bytes the host file system has allocated (qemu-img's "actual-size" / "disk size")."""
        return os.fstat(self.fd).st_blocks * 512

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """Data/hole extent at `offset` via SEEK_DATA/SEEK_HOLE, as file-posix reports it.

        At or past the end of the file (the tail of a last, partial sector, which the node's
        length includes) the whole request is a trailing hole: raw_co_block_status's ENXIO
        case, BDRV_BLOCK_ZERO."""
        size = self.length()
        if length <= 0:
            return 0, 0
        if offset >= size:
            return length, BLOCK_ZERO | BLOCK_ALLOCATED
        length = min(length, size - offset)
        try:
            data = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:
                return length, BLOCK_DATA | BLOCK_ALLOCATED
            data = size  # a hole up to the end of the file
        if data > offset:
            return min(length, data - offset), BLOCK_ZERO | BLOCK_ALLOCATED
        try:
            hole = os.lseek(self.fd, offset, os.SEEK_HOLE)
        except OSError:
            hole = size
        return min(length, max(hole - offset, 1)), BLOCK_DATA | BLOCK_ALLOCATED

    # ---- image locking (file-posix raw_apply_lock_bytes / raw_check_lock_bytes) ---------------
    def _ofd_lock(self, cmd: int, ltype: int, start: int) -> int:
        # struct flock { short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid; }
        buf = struct.pack("hhqqi4x", ltype, os.SEEK_SET, start, 1, 0)
        res = fcntl.fcntl(self.fd, cmd, buf)
        return int(struct.unpack("hhqqi4x", res)[0])

    def set_perm(self, perm: int, shared: int) -> None:
        """Take QEMU's locks for `perm` (what we use) and `~shared` (what we forbid others).

        Raises QemuError with QEMU's text ('Failed to get "write" lock') when another process
        (a real QEMU, qemu-img, or another emulator) holds a conflicting lock.
        """
        unshared = PERM_ALL & ~shared
        for i, name in enumerate(PERM_NAMES):
            bit = 1 << i
            # Others who unshare what we want to use block us, and vice versa.
            if perm & bit and self._conflicts(LOCK_SHARED_BASE + i):
                raise ImageLockError(f'Failed to get "{name}" lock')
            if unshared & bit and self._conflicts(LOCK_PERM_BASE + i):
                raise ImageLockError(f'Failed to get shared "{name}" lock')
        for i in range(len(PERM_NAMES)):
            bit = 1 << i
            self._ofd_lock(F_OFD_SETLK, fcntl.F_RDLCK if perm & bit else fcntl.F_UNLCK, LOCK_PERM_BASE + i)
            self._ofd_lock(F_OFD_SETLK, fcntl.F_RDLCK if unshared & bit else fcntl.F_UNLCK,
                           LOCK_SHARED_BASE + i)
        self._locked_perm, self._locked_shared = perm, shared

    def _conflicts(self, byte: int) -> bool:
        """True if another open file description holds a lock on `byte` (F_OFD_GETLK)."""
        try:
            return self._ofd_lock(F_OFD_GETLK, fcntl.F_WRLCK, byte) != fcntl.F_UNLCK
        except OSError:
            return False

    def close(self) -> None:
        """Close the descriptor (dropping any locks)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        return f"<FileStorage {self.filename!r}{' ro' if self.read_only else ''}>"
