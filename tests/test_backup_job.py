"""The backup job over real qcow2 files: bitmap lifecycle, copy-before-write, grouped transactions.

These drive the command handlers directly on a Machine (no QMP wire) inside an asyncio loop, and
check images with the emulator's own qcow2 reader; the conformance suite checks the same
behaviours over QMP against real QEMU's goldens.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import qmp_cmd

from emulator.block.image import create_image, open_image_chain
from emulator.commands import new_machine
from emulator.error import QemuError
from emulator.machine import Machine

MiB = 1 << 20
SET_A = [("0xab", "0", "512"), ("0xfe", "16M", "256k"), ("0x64", "32736k", "64k")]


class Harness:
    """A Machine with its events recorded per job."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stdout = io.StringIO()
        self.machine: Machine = new_machine(stdout=self.stdout)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.machine.subscribe(lambda name, data, _stamp: self.events.append((name, data or {})))

    def cmd(self, command: str, /, **args: Any) -> Any:
        """Run a command through the QMP dispatcher (argument names in Python spelling)."""
        return qmp_cmd(self.machine, command, **args)

    def drive(self, name: str, size: int = 64 * MiB, blkdebug: dict[str, Any] | None = None) -> Path:
        path = self.tmp / f"{name}.qcow2"
        create_image(str(path), "qcow2", size)
        if blkdebug is None:
            self.machine.block.drive_add({"if": "none", "id": name, "file": str(path), "format": "qcow2",
                                          "node-name": f"node-{name}"})
        else:
            self.machine.block.blockdev_add({
                "driver": "qcow2", "node-name": name,
                "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": str(path)},
                         **blkdebug}})
        return path

    def write(self, device: str, pattern: str, offset: str, length: str) -> None:
        out = self.cmd("human-monitor-command",
                       command_line=f'qemu-io {device} "write -P {pattern} {offset} {length}"')
        assert out == ""

    def count(self, node: str, bitmap: str) -> int:
        bm = self.machine.block.lookup_bs(node).dirty_bitmaps.find(bitmap)
        assert bm is not None
        return bm.count()

    def statuses(self, job_id: str) -> list[str]:
        out = []
        for name, data in self.events:
            if name == "JOB_STATUS_CHANGE" and data["id"] == job_id:
                out.append(data["status"])
            elif name.startswith("BLOCK_JOB_") and data.get("device", data.get("id")) == job_id:
                out.append(name)
        return out

    async def settle(self) -> None:
        await self.machine.jobs.wait_until(lambda: len(self.machine.jobs) == 0, timeout=10)


