"""Backup throughput: emulator vs real QEMU, driven the same way over QMP, side by side in one run.

Both targets get ``-drive`` of a qcow2 image and run ``drive-backup`` to a new qcow2 (format
qcow2, mode absolute-paths); the time is from the command to BLOCK_JOB_COMPLETED.

- full: ``sync=full`` of an image with every other MiB written (half allocated);
- incremental: a dirty bitmap is added, 1 % of the image is written over HMP ``qemu-io``
  (64 KiB writes spread evenly), then ``sync=incremental`` through that bitmap is timed;
- sparse: ``sync=full`` of images from 1 GiB up to 64 GiB holding the same 16 MiB of data, to
  show that holes cost (almost) nothing.

Throughput is the image's virtual size over the time (what the issue's table uses), and the
bytes actually copied are given too.  Usage:
    python bench/bench_backup.py [--size-mib 1024] [--runs 3] [--mode full|incremental|sparse]
        [--sparse-gib 1,4,16,64] [--qemu BIN]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance.targets import QemuBinaries
from emulator.block.image import create_image, open_image_chain
from emulator.launcher import EmbeddedEmulator

MiB = 1 << 20
GiB = 1 << 30
#: Data written into each sparse image, whatever its size.
SPARSE_DATA = 16 * MiB
#: Size of one write of the incremental bench's dirtying.
DIRTY_WRITE = 64 * 1024
#: Bound of one backup (connect, set-up and copy).
BACKUP_TIMEOUT = 600.0


def make_image(path: Path, size: int, *, every: int = 2 * MiB, chunk: int = MiB) -> int:
    """A qcow2 of `size` with `chunk` bytes of a pattern at the start of every `every` bytes;
    returns the bytes written."""
    create_image(str(path), "qcow2", size)
    image = open_image_chain(str(path), "qcow2", read_only=False)
    written = 0
    try:
        for offset in range(0, size, every):
            length = min(chunk, size - offset)
            image.pwrite(offset, bytes([0x40 + (offset // MiB) % 64]) * length)
            written += length
        image.flush()
    finally:
        image.close()
    return written


def make_sparse_image(path: Path, size: int, data: int = SPARSE_DATA) -> int:
    """A qcow2 of `size` holding `data` bytes in 1 MiB pieces spread evenly."""
    pieces = max(data // MiB, 1)
    return make_image(path, size, every=max(size // pieces // MiB * MiB, MiB), chunk=MiB)


def dirty_offsets(size: int, fraction: float) -> list[int]:
    """Offsets of DIRTY_WRITE-byte writes that dirty `fraction` of an image of `size`."""
    count = max(int(size * fraction) // DIRTY_WRITE, 1)
    step = size // count // DIRTY_WRITE * DIRTY_WRITE
    return [index * step for index in range(count)]


@dataclass(frozen=True)
class Backup:
    """What one backup run measured."""

    seconds: float
    size: int


async def _connect(sock: Path) -> QMPClient:
    deadline = time.monotonic() + 30
    while True:
        client = QMPClient("bench")
        if sock.exists():
            with contextlib.suppress(Exception):  # qemu.qmp's ConnectError while the server starts
                await client.connect(str(sock))
                return client
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot connect to {sock}")
        await asyncio.sleep(0.01)


async def _backup_over_qmp(sock: Path, target: Path, mode: str, size: int, dirty_fraction: float) -> float:
    client = await _connect(sock)
    try:
        arguments: dict[str, Any] = {"device": "drive0", "sync": "full", "format": "qcow2",
                                     "target": str(target)}
        if mode == "incremental":
            await client.execute("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
            for offset in dirty_offsets(size, dirty_fraction):
                await client.execute("human-monitor-command", {
                    "command-line": f'qemu-io drive0 "write -P 0x5a {offset} {DIRTY_WRITE}"'})
            arguments.update(sync="incremental", bitmap="b0")
        listener = EventListener()
        with client.listen(listener):
            start = time.perf_counter()
            await client.execute("drive-backup", arguments)
            async for event in listener:
                if event["event"] == "BLOCK_JOB_COMPLETED":
                    data: dict[str, Any] = dict(event["data"])  # type: ignore[call-overload]
                    if "error" in data:
                        raise RuntimeError(f"the backup failed: {data}")
                    return time.perf_counter() - start
        raise RuntimeError("no BLOCK_JOB_COMPLETED")
    finally:
        with contextlib.suppress(Exception):  # the server may close first
            await client.execute("quit")
        try:
            await client.disconnect()
        except EOFError:  # the server closed after quit, as QEMU does
            pass


def _machine_argv(sock: Path, image: Path) -> list[str]:
    return ["-M", "none", "-nodefaults", "-display", "none", "-qmp", f"unix:{sock},server=on,wait=off",
            "-drive", f"if=none,id=drive0,file={image},format=qcow2"]


_runs = 0


def backup(side: str, qemu: QemuBinaries | None, work: Path, image: Path, size: int, *,
           mode: str = "full", dirty_fraction: float = 0.01) -> Backup:
    """One backup of `image` (virtual `size`) on `side` ("emulator" or "qemu"); the target is
    removed afterwards."""
    global _runs
    _runs += 1
    sock, target = work / f"{side}{_runs}.sock", work / f"{side}{_runs}.qcow2"
    argv = _machine_argv(sock, image)
    # Dirty pages left by earlier runs (or anything else on the machine) are written back now,
    # not while this backup writes: the kernel throttles a writer when too much is dirty.
    os.sync()
    try:
        if side == "emulator":
            emulator = EmbeddedEmulator(argv, stdout=open(os.devnull, "w"))  # noqa: SIM115
            emulator.start()
            try:
                seconds = asyncio.run(asyncio.wait_for(
                    _backup_over_qmp(sock, target, mode, size, dirty_fraction), BACKUP_TIMEOUT))
            finally:
                emulator.stop()
        else:
            assert qemu is not None and qemu.system is not None
            proc = subprocess.Popen([str(qemu.system), *argv], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=qemu.env())
            try:
                seconds = asyncio.run(asyncio.wait_for(
                    _backup_over_qmp(sock, target, mode, size, dirty_fraction), BACKUP_TIMEOUT))
            finally:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        return Backup(seconds, size)
    finally:
        target.unlink(missing_ok=True)


def find_qemu(path: str | None) -> QemuBinaries | None:
    """The real QEMU to compare with: `path`, else qemu-system-x86_64 on PATH (None: not found)."""
    binaries = QemuBinaries.named(path) if path else QemuBinaries.find()
    return binaries if binaries.system and binaries.major_minor else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=["full", "incremental", "sparse"], default="full")
    parser.add_argument("--dirty", type=float, default=0.01, help="fraction dirtied (incremental)")
    parser.add_argument("--sparse-gib", default="1,4,16,64", help="image sizes of the sparse mode")
    parser.add_argument("--qemu", default=None, help="real qemu-system-x86_64 (default: PATH)")
    args = parser.parse_args()
    qemu = find_qemu(args.qemu)
    sides = ["emulator", "qemu"] if qemu else ["emulator"]
    work = Path(tempfile.mkdtemp(prefix="btxbench"))
    try:
        if args.mode == "sparse":
            print(f"full backup of sparse qcow2 images holding {SPARSE_DATA // MiB} MiB, median of {args.runs}")
            for gib in (int(text) for text in args.sparse_gib.split(",")):
                image = work / f"sparse{gib}.qcow2"
                make_sparse_image(image, gib * GiB)
                times = {side: statistics.median(backup(side, qemu, work, image, gib * GiB).seconds
                                                 for _ in range(args.runs)) for side in sides}
                print(f"  {gib:3d} GiB  " + "  ".join(f"{side} {seconds:7.3f} s" for side, seconds in times.items()))
                image.unlink()
            return 0
        size = args.size_mib * MiB
        image = work / "src.qcow2"
        make_image(image, size)
        results: dict[str, list[Backup]] = {side: [] for side in sides}
        for _ in range(args.runs):
            for side in sides:
                results[side].append(backup(side, qemu, work, image, size, mode=args.mode,
                                            dirty_fraction=args.dirty))
        what = "full backup" if args.mode == "full" else f"incremental backup ({args.dirty:.0%} dirty)"
        print(f"{what} of a {args.size_mib} MiB qcow2 (half allocated), median of {args.runs}"
              + (f"; QEMU {qemu.version}" if qemu else ""))
        medians = {side: statistics.median(run.seconds for run in runs) for side, runs in results.items()}
        for side, seconds in medians.items():
            print(f"  {side:9s} {seconds:8.3f} s  {size / MiB / seconds:9.1f} MiB/s")
        if "qemu" in medians:
            print(f"  ratio emulator/qemu throughput: {medians['qemu'] / medians['emulator']:.2f}")
        else:
            print("  qemu: not found (apt-get install qemu-system-x86 qemu-utils)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
