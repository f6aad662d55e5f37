"""Machine types: which exist (from QEMU's own `-machine help`), their aliases, the default, and
the buses each family gives devices to plug into.

A block-layer emulator has no guest, but the buses decide what QEMU accepts: `-drive if=virtio`
needs PCI (so `-M none` refuses it), `if=ide` needs the board's IDE controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from types import ModuleType


def help_module(version: str) -> ModuleType:
    """The recorded help texts of a version (emulator.machine.help_7_2 / help_10_0)."""
    return import_module(f"emulator.machine.help_{version.replace('.', '_')}")


def machine_help(version: str) -> str:
    return str(help_module(version).MACHINE_HELP)


def device_help(version: str) -> str:
    return str(help_module(version).DEVICE_HELP)


def format_help(version: str) -> str:
    """`-drive format=help`: the block drivers of the binary's whitelist (iotests'
    supported_formats() reads it to decide which tests run)."""
    return str(help_module(version).FORMAT_HELP)


@dataclass(frozen=True)
class MachineType:
    """A machine type, resolved from a name or alias."""

    name: str
    #: "pc" (i440FX/PIIX: PCI, IDE), "q35" (PCI, AHCI IDE), "isapc" (IDE), or "none".
    family: str

    @property
    def buses(self) -> frozenset[str]:
        return {"pc": frozenset({"PCI", "IDE"}), "q35": frozenset({"PCI", "IDE"}),
                "isapc": frozenset({"IDE"})}.get(self.family, frozenset())


def _table(version: str) -> tuple[dict[str, str], str]:
    """name -> canonical name (aliases resolved), and the default machine's name."""
    names: dict[str, str] = {"none": "none"}
    default = ""
    for line in machine_help(version).splitlines()[1:]:
        name, _, desc = line.partition(" ")
        desc = desc.strip()
        if "(alias of " in desc:
            names[name] = desc.split("(alias of ", 1)[1].split(")", 1)[0]
        else:
            names.setdefault(name, name)
        if "(default)" in desc:
            default = name
    return names, default


def _family(name: str) -> str:
    if name.startswith(("pc-q35", "q35")):
        return "q35"
    if name.startswith(("pc-i440fx", "pc")):
        return "pc"
    if name == "isapc":
        return "isapc"
    return "none"


def lookup(version: str, name: str | None) -> MachineType | None:
    """The machine type `name` (the default one for None), or None if QEMU has no such type."""
    names, default = _table(version)
    canonical = names.get(name or default)
    if canonical is None:
        return None
    return MachineType(canonical, _family(canonical))


#: Machine properties `-machine TYPE,prop=value` may set (common and PC ones); others are refused.
MACHINE_PROPS = frozenset([
    "type", "accel", "kernel", "initrd", "append", "dtb", "dumpdtb", "phandle-start",
    "dt-compatible", "dump-guest-core", "mem-merge", "usb", "graphics", "firmware",
    "suppress-vmdesc", "memory-encryption", "memory-backend", "confidential-guest-support", "smp",
    "boot", "memory", "audiodev", "nvdimm", "nvdimm-persistence", "hmat", "cxl", "kernel-irqchip",
    "kvm-shadow-mem", "acpi", "smm", "pit", "hpet", "sata", "smbus", "max-ram-below-4g", "vmport",
    "pic", "i8042", "default-bus-bypass-iommu", "x-oem-id", "x-oem-table-id", "bus-lock-ratelimit",
    "sgx-epc", "pflash0", "pflash1", "i8259", "max-fw-size", "fd-bootchk",
])


def check_property(machine: MachineType, key: str) -> str | None:
    """QEMU's error for a -machine property the type does not have, or None."""
    if key in MACHINE_PROPS:
        return None
    return f"Property '{machine.name}-machine.{key}' not found"


