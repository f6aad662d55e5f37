"""The permission system (QEMU's BLK_PERM_* on graph edges): default rules per child role,
conflict checks on blockdev-add, backup, block_resize and HMP qemu-io, and QEMU's texts.

Every expected message was printed by real QEMU 7.2.22 for the same commands (iotest 283 and
the block_resize / qemu-io probes recorded in the report of this change).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from helpers import qmp_cmd as cmd

from emulator.block.backend import BlockBackend
from emulator.block.image import create_image
from emulator.block.permissions import (
    PERM_ALL,
    PERM_CONSISTENT_READ,
    PERM_RESIZE,
    PERM_WRITE,
    PERM_WRITE_UNCHANGED,
    ROLE_DATA,
    ROLE_METADATA,
    cow_default_perms,
    edges_of,
    filter_default_perms,
    node_perms,
    perm_names,
    storage_default_perms,
)
from emulator.commands import new_machine
from emulator.error import QemuError
from emulator.machine import Machine

MiB = 1 << 20


def error(machine: Machine, command: str, /, **args: Any) -> str:
    with pytest.raises(QemuError) as info:
        cmd(machine, command, **args)
    assert info.value.error_class == "GenericError"
    return info.value.desc


def test_perm_names_in_qemu_order() -> None:
    assert perm_names(PERM_RESIZE | PERM_CONSISTENT_READ) == "consistent read, resize"
    assert perm_names(PERM_ALL) == "consistent read, write, write unchanged, resize"
    assert perm_names(0) == ""


def test_default_rules() -> None:
    # A filter passes everything and always shares reads and unchanged writes.
    assert filter_default_perms(PERM_WRITE, 0) == (PERM_WRITE,
                                                   PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
    # A writable format writes and resizes its file itself and lets nobody else do so.
    perm, shared = storage_default_perms(0, PERM_ALL, ROLE_DATA | ROLE_METADATA, True)
    assert perm == PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE
    assert shared == PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED
    assert storage_default_perms(0, PERM_ALL, ROLE_DATA | ROLE_METADATA, False)[0] == \
        PERM_CONSISTENT_READ
    # A backing file is only read; others may write it only if the overlay's users allow writes.
    assert cow_default_perms(PERM_ALL, PERM_ALL) == (PERM_CONSISTENT_READ, PERM_ALL)
    assert cow_default_perms(PERM_ALL, 0) == (PERM_CONSISTENT_READ,
                                              PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)


def test_iotest_283_side_parent_with_write_blocks_backup() -> None:
    machine = new_machine(stdout=io.StringIO())
    cmd(machine, "blockdev-add", **{"node-name": "target", "driver": "null-co", "size": MiB})
    cmd(machine, "blockdev-add", **{"node-name": "source", "driver": "blkdebug",
                                    "image": {"node-name": "base", "driver": "null-co",
                                              "size": MiB}})
    cmd(machine, "blockdev-add", **{"node-name": "other", "driver": "blkdebug", "image": "base",
                                    "take-child-perms": ["write"]})
    names_before = [n.node_name for n in machine.block.nodes]
    assert error(machine, "blockdev-backup", sync="full", device="source", target="target",
                 job_id="backup0") == (
        "Permission conflict on node 'base': permissions 'write' are both required by node "
        "'other' (uses node 'base' as 'image' child) and unshared by node 'source' (uses node "
        "'base' as 'image' child).")
    # Nothing is left behind: no filter node, no job.
    assert [n.node_name for n in machine.block.nodes] == names_before
    assert cmd(machine, "query-jobs") == []
    # An unsharing newcomer is refused too, and leaves no node behind.
    assert error(machine, "blockdev-add", **{"node-name": "o2", "driver": "blkdebug",
                                             "image": "base",
                                             "unshare-child-perms": ["write"]}) == (
        "Permission conflict on node 'base': permissions 'write' are both required by node "
        "'other' (uses node 'base' as 'image' child) and unshared by node 'o2' (uses node "
        "'base' as 'image' child).")
    assert machine.block.find_node("o2") is None
    # The node is writable through qemu-io: nobody above base unshares write.
    assert cmd(machine, "human-monitor-command", command_line='qemu-io base "write 0 1"') == ""


@pytest.fixture()
def drives(tmp_path: Path) -> Machine:
    machine = new_machine(stdout=io.StringIO())
    for name, node in (("drive0", "n0"), ("drive1", "n1")):
        path = tmp_path / f"{name}.qcow2"
        create_image(str(path), "qcow2", 64 * MiB)
        machine.block.drive_add({"if": "none", "id": name, "file": str(path), "format": "qcow2",
                                 "node-name": node})
    return machine


def test_format_node_holds_its_file(drives: Machine) -> None:
    f0 = drives.block.find_node("n0").file  # type: ignore[union-attr]
    assert f0 is not None
    edges = edges_of(f0)
    assert [(e.user_desc(), e.role) for e in edges] == [("node 'n0'", "file")]
    assert node_perms(f0) == (PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE,
                              PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
    name = f0.node_name
    assert error(drives, "block_resize", node_name=name, size=65536) == (
        f"Permission conflict on node '{name}': permissions 'resize' are both required by an "
        f"unnamed block device (uses node '{name}' as 'root' child) and unshared by node 'n0' "
        f"(uses node '{name}' as 'file' child).")
    out = cmd(drives, "human-monitor-command", command_line=f'qemu-io {name} "write 0 1"')
    assert out == (
        f"Permission conflict on node '{name}': permissions 'write' are both required by an "
        f"unnamed block device (uses node '{name}' as 'root' child) and unshared by node 'n0' "
        f"(uses node '{name}' as 'file' child).\r\n")
    assert cmd(drives, "human-monitor-command", command_line=f'qemu-io {name} "read 0 1"') == ""
    # The temporary users are gone again.
    assert [e.role for e in edges_of(f0)] == ["file"]


def test_block_resize_while_backup_runs(drives: Machine) -> None:
    async def scenario() -> None:
        cmd(drives, "blockdev-backup", job_id="j", device="drive0", target="drive1", sync="full",
            speed=65536)
        cbw = drives.block.find_backend("drive0").root  # type: ignore[union-attr]
        assert cbw.driver == "copy-before-write"
        assert error(drives, "block_resize", device="drive0", size=65536) == \
            "Device 'drive0' is in use"
        assert error(drives, "block_resize", device="drive1", size=65536) == \
            "Device 'drive1' is in use"
        assert error(drives, "block_resize", node_name="n1", size=65536) == \
            "Device '(null)' is in use"
        assert error(drives, "block_resize", node_name="n0", size=65536) == (
            "Permission conflict on node 'n0': permissions 'resize' are both required by an "
            "unnamed block device (uses node 'n0' as 'root' child) and unshared by node "
            f"'{cbw.node_name}' (uses node 'n0' as 'file' child).")
        assert drives.block.find_node("n0").length() == 64 * MiB  # type: ignore[union-attr]
        cmd(drives, "block-job-cancel", device="j", force=True)
        await drives.jobs.wait_until(lambda: len(drives.jobs) == 0, timeout=5)
        # After the job the filter is gone and the node can be resized again.
        cmd(drives, "block_resize", device="drive0", size=128 * MiB)
        assert drives.block.find_node("n0").length() == 128 * MiB  # type: ignore[union-attr]

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_backup_of_a_node_already_under_a_filter_moves_the_filter(drives: Machine) -> None:
    """bdrv_replace_node: the second filter takes over every user of the node, the first filter
    included, so the two backups do not conflict (QEMU accepts it)."""
    async def scenario() -> None:
        cmd(drives, "blockdev-backup", job_id="j0", device="drive0", target="drive1", sync="full",
            speed=1)
        cbw0 = drives.block.find_backend("drive0").root  # type: ignore[union-attr]
        cmd(drives, "blockdev-add", **{"node-name": "t2", "driver": "null-co", "size": 64 * MiB})
        cmd(drives, "blockdev-backup", job_id="j1", device="n0", target="t2", sync="full",
            speed=1)
        cbw1 = cbw0.children["file"]
        assert cbw1.driver == "copy-before-write"
        assert cbw1.children["file"] is drives.block.find_node("n0")
        for job in ("j0", "j1"):
            cmd(drives, "block-job-cancel", device=job, force=True)
        await drives.jobs.wait_until(lambda: len(drives.jobs) == 0, timeout=5)
        assert drives.block.find_backend("drive0").root is drives.block.find_node("n0")  # type: ignore[union-attr]

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_backend_set_perm_refuses_conflicts_and_keeps_old_perms(drives: Machine) -> None:
    backend = drives.block.find_backend("drive0")
    assert isinstance(backend, BlockBackend)
    cmd(drives, "blockdev-add", **{"node-name": "w", "driver": "blkdebug", "image": "n0",
                                   "take-child-perms": ["write"]})
    with pytest.raises(QemuError) as info:
        backend.set_perm(PERM_CONSISTENT_READ | PERM_WRITE,
                         PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED | PERM_RESIZE)
    assert info.value.desc == (
        "Permission conflict on node 'n0': permissions 'write' are both required by node 'w' "
        "(uses node 'n0' as 'image' child) and unshared by block device 'drive0' (uses node "
        "'n0' as 'root' child).")
    assert (backend.perm, backend.shared_perm) == (PERM_CONSISTENT_READ, PERM_ALL)


def test_drive_backend_reads_until_qemu_io_writes(drives: Machine) -> None:
    """A -drive backend takes only 'consistent read' (QEMU 7.2 lets a node unsharing 'write' sit
    on it); HMP qemu-io's write then asks for 'write' and keeps it."""
    cmd(drives, "blockdev-add", **{"node-name": "u", "driver": "blkdebug", "image": "n0",
                                   "unshare-child-perms": ["write"]})
    assert error(drives, "blockdev-add", **{"node-name": "u2", "driver": "blkdebug",
                                            "image": "n0",
                                            "unshare-child-perms": ["consistent-read"]}) == (
        "Permission conflict on node 'n0': permissions 'consistent read' are both required by "
        "block device 'drive0' (uses node 'n0' as 'root' child) and unshared by node 'u2' (uses "
        "node 'n0' as 'image' child).")
    assert cmd(drives, "human-monitor-command", command_line='qemu-io drive0 "write 0 512"') == (
        "Permission conflict on node 'n0': permissions 'write' are both required by block device "
        "'drive0' (uses node 'n0' as 'root' child) and unshared by node 'u' (uses node 'n0' as "
        "'image' child).\r\n")
    cmd(drives, "blockdev-del", node_name="u")
    assert cmd(drives, "human-monitor-command", command_line='qemu-io drive1 "write 0 512"') == ""
    assert drives.block.find_backend("drive1").perm & PERM_WRITE  # type: ignore[union-attr]


