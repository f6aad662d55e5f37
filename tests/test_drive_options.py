"""-drive variants the iotests use: an empty drive (no medium), driver=blkdebug over a legacy
"blkdebug::null-co://" filename with align=, file.node-name=, and drive-backup format=file.
Expected texts are real QEMU 7.2.22's for the same commands."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import qmp_cmd as cmd

from emulator.block.image import create_image
from emulator.commands import new_machine
from emulator.error import QemuError


def test_empty_drive_has_no_medium(tmp_path: Path) -> None:
    machine = new_machine(stdout=io.StringIO())
    machine.block.empty_drive_add({"id": "drive2", "if": "ide"})
    path = tmp_path / "d0.qcow2"
    create_image(str(path), "qcow2", 1 << 20)
    machine.block.drive_add({"if": "none", "id": "drive0", "file": str(path), "format": "qcow2"})
    for command, args in (
        ("drive-backup", {"device": "drive2", "target": str(tmp_path / "t"), "sync": "full"}),
        ("blockdev-backup", {"device": "drive2", "target": "drive0", "sync": "full"}),
        ("transaction", {"actions": [{"type": "blockdev-backup", "data": {
            "device": "drive2", "target": "drive0", "sync": "full"}}]}),
        ("block_resize", {"device": "drive2", "size": 65536}),
        ("block-dirty-bitmap-add", {"node": "drive2", "name": "b"}),
    ):
        with pytest.raises(QemuError) as info:
            cmd(machine, command, **args)
        assert info.value.desc == "Device 'drive2' has no medium", command
    assert cmd(machine, "human-monitor-command", command_line='qemu-io drive2 "read 0 512"') == ""
    assert "read failed: No medium found" in machine.stdout.getvalue()  # type: ignore[attr-defined]
    entry = cmd(machine, "query-block")[0]
    assert entry == {"device": "drive2", "type": "unknown", "removable": True, "locked": False}


def test_blkdebug_drive_over_null_co() -> None:
    machine = new_machine(stdout=io.StringIO())
    machine.block.drive_add({"if": "none", "id": "drive0", "file": "blkdebug::null-co://",
                             "align": "65536", "driver": "blkdebug"})
    nodes = cmd(machine, "query-named-block-nodes", flat=True)
    top = next(n for n in nodes if n["drv"] == "blkdebug")
    assert top["file"] == ('json:{"image": {"driver": "null-co"}, "driver": "blkdebug", '
                           '"align": "65536"}')
    assert "dirty-flag" not in top["image"]  # bdrv_get_info fails down to null-co
    assert top["image"]["virtual-size"] == 1 << 30


def test_file_node_name_and_format_file_target(tmp_path: Path) -> None:
    machine = new_machine(stdout=io.StringIO())
    path = tmp_path / "d0.qcow2"
    create_image(str(path), "qcow2", 1 << 20)
    machine.block.drive_add({"if": "none", "id": "drive0", "file": str(path), "format": "qcow2",
                             "node-name": "n0", "file.node-name": "f0"})
    f0 = machine.block.find_node("f0")
    assert f0 is not None and f0.driver == "file"
    assert machine.block.find_node("n0").file is f0  # type: ignore[union-attr]
    with pytest.raises(QemuError) as info:  # QEMU 7.2's text: sync=none wants a backing file
        cmd(machine, "drive-backup", device="drive0", sync="none", target=str(tmp_path / "x"),
            format="file", job_id="j")
    assert info.value.desc == "Backing file not supported for file format 'file'"
    target = tmp_path / "t.img"
    cmd(machine, "drive-backup", device="drive0", sync="full", target=str(target),
        format="file", job_id="j", speed=1)
    assert f"Formatting '{target}', fmt=file size=1048576" in \
        machine.stdout.getvalue()  # type: ignore[attr-defined]
    job = machine.jobs.get("j")
    assert job is not None and job.target.driver == "file"  # type: ignore[attr-defined]
    machine.close()
