"""The copy-before-write filter as a blockdev-add node (on-cbw-error, cbw-timeout, bitmap), the
snapshot-access driver, throttle groups and the throttle driver: iotest tests/copy-before-write's
four cases, whose outputs (qemu-io lines, node lists, target contents) matched real QEMU 7.2.22."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import qmp_cmd as cmd

from emulator.block.image import create_image, open_image_chain
from emulator.block.throttle import LeakyBucket, ThrottleGroup
from emulator.cmdline import apply_block_options, parse_args
from emulator.commands import new_machine
from emulator.error import QemuError
from emulator.machine import Machine

MiB = 1 << 20


def qemu_io(machine: Machine, node: str, command: str) -> str:
    out = cmd(machine, "human-monitor-command", command_line=f'qemu-io {node} "{command}"')
    assert out == ""
    text = machine.stdout.getvalue()  # type: ignore[attr-defined]
    machine.stdout = io.StringIO()
    return "\n".join(line for line in text.splitlines() if "ops;" not in line)


def setup(tmp_path: Path) -> tuple[Machine, Path, Path]:
    source, temp = tmp_path / "source", tmp_path / "temp"
    create_image(str(source), "qcow2", MiB)
    create_image(str(temp), "qcow2", MiB)
    image = open_image_chain(str(source), "qcow2", read_only=False)
    try:
        image.pwrite(0, b"\xcd" * MiB)
    finally:
        image.close()
    return new_machine(stdout=io.StringIO()), source, temp


def add_cbw(machine: Machine, source: Path, target: dict[str, Any], **extra: Any) -> None:
    cmd(machine, "blockdev-add", **{
        "node-name": "cbw", "driver": "copy-before-write",
        "file": {"driver": "qcow2", "file": {"driver": "file", "filename": str(source)}},
        "target": target, **extra})
    cmd(machine, "blockdev-add", **{"node-name": "access", "driver": "snapshot-access",
                                    "file": "cbw"})


def error_target(temp: Path) -> dict[str, Any]:
    return {"driver": "qcow2", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": str(temp)},
        "inject-error": [{"event": "write_aio", "errno": 5, "immediately": False,
                          "once": True}]}}


def test_break_snapshot_on_cbw_error(tmp_path: Path) -> None:
    machine, source, temp = setup(tmp_path)
    add_cbw(machine, source, error_target(temp), **{"on-cbw-error": "break-snapshot"})
    assert qemu_io(machine, "cbw", "write 0 1M") == "wrote 1048576/1048576 bytes at offset 0"
    assert qemu_io(machine, "access", "read 0 1M") == "read failed: Permission denied"
    nodes = {n["node-name"]: n for n in cmd(machine, "query-named-block-nodes", flat=True)}
    assert nodes["access"]["file"] == str(source)
    # The filter's copy bitmap lives on its source (all clusters still to copy after the error).
    src = next(n for n in nodes.values() if n["drv"] == "qcow2" and n["file"] == str(source))
    assert [(b["granularity"], b["count"]) for b in src["dirty-bitmaps"]] == [(65536, MiB)]
    machine.close()


def test_break_guest_write_on_cbw_error(tmp_path: Path) -> None:
    machine, source, temp = setup(tmp_path)
    add_cbw(machine, source, error_target(temp), **{"on-cbw-error": "break-guest-write"})
    assert qemu_io(machine, "cbw", "write 0 1M") == "write failed: Input/output error"
    assert qemu_io(machine, "access", "read -P 0xcd 0 1M") == \
        "read 1048576/1048576 bytes at offset 0"
    machine.close()


def throttled_target(machine: Machine, temp: Path) -> dict[str, Any]:
    cmd(machine, "object-add", qom_type="throttle-group", id="group0",
        limits={"bps-write": 300 * 1024})
    return {"driver": "throttle", "throttle-group": "group0",
            "file": {"driver": "qcow2", "file": {"driver": "file", "filename": str(temp)}}}


@pytest.mark.parametrize("mode", ["break-guest-write", "break-snapshot"])
def test_cbw_timeout(tmp_path: Path, mode: str) -> None:
    machine, source, temp = setup(tmp_path)
    add_cbw(machine, source, throttled_target(machine, temp),
            **{"on-cbw-error": mode, "cbw-timeout": 1})
    assert qemu_io(machine, "cbw", "write -P 1 0 512K") == "wrote 524288/524288 bytes at offset 0"
    started = time.monotonic()
    second = qemu_io(machine, "cbw", "write -P 2 512K 512K")
    assert 0.9 < time.monotonic() - started < 5  # the timeout expires after cbw-timeout seconds
    if mode == "break-guest-write":
        assert second == "write failed: Connection timed out"
        assert qemu_io(machine, "access", "read -P 0xcd 0 1M") == \
            "read 1048576/1048576 bytes at offset 0"
    else:
        assert second == "wrote 524288/524288 bytes at offset 524288"
        assert qemu_io(machine, "access", "read 0 1M") == "read failed: Permission denied"
    with pytest.raises(QemuError) as busy:
        cmd(machine, "object-del", id="group0")
    assert busy.value.desc == "object 'group0' is in use, can not be deleted"
    machine.close()
    # The timed-out copy finished in the background, as in QEMU: the target holds the old data.
    image = open_image_chain(str(temp), "qcow2")
    try:
        assert image.pread(0, MiB) == b"\xcd" * MiB
    finally:
        image.close()


def test_cbw_bitmap_option_and_errors(tmp_path: Path) -> None:
    machine, source, temp = setup(tmp_path)
    cmd(machine, "blockdev-add", **{"node-name": "src", "driver": "qcow2",
                                    "file": {"driver": "file", "filename": str(source)}})
    cmd(machine, "block-dirty-bitmap-add", node="src", name="b0", granularity=65536)
    cmd(machine, "human-monitor-command", command_line='qemu-io src "write -P 0xcd 0 64k"')
    target = {"driver": "qcow2", "file": {"driver": "file", "filename": str(temp)}}
    for bitmap, text in (({"node": "nosuch", "name": "b0"}, "Node 'nosuch' not found"),
                         ({"node": "src", "name": "nosuch"}, "Dirty bitmap 'nosuch' not found")):
        with pytest.raises(QemuError) as info:
            cmd(machine, "blockdev-add", **{"node-name": "cbw", "driver": "copy-before-write",
                                            "file": "src", "target": target, "bitmap": bitmap})
        assert info.value.desc == text
    cmd(machine, "blockdev-add", **{"node-name": "cbw", "driver": "copy-before-write",
                                    "file": "src", "target": target,
                                    "bitmap": {"node": "src", "name": "b0"}})
    machine.stdout = io.StringIO()
    qemu_io(machine, "cbw", "write -P 7 0 1M")
    machine.close()
    image = open_image_chain(str(temp), "qcow2")
    try:  # only the bitmap's cluster was copied
        assert image.pread(0, 65536) == b"\xcd" * 65536
        assert image.pread(65536, 65536) == bytes(65536)
    finally:
        image.close()


def test_leaky_bucket_waits() -> None:
    bucket = LeakyBucket(avg=1000.0)
    assert bucket.compute_wait() == 0
    bucket.level = 1100.0  # 1000 over the 100-byte bucket: one second at 1000 B/s
    assert bucket.compute_wait() == 1_000_000_000
    bucket.leak(500_000_000)
    assert bucket.level == 600.0
    now = [0]
    group = ThrottleGroup("g", {"bps-write": 1000}, lambda: now[0])
    assert group.wait_ns(True) == 0 and group.wait_ns(False) == 0
    group.account(True, 1100)
    assert group.wait_ns(True) == 1_000_000_000 and group.wait_ns(False) == 0
    now[0] = 1_000_000_000
    assert group.wait_ns(True) == 0


def test_object_add_errors() -> None:
    machine = new_machine(stdout=io.StringIO())
    cmd(machine, "object-add", qom_type="throttle-group", id="g", limits={"bps-total": 10})
    with pytest.raises(QemuError) as dup:
        cmd(machine, "object-add", qom_type="throttle-group", id="g", limits={})
    assert dup.value.desc == "attempt to add duplicate property 'g' to object (type 'container')"
    with pytest.raises(QemuError) as both:
        cmd(machine, "object-add", qom_type="throttle-group", id="h",
            limits={"bps-total": 10, "bps-read": 5})
    assert both.value.desc == "bps(iops) and bps(iops)_rd/_wr cannot be used at the same time"
    with pytest.raises(QemuError) as missing:
        cmd(machine, "object-del", id="nosuch")
    assert missing.value.desc == "object 'nosuch' not found"
    cmd(machine, "object-del", id="g")
    with pytest.raises(QemuError) as gone:
        cmd(machine, "blockdev-add", **{"node-name": "t", "driver": "throttle",
                                        "throttle-group": "g",
                                        "file": {"driver": "null-co"}})
    assert gone.value.desc == "Throttle group 'g' does not exist"


def test_object_add_from_the_command_line_strings() -> None:
    """-object passes QemuOpts strings, dotted for nested members."""
    machine = new_machine(stdout=io.StringIO())
    config = parse_args(["-M", "none", "-nodefaults", "-display", "none",
                         "-object", "throttle-group,id=g1,limits.bps-write=1000",
                         "-object", "throttle-group,id=g2,x-iops-total=5"])
    apply_block_options(config, machine)
    assert machine.block.throttle_groups["g1"].buckets["bps-write"].avg == 1000
    assert machine.block.throttle_groups["g2"].buckets["iops-total"].avg == 5


def test_qemu_10_keeps_the_copy_bitmap_on_the_filter(tmp_path: Path, monkeypatch: Any) -> None:
    """Real QEMU 10.0.2 lists [access, done, copy] on a standalone filter; 7.2 the copy bitmap
    on the source."""
    monkeypatch.setenv("BLOCKTXN_QEMU_VERSION", "10.0")
    machine, source, temp = setup(tmp_path)
    target = {"driver": "qcow2", "file": {"driver": "file", "filename": str(temp)}}
    cmd(machine, "blockdev-add", **{"node-name": "cbw", "driver": "copy-before-write",
                                    "file": {"driver": "qcow2", "file": {
                                        "driver": "file", "filename": str(source)}},
                                    "target": target})
    cmd(machine, "blockdev-add", **{"node-name": "access", "driver": "snapshot-access",
                                    "file": "cbw"})
    qemu_io(machine, "cbw", "write 0 64k")
    nodes = {n["node-name"]: n for n in cmd(machine, "query-named-block-nodes", flat=True)}
    assert [b["count"] for b in nodes["cbw"]["dirty-bitmaps"]] == [MiB, 65536, MiB - 65536]
    machine.close()


def test_null_target_warning(tmp_path: Path, capsys: Any) -> None:
    machine = new_machine(stdout=io.StringIO())
    cmd(machine, "blockdev-add", **{"node-name": "s", "driver": "null-co", "size": MiB})
    cmd(machine, "blockdev-add", **{"node-name": "t", "driver": "null-co", "size": MiB})
    cmd(machine, "blockdev-backup", job_id="j", device="s", target="t", sync="none")
    assert "warning: The target block device doesn't provide information about the block " \
        "size and it doesn't have a backing file." in capsys.readouterr().err
    machine.close()
