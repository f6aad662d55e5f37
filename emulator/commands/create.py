"""blockdev-create (QEMU 7.2's block/create.c and the drivers' .bdrv_co_create).

The command checks the driver and starts a "create" job, which runs the driver's co_create hook
(emulator/block/drivers.py): "file" (a host file of `size` bytes), "qcow2" and "vmdk" (an empty
image written through an existing node, which needs 'write' and 'resize' on it).
"""

from __future__ import annotations

from typing import Any

from emulator.block.graph import DRIVERS  # importing the graph registers every driver
from emulator.block.node import implements
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


@qmp_command("blockdev-create", {"job-id": "str", "options": "BlockdevCreateOptions"})
def qmp_blockdev_create(machine: Machine, job_id: str, options: dict[str, Any]) -> None:
    """qmp_blockdev_create: driver checks now, the creation in a "create" job."""
    options = {key.replace("_", "-"): value for key, value in options.items()}
    driver = options["driver"]
    if driver not in BLOCKDEV_DRIVERS:
        raise QemuError(f"Block driver '{driver}' not found or not supported")
    if driver not in _CREATE_DRIVERS:
        raise QemuError("Driver does not support blockdev-create")
    driver_class = DRIVERS.get(driver)
    if driver_class is None or not implements(driver_class, "co_create"):
        raise QemuError(f"blockdev-create of driver '{driver}' is not supported by the emulator")

    def create() -> None:
        driver_class.co_create(machine.block, options)

    CreateJob(machine.jobs, job_id, create).start()