def test_filter_creation_conflicts_carry_qemu_prefix(tmp_path: Path) -> None:
    """bdrv_insert_node: a conflict while the filter opens its children is 'Could not create
    node: ...' (real QEMU 7.2), and nothing is left behind."""
    machine = new_machine(stdout=io.StringIO())
    path = tmp_path / "d.qcow2"
    create_image(str(path), "qcow2", 64 * MiB)
    machine.block.drive_add({"if": "none", "id": "drive0", "file": str(path), "format": "qcow2"})
    cmd(machine, "blockdev-add", **{"node-name": "tgt", "driver": "null-co", "size": 64 * MiB})
    cmd(machine, "blockdev-add", **{"node-name": "u", "driver": "blkdebug", "image": "tgt",
                                    "unshare-child-perms": ["write"]})
    before = sorted(n.node_name for n in machine.block.nodes)
    assert error(machine, "blockdev-backup", job_id="j", device="drive0", target="tgt",
                 sync="full", filter_node_name="f") == (
        "Could not create node: Permission conflict on node 'tgt': permissions 'write' are both "
        "required by node 'f' (uses node 'tgt' as 'target' child) and unshared by node 'u' "
        "(uses node 'tgt' as 'image' child).")
    assert sorted(n.node_name for n in machine.block.nodes) == before
    assert machine.block.find_backend("drive0").root.driver == "qcow2"  # type: ignore[union-attr]
    machine.close()
