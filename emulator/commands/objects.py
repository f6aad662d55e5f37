"""object-add / object-del for the objects the block layer uses (QEMU's qom/object_interfaces.c).

throttle-group objects become ThrottleGroups that throttle nodes join by id; iothreads are only
remembered (the emulator runs all I/O in one thread).  -object goes through the same handler.
"""

from __future__ import annotations

import time
from typing import Any

from emulator import qerror
from emulator.block.throttle import ThrottleGroup, throttle_limits_check
from emulator.error import QemuError
from emulator.machine import Machine

from .registry import qapi_types, qmp_command

_LIMIT_KEYS = [f"{kind}-{what}{suffix}" for kind in ("iops", "bps")
               for what in ("total", "read", "write") for suffix in ("", "-max", "-max-length")]

qapi_types(
    {"enum": "ObjectType", "data": ["iothread", "throttle-group", "secret", "memory-backend-ram",
                                    "memory-backend-file", "rng-random", "rng-builtin"]},
    {"struct": "ThrottleLimits", "data": {**{f"*{key}": "int" for key in _LIMIT_KEYS},
                                          "*iops-size": "int"}},
    {"struct": "ThrottleGroupProperties", "data": {
        "*limits": "ThrottleLimits", **{f"*x-{key}": "int" for key in _LIMIT_KEYS},
        "*x-iops-size": "int"}},
    {"struct": "IothreadProperties", "data": {
        "*poll-max-ns": "int", "*poll-grow": "int", "*poll-shrink": "int",
        "*aio-max-batch": "int", "*thread-pool-min": "int", "*thread-pool-max": "int"}},
    {"struct": "ObjectOptionsBase", "data": {"qom-type": "ObjectType", "id": "str"}},
    {"union": "ObjectOptions", "base": "ObjectOptionsBase", "discriminator": "qom-type",
     "data": {"throttle-group": "ThrottleGroupProperties", "iothread": "IothreadProperties"}},
)


def _objects(machine: Machine) -> dict[str, Any]:
    objects = getattr(machine, "objects", None)
    if objects is None:
        objects = {}
        machine.objects = objects  # type: ignore[attr-defined]
    return objects


def _limits(props: dict[str, Any]) -> dict[str, Any]:
    """ThrottleLimits from `limits` or the legacy x-* properties (strings from -object)."""
    limits = dict(props.get("limits") or {})
    for key, value in props.items():
        if key.startswith("x-"):
            limits[key[2:]] = value
        elif key.startswith("limits."):  # -object throttle-group,limits.bps-write=N (keyval)
            limits[key[len("limits."):]] = value
    return {key: int(value) for key, value in limits.items()}


@qmp_command("object-add", "ObjectOptions")
def qmp_object_add(machine: Machine, qom_type: str, id: str, **props: Any) -> None:
    """user_creatable_add_qapi: create the object under /objects."""
    props = {key.replace("_", "-"): value for key, value in props.items()}
    objects = _objects(machine)
    if id in objects or id in machine.block.throttle_groups:
        raise QemuError(f"attempt to add duplicate property '{id}' to object (type 'container')")
    if qom_type == "throttle-group":
        limits = _limits(props)
        throttle_limits_check(limits)
        clock = getattr(machine, "clock", None)
        if clock is not None:
            group = ThrottleGroup(id, limits, clock.now_ns, lambda: bool(clock.qtest))
        else:
            group = ThrottleGroup(id, limits, time.monotonic_ns)
        machine.block.throttle_groups[id] = group
        objects[id] = {"qom-type": qom_type, "id": id, **props}
        return
    if qom_type == "iothread":
        objects[id] = {"qom-type": qom_type, "id": id, **props}
        return
    raise QemuError(qerror.EMULATOR_NO_OBJECT % qom_type)


@qmp_command("object-del", {"id": "str"})
def qmp_object_del(machine: Machine, id: str) -> None:
    """user_creatable_del."""
    objects = _objects(machine)
    if id not in objects:
        raise QemuError(f"object '{id}' not found")
    group = machine.block.throttle_groups.get(id)
    if group is not None and group.users:
        raise QemuError(f"object '{id}' is in use, can not be deleted")
    machine.block.throttle_groups.pop(id, None)
    del objects[id]
