"""Monitor and run-state commands: qmp_capabilities, query-version, query-status,
query-commands, quit, stop, cont (QEMU's monitor/qmp-cmds-control.c, softmmu/runstate.c).

qmp_capabilities acts on the monitor that runs it.  As QEMU's monitor_cur(), the QMP layer
publishes that monitor in `current_monitor` while a handler runs; this module only knows the
small Monitor protocol below, not the QMP server.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from emulator.error import ErrorClass, QemuError

from .registry import COMMANDS, qapi_types, qmp_command

if TYPE_CHECKING:
    from emulator.machine import Machine


class Monitor(Protocol):
    """What qmp_capabilities needs from the QMP connection it runs on."""

    @property
    def negotiated(self) -> bool: ...

    @property
    def offered_capabilities(self) -> tuple[str, ...]: ...

    def enter_command_mode(self, capabilities: list[str]) -> None: ...


current_monitor: ContextVar[Monitor | None] = ContextVar("current_monitor", default=None)

qapi_types(
    {"enum": "QMPCapability", "data": ["oob"]},
    {"enum": "RunState", "data": [
        "debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate", "prelaunch",
        "finish-migrate", "restore-vm", "running", "save-vm", "shutdown", "suspended", "watchdog",
        "guest-panicked", "colo"]},
)

def runstate(machine: Machine) -> str:
    """The machine's run state ("running", "paused", "prelaunch" with -S)."""
    return machine.runstate


def set_runstate(machine: Machine, state: str) -> None:
    machine.runstate = state


@qmp_command("qmp_capabilities", {"*enable": ["QMPCapability"]}, allow_negotiation=True)
def qmp_qmp_capabilities(machine: Machine, enable: list[str] | None = None) -> None:
    monitor = current_monitor.get()
    if monitor is None or monitor.negotiated:
        raise QemuError("Capabilities negotiation is already complete, command ignored",
                        ErrorClass.COMMAND_NOT_FOUND)
    missing = [cap for cap in enable or [] if cap not in monitor.offered_capabilities]
    if missing:
        raise QemuError(f"Capability {', '.join(missing)} not available")
    monitor.enter_command_mode(list(enable or []))


@qmp_command("query-version")
def qmp_query_version(machine: Machine) -> dict[str, Any]:
    return machine.profile.version_info()


@qmp_command("query-status")
def qmp_query_status(machine: Machine) -> dict[str, Any]:
    state = runstate(machine)
    if machine.profile.status_singlestep:
        return {"running": state == "running", "singlestep": False, "status": state}
    return {"running": state == "running", "status": state}


@qmp_command("query-commands")
def qmp_query_commands(machine: Machine) -> list[dict[str, str]]:
    # QEMU prepends while walking its command list, so the last registered comes first.
    return [{"name": name} for name in reversed(COMMANDS) if machine.profile.has_command(name)]


@qmp_command("quit")
def qmp_quit(machine: Machine) -> None:
    machine.emit_event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    machine.request_shutdown("host-qmp-quit")


@qmp_command("stop")
def qmp_stop(machine: Machine) -> None:
    if runstate(machine) == "running":
        set_runstate(machine, "paused")
        machine.emit_event("STOP")


@qmp_command("cont")
def qmp_cont(machine: Machine) -> None:
    if runstate(machine) != "running":
        set_runstate(machine, "running")
        machine.emit_event("RESUME")
