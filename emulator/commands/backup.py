"""drive-backup and blockdev-backup, as one-action transactions (QEMU 7.2's blockdev.c).

The argument checks follow do_backup_common() and backup_job_create() in QEMU's order, so the
first failing rule gives QEMU's message.  drive-backup creates (mode absolute-paths) and opens the
target before those checks, as QEMU does: the target file stays behind when a check fails.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from emulator import qerror
from emulator.block.copy_before_write import (
    check_min_cluster_size,
    cluster_size_unknown,
    copy_cluster_size,
)
from emulator.block.dirty_bitmap import BITMAP_ALLOW_RO, BITMAP_DEFAULT
from emulator.block.drain import attach_parent, detach_parent, drained_begin, drained_end
from emulator.block.filename import node_filename
from emulator.block.image import create_image
from emulator.block.node import BlockNode
from emulator.block.permissions import PERM_ALL, TemporaryUser, check_perms
from emulator.error import QemuError
from emulator.jobs.backup import BackupJob
from emulator.jobs.txn import JobTxn
from emulator.machine import Machine
from emulator.transaction import BaseAction, run_drained

from .registry import qapi_types, qmp_command, transaction_action

qapi_types(
    {"enum": "MirrorSyncMode", "data": ["top", "full", "none", "incremental", "bitmap"]},
    {"enum": "BitmapSyncMode", "data": ["on-success", "never", "always"]},
    {"enum": "BlockdevOnError", "data": ["report", "ignore", "enospc", "stop", "auto"]},
    {"enum": "NewImageMode", "data": ["existing", "absolute-paths"]},
    # min-cluster-size is QEMU 9.1+ (dropped by the 7.2 profile, emulator/versions.py)
    {"struct": "BackupPerf", "data": {"*use-copy-range": "bool", "*max-workers": "int",
                                      "*max-chunk": "int64", "*min-cluster-size": "size"}},
    {"struct": "BackupCommon", "data": {
        "*job-id": "str", "device": "str", "sync": "MirrorSyncMode", "*speed": "int",
        "*bitmap": "str", "*bitmap-mode": "BitmapSyncMode", "*compress": "bool",
        "*on-source-error": "BlockdevOnError", "*on-target-error": "BlockdevOnError",
        "*auto-finalize": "bool", "*auto-dismiss": "bool", "*filter-node-name": "str",
        "*discard-source": "bool",
        "*x-perf": "BackupPerf"}},
    {"struct": "DriveBackup", "base": "BackupCommon",
     "data": {"target": "str", "*format": "str", "*mode": "NewImageMode"}},
    {"struct": "BlockdevBackup", "base": "BackupCommon", "data": {"target": "str"}},
)


def _no_copy_hook(offset: int, length: int) -> None:
    """The filter's hook until its job exists (nothing can write through it before)."""


@transaction_action("drive-backup", grouped=True)
@transaction_action("blockdev-backup", grouped=True)
class BackupAction(BaseAction):
    """The drive-backup / blockdev-backup transaction action."""

    def __init__(self, machine: Machine, kind: str, args: dict[str, Any], txn: JobTxn | None) -> None:
        self.machine = machine
        self.kind = kind
        self.args = args
        self.txn = txn
        self.job: BackupJob | None = None
        self.drained: BlockNode | None = None

    def prepare(self) -> None:
        args = self.args
        source = self.machine.block.lookup_bs(args["device"])
        release = None
        if self.kind == "drive-backup":
            self._drain(source)  # drive_backup_prepare: bdrv_drained_begin(bs), paired with .clean
            source.op_check("backup-source")  # QEMU's "early check to avoid creating target"
            target, release = self._open_drive_target(source)
        else:
            target = self.machine.block.lookup_bs(args["target"])
            self._drain(source)  # blockdev_backup_prepare, after both lookups
        try:
            self.job = do_backup_common(self.machine, args, source, target, self.txn, release)
        except BaseException:
            if release is not None:
                release()
            raise

    def _open_drive_target(self, source: BlockNode) -> tuple[BlockNode, Any]:
        args = self.args
        mode = args.get("mode", "absolute-paths")
        fmt = args.get("format")
        if fmt is None and mode != "existing":
            fmt = source.driver if source.is_format else "raw"
        sync = args["sync"]
        backing: BlockNode | None = None
        if sync == "top":
            backing = source.backing
            if backing is None:
                args["sync"] = sync = "full"  # QEMU rewrites it before the checks
        elif sync == "none":
            backing = source
        size = source.length()
        target_name: str = args["target"]
        if mode != "existing":
            assert fmt is not None
            backing_file = node_filename(backing) if backing is not None else None
            backing_fmt = backing.driver if backing is not None else None
            message = create_image(target_name, fmt, size, backing_file=backing_file,
                                   backing_fmt=backing_fmt)
            self.machine.block.graph_wrlock(QCOW2_CREATE_SECTIONS if fmt == "qcow2" else 0)
            if message:
                self.machine.stdout.write(message if message.endswith("\n") else message + "\n")
                _flush(self.machine)
        graph = self.machine.block
        before = len(graph.nodes)
        # QEMU opens drive-backup targets with discard=unmap and detect-zeroes=unmap; for sync=none
        # it opens them without a backing file and then attaches the source node itself as backing.
        extra: dict[str, Any] = {"discard": "unmap", "detect-zeroes": "unmap"}
        if sync == "none":
            extra["backing"] = None
        target = graph.open_file_and_format(target_name, fmt, read_only=False, extra=extra)
        if sync == "none" and backing is not None:
            del target.options["backing"]
            target.set_backing(backing)  # type: ignore[attr-defined]
            graph.graph_wrlock()  # 10.0: bdrv_set_backing_hd
        added = graph.nodes[before:]

        def release() -> None:
            graph.close_nodes(added)

        return target, release

    def _drain(self, source: BlockNode) -> None:
        drained_begin(source)
        self.drained = source

    def commit(self) -> None:
        assert self.job is not None
        self.job.start()

    def abort(self) -> None:
        if self.job is not None:
            self.job.cancel_sync(force=True)

    def clean(self) -> None:
        """drive_backup_clean / blockdev_backup_clean: the prepare's drained section ends."""
        if self.drained is not None:
            drained_end(self.drained)
            self.drained = None


