"""qdev without a guest: the devices `-device`, `device_add` and `-drive if=virtio|ide` create,
the buses they plug into, their QOM paths, and the block backends they attach to.

What is observable over QMP is modelled: a device's canonical path
(`/machine/peripheral/ID`, `/machine/peripheral-anon/device[N]`, `/machine/unattached/device[N]`
for board-created IDE drives), the `qdev` name query-block reports for its backend (the device's id,
or its path; virtio-blk's backend hangs off its `virtio-backend` child), QEMU's errors for
missing buses and drives, and unplug: a SCSI device leaves at once (DEVICE_DELETED; a -drive
backend goes with it), a PCI device on a board waits for a guest that never answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emulator import qerror
from emulator.cutils import id_wellformed
from emulator.error import ErrorClass, QemuError

from .types import MachineType, device_help

if TYPE_CHECKING:
    from emulator.block.backend import BlockBackend
    from emulator.block.graph import BlockGraph

COMMON_PROPS = frozenset({"id", "bus", "addr", "multifunction", "romfile", "rombar", "failover_pair_id",
                          "acpi-index", "x-pcie-lnksta-dllla", "x-pcie-extcap-init"})
BLOCK_PROPS = frozenset({"drive", "serial", "logical_block_size", "physical_block_size",
                         "min_io_size", "opt_io_size", "discard_granularity", "write-cache",
                         "share-rw", "account-invalid", "account-failed", "rerror", "werror",
                         "bootindex", "backend_defaults"})


@dataclass(frozen=True)
class DeviceModel:
    """A device type: the bus it plugs into, the bus it provides, and its properties."""

    name: str
    bus: str | None
    provides: str | None = None
    block: bool = False
    removable: bool = False
    #: Child object that owns the BlockBackend (virtio-blk's "virtio-backend").
    backend_child: str | None = None
    props: frozenset[str] = frozenset()

    def accepts(self, prop: str) -> bool:
        return prop in COMMON_PROPS or prop in self.props or (self.block and prop in BLOCK_PROPS)


_VIRTIO_PCI = frozenset({"num-queues", "queue-size", "iothread", "ioeventfd", "vectors",
                         "disable-legacy", "disable-modern", "indirect_desc", "event_idx",
                         "config-wce", "scsi", "request-merging", "seg-max-adjust",
                         "num_queues", "max_sectors", "cmd_per_lun", "hotplug", "param_change",
                         "virtqueue_size", "packed", "iommu_platform", "ats"})
_SCSI = frozenset({"channel", "scsi-id", "lun", "removable", "dpofua", "ver", "vendor", "product",
                   "device_id", "wwn", "port_wwn", "port_index", "rotation_rate", "scsi_version",
                   "max_unmap_size", "max_io_size", "quirk_mode_page_vendor_specific_apple"})
_IDE = frozenset({"unit", "drive", "ver", "wwn", "model", "rotation_rate", "lcyls", "lheads",
                  "lsecs", "cyls", "heads", "secs", "lchs-trans", "bios-chs-trans"})

MODELS = {model.name: model for model in (
    DeviceModel("virtio-blk-pci", "PCI", block=True, backend_child="virtio-backend", props=_VIRTIO_PCI),
    DeviceModel("virtio-scsi-pci", "PCI", provides="SCSI", props=_VIRTIO_PCI),
    DeviceModel("scsi-hd", "SCSI", block=True, props=_SCSI),
    DeviceModel("scsi-cd", "SCSI", block=True, removable=True, props=_SCSI),
    DeviceModel("ide-hd", "IDE", block=True, props=_IDE),
    DeviceModel("ide-cd", "IDE", block=True, removable=True, props=_IDE),
)}
ALIASES = {"virtio-blk": "virtio-blk-pci", "virtio-scsi": "virtio-scsi-pci"}


def known_model_names(version: str) -> set[str]:
    """Every device model QEMU has (from `-device help`), aliases included."""
    names: set[str] = set()
    for match in re.finditer(r'^name "([^"]+)"(?:.*alias "([^"]+)")?', device_help(version), re.MULTILINE):
        names.add(match.group(1))
        if match.group(2):
            names.add(match.group(2))
    return names


@dataclass(eq=False)
class Device:
    """One realized device."""

    model: DeviceModel
    id: str | None
    path: str
    backend: BlockBackend | None = None
    #: The backend was made by -drive for this device (QEMU deletes it with the device).
    owns_backend: bool = False
    parent: Device | None = None
    children: list[Device] = field(default_factory=list)

    @property
    def qdev(self) -> str:
        """What query-block reports as the backend's `qdev` (blk_get_attached_dev_id)."""
        if self.model.backend_child:
            return f"{self.path}/{self.model.backend_child}"
        return self.id or self.path


