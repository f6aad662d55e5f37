"""Shared case steps: iotest 124's incremental-backup vocabulary, on the conformance ``vm``.

QEMU's tests/qemu-iotests/124 builds every case from a handful of helpers (anchor backup, bitmap,
HMP writes, incremental target with a backing file, reference backup, chain check).  They are
mirrored here with the same names, arguments, file names and assertions, so that a ported case
reads like the upstream one and other case writers can reuse the steps.

State that upstream keeps on the test object lives in two small records: `Drive` (a drive's id,
image and full-backup path) and `Bitmap` (a bitmap's name and its chain of (incremental,
reference) backups).  Cases keep their own lists of them and pass them to `check_backups`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.imagetools import ImageTools
from conformance.recipes import recipe
from conformance.vm import VM

#: One qemu-io pattern write: (pattern byte, offset, length), as upstream's tuples.
Pattern = tuple[str, str, str]

IMGFMT = "qcow2"
IMAGE_SIZE = "64M"
IO_ERROR = "Input/output error"

#: 124's write sets.  A: one complete overwrite, one new segment, one partial overlap.
WRITES_A: tuple[Pattern, ...] = (("0xab", "0", "512"), ("0xfe", "16M", "256k"), ("0x64", "32736k", "64k"))
#: B: three more writes of the same kinds.
WRITES_B: tuple[Pattern, ...] = (("0x9a", "0", "512"), ("0x55", "8M", "352k"), ("0x78", "15872k", "1M"))
#: A' for drive1 in the transaction-failure cases: set A's offsets with drive1's own patterns.
DRIVE1_WRITES_A: tuple[Pattern, ...] = (("0xba", "0", "512"), ("0xef", "16M", "256k"),
                                         ("0x46", "32736k", "64k"))

#: Recipes (fixtures/images.json) holding 124's offline default patterns of drive0 and drive1.
DRIVE_RECIPES = {"drive0": "iotest124-drive0", "drive1": "iotest124-drive1"}


# ---- drives and bitmaps ---------------------------------------------------------------------

@dataclass(frozen=True)
class Drive:
    """A test drive: its id (device id or node name), image file and full-backup path."""

    id: str
    file: Path
    backup: Path
    fmt: str = IMGFMT


def add_node(vm: VM, node_id: str, fmt: str = IMGFMT, path: Path | None = None,
             backup: Path | None = None) -> Drive:
    """Upstream ``add_node``: name a drive's image ``<id>.<fmt>`` and its anchor
    ``<id>.full.backup.<fmt>`` in the case's directory."""
    return Drive(node_id, path or vm.path(f"{node_id}.{fmt}"),
                 backup or vm.path(f"{node_id}.full.backup.{fmt}"), fmt)


@dataclass
class Bitmap:
    """A dirty bitmap on a drive and the incremental chain taken through it."""

    name: str
    drive: Drive
    num: int = 0
    backups: list[tuple[Path, Path]] = field(default_factory=list)

    def base_target(self) -> tuple[Path, Path | None]:
        return (self.drive.backup, None)

    def new_target(self, num: int | None = None) -> tuple[Path, Path]:
        """Register the next (incremental, reference) pair: ``<drive>.<bitmap>.incN.<fmt>``."""
        if num is None:
            num = self.num
        self.num = num + 1
        base = self.drive.file.parent / f"{self.drive.id}.{self.name}."
        suffix = f"{num}.{self.drive.fmt}"
        pair = (Path(f"{base}inc{suffix}"), Path(f"{base}ref{suffix}"))
        self.backups.append(pair)
        return pair

    def last_target(self) -> tuple[Path, Path | None]:
        """The newest backup: the parent of the next incremental."""
        if self.backups:
            return self.backups[-1]
        return self.base_target()

    def del_target(self) -> None:
        """Forget the newest pair and delete its files (a failed incremental)."""
        for image in self.backups.pop():
            with contextlib.suppress(OSError):
                image.unlink()
        self.num -= 1