def run(tmp_path: Path, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        harness = Harness(tmp_path)
        harness.machine.jobs.loop = asyncio.get_running_loop()
        try:
            await body(harness)
        finally:
            harness.machine.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def read(path: Path, offset: int, length: int) -> bytes:
    image = open_image_chain(str(path), "qcow2")
    try:
        return image.pread(offset, length)
    finally:
        image.close()


def test_incremental_success_clears_the_bitmap_and_copies_only_dirty_clusters(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.drive("drive0")
        h.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0")
        for write in SET_A:
            h.write("drive0", *write)
        assert h.count("drive0", "bitmap0") == 458752
        h.cmd("drive-backup", device="drive0", sync="incremental", bitmap="bitmap0", format="qcow2",
              target=str(tmp_path / "inc0.qcow2"))
        await h.settle()
        assert h.statuses("drive0") == ["created", "running", "paused", "running", "waiting",
                                        "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"]
        completed = next(d for n, d in h.events if n == "BLOCK_JOB_COMPLETED")
        assert completed["len"] == completed["offset"] == 458752
        assert h.count("drive0", "bitmap0") == 0
        assert read(tmp_path / "inc0.qcow2", 16 * MiB, 4096) == b"\xfe" * 4096

    run(tmp_path, body)


def test_cancelled_incremental_keeps_bitmap_and_collects_new_writes(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.drive("drive0")
        h.cmd("block-dirty-bitmap-add", node="node-drive0", name="bitmap0")
        for write in SET_A:
            h.write("drive0", *write)
        h.cmd("drive-backup", device="drive0", sync="incremental", bitmap="bitmap0", format="qcow2",
              target=str(tmp_path / "inc0.qcow2"), speed=1)
        # While the job runs the bitmap is frozen (busy) and new writes go to its successor.
        with pytest.raises(QemuError, match="currently in use by another operation"):
            h.cmd("block-dirty-bitmap-clear", node="node-drive0", name="bitmap0")
        h.write("drive0", "0x11", "8M", "64k")
        h.cmd("block-job-cancel", device="drive0")
        await h.settle()
        assert h.statuses("drive0")[-4:] == ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
        assert h.count("node-drive0", "bitmap0") == 458752 + 65536

    run(tmp_path, body)


def test_copy_before_write_keeps_the_point_in_time(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.drive("drive0", size=4 * MiB)
        h.write("drive0", "0x41", "0", "4M")
        h.cmd("drive-backup", device="drive0", sync="full", format="qcow2",
              target=str(tmp_path / "full.qcow2"), speed=1)
        h.write("drive0", "0x42", "1M", "64k")   # not yet copied: old data goes first
        h.write("drive0", "0x43", "3M", "512")
        h.cmd("block-job-set-speed", device="drive0", speed=0)
        await h.settle()
        assert read(tmp_path / "full.qcow2", 1 * MiB, 65536) == b"\x41" * 65536
        assert read(tmp_path / "full.qcow2", 3 * MiB, 512) == b"\x41" * 512
        assert read(tmp_path / "drive0.qcow2", 1 * MiB, 512) == b"\x42" * 512

    run(tmp_path, body)


@pytest.mark.parametrize("mode,success_count", [("on-success", 0), ("never", 458752), ("always", 0)])
def test_bitmap_modes_after_success(tmp_path: Path, mode: str, success_count: int) -> None:
    async def body(h: Harness) -> None:
        h.drive("drive0")
        h.cmd("block-dirty-bitmap-add", node="node-drive0", name="bitmap0")
        for write in SET_A:
            h.write("drive0", *write)
        h.cmd("drive-backup", device="drive0", sync="bitmap", bitmap="bitmap0", bitmap_mode=mode,
              format="qcow2", target=str(tmp_path / "ok.qcow2"))
        await h.settle()
        assert h.count("node-drive0", "bitmap0") == success_count

    run(tmp_path, body)


BLKDEBUG_124 = {"set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}],
                "inject-error": [{"event": "read_aio", "errno": 5, "state": 2, "immediately": False,
                                  "once": True}]}


def test_failed_incremental_keeps_bitmap_and_retry_backs_up_everything(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.drive("drive1", blkdebug=BLKDEBUG_124)
        h.cmd("block-dirty-bitmap-add", node="drive1", name="bitmap0")
        for write in SET_A:
            h.write("drive1", *write)
        h.cmd("human-monitor-command", command_line='qemu-io drive1 "flush"')
        h.cmd("drive-backup", job_id="drive1", device="drive1", sync="incremental",
              bitmap="bitmap0", format="qcow2", target=str(tmp_path / "inc0.qcow2"))
        await h.settle()
        assert ("BLOCK_JOB_ERROR", {"device": "drive1", "operation": "read", "action": "report"}) \
            in h.events
        failed = next(d for n, d in h.events if n == "BLOCK_JOB_COMPLETED")
        assert failed["error"] == "Input/output error"
        assert h.count("drive1", "bitmap0") == 458752
        h.events.clear()
        h.cmd("drive-backup", job_id="drive1", device="drive1", sync="incremental",
              bitmap="bitmap0", format="qcow2", target=str(tmp_path / "inc1.qcow2"))
        await h.settle()
        done = next(d for n, d in h.events if n == "BLOCK_JOB_COMPLETED")
        assert "error" not in done and done["len"] == 458752
        assert h.count("drive1", "bitmap0") == 0
        assert read(tmp_path / "inc1.qcow2", 32736 * 1024, 65536) == b"\x64" * 65536

    run(tmp_path, body)


def grouped(h: Harness, tmp: Path, tag: str, **extra: Any) -> None:
    h.cmd("transaction", actions=[
        {"type": "drive-backup", "data": {"job-id": dev, "device": dev, "sync": "incremental",
                                          "bitmap": "bitmap0", "format": "qcow2",
                                          "target": str(tmp / f"{dev}.{tag}.qcow2"), **extra}}
        for dev in ("drive0", "drive1")], properties={"completion-mode": "grouped"})


def test_grouped_failure_keeps_every_bitmap_and_the_retry_succeeds(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.drive("drive0")
        h.drive("drive1", blkdebug=BLKDEBUG_124)
        for dev in ("drive0", "drive1"):
            h.cmd("block-dirty-bitmap-add", node=dev, name="bitmap0")
            for write in SET_A:
                h.write(dev, *write)
        h.cmd("human-monitor-command", command_line='qemu-io drive1 "flush"')
        grouped(h, tmp_path, "inc0")
        await h.settle()
        assert "BLOCK_JOB_CANCELLED" in h.statuses("drive0")
        assert "BLOCK_JOB_COMPLETED" not in h.statuses("drive0")
        failed = next(d for n, d in h.events if n == "BLOCK_JOB_COMPLETED")
        assert failed["device"] == "drive1" and failed["error"] == "Input/output error"
        assert h.count("drive0", "bitmap0") == h.count("drive1", "bitmap0") == 458752
        h.events.clear()
        grouped(h, tmp_path, "inc1")
        await h.settle()
        assert [d["device"] for n, d in h.events if n == "BLOCK_JOB_COMPLETED"] == ["drive1", "drive0"]
        assert h.count("drive0", "bitmap0") == h.count("drive1", "bitmap0") == 0

    run(tmp_path, body)


def test_user_cancel_in_a_group_cancels_the_partner(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        for dev in ("drive0", "drive1"):
            h.drive(dev)
            h.cmd("block-dirty-bitmap-add", node=dev, name="bitmap0")
            for write in SET_A:
                h.write(dev, *write)
        grouped(h, tmp_path, "inc0", speed=1)
        h.cmd("block-job-cancel", device="drive0")
        await h.settle()
        for dev in ("drive0", "drive1"):
            assert h.statuses(dev)[-4:] == ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
            assert h.count(dev, "bitmap0") == 458752

    run(tmp_path, body)


def test_failed_prepare_rolls_back_every_action(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.drive("drive0")
        h.drive("drive1")
        h.cmd("block-dirty-bitmap-add", node="drive0", name="keep")
        h.write("drive0", "0x11", "0", "64k")
        with pytest.raises(QemuError, match="Bitmap 'nosuch' could not be found"):
            h.cmd("transaction", actions=[
                {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "new"}},
                {"type": "block-dirty-bitmap-clear", "data": {"node": "drive0", "name": "keep"}},
                {"type": "drive-backup", "data": {"job-id": "j0", "device": "drive0", "sync": "full",
                                                  "format": "qcow2",
                                                  "target": str(tmp_path / "full.qcow2")}},
                {"type": "drive-backup", "data": {"job-id": "j1", "device": "drive1",
                                                  "sync": "incremental", "bitmap": "nosuch",
                                                  "format": "qcow2",
                                                  "target": str(tmp_path / "inc.qcow2")}}])
        await h.settle()
        assert h.statuses("j0") == ["created", "aborting", "concluded", "null"]
        bitmaps = h.machine.block.lookup_bs("drive0").dirty_bitmaps
        assert bitmaps.find("new") is None
        assert h.count("drive0", "keep") == 65536

    run(tmp_path, body)
