"""Full-backup throughput of a 1 GiB qcow2 image (half allocated): emulator vs real QEMU.

Both targets are driven the same way over QMP with qemu.qmp: `-drive` the image, `drive-backup
sync=full` to a new qcow2, wait for BLOCK_JOB_COMPLETED.  Prints MB/s of each and the ratio,
measured side by side in one run.  Usage: python bench/bench_backup.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qemu.qmp import EventListener, QMPClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.block.image import create_image, open_image_chain  # noqa: E402
from emulator.launcher import EmbeddedEmulator  # noqa: E402

CHUNK = 1 << 20


def make_image(path: Path, size: int) -> None:
    """Half allocated: every other MiB written with a pattern."""
    create_image(str(path), "qcow2", size)
    image = open_image_chain(str(path), "qcow2", read_only=False)
    try:
        for offset in range(0, size, 2 * CHUNK):
            image.pwrite(offset, bytes([0x40 + (offset // CHUNK) % 64]) * CHUNK)
        image.flush()
    finally:
        image.close()


async def backup_over_qmp(sock: Path, target: Path) -> float:
    for _ in range(500):
        client = QMPClient("bench")
        if sock.exists():
            try:
                await client.connect(str(sock))
                break
            except Exception:  # noqa: BLE001 - qemu.qmp's ConnectError while the server starts
                pass
        await asyncio.sleep(0.01)
    else:
        raise RuntimeError(f"cannot connect to {sock}")
    try:
        listener = EventListener()
        with client.listen(listener):
            start = time.perf_counter()
            await client.execute("drive-backup", {"device": "drive0", "sync": "full", "format": "qcow2",
                                                   "target": str(target)})
            async for event in listener:
                if event["event"] == "BLOCK_JOB_COMPLETED":
                    assert "error" not in event["data"], event
                    return time.perf_counter() - start
        raise RuntimeError("no BLOCK_JOB_COMPLETED")
    finally:
        try:
            await client.execute("quit")
        except Exception:  # noqa: BLE001 - the server may close first
            pass
        try:
            await client.disconnect()
        except EOFError:  # the server closed after quit, as QEMU does
            pass


def qemu_argv(sock: Path, image: Path) -> list[str]:
    return ["-M", "none", "-nodefaults", "-display", "none", "-qmp", f"unix:{sock},server=on,wait=off",
            "-drive", f"if=none,id=drive0,file={image},format=qcow2"]


async def run_emulator(work: Path, image: Path, index: int) -> float:
    sock = work / f"emu{index}.sock"
    emulator = EmbeddedEmulator(qemu_argv(sock, image), stdout=open(os.devnull, "w"))
    emulator.start()
    try:
        return await asyncio.wait_for(backup_over_qmp(sock, work / f"emu{index}.qcow2"), 600)
    finally:
        emulator.stop()


async def run_qemu(qemu: str, work: Path, image: Path, index: int) -> float:
    sock = work / f"qemu{index}.sock"
    proc = subprocess.Popen([qemu, *qemu_argv(sock, image)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        return await asyncio.wait_for(backup_over_qmp(sock, work / f"qemu{index}.qcow2"), 600)
    finally:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * CHUNK
    qemu = shutil.which("qemu-system-x86_64")
    work = Path(tempfile.mkdtemp(prefix="btxbench"))
    try:
        image = work / "src.qcow2"
        make_image(image, size)
        results: dict[str, list[float]] = {"emulator": [], "qemu": []}
        for index in range(args.runs):
            results["emulator"].append(asyncio.run(run_emulator(work, image, index)))
            if qemu:
                results["qemu"].append(asyncio.run(run_qemu(qemu, work, image, index)))
        mib = size / CHUNK
        print(f"full backup of a {args.size_mib} MiB qcow2 (half allocated), best of {args.runs}")
        best = {name: min(times) for name, times in results.items() if times}
        for name, seconds in best.items():
            print(f"  {name:9s} {seconds:8.3f} s  {mib / seconds:9.1f} MiB/s")
        if "qemu" in best:
            print(f"  ratio emulator/qemu throughput: {best['qemu'] / best['emulator']:.2f}")
        else:
            print("  qemu: not found (apt-get install qemu-system-x86 qemu-utils)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