# ---- set-up ---------------------------------------------------------------------------------

def write_default_pattern(vm: VM, drive: Drive) -> Path:
    """Create the drive's 64M image with 124's offline patterns (``io_write_patterns``)."""
    return recipe(DRIVE_RECIPES[drive.id]).build(vm.tools, drive.file)


async def launch_with_drive0(vm: VM) -> Drive:
    """``TestIncrementalBackup.setUp``: drive0 with its pattern as ``-drive`` id drive0,
    node-name node0, then launch."""
    drive0 = add_node(vm, "drive0")
    write_default_pattern(vm, drive0)
    vm.add_drive(drive0.file, fmt=drive0.fmt, drive_id=drive0.id, node_name="node0")
    await vm.launch()
    return drive0


async def launch_without_drive(vm: VM) -> Drive:
    """``TestIncrementalBackupBlkdebug.setUp``: drive0's image is made, but the VM starts with
    no drive (the case adds it with blockdev-add over blkdebug)."""
    drive0 = add_node(vm, "drive0")
    write_default_pattern(vm, drive0)
    await vm.launch()
    return drive0


def blkdebug_node_options(drive: Drive) -> dict[str, Any]:
    """blockdev-add arguments of 124's blkdebug drive: an HMP ``flush`` moves blkdebug from
    state 1 to 2, and the first data read in state 2 fails once with EIO."""
    return {
        "node-name": drive.id,
        "driver": drive.fmt,
        "file": {
            "driver": "blkdebug",
            "image": {"driver": "file", "filename": str(drive.file)},
            "set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}],
            "inject-error": [{"event": "read_aio", "errno": 5, "state": 2,
                              "immediately": False, "once": True}],
        },
    }


def img_create(vm: VM, img: Path, fmt: str = IMGFMT, size: str = IMAGE_SIZE,
               parent: Path | None = None, parent_format: str | None = None,
               **options: str) -> Path:
    """``qemu-img create -f FMT [-o k=v] IMG SIZE [-b PARENT -F FMT]``; must succeed."""
    opts = ",".join(f"{key}={value}" for key, value in options.items()) or None
    vm.tools.create(img, fmt, size, backing=parent, backing_fmt=parent_format or fmt,
                    options=opts).check()
    return img


# ---- QMP steps ------------------------------------------------------------------------------

async def hmp_io_writes(vm: VM, drive: str, patterns: Iterable[Pattern]) -> None:
    """HMP ``qemu-io DRIVE "write -P<pat> <off> <len>"`` for each pattern, then ``flush``."""
    for pattern, offset, length in patterns:
        output = await vm.hmp_qemu_io(drive, f"write -P{pattern} {offset} {length}")
        assert output.startswith("wrote "), f"HMP qemu-io write failed: {output!r}"
    await vm.hmp_qemu_io(drive, "flush")


async def ignore_job_status_change_events(vm: VM) -> None:
    """Swallow JOB_STATUS_CHANGE events (any job, arrival order) up to the first ``null``."""
    while True:
        event = await vm.event_wait("JOB_STATUS_CHANGE")
        if event["data"]["status"] == "null":
            return


async def wait_qmp_backup(vm: VM, device: str, error: str = IO_ERROR) -> bool:
    """Wait for the device's BLOCK_JOB_COMPLETED (and swallow status changes to a ``null``).

    True for a success (then offset must equal len); False for a failure (then the event's
    error must be `error`)."""
    event = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": device}})
    await ignore_job_status_change_events(vm)
    data = event["data"]
    if "error" not in data:
        assert data["offset"] == data["len"], f"backup of {device} succeeded short: {data}"
        return True
    assert data["error"] == error, f"backup of {device} failed with {data['error']!r}"
    return False


async def wait_qmp_backup_cancelled(vm: VM, device: str) -> dict[str, Any]:
    """Wait for the device's BLOCK_JOB_CANCELLED (and swallow status changes to a ``null``)."""
    event = await vm.event_wait("BLOCK_JOB_CANCELLED", {"data": {"device": device}})
    await ignore_job_status_change_events(vm)
    return event


