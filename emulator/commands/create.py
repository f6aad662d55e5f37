"""blockdev-create (QEMU 7.2's block/create.c and the drivers' .bdrv_co_create).

The command checks the driver and starts a "create" job; the job opens what it needs and writes
the image.  Implemented drivers: "file" (a host file of `size` bytes) and "qcow2" (an empty
qcow2 written through an existing node, which needs 'write' and 'resize' on it).
"""

from __future__ import annotations

import os
from typing import Any

from emulator import qerror
from emulator.block.drain import attach_parent, detach_parent
from emulator.block.filename import node_filename
from emulator.block.node import BlockNode
from emulator.block.permissions import PERM_ALL, PERM_RESIZE, PERM_WRITE, TemporaryUser, check_perms
from emulator.block.qcow2 import Qcow2Image
from emulator.block.vmdk import create as create_vmdk
from emulator.error import QemuError
from emulator.jobs.create import CreateJob
from emulator.machine import Machine

from .block_schema import BLOCKDEV_DRIVERS
from .registry import qapi_types, qmp_command

qapi_types(
    {"enum": "PreallocMode", "data": ["off", "metadata", "falloc", "full"]},
    {"enum": "BlockdevQcow2Version", "data": ["v2", "v3"]},
    {"enum": "Qcow2CompressionType", "data": ["zlib", "zstd"]},
    {"struct": "BlockdevCreateOptionsFile", "data": {
        "filename": "str", "size": "size", "*preallocation": "PreallocMode", "*nocow": "bool",
        "*extent-size-hint": "size"}},
    {"struct": "BlockdevCreateOptionsQcow2", "data": {
        "file": "BlockdevRef", "*data-file": "BlockdevRef", "*data-file-raw": "bool",
        "*extended-l2": "bool", "size": "size", "*version": "BlockdevQcow2Version",
        "*backing-file": "str", "*backing-fmt": "BlockdevDriver", "*encrypt": "any",
        "*cluster-size": "size", "*preallocation": "PreallocMode", "*lazy-refcounts": "bool",
        "*refcount-bits": "int", "*compression-type": "Qcow2CompressionType"}},
    {"struct": "BlockdevCreateOptionsVmdk", "data": {
        "file": "BlockdevRef", "size": "size", "*extents": ["BlockdevRef"], "*subformat": "str",
        "*backing-file": "str", "*adapter-type": "str", "*hwversion": "str",
        "*toolsversion": "str", "*zeroed-grain": "bool"}},
    {"union": "BlockdevCreateOptions", "base": {"driver": "BlockdevDriver"},
     "discriminator": "driver",
     "data": {"file": "BlockdevCreateOptionsFile", "qcow2": "BlockdevCreateOptionsQcow2",
              "vmdk": "BlockdevCreateOptionsVmdk"}},
)

#: Drivers with a .bdrv_co_create in QEMU 7.2 (the rest say "Driver does not support ...").
_CREATE_DRIVERS = frozenset({"file", "qcow2", "qcow", "qed", "vdi", "vhdx", "vmdk", "vpc",
                             "parallels", "luks", "nfs", "rbd", "ssh", "gluster"})


def _create_file(options: dict[str, Any]) -> None:
    """raw_co_create (file-posix): create or truncate the file, then size it."""
    if options.get("preallocation", "off") != "off":
        raise QemuError(qerror.EMULATOR_NO_PREALLOCATION)
    filename = options["filename"]
    try:
        fd = os.open(filename, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise QemuError(f"Could not create '{filename}': {exc.strerror}") from None
    try:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, int(options["size"]))
    except OSError as exc:
        raise QemuError(f"Could not resize file: {exc.strerror}") from None
    finally:
        os.close(fd)


