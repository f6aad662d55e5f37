"""Backup with compress=true: compressed clusters on a qcow2 target that real qemu-img checks clean
and compares equal; refused (with QEMU 7.2's and 10.0's text) where the target cannot compress."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import qemu_img
from test_backup_job import Harness, MiB, run

from emulator.block.file import FileStorage
from emulator.block.image import create_image
from emulator.block.qcow2 import Qcow2Image
from emulator.error import QemuError


def compressed_clusters(path: Path) -> int:
    storage = FileStorage(str(path), read_only=True)
    img = Qcow2Image.open(storage, read_only=True)
    try:
        return int(img.check()["compressed-clusters"])
    finally:
        img.close()
        storage.close()


@pytest.mark.parametrize("command", ["drive-backup", "blockdev-backup"])
def test_compressed_full_backup(tmp_path: Path, command: str) -> None:
    target = tmp_path / "target.qcow2"

    async def body(h: Harness) -> None:
        source = h.drive("drive0")
        h.write("drive0", "0x41", "0", "4M")
        h.write("drive0", "0x77", "33M", "3M")
        h.write("drive0", "0", "8M", "1M")
        if command == "drive-backup":
            h.cmd("drive-backup", device="drive0", sync="full", compress=True, format="qcow2",
                  target=str(target))
        else:
            create_image(str(target), "qcow2", 64 * MiB)
            h.cmd("blockdev-add", driver="qcow2", node_name="tgt",
                  file={"driver": "file", "filename": str(target)})
            h.cmd("blockdev-backup", device="drive0", target="tgt", sync="full", compress=True)
        await h.settle()
        assert "BLOCK_JOB_COMPLETED" in h.statuses("drive0")
        if command == "blockdev-backup":
            h.cmd("blockdev-del", node_name="tgt")
        h.machine.close()
        assert compressed_clusters(target) == 7 * 16  # 4 MiB + 3 MiB of 64 KiB clusters
        check = qemu_img("check", str(target))
        assert check.returncode == 0, check.stdout
        compare = qemu_img("compare", str(target), str(source))
        assert compare.returncode == 0, compare.stdout

    run(tmp_path, body)


def test_compress_refused_where_qemu_refuses(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.drive("drive0")
        h.cmd("blockdev-add", driver="null-co", node_name="nul", size=64 * MiB)
        raw = tmp_path / "t.raw"
        create_image(str(raw), "raw", 64 * MiB)
        h.cmd("blockdev-add", driver="raw", node_name="rawn",
              file={"driver": "file", "filename": str(raw)})
        # blkdebug cannot forward compressed writes even above a qcow2 node
        qc = tmp_path / "c.qcow2"
        create_image(str(qc), "qcow2", 64 * MiB)
        h.cmd("blockdev-add", driver="blkdebug", node_name="bdq",
              image={"driver": "qcow2", "file": {"driver": "file", "filename": str(qc)}})
        for target in ("nul", "rawn", "bdq"):
            with pytest.raises(QemuError) as info:
                h.cmd("blockdev-backup", job_id="j", device="drive0", target=target, sync="full",
                      compress=True)
            assert info.value.desc == "Compression is not supported for this drive "
        with pytest.raises(QemuError) as same:  # the same-node check comes first
            h.cmd("blockdev-backup", job_id="j", device="drive0", target="drive0", sync="full",
                  compress=True)
        assert same.value.desc == "Source and target cannot be the same"
        with pytest.raises(QemuError) as drive:
            h.cmd("drive-backup", job_id="j", device="drive0", target=str(tmp_path / "r2.raw"),
                  format="raw", sync="full", compress=True)
        assert drive.value.desc == "Compression is not supported for this drive "
        assert (tmp_path / "r2.raw").exists()  # QEMU creates the target before its checks

    run(tmp_path, body)


def test_x_perf_checks_and_top_without_backing(tmp_path: Path) -> None:
    """x-perf's checks (QEMU 7.2's texts); blockdev-backup sync=top of an image without a backing
    file copies only its allocated clusters (real QEMU: len 8 MiB for 8 MiB written)."""
    async def body(h: Harness) -> None:
        h.drive("drive0")
        h.write("drive0", "0x41", "0", "8M")
        h.cmd("blockdev-add", driver="null-co", node_name="nul", size=64 * MiB)
        for perf, text in (({"max-workers": 0}, "max-workers must be between 1 and 2147483647"),
                           ({"max-chunk": -1},
                            "max-chunk must be zero (which means no limit) or positive")):
            with pytest.raises(QemuError) as info:
                h.cmd("blockdev-backup", job_id="j", device="drive0", target="nul", sync="full",
                      x_perf=perf)
            assert info.value.desc == text
        h.cmd("blockdev-backup", job_id="j", device="drive0", target="nul", sync="top",
              x_perf={"max-workers": 1, "max-chunk": 65536})
        await h.settle()
        done = next(d for n, d in h.events if n == "BLOCK_JOB_COMPLETED")
        assert done["len"] == done["offset"] == 8 * MiB

    run(tmp_path, body)