async def wait_until_completed(vm: VM, drive: str = "drive0", check_offset: bool = True) -> dict[str, Any]:
    """iotests' ``wait_until_completed``: the job's BLOCK_JOB_COMPLETED, without error and with
    offset == len; every status change seen belongs to that job; no job is left afterwards."""
    event = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": drive}})
    assert "error" not in event["data"], f"job {drive} failed: {event['data']}"
    if check_offset:
        assert event["data"]["offset"] == event["data"]["len"]
    for other in vm.get_events():
        if other["event"] == "JOB_STATUS_CHANGE":
            assert other["data"]["id"] == drive, f"status change of another job: {other}"
    await assert_no_active_block_jobs(vm)
    return event


async def do_qmp_backup(vm: VM, error: str = IO_ERROR, **kwargs: Any) -> bool:
    """``drive-backup`` (must return {}), then wait_qmp_backup on its device."""
    await vm.cmd("drive-backup", **kwargs)
    return await wait_qmp_backup(vm, kwargs["device"], error)


async def create_anchor_backup(vm: VM, drive: Drive) -> Path:
    """The full backup every chain starts from (the server creates the target file)."""
    assert await do_qmp_backup(vm, job_id=drive.id, device=drive.id, sync="full",
                               format=drive.fmt, target=str(drive.backup))
    return drive.backup


async def make_reference_backup(vm: VM, bitmap: Bitmap) -> None:
    """A full backup of the drive into the newest pair's reference path (server-created)."""
    _, reference = bitmap.last_target()
    assert reference is not None, "no incremental to make a reference for"
    assert await do_qmp_backup(vm, job_id=bitmap.drive.id, device=bitmap.drive.id, sync="full",
                               format=bitmap.drive.fmt, target=str(reference))


async def add_bitmap(vm: VM, name: str, drive: Drive, **kwargs: Any) -> Bitmap:
    """``block-dirty-bitmap-add {node: drive, name, ...}`` (raises ExecuteError on refusal)."""
    bitmap = Bitmap(name, drive)
    await vm.cmd("block-dirty-bitmap-add", node=drive.id, name=name, **kwargs)
    return bitmap


def prepare_backup(vm: VM, bitmap: Bitmap, parent: Path | None = None, **kwargs: str) -> Path:
    """Create the next incremental target, backed by `parent` (default: the newest backup)."""
    if parent is None:
        parent = bitmap.last_target()[0]
    target, _ = bitmap.new_target()
    return img_create(vm, target, bitmap.drive.fmt, parent=parent, **kwargs)


async def create_incremental(vm: VM, bitmap: Bitmap, parent: Path | None = None,
                             validate: bool = True, target: Path | None = None) -> bool:
    """Incremental backup through `bitmap` into an existing target; on success a reference
    backup follows, on failure the target is discarded (and `validate` must be False)."""
    if parent is None:
        parent = bitmap.last_target()[0]
    if target is None:
        target = prepare_backup(vm, bitmap, parent)
    result = await do_qmp_backup(vm, job_id=bitmap.drive.id, device=bitmap.drive.id,
                                 sync="incremental", bitmap=bitmap.name, format=bitmap.drive.fmt,
                                 target=str(target), mode="existing")
    if not result:
        bitmap.del_target()
        assert not validate, f"incremental backup of {bitmap.drive.id} through {bitmap.name} failed"
    else:
        await make_reference_backup(vm, bitmap)
    return result


async def assert_no_active_block_jobs(vm: VM) -> None:
    """``query-block-jobs`` must be empty."""
    assert await vm.cmd("query-block-jobs") == []


def assert_no_pending_events(vm: VM) -> None:
    """Every event received so far has been waited for (upstream: ``get_qmp_events(wait=False)``
    is empty).  Call it after a command, so that events sent before its reply have arrived."""
    pending = vm.get_events()
    assert not pending, f"unexpected events: {pending}"