def _claim(backend: BlockBackend, model: DeviceModel, *, share_rw: bool) -> None:
    """blkconf_apply_backend_options: the device takes read (and write unless read-only or a
    CD-ROM) and shares read, unchanged writes, resize (disks) and writes only with share-rw=on."""
    from emulator.block import permissions as p

    root = backend.root
    read_only = model.removable or root is None or bool(getattr(root, "read_only", False))
    perm = p.PERM_CONSISTENT_READ | (0 if read_only else p.PERM_WRITE)
    shared = (p.PERM_CONSISTENT_READ | p.PERM_WRITE_UNCHANGED | (0 if model.removable else p.PERM_RESIZE)
              | (p.PERM_WRITE if share_rw else 0))
    set_perm = getattr(backend, "set_perm", None)
    if set_perm is not None:
        set_perm(perm, shared)


def _release(backend: BlockBackend) -> None:
    """The device is gone: the backend needs nothing and shares everything."""
    from emulator.block import permissions as p

    set_perm = getattr(backend, "set_perm", None)
    if set_perm is not None:
        set_perm(0, p.PERM_ALL)


EventSink = Callable[[str, dict[str, Any]], None]


class DeviceTree:
    """The machine's devices, keyed by id, in creation order."""

    def __init__(self, machine_type: MachineType, version: str, block: BlockGraph,
                 emit: EventSink, unattached_ide_base: int) -> None:
        self.machine_type = machine_type
        self.version = version
        self.block = block
        self.emit = emit
        self.devices: list[Device] = []
        self._anon = 0
        #: Index of the first board-created IDE drive under /machine/unattached (the profile's).
        self._unattached = unattached_ide_base
        self._ide_units = 0
        self._known: set[str] | None = None

    # ---- lookup -----------------------------------------------------------------------------
    def find(self, dev_id: str) -> Device | None:
        for device in self.devices:
            if device.id == dev_id or device.path == dev_id:
                return device
        return None

    def _model(self, driver: str) -> DeviceModel:
        name = ALIASES.get(driver, driver)
        model = MODELS.get(name)
        if model is not None:
            return model
        if self._known is None:
            self._known = known_model_names(self.version)
        if driver in self._known:
            raise QemuError(f"device '{driver}' is not supported by the blocktxn emulator")
        raise QemuError(f"'{driver}' is not a valid device model name")

    def _parent_for(self, model: DeviceModel, bus: str | None) -> Device | None:
        """The controller a device plugs into (None for board buses), or QEMU's error."""
        assert model.bus is not None
        if model.bus in self.machine_type.buses and bus is None:
            return None
        for device in self.devices:
            if device.model.provides == model.bus and (bus is None or bus.startswith(
                    f"{device.id}.") or bus == device.id):
                return device
        if bus is not None:
            raise QemuError(f"Bus '{bus}' not found")
        raise QemuError(f"No '{model.bus}' bus found for device '{model.name}'")

    # ---- plug ---------------------------------------------------------------------------------
    def add(self, opts: dict[str, Any], *, owns_backend: bool = False,
            unattached: bool = False) -> Device:
        """qdev_device_add: `opts` holds "driver" and the properties, as -device or device_add."""
        opts = dict(opts)
        driver = str(opts.pop("driver", ""))
        model = self._model(driver)
        dev_id = opts.pop("id", None)
        if dev_id is not None:
            dev_id = str(dev_id)
            if not id_wellformed(dev_id):
                raise QemuError(qerror.ID_NOT_WELLFORMED)
            if self.find(dev_id) is not None:
                raise QemuError(f"Duplicate ID '{dev_id}' for device")
        parent = self._parent_for(model, opts.get("bus"))
        for prop in opts:
            if not model.accepts(prop):
                inner = "virtio-blk-device" if model.backend_child and prop == "drive" else model.name
                raise QemuError(f"Property '{inner}.{prop}' not found")
        backend = None
        if model.block:
            backend = self._backend(model, opts.get("drive"))
        if dev_id is not None:
            path = f"/machine/peripheral/{dev_id}"
        elif unattached:
            path = f"/machine/unattached/device[{self._unattached}]"
            self._unattached += 1
        else:
            path = f"/machine/peripheral-anon/device[{self._anon}]"
            self._anon += 1
        device = Device(model, dev_id, path, backend, owns_backend, parent)
        if backend is not None:
            _claim(backend, model, share_rw=str(opts.get("share-rw", "off")) in ("on", "true", "yes"))
            backend.attach_dev(device.qdev, removable=model.removable)
        if parent is not None:
            parent.children.append(device)
        self.devices.append(device)
        return device

    def _backend(self, model: DeviceModel, drive: Any) -> BlockBackend:
        if drive is None:
            if model.bus == "IDE":
                raise QemuError("No drive specified")
            raise QemuError("drive property not set")
        backend = self.block.backends.get(str(drive))
        if backend is None:
            inner = "virtio-blk-device" if model.backend_child else model.name
            raise QemuError(f"Property '{inner}.drive' can't find value '{drive}'")
        if backend.dev is not None:
            raise QemuError(f"Drive '{drive}' is already in use by another device")
        return backend

    def check_drive_bus(self, interface: str) -> None:
        """QEMU's error for a -drive interface the board has no bus for."""
        if interface == "virtio" and "PCI" not in self.machine_type.buses:
            raise QemuError("No 'PCI' bus found for device 'virtio-blk-pci'")
        if interface == "ide" and ("IDE" not in self.machine_type.buses or self._ide_units >= 4):
            unit = self._ide_units
            raise QemuError(qerror.MACHINE_NO_DRIVE_BUS % ("ide", unit // 2, unit % 2))
        if interface == "scsi":
            raise QemuError("machine type does not support if=scsi,bus=0,unit=0")

    def add_drive_device(self, interface: str, backend: BlockBackend, opts: dict[str, str]) -> None:
        """The device `-drive if=virtio|ide` creates for its backend."""
        if interface == "virtio":
            self.add({"driver": "virtio-blk-pci", "drive": backend.name}, owns_backend=True)
        elif interface == "ide":
            unit = self._ide_units
            if "IDE" not in self.machine_type.buses or unit >= 4:
                raise QemuError(qerror.MACHINE_NO_DRIVE_BUS % ("ide", unit // 2, unit % 2))
            self._ide_units += 1
            driver = "ide-cd" if opts.get("media") == "cdrom" else "ide-hd"
            self.add({"driver": driver, "drive": backend.name}, owns_backend=True, unattached=True)
        elif interface != "none":
            raise QemuError(qerror.MACHINE_NO_DRIVE_BUS % (interface, 0, 0))

    # ---- unplug -------------------------------------------------------------------------------
    def delete(self, dev_id: str) -> Callable[[], None] | None:
        """device_del: the unplug to run later (QEMU finishes it in a bottom half), or None
        while it waits for a guest (PCI hot-unplug on a board)."""
        device = self.find(dev_id)
        if device is None:
            raise QemuError(f"Device '{dev_id}' not found", ErrorClass.DEVICE_NOT_FOUND)
        if device.parent is None and device.model.bus in ("PCI", "IDE"):
            if device.model.bus == "IDE":
                raise QemuError("Bus 'ide.0' does not support hotplugging")
            return None
        return lambda: self._unplug(device)

    def _unplug(self, device: Device) -> None:
        if device not in self.devices:
            return
        for child in list(device.children):
            self._unplug(child)
        self.devices.remove(device)
        if device.parent is not None and device in device.parent.children:
            device.parent.children.remove(device)
        backend = device.backend
        if backend is not None:
            _release(backend)
            backend.detach_dev()
            if device.owns_backend and self.block.backends.get(backend.name) is backend:
                del self.block.backends[backend.name]  # blockdev_auto_del
                backend.detach()
        data: dict[str, Any] = {"path": device.path}
        if device.id is not None:
            data = {"device": device.id, "path": device.path}
        self.emit("DEVICE_DELETED", data)
