"""blockdev-create: the "create" job for file and qcow2, its errors as job errors, and the
command-time refusals — each compared with what real QEMU 7.2.22 answered for the same calls."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from helpers import qmp_cmd as cmd

from emulator.block.file import FileStorage
from emulator.block.qcow2 import Qcow2Image
from emulator.commands import new_machine
from emulator.error import QemuError
from emulator.machine import Machine


async def finish(machine: Machine, job_id: str) -> dict[str, Any]:
    await machine.jobs.wait_until(
        lambda: any(j["id"] == job_id and j["status"] == "concluded"
                    for j in cmd(machine, "query-jobs")), timeout=5)
    info = next(j for j in cmd(machine, "query-jobs") if j["id"] == job_id)
    cmd(machine, "job-dismiss", id=job_id)
    return dict(info)


def test_create_file_then_qcow2_then_errors(tmp_path: Path) -> None:
    path = tmp_path / "img"

    async def scenario() -> None:
        machine = new_machine(stdout=io.StringIO())
        machine.jobs.loop = asyncio.get_running_loop()
        cmd(machine, "blockdev-create", job_id="j1",
            options={"driver": "file", "filename": str(path), "size": 0})
        info = await finish(machine, "j1")
        assert info == {"current-progress": 1, "status": "concluded", "total-progress": 1,
                        "type": "create", "id": "j1"}
        cmd(machine, "blockdev-add", driver="file", node_name="f1", filename=str(path))
        cmd(machine, "blockdev-create", job_id="j2",
            options={"driver": "qcow2", "file": "f1", "size": 64 << 20})
        assert "error" not in await finish(machine, "j2")
        cmd(machine, "blockdev-add", driver="qcow2", node_name="q1", file="f1")
        assert cmd(machine, "query-named-block-nodes", flat=True)[0]["image"]["virtual-size"] \
            == 64 << 20
        # The qcow2 node now holds its file: a second creation conflicts (in the job).
        cmd(machine, "blockdev-create", job_id="j3",
            options={"driver": "qcow2", "file": "f1", "size": 64 << 20})
        assert (await finish(machine, "j3"))["error"] == (
            "Permission conflict on node 'f1': permissions 'write, resize' are both required by "
            "an unnamed block device (uses node 'f1' as 'root' child) and unshared by node 'q1' "
            "(uses node 'f1' as 'file' child).")
        cmd(machine, "blockdev-create", job_id="j4",
            options={"driver": "qcow2", "file": "nosuch", "size": 64 << 20})
        assert (await finish(machine, "j4"))["error"] == \
            "Cannot find device='nosuch' nor node-name='nosuch'"
        cmd(machine, "blockdev-create", job_id="j5",
            options={"driver": "qcow2", "file": "f1", "size": 64 << 20, "cluster-size": 1234})
        assert (await finish(machine, "j5"))["error"] == \
            "Cluster size must be a power of two between 512 and 2048k"
        cmd(machine, "blockdev-create", job_id="j6",
            options={"driver": "file", "filename": "/nonexistent/x", "size": 0})
        assert (await finish(machine, "j6"))["error"] == \
            "Could not create '/nonexistent/x': No such file or directory"
        with pytest.raises(QemuError) as info_nosup:
            cmd(machine, "blockdev-create", job_id="j7", options={"driver": "raw"})
        assert info_nosup.value.desc == "Driver does not support blockdev-create"
        machine.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    storage = FileStorage(str(path), read_only=True)
    img = Qcow2Image.open(storage, read_only=True)
    try:
        assert img.size == 64 << 20
        assert img.check()["corruptions"] == 0 and img.check()["leaks"] == 0
    finally:
        img.close()
        storage.close()
