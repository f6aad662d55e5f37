"""device_add / device_del: QMP's side of the machine's qdev model (emulator/machine/devices.py).

device_add takes the driver, an optional id and bus, and any device properties (QAPI 'gen':
false, so the arguments are passed on as they come, with their QMP names).  device_del answers
at once; a SCSI device then leaves in a bottom half (DEVICE_DELETED follows the reply), while a
PCI device waits for a guest's acknowledgement, which without a guest never comes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from emulator import qerror
from emulator.error import QemuError
from emulator.machine import Machine

from .registry import qmp_command


def _devices(machine: Machine) -> Any:
    if machine.devices is None:
        machine.configure(machine.version)
    return machine.devices


@qmp_command("device_add", "any")
def qmp_device_add(machine: Machine, **arguments: Any) -> None:
    # Arguments arrive with Python names; device properties keep QMP's spelling.
    props = {key.replace("_", "-") if key not in _UNDERSCORE_PROPS else key: value
             for key, value in arguments.items()}
    if "driver" not in props:
        raise QemuError(qerror.MISSING_PARAMETER % "driver")
    _devices(machine).add(props)


#: Device properties whose QEMU names contain underscores (python_name() cannot tell them apart).
_UNDERSCORE_PROPS = frozenset({"logical_block_size", "physical_block_size", "min_io_size",
                               "opt_io_size", "discard_granularity", "num_queues", "max_sectors",
                               "cmd_per_lun", "param_change", "virtqueue_size", "indirect_desc",
                               "event_idx", "iommu_platform", "rotation_rate", "scsi_version",
                               "max_unmap_size", "max_io_size", "device_id", "port_wwn",
                               "port_index", "failover_pair_id", "backend_defaults"})


@qmp_command("device_del", {"id": "str"})
async def qmp_device_del(machine: Machine, id: str) -> None:
    unplug = _devices(machine).delete(id)
    if unplug is not None:
        asyncio.get_running_loop().call_soon(unplug)
