"""blockdev-reopen of read-only: checks and texts (real QEMU 7.2.22's), files reopened with the new
access mode, and persistent bitmaps going read-only and back (iotest 165's test_reopen_rw)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import qmp_cmd as cmd

from emulator.block.image import create_image
from emulator.commands import new_machine
from emulator.error import QemuError
from emulator.machine import Machine


def sha(machine: Machine) -> str:
    return str(cmd(machine, "x-debug-block-dirty-bitmap-sha256", node="drive0",
                   name="bitmap0")["sha256"])


def write(machine: Machine, offset: int, length: int) -> str:
    return str(cmd(machine, "human-monitor-command",
                   command_line=f'qemu-io drive0 "write {offset} {length}"'))


def test_reopen_checks(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    create_image(str(path), "qcow2", 1 << 20)
    machine = new_machine(stdout=io.StringIO())
    machine.block.drive_add({"if": "none", "id": "drive0", "file": str(path), "format": "qcow2",
                             "node-name": "node0"})
    good = {"node-name": "node0", "driver": "qcow2",
            "file": {"driver": "file", "filename": str(path)}}
    for options, text in (
        ({k: v for k, v in good.items() if k != "node-name"}, "node-name not specified"),
        ({**good, "node-name": "nope"}, "Failed to find node with node-name='nope'"),
        ({**good, "driver": "raw"}, "Cannot change the option 'driver'"),
        ({**good, "file": {"driver": "file", "filename": "/x"}},
         "Cannot change the option 'filename'"),
    ):
        with pytest.raises(QemuError) as info:
            cmd(machine, "blockdev-reopen", options=[options])
        assert info.value.desc == text
    cmd(machine, "blockdev-reopen", options=[{**good, "read-only": True}])
    node = machine.block.find_node("node0")
    assert node is not None and node.read_only and node.file is not None and node.file.read_only
    assert write(machine, 0, 512) == "Block node is read-only\r\n"
    cmd(machine, "blockdev-reopen", options=[good])  # read-only defaults to off
    assert not node.read_only and write(machine, 0, 512) == ""
    machine.close()


def test_persistent_bitmap_survives_read_only_start_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    create_image(str(path), "qcow2", 1 << 30)
    regions1 = [(0, 65536), (1 << 20, 4096), (512 << 20, 1 << 20)]
    regions2 = [(1 << 20, 65536), (512 << 20, 65536), ((1 << 30) - 65536, 65536)]

    def start(read_only: bool) -> Machine:
        machine = new_machine(stdout=io.StringIO())
        machine.block.drive_add({"if": "none", "id": "drive0", "file": str(path),
                                 "format": "qcow2", "node-name": "node0",
                                 "readonly": "on" if read_only else "off"})
        return machine

    machine = start(False)
    cmd(machine, "block-dirty-bitmap-add", node="drive0", name="bitmap0", persistent=True)
    for r in regions1:
        write(machine, *r)
    sha1 = sha(machine)
    for r in regions2:
        write(machine, *r)
    sha2 = sha(machine)
    assert sha1 != sha2
    cmd(machine, "block-dirty-bitmap-clear", node="drive0", name="bitmap0")
    for r in regions1:
        write(machine, *r)
    assert sha(machine) == sha1
    machine.close()

    machine = start(True)
    assert sha(machine) == sha1
    for r in regions2:
        assert write(machine, *r) == "Block node is read-only\r\n"
    assert sha(machine) == sha1
    cmd(machine, "blockdev-reopen", options=[{
        "node-name": "node0", "driver": "qcow2",
        "file": {"driver": "file", "filename": str(path)}, "read-only": False}])
    bitmaps = cmd(machine, "query-block")[0]["inserted"]["image"]["format-specific"]["data"]
    assert bitmaps["bitmaps"] == [{"flags": ["in-use", "auto"], "name": "bitmap0",
                                   "granularity": 65536}]
    for r in regions2:
        assert write(machine, *r) == ""
    assert sha(machine) == sha2
    machine.close()

    machine = start(False)
    assert sha(machine) == sha2  # stored at exit after the reopen
    machine.close()


def test_reopen_needs_the_backing_again(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    create_image(str(base), "qcow2", 1 << 20)
    create_image(str(top), "qcow2", 1 << 20, backing_file=str(base), backing_fmt="qcow2")
    machine = new_machine(stdout=io.StringIO())
    machine.block.blockdev_add({"driver": "qcow2", "node-name": "ovl",
                                "file": {"driver": "file", "filename": str(top)}})
    with pytest.raises(QemuError) as info:  # QEMU 7.2's bdrv_reopen_prepare text
        cmd(machine, "blockdev-reopen", options=[{
            "node-name": "ovl", "driver": "qcow2",
            "file": {"driver": "file", "filename": str(top)}, "read-only": True}])
    assert info.value.desc == "backing is missing for 'ovl'"
    machine.close()
