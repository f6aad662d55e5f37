"""External snapshots (blockdev-snapshot-sync / blockdev-snapshot) and their transaction rollback."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import qmp_cmd as cmd

from emulator.block.image import create_image, open_image_chain
from emulator.commands import new_machine
from emulator.error import QemuError
from emulator.machine import Machine

MiB = 1 << 20


def machine_with_drive(tmp_path: Path) -> tuple[Machine, Path]:
    machine = new_machine(stdout=io.StringIO())
    base = tmp_path / "base.qcow2"
    create_image(str(base), "qcow2", 4 * MiB)
    machine.block.drive_add({"if": "none", "id": "drive0", "file": str(base), "format": "qcow2",
                             "node-name": "node0"})
    return machine, base


def test_snapshot_sync_redirects_writes_to_the_overlay(tmp_path: Path) -> None:
    machine, base = machine_with_drive(tmp_path)
    cmd(machine, "human-monitor-command", command_line='qemu-io drive0 "write -P 0x11 0 64k"')
    overlay = tmp_path / "overlay.qcow2"
    cmd(machine, "blockdev-snapshot-sync", device="drive0", snapshot_file=str(overlay),
        snapshot_node_name="snap0")
    assert machine.block.backends["drive0"].root.node_name == "snap0"
    assert machine.block.find_node("node0").read_only
    cmd(machine, "human-monitor-command", command_line='qemu-io drive0 "write -P 0x22 64k 64k"')
    assert machine.block.backends["drive0"].root.pread(0, 131072) == b"\x11" * 65536 + b"\x22" * 65536
    machine.close()
    chain = open_image_chain(str(overlay), "qcow2")
    assert chain.pread(0, 131072) == b"\x11" * 65536 + b"\x22" * 65536
    chain.close()
    base_only = open_image_chain(str(base), "qcow2")
    assert base_only.pread(65536, 65536) == bytes(65536)
    base_only.close()


def test_snapshot_in_a_failed_transaction_is_rolled_back(tmp_path: Path) -> None:
    machine, _ = machine_with_drive(tmp_path)
    with pytest.raises(QemuError, match="Transaction aborted using Abort action"):
        cmd(machine, "transaction", actions=[
            {"type": "blockdev-snapshot-sync",
             "data": {"device": "drive0", "snapshot-file": str(tmp_path / "o.qcow2")}},
            {"type": "abort", "data": {}}])
    root = machine.block.backends["drive0"].root
    assert root.node_name == "node0" and not root.read_only
    assert [n.driver for n in machine.block.nodes] == ["file", "qcow2"]
    machine.close()


def test_snapshot_refuses_grouped_mode_and_bad_names(tmp_path: Path) -> None:
    machine, _ = machine_with_drive(tmp_path)
    with pytest.raises(QemuError, match="does not support Transaction property completion-mode = grouped"):
        cmd(machine, "transaction", actions=[
            {"type": "blockdev-snapshot-sync",
             "data": {"device": "drive0", "snapshot-file": str(tmp_path / "o.qcow2")}}],
            properties={"completion-mode": "grouped"})
    with pytest.raises(QemuError, match="New overlay node-name missing"):
        cmd(machine, "blockdev-snapshot-sync", node_name="node0", snapshot_file=str(tmp_path / "x"))
    with pytest.raises(QemuError, match="Cannot find device='nodev' nor node-name=''"):
        cmd(machine, "blockdev-snapshot-sync", device="nodev", snapshot_file=str(tmp_path / "x"))
    machine.close()
