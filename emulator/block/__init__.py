"""Block layer: image formats, block nodes (QEMU's BlockDriverState), dirty bitmaps, blkdebug, qemu-io.

Knows nothing of QMP.  Errors are emulator.error.QemuError (open/config time) or OSError with an
errno (I/O time, e.g. EIO injected by blkdebug), as in QEMU where I/O returns -errno.
"""