def _create_qcow2(machine: Machine, options: dict[str, Any]) -> None:
    """qcow2_co_create: check the options, then write an empty image through the file node."""
    size = int(options["size"])
    cluster_size = int(options.get("cluster-size", 65536))
    Qcow2Image.validate_cluster_size(cluster_size)
    if size % 512:
        raise QemuError(qerror.IMAGE_SIZE_NOT_SECTOR_MULTIPLE)
    if options.get("version", "v3") != "v3":
        raise QemuError("qcow2 version 2 images are not supported by the emulator")
    for key, supported in (("extended-l2", False), ("lazy-refcounts", False),
                           ("data-file-raw", False)):
        if options.get(key, supported) != supported:
            raise QemuError(qerror.EMULATOR_NO_OPTION % key)
    for key in ("data-file", "encrypt"):
        if key in options:
            raise QemuError(qerror.EMULATOR_NO_OPTION % key)
    if int(options.get("refcount-bits", 16)) != 16:
        raise QemuError("Refcount widths other than 16 bits are not supported by the emulator")
    if options.get("compression-type", "zlib") != "zlib":
        raise QemuError("Compression type 'zstd' is not supported by the emulator")
    if options.get("preallocation", "off") != "off":
        raise QemuError(qerror.EMULATOR_NO_PREALLOCATION)
    backing_file = options.get("backing-file")
    backing_fmt = options.get("backing-fmt")
    if backing_fmt and not backing_file:
        raise QemuError(qerror.BACKING_FMT_WITHOUT_FILE)
    file = _file_node(machine, options["file"])
    # blk_new_with_bs(bs, BLK_PERM_WRITE | BLK_PERM_RESIZE, BLK_PERM_ALL)
    user = TemporaryUser(PERM_WRITE | PERM_RESIZE, PERM_ALL)
    attach_parent(file, user)
    try:
        check_perms([file])
        Qcow2Image.create(file, size, cluster_size=cluster_size, backing_file=backing_file,
                          backing_fmt=backing_fmt)
    finally:
        detach_parent(file, user)


def _create_vmdk(machine: Machine, options: dict[str, Any]) -> None:
    """vmdk_co_create for one hosted sparse extent in the `file` node."""
    for key in ("extents", "backing-file", "zeroed-grain"):
        if options.get(key):
            raise QemuError(qerror.EMULATOR_NO_OPTION % key)
    if options.get("adapter-type", "ide") != "ide" or options.get("hwversion", "4") != "4":
        raise QemuError("VMDK adapter types and hardware versions other than the defaults are "
                        "not supported by the emulator")
    file = _file_node(machine, options["file"])
    user = TemporaryUser(PERM_WRITE | PERM_RESIZE, PERM_ALL)
    attach_parent(file, user)
    try:
        check_perms([file])
        create_vmdk(file, int(options["size"]), os.path.basename(node_filename(file)),
                    options.get("subformat", "monolithicSparse"))
    finally:
        detach_parent(file, user)


def _file_node(machine: Machine, ref: Any) -> BlockNode:
    """A BlockdevRef for creation: a node name, or inline options opened for the job only."""
    if isinstance(ref, str):
        return machine.block.lookup_bs(ref)
    raise QemuError("Inline 'file' options for blockdev-create are not supported by the emulator")


@qmp_command("blockdev-create", {"job-id": "str", "options": "BlockdevCreateOptions"})
def qmp_blockdev_create(machine: Machine, job_id: str, options: dict[str, Any]) -> None:
    """qmp_blockdev_create: driver checks now, the creation in a "create" job."""
    options = {key.replace("_", "-"): value for key, value in options.items()}
    driver = options["driver"]
    if driver not in BLOCKDEV_DRIVERS:
        raise QemuError(f"Block driver '{driver}' not found or not supported")
    if driver not in _CREATE_DRIVERS:
        raise QemuError("Driver does not support blockdev-create")
    if driver == "file":
        def create() -> None:
            _create_file(options)
    elif driver == "qcow2":
        def create() -> None:
            _create_qcow2(machine, options)
    elif driver == "vmdk":
        def create() -> None:
            _create_vmdk(machine, options)
    else:
        raise QemuError(f"blockdev-create of driver '{driver}' is not supported by the emulator")
    CreateJob(machine.jobs, job_id, create).start()
