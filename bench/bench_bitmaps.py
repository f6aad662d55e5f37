"""Dirty-bitmap operation costs at 1 GiB vs 1 TiB image size.

The bitmap stores dirty granule runs (roaring), so for the same writes every operation should
cost about the same whatever the image size.  Run: .venv/bin/python bench/bench_bitmaps.py
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.block.dirty_bitmap import DirtyBitmap, DirtyBitmapSet

GiB = 1 << 30
TiB = 1 << 40
WRITES = 5000
WRITE_SIZE = 64 * 1024


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best wall time of `repeat` runs, in microseconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def bench(size: int, granularity: int, writes: int = WRITES) -> dict[str, float]:
    """Microseconds of each operation after `writes` random WRITE_SIZE writes (per write for
    "mark"); the same writes (same seed) whatever `size`."""
    rng = random.Random(1234)
    offsets = [rng.randrange(0, size - WRITE_SIZE) // 512 * 512 for _ in range(writes)]
    bitmaps = DirtyBitmapSet()
    bm = bitmaps.create("b0", granularity, size)

    def mark() -> None:
        for offset in offsets:
            bitmaps.mark_dirty(offset, WRITE_SIZE)

    out = {"mark (per write)": timed(mark) / writes}
    out["count"] = timed(bm.count, repeat=5)
    out["iterate extents"] = timed(lambda: sum(1 for _ in bm.dirty_extents()), repeat=3)
    other = DirtyBitmap("b1", granularity, size)
    other.set_dirty(size // 2, 1 << 20)
    out["merge (same gran)"] = timed(lambda: other.merge_from(bm), repeat=3)
    coarse = DirtyBitmap("c", granularity * 4, size)
    out["merge (4x coarser)"] = timed(lambda: coarse.merge_from(bm), repeat=1)
    out["save_bits (txn backup)"] = timed(bm.save_bits, repeat=5)
    out["to_bytes bytes"] = float(len(bm.to_bytes()))
    out["clear"] = timed(other.clear, repeat=3)
    return out


def main() -> None:
    for granularity in (512, 65536):
        results = {label: bench(size, granularity) for label, size in (("1 GiB", GiB), ("1 TiB", TiB))}
        print(f"granularity {granularity}, {WRITES} random {WRITE_SIZE // 1024} KiB writes "
              "(times in microseconds)")
        print(f"  {'operation':<24}{'1 GiB':>14}{'1 TiB':>14}")
        for op in results["1 GiB"]:
            print(f"  {op:<24}{results['1 GiB'][op]:>14.1f}{results['1 TiB'][op]:>14.1f}")
        print()


if __name__ == "__main__":
    main()