def _flush(machine: Machine) -> None:
    try:
        machine.stdout.flush()
    except (OSError, ValueError):
        pass


INT64_MAX = (1 << 63) - 1

#: QEMU 10.0: graph write-lock sections while it creates a qcow2 image for a drive-backup target
#: or a snapshot overlay (bdrv_img_create opens and closes the new image's nodes): 15 in every
#: run of scripts/drain_probe.py's image_creation probe; a raw image takes none.
QCOW2_CREATE_SECTIONS = 15


def do_backup_common(machine: Machine, args: dict[str, Any], source: BlockNode, target: BlockNode,
                     txn: JobTxn | None, release: Any) -> BackupJob:
    """QEMU's do_backup_common + backup_job_create: validate, freeze the bitmap, create the job."""
    sync = args["sync"]
    bitmap_name = args.get("bitmap")
    bitmap_mode = args.get("bitmap-mode")
    if sync in ("bitmap", "incremental") and bitmap_name is None:
        raise QemuError(f"must provide a valid bitmap name for '{sync}' sync mode")
    if sync == "incremental":
        if bitmap_mode is not None and bitmap_mode != "on-success":
            raise QemuError("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'")
        sync, bitmap_mode = "bitmap", "on-success"
    bitmaps = source.dirty_bitmaps
    bitmap = None
    if bitmap_name is not None:
        bitmap = bitmaps.find(bitmap_name)
        if bitmap is None:
            raise QemuError(f"Bitmap '{bitmap_name}' could not be found")
        if bitmap_mode is None:
            raise QemuError("Bitmap sync mode must be given when providing a bitmap")
        bitmaps.check(bitmap, BITMAP_ALLOW_RO)
        if sync == "none":
            raise QemuError(f"sync mode '{sync}' does not produce meaningful bitmap outputs")
        if bitmap_mode == "never" and sync != "bitmap":
            raise QemuError(f"Bitmap sync mode 'never' has no meaningful effect when combined "
                            f"with sync mode '{sync}'")
    if bitmap_name is None and bitmap_mode is not None:
        raise QemuError("Cannot specify bitmap sync mode without a bitmap")

    # backup_job_create()
    if source is target:
        raise QemuError("Source and target cannot be the same")
    compress = bool(args.get("compress", False))
    if compress and not target.supports_compressed_writes():
        raise QemuError(f"Compression is not supported for this drive {machine.block.device_name(target)}")
    source.op_check("backup-source")
    target.op_check("backup-target")
    perf = args.get("x-perf") or {}
    min_cluster = int(perf.get("min-cluster-size", 0))
    max_workers = int(perf.get("max-workers", 64))
    max_chunk = int(perf.get("max-chunk", 0))
    if max_workers < 1 or max_workers > 0x7FFFFFFF:
        raise QemuError("max-workers must be between 1 and 2147483647")
    if max_chunk < 0:
        raise QemuError("max-chunk must be zero (which means no limit) or positive")
    if min_cluster > INT64_MAX:
        raise QemuError(f"min-cluster-size too large: {min_cluster} > {INT64_MAX}")
    # (only drive-backup turns sync=top without a backing file into full, before these checks;
    # blockdev-backup keeps top and copies just the allocated clusters)
    if source.length() != target.length():
        raise QemuError("Source and target image have different sizes")
    job_id = args.get("job-id")
    if job_id is None:
        job_id = machine.block.device_name(source)
    speed = args.get("speed", 0)
    # (the job id is checked by block_job_create, after the filter is in place: Job.__init__)
    if bitmap is not None:
        if bitmap_mode != "never":
            bitmaps.check(bitmap, BITMAP_DEFAULT)
        bitmaps.create_successor(bitmap)
    graph = machine.block
    try:  # block_copy_state_new, reached from bdrv_cbw_append before the job exists
        check_min_cluster_size(min_cluster)
    except QemuError as exc:
        if bitmap is not None:
            bitmaps.reclaim(bitmap)
        raise QemuError(qerror.COULD_NOT_CREATE_NODE % exc.desc) from None
    # bdrv_cbw_append, then block_job_create's BlockBackend on the filter (perm 0, shares all):
    # once the filter has a user it takes its real perms, which may conflict with other users
    # of the source subtree (iotest 283).  That fails before any job exists.
    try:
        cbw = graph.insert_cbw_filter(source, target, _no_copy_hook, args.get("filter-node-name"),
                                      cluster_size=copy_cluster_size(target, min_cluster),
                                      on_open=lambda: _warn_unknown_cluster_size(
                                          machine, target, min_cluster))
    except BaseException:
        if bitmap is not None:
            bitmaps.reclaim(bitmap)
        raise
    holder = TemporaryUser(0, PERM_ALL)
    attach_parent(cbw, holder)
    try:
        check_perms([cbw])
    except BaseException:
        detach_parent(cbw, holder)
        graph.remove_filter(cbw)
        if bitmap is not None:
            bitmaps.reclaim(bitmap)
        raise
    detach_parent(cbw, holder)

    def release_all() -> None:
        graph.graph_wrlock(2)  # 10.0: block_job_remove_all_bdrv, blk_unref of the job's backend
        graph.remove_filter(cbw)
        if release is not None:
            release()

    try:
        job = BackupJob(
            machine.jobs, job_id, txn=txn, speed=speed,
            auto_finalize=args.get("auto-finalize", True), auto_dismiss=args.get("auto-dismiss", True),
            source=source, target=target, sync=sync, sync_bitmap=bitmap, bitmap_mode=bitmap_mode,
            on_source_error=args.get("on-source-error", "report"),
            on_target_error=args.get("on-target-error", "report"), release=release_all,
            compress=compress, max_workers=max_workers, max_chunk=max_chunk,
            bitmap_home=cbw if machine.profile.block_copy_bitmap_on_filter else None,
            min_cluster_size=min_cluster,
            discard_source=bool(args.get("discard-source", False)))
    except BaseException:
        graph.remove_filter(cbw)
        if bitmap is not None:
            bitmaps.reclaim(bitmap)
        raise
    cbw.copy_hook = job.copy_before_write  # type: ignore[attr-defined]
    job.add_node(cbw)
    graph.graph_wrlock()  # 10.0: block_job_create's BlockBackend and job child on the filter
    return job


def _warn_unknown_cluster_size(machine: Machine, target: BlockNode, min_cluster: int = 0) -> None:
    """block_copy_calculate_cluster_size's warning: a target without bdrv_get_info (null-co,
    filters over it) and without a backing file gets the 64 KiB default, with a warning."""
    if not cluster_size_unknown(target):
        return
    stderr = getattr(machine, "stderr", None) or sys.stderr
    try:
        stderr.write(machine.profile.errors.TARGET_CLUSTER_SIZE_WARNING % max(65536, min_cluster))
        stderr.flush()
    except (OSError, ValueError):
        pass


def _qapi_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("_", "-"): value for key, value in kwargs.items()}


@qmp_command("drive-backup", "DriveBackup")
def qmp_drive_backup(machine: Machine, **kwargs: Any) -> None:
    run_drained(machine.block, [BackupAction(machine, "drive-backup", _qapi_names(kwargs), None)])


@qmp_command("blockdev-backup", "BlockdevBackup")
def qmp_blockdev_backup(machine: Machine, **kwargs: Any) -> None:
    run_drained(machine.block, [BackupAction(machine, "blockdev-backup", _qapi_names(kwargs), None)])


__all__ = ["BackupAction", "do_backup_common", "os"]