# ---- transactions ---------------------------------------------------------------------------

def transaction_action(action: str, **kwargs: Any) -> dict[str, Any]:
    """One ``transaction`` action; argument names use dashes, as QMP spells them."""
    return {"type": action, "data": {key.replace("_", "-"): value for key, value in kwargs.items()}}


def transaction_bitmap_clear(node: str, name: str, **kwargs: Any) -> dict[str, Any]:
    return transaction_action("block-dirty-bitmap-clear", node=node, name=name, **kwargs)


def transaction_drive_backup(device: str, target: Path | str, **kwargs: Any) -> dict[str, Any]:
    """A drive-backup action whose job id is the device id, as upstream passes it."""
    return transaction_action("drive-backup", job_id=device, device=device, target=str(target),
                              **kwargs)


# ---- bitmap status --------------------------------------------------------------------------

async def device_bitmaps(vm: VM) -> dict[str, list[dict[str, Any]]]:
    """Bitmaps per root node name of every device, from query-block (``inserted.dirty-bitmaps``)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for device in await vm.cmd("query-block"):
        inserted = device.get("inserted")
        if inserted and "dirty-bitmaps" in inserted:
            found[inserted["node-name"]] = inserted["dirty-bitmaps"]
    return found


async def node_bitmaps(vm: VM) -> dict[str, list[dict[str, Any]]]:
    """Bitmaps per node name from ``query-named-block-nodes flat=true`` (iotests' query_bitmaps);
    for nodes added with blockdev-add, which query-block does not show."""
    return {node["node-name"]: node["dirty-bitmaps"]
            for node in await vm.cmd("query-named-block-nodes", flat=True)
            if "dirty-bitmaps" in node}


def find_bitmap(bitmaps: Mapping[str, Sequence[Mapping[str, Any]]], node: str,
                name: str) -> Mapping[str, Any]:
    """The named bitmap of `node` (anonymous successors and copy bitmaps have no name)."""
    for bitmap in bitmaps.get(node, ()):
        if bitmap.get("name", "") == name:
            return bitmap
    raise AssertionError(f"no bitmap {name!r} on node {node!r}: {dict(bitmaps)}")


def assert_bitmap_status(bitmaps: Mapping[str, Sequence[Mapping[str, Any]]], node: str, name: str,
                         fields: Mapping[str, Any]) -> None:
    """iotests' ``check_bitmap_status``: `fields` is a subset of the bitmap's fields."""
    bitmap = find_bitmap(bitmaps, node, name)
    mismatched = {key: bitmap.get(key) for key, value in fields.items() if bitmap.get(key) != value}
    assert not mismatched, f"bitmap {node}/{name}: expected {dict(fields)}, got {dict(bitmap)}"


# ---- image checks (after shutdown) ----------------------------------------------------------

def compare_images(tools: ImageTools, first: Path, second: Path, fmt: str = IMGFMT) -> bool:
    """``qemu-img compare -f FMT -F FMT`` (iotests' compare_images): True when identical."""
    return tools.compare(first, second, fmt).returncode == 0


def verify_chain(tools: ImageTools, bitmap: Bitmap) -> None:
    """Each incremental (read through its backing chain) equals its reference, and the newest
    backup equals the drive itself."""
    for incremental, reference in bitmap.backups:
        assert compare_images(tools, incremental, reference, bitmap.drive.fmt), \
            f"{incremental.name} differs from {reference.name}"
    last = bitmap.last_target()[0]
    assert compare_images(tools, last, bitmap.drive.file, bitmap.drive.fmt), \
        f"{last.name} differs from the drive {bitmap.drive.file.name}"


def check_backups(tools: ImageTools, bitmaps: Iterable[Bitmap]) -> None:
    """Upstream ``check_backups``: verify_chain for every bitmap, in creation order."""
    for bitmap in bitmaps:
        verify_chain(tools, bitmap)
