#!/usr/bin/env python3
"""Throughput of the emulator's qcow2 codec against real qemu-io on the same workloads.

Workloads on a fresh 64 KiB-cluster qcow2 image: 64 KiB sequential writes then reads, and 4 KiB
random (seeded) writes then reads.  The emulator runs in-process (Qcow2Image over FileStorage);
QEMU runs `qemu-io -t writeback` with one -c command per request, timed as a whole process minus
the time of an empty qemu-io start (so process start-up does not count).  Prints MB/s side by side.

    python bench/bench_image_io.py [--size-mib 64] [--random-ops 2000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulator.block.file import FileStorage
from emulator.block.qcow2 import Qcow2Image

KiB, MiB = 1 << 10, 1 << 20


def workloads(size: int, random_ops: int) -> dict[str, tuple[str, list[int], int]]:
    """name -> (kind, offsets, request size)."""
    rng = random.Random(1234)
    seq = list(range(0, size, 64 * KiB))
    rnd = [rng.randrange(0, size // (4 * KiB)) * 4 * KiB for _ in range(random_ops)]
    return {
        "seq write 64k": ("write", seq, 64 * KiB),
        "seq read 64k": ("read", seq, 64 * KiB),
        "rand write 4k": ("write", rnd, 4 * KiB),
        "rand read 4k": ("read", rnd, 4 * KiB),
    }


def bench_emulator(path: Path, size: int, loads: dict[str, tuple[str, list[int], int]]) -> dict[str, float]:
    f = FileStorage(str(path), create=True)
    Qcow2Image.create(f, size)
    img = Qcow2Image.open(f)
    results = {}
    for name, (kind, offsets, n) in loads.items():
        if name == "rand write 4k":  # random writes go to a fresh image, as on the QEMU side
            f.close()
            f = FileStorage(str(path), create=True)
            Qcow2Image.create(f, size)
            img = Qcow2Image.open(f)
        data = b"\xcd" * n
        t0 = time.perf_counter()
        if kind == "write":
            for off in offsets:
                img.pwrite(off, data)
            img.flush()
        else:
            for off in offsets:
                img.pread(off, n)
        results[name] = len(offsets) * n / (time.perf_counter() - t0) / 1e6
    f.close()
    return results


def _qemu_io(path: Path, cmds: list[str]) -> float:
    # -t writeback: qemu-io defaults to writethrough (a flush after every write); the emulator
    # flushes once at the end, so make QEMU do the same.
    args = ["qemu-io", "-f", "qcow2", "-t", "writeback"]
    for c in cmds:
        args += ["-c", c]
    t0 = time.perf_counter()
    subprocess.run([*args, str(path)], check=True, stdout=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - t0


def bench_qemu(path: Path, size: int, loads: dict[str, tuple[str, list[int], int]]) -> dict[str, float]:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True)
    startup = min(_qemu_io(path, ["length"]) for _ in range(3))
    results = {}
    for name, (kind, offsets, n) in loads.items():
        if name == "rand write 4k":
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True)
        cmds = [f"{kind} -q {off} {n}" for off in offsets]
        if kind == "write":
            cmds.append("flush")
        elapsed = max(_qemu_io(path, cmds) - startup, 1e-6)
        results[name] = len(offsets) * n / elapsed / 1e6
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--random-ops", type=int, default=2000)
    ap.add_argument("--dir", default=None, help="where to put the images (default: a temp dir)")
    opts = ap.parse_args()
    size = opts.size_mib * MiB
    loads = workloads(size, opts.random_ops)
    workdir = Path(opts.dir or tempfile.mkdtemp(prefix="btxbench"))
    try:
        emu = bench_emulator(workdir / "emu.qcow2", size, loads)
        have_qemu = shutil.which("qemu-io") is not None and shutil.which("qemu-img") is not None
        real = bench_qemu(workdir / "qemu.qcow2", size, loads) if have_qemu else {}
    finally:
        if opts.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'workload':<16}{'emulator MB/s':>15}{'qemu-io MB/s':>15}{'emu/qemu':>10}")
    for name in loads:
        q = real.get(name)
        ratio = f"{emu[name] / q:.2f}" if q else "-"
        print(f"{name:<16}{emu[name]:>15.1f}{(f'{q:.1f}' if q else 'n/a'):>15}{ratio:>10}")
    if not real:
        print("(qemu-io not found: apt-get install qemu-utils)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
