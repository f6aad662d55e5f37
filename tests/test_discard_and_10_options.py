"""discard=unmap (BDRV_O_UNMAP): without it a discard does nothing, not even dirty a bitmap (real
QEMU 7.2); QEMU 10.0's backup options discard-source and x-perf.min-cluster-size and the
copy-before-write min-cluster-size, refused by 7.2's schema with its texts."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from helpers import qmp_cmd as cmd

from emulator.block.image import create_image
from emulator.commands import new_machine
from emulator.error import QemuError
from emulator.machine import Machine

MiB = 1 << 20


def drive(tmp_path: Path, **extra: str) -> Machine:
    path = tmp_path / "d.qcow2"
    create_image(str(path), "qcow2", 64 * MiB)
    machine = new_machine(stdout=io.StringIO())
    machine.block.drive_add({"if": "none", "id": "drive0", "file": str(path), "format": "qcow2",
                             **extra})
    cmd(machine, "human-monitor-command", command_line='qemu-io drive0 "write -P 7 0 8M"')
    return machine


@pytest.mark.parametrize("discard, count", [(None, 0), ("unmap", MiB)])
def test_discard_needs_unmap(tmp_path: Path, discard: str | None, count: int) -> None:
    machine = drive(tmp_path, **({"discard": discard} if discard else {}))
    cmd(machine, "block-dirty-bitmap-add", node="drive0", name="b")
    cmd(machine, "human-monitor-command", command_line='qemu-io drive0 "discard 0 1M"')
    info = cmd(machine, "query-block")[0]["inserted"]["dirty-bitmaps"][0]
    assert info["count"] == count
    machine.close()


def test_qemu_7_2_refuses_10_0_members(tmp_path: Path) -> None:
    machine = drive(tmp_path)
    cmd(machine, "blockdev-add", driver="null-co", node_name="tgt", size=64 * MiB)
    for args, text in (({"discard_source": True}, "Parameter 'discard-source' is unexpected"),
                       ({"x_perf": {"min-cluster-size": 131072}},
                        "Parameter 'x-perf.min-cluster-size' is unexpected")):
        with pytest.raises(QemuError) as info:
            cmd(machine, "blockdev-backup", job_id="j", device="drive0", target="tgt",
                sync="full", **args)
        assert info.value.desc == text
    with pytest.raises(QemuError) as cbw:
        cmd(machine, "blockdev-add", driver="copy-before-write", node_name="c", file="drive0",
            target="tgt", min_cluster_size=131072)
    assert cbw.value.desc == "Parameter 'min-cluster-size' is unexpected"
    machine.close()


def test_qemu_10_discard_source_and_min_cluster_size(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("BLOCKTXN_QEMU_VERSION", "10.0")

    async def scenario() -> None:
        machine = drive(tmp_path, discard="unmap")
        machine.jobs.loop = asyncio.get_running_loop()
        cmd(machine, "blockdev-add", driver="null-co", node_name="tgt", size=64 * MiB)
        with pytest.raises(QemuError) as bad:
            cmd(machine, "blockdev-backup", job_id="j", device="drive0", target="tgt",
                sync="full", x_perf={"min-cluster-size": 1000})
        assert bad.value.desc == ("Could not create node: Cannot create block-copy-state: "
                                  "min-cluster-size needs to be a power of 2")
        cmd(machine, "blockdev-backup", job_id="j", device="drive0", target="tgt", sync="full",
            speed=1, x_perf={"min-cluster-size": 131072})
        nodes = cmd(machine, "query-named-block-nodes", flat=True)
        cbw = next(n for n in nodes if n["drv"] == "copy-before-write")
        assert {b["granularity"] for b in cbw["dirty-bitmaps"]} == {131072}
        cmd(machine, "block-job-cancel", device="j", force=True)
        await machine.jobs.wait_until(lambda: len(machine.jobs) == 0, timeout=5)
        cmd(machine, "blockdev-backup", job_id="j2", device="drive0", target="tgt", sync="full",
            discard_source=True)
        await machine.jobs.wait_until(lambda: len(machine.jobs) == 0, timeout=5)
        assert machine.block.lookup_bs("drive0").pread(0, MiB) == bytes(MiB)
        machine.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_children_default_to_unmap_and_files_punch_holes(tmp_path: Path) -> None:
    """bdrv_inherited_options: children of a node default to discard=unmap, the top node to
    ignore; a host file's discard reads back as zeros (real QEMU 7.2: same bitmaps, same file)."""
    path = tmp_path / "r.img"
    path.write_bytes(b"x" * MiB)
    machine = new_machine(stdout=io.StringIO())
    cmd(machine, "blockdev-add", driver="raw", node_name="r",
        file={"driver": "file", "filename": str(path), "node-name": "rf"})
    cmd(machine, "block-dirty-bitmap-add", node="rf", name="b")
    cmd(machine, "block-dirty-bitmap-add", node="r", name="b2")
    cmd(machine, "human-monitor-command", command_line='qemu-io rf "discard 0 64k"')
    cmd(machine, "human-monitor-command", command_line='qemu-io r "discard 64k 64k"')
    counts = {n["node-name"]: [b["count"] for b in n.get("dirty-bitmaps", [])]
              for n in cmd(machine, "query-named-block-nodes", flat=True)}
    assert counts == {"r": [0], "rf": [65536]}
    machine.close()
    data = path.read_bytes()
    assert data[:65536] == bytes(65536) and data[65536:] == b"x" * (MiB - 65536)
