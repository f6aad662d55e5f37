"""x-debug-block-dirty-bitmap-sha256: digests of the finest HBitmap level.

The expected digests were printed by real QEMU 7.2.22 for the same writes on a 10 MiB qcow2
(`x-debug-block-dirty-bitmap-sha256` after `qemu-io d0 "write ..."`).
"""

from emulator.block.dirty_bitmap import DirtyBitmap

SIZE = 10 * 1024 * 1024


def test_empty_bitmap_digest() -> None:
    bm = DirtyBitmap("b0", 65536, SIZE)
    assert bm.sha256() == "9d908ecfb6b256def8b49a7c504e6c889c4b0e41fe6ce3e01863dd7b61a20aa0"


def test_digest_after_writes() -> None:
    bm = DirtyBitmap("b0", 65536, SIZE)
    bm.set_dirty(0, 1)
    bm.set_dirty(3 * 1024 * 1024, 700 * 1024)
    assert bm.sha256() == "cd80790728e5f5e519e5494d1e7a9923d3e9d753bd4e6c29d76f080c16c22084"


def test_digest_fine_granularity() -> None:
    bm = DirtyBitmap("b1", 512, SIZE)
    bm.set_dirty(9 * 1024 * 1024, 1024 * 1024)
    assert bm.sha256() == "b3efea319d6cc0c6339364be5735d694105d42356b71c5612322bffab7f4a0af"


def test_digest_differs_with_bits() -> None:
    a = DirtyBitmap("a", 65536, SIZE)
    b = DirtyBitmap("b", 65536, SIZE)
    b.set_dirty(SIZE - 1, 1)
    assert a.sha256() != b.sha256()
