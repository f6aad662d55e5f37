"""Lengths in whole sectors, and what hangs off them (issue 13, divergences measured against real
QEMU 7.2.22 and 10.0.2; the conformance cases test_divergence_raw_unaligned_size,
test_divergence_cancelled_sync_none_target and test_divergence_resize_backup_source compare the
same behaviour with real QEMU's goldens).

- bdrv_getlength is bs->total_sectors * 512: a node over a 1000-byte file is 1024 bytes long,
  the tail past the end of the file is a trailing hole that reads as zeros, and a write into it
  grows the file;
- a backup task counts whole clusters in the job's progress, also past the end of the image;
- closing a qcow2 node unblocks its backing node (bdrv_backing_detach);
- shrinking a qcow2 image cuts the file after its last referenced cluster.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import qmp_cmd as _cmd

from emulator.block.drivers import FileNode, NullCoNode, RawNode
from emulator.block.file import FileStorage
from emulator.block.image import create_image, open_image_chain
from emulator.block.node import BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_ZERO, sectors_to_bytes
from emulator.block.qcow2 import Qcow2Image
from emulator.commands import new_machine
from emulator.error import QemuError

MiB = 1 << 20


@pytest.mark.parametrize(("size", "rounded"), [(0, 0), (1, 512), (511, 512), (512, 512),
                                               (1000, 1024), (1221, 1536), (4 * MiB, 4 * MiB)])
def test_sectors_to_bytes(size: int, rounded: int) -> None:
    assert sectors_to_bytes(size) == rounded


def test_file_and_raw_nodes_over_a_partial_last_sector(tmp_path: Path) -> None:
    path = tmp_path / "r.raw"
    path.write_bytes(b"\x5a" * 1000)
    file = FileNode("f", str(path))
    raw = RawNode("r", file)
    try:
        assert file.length() == raw.length() == 1024
        assert raw.pread(992, 32) == b"\x5a" * 8 + bytes(24)
        # Data up to the end of the file, then file-posix's trailing hole up to the node's end.
        assert raw.block_status(0, 1024) == (1000, BLOCK_DATA | BLOCK_ALLOCATED)
        assert raw.block_status(1000, 24) == (24, BLOCK_ZERO | BLOCK_ALLOCATED)
        raw.pwrite(1000, b"\x11" * 24)
        assert os.path.getsize(path) == 1024
        assert raw.length() == 1024
    finally:
        raw.close()
        file.close()


def test_null_co_size_is_whole_sectors() -> None:
    assert NullCoNode("n", 1000).length() == 1024


def test_offline_raw_image_is_whole_sectors(tmp_path: Path) -> None:
    path = tmp_path / "r.raw"
    path.write_bytes(b"\xa5" * 1221)
    image = open_image_chain(str(path), "raw", read_only=False)
    try:
        assert image.length() == 1536
        assert image.pread(1216, 320) == b"\xa5" * 5 + bytes(315)
        with pytest.raises(OSError) as raised:
            image.pwrite(1536, b"x")
        assert raised.value.errno == errno.EIO
        image.pwrite(1530, b"\x11" * 6)  # inside the last sector: the file grows to 1536
    finally:
        image.close()
    assert os.path.getsize(path) == 1536


def test_trailing_hole_status_of_a_host_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    storage = FileStorage(str(path))
    try:
        assert storage.block_status(100, 412) == (412, BLOCK_ZERO | BLOCK_ALLOCATED)
        assert storage.block_status(100, 0) == (0, 0)
    finally:
        storage.close()


def _run_machine(body: Any) -> None:
    """Run `body(machine, events)` with the machine's job loop on a fresh event loop."""
    async def main() -> None:
        machine = new_machine(stdout=io.StringIO())
        machine.jobs.loop = asyncio.get_running_loop()
        events: list[tuple[str, dict[str, Any]]] = []
        machine.subscribe(lambda name, data, _stamp: events.append((name, data or {})))
        try:
            await body(machine, events)
        finally:
            machine.close()

    asyncio.run(asyncio.wait_for(main(), 30))


async def _settle(machine: Any) -> None:
    await machine.jobs.wait_until(lambda: len(machine.jobs) == 0, timeout=10)


def test_backup_of_a_partial_cluster_counts_the_whole_cluster(tmp_path: Path) -> None:
    """block_copy_task_create aligns a task up to whole clusters and progress_work_done adds the
    task's bytes: a 1000-byte source (1024 as a node) completes with len == offset == 65536,
    and the new target is 1024 bytes long."""
    source = tmp_path / "s.raw"
    source.write_bytes(b"\x5a" * 1000)
    target = tmp_path / "t.raw"

    async def body(machine: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
        machine.block.drive_add({"if": "none", "id": "drive0", "file": str(source),
                                 "format": "raw"})
        _cmd(machine, "drive-backup", device="drive0", sync="full", format="raw",
             target=str(target))
        await _settle(machine)
        completed = [data for name, data in events if name == "BLOCK_JOB_COMPLETED"]
        assert len(completed) == 1 and "error" not in completed[0]
        assert completed[0]["len"] == completed[0]["offset"] == 65536

    _run_machine(body)
    assert target.read_bytes() == b"\x5a" * 1000 + bytes(24)


def test_cancelled_sync_none_backup_frees_its_source(tmp_path: Path) -> None:
    """The sync=none target uses the source as its backing file (which blocks drive-del on
    it); once the cancelled job has closed the target, blockdev-del of the source works."""
    source = tmp_path / "s.qcow2"
    create_image(str(source), "qcow2", 4 * MiB)

    async def body(machine: Any, _events: list[tuple[str, dict[str, Any]]]) -> None:
        machine.block.blockdev_add({"driver": "qcow2", "node-name": "src",
                                    "file": {"driver": "file", "filename": str(source)}})
        _cmd(machine, "drive-backup", device="src", sync="none", format="qcow2",
             target=str(tmp_path / "t.qcow2"), **{"job-id": "j1"})
        with pytest.raises(QemuError, match="is busy: node is used as backing hd of"):
            _cmd(machine, "blockdev-del", node_name="src")
        _cmd(machine, "block-job-cancel", device="j1")
        await _settle(machine)
        assert machine.block.lookup_bs("src").op_blockers.get("drive-del") == []
        _cmd(machine, "blockdev-del", node_name="src")
        assert machine.block.nodes == []

    _run_machine(body)


def test_qcow2_shrink_cuts_the_file_after_the_last_used_cluster(tmp_path: Path) -> None:
    """Measured with real QEMU 7.2.22 and 10.0.2 (block_resize of an 8 MiB image with data at
    0, 1M, 3M and 7M): 7M and 2M leave a 1572864-byte file, 64k a 458752-byte one."""
    path = tmp_path / "q.qcow2"
    storage = FileStorage(str(path), create=True)
    Qcow2Image.create(storage, 8 * MiB)
    image = Qcow2Image.open(storage)
    try:
        for offset, length in ((3 * MiB, 64 * 1024), (0, 64 * 1024), (7 * MiB, MiB),
                               (MiB, 64 * 1024)):
            image.pwrite(offset, b"\x11" * length)
        sizes = []
        for size in (7 * MiB, 3 * MiB + 512, 2 * MiB, 64 * 1024):
            image.truncate(size)
            sizes.append(storage.length())
        assert sizes == [1572864, 1572864, 1572864, 458752]
        result = image.check()
        assert (result["corruptions"], result["leaks"], result["check-errors"]) == (0, 0, 0)
        image.pwrite(0, b"\x22" * 65536)  # allocation still works after the cut
        assert image.pread(0, 65536) == b"\x22" * 65536
    finally:
        image.close()
        storage.close()
