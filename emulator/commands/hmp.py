"""human-monitor-command: the HMP commands block tests use (qemu-io), answered as QEMU's HMP does.

QEMU prints qemu-io's output on its own stdout, not in the reply: the reply is "" on success and
carries only HMP-level errors ("Error: ...\\r\\n").  We do the same, printing to machine.stdout.
"""

from __future__ import annotations

import shlex

from emulator.block.backend import BlockBackend
from emulator.block.drain import attach_parent, detach_parent, drained
from emulator.block.drivers import NoMedium
from emulator.block.node import BlockNode
from emulator.block.permissions import PERM_ALL, PERM_WRITE, TemporaryUser, check_perms
from emulator.block.qemu_io import run_command
from emulator.error import QemuError
from emulator.machine import Machine

from .registry import qmp_command


def _hmp_output(text: str) -> str:
    """HMP output goes through a terminal-style monitor: newlines become CRLF."""
    return text.replace("\n", "\r\n")


def _hmp_qemu_io(machine: Machine, args: str) -> str:
    try:
        words = shlex.split(args)
    except ValueError:
        return _hmp_output("Error: qemu-io: unbalanced quotes\n")
    device_only = bool(words) and words[0] == "-d"
    if device_only:
        words = words[1:]
    if len(words) != 2:
        return _hmp_output("Parameter 'command' is missing\n" if len(words) < 2 else
                           "qemu-io: too many arguments\n")
    device, command = words
    if device_only:
        # -d names a guest device (blk_by_qdev_id): a -drive if=none backend is not one
        # (measured on QEMU 7.2.22 and 10.0.2); a -device's id is.
        backend = next((b for b in machine.block.backends.values() if b.dev is not None and b.dev == device),
                       None)
        if backend is None:
            return _hmp_output(f"Error: Device '{device}' not found\n")
    else:
        backend = machine.block.find_backend(device)
    target: BlockNode | None
    if backend is not None:
        target = backend.root if backend.root is not None else NoMedium()
    else:
        target = machine.block.find_node(device)
    if target is None:
        return _hmp_output(f"Error: Cannot find device='' nor node-name='{device}'\n")
    if backend is None:
        # A node name gets a temporary BlockBackend (blk_new + blk_insert_bs ... blk_unref).
        # Real QEMU 7.2.22 drains the node twice on the way (scripts/drain_probe.py, probe
        # hmp_qemu_io: two paused/running pairs of a backup above the node, in every run); the
        # last one is blk_unref -> blk_remove_bs -> blk_drain.
        machine.block.graph_wrlock()  # 10.0: blk_insert_bs takes the graph write lock
        with drained(target):
            pass
        try:
            return _qemu_io_on_node(machine, target, command)
        finally:
            with drained(target):
                pass
            machine.block.graph_wrlock()  # 10.0: blk_remove_bs's bdrv_root_unref_child
    return _qemu_io_on_backend(machine, backend, target, command)


def _qemu_io_on_node(machine: Machine, target: BlockNode, command: str) -> str:
    if _needs_write(command):
        conflict = _write_conflict(target)
        if conflict:
            return _hmp_output(conflict + "\n")
    return _run(machine, target, command)


def _qemu_io_on_backend(machine: Machine, backend: BlockBackend, target: BlockNode,
                        command: str) -> str:
    if backend.root is not None and _needs_write(command) and not backend.perm & PERM_WRITE:
        # qemu-io's command_run: blk_set_perm(perm | WRITE), kept after the command.
        try:
            backend.set_perm(backend.perm | PERM_WRITE, backend.shared_perm)
        except QemuError as exc:
            return _hmp_output(exc.desc + "\n")
    return _run(machine, target, command)


def _run(machine: Machine, target: BlockNode, command: str) -> str:
    """qemuio_command: normal output to QEMU's stdout, error_report() lines into the reply."""
    reported: list[str] = []
    run_command(target, command, machine.stdout, report=reported.append)
    try:
        machine.stdout.flush()
    except (OSError, ValueError):
        pass
    return _hmp_output("".join(line + "\n" for line in reported))


#: qemu-io commands that take the 'write' permission on the temporary BlockBackend.
_WRITE_COMMANDS = frozenset({"write", "w", "aio_write", "writev", "discard", "d",
                             "aio_discard", "truncate", "zone_open", "zone_close", "zone_finish",
                             "zone_reset", "zone_append"})


def _needs_write(command: str) -> bool:
    words = command.split()
    return bool(words) and words[0] in _WRITE_COMMANDS


def _write_conflict(node: BlockNode) -> str | None:
    """A node-name qemu-io attaches an unnamed BlockBackend, and a writing command asks it for
    'write' (qemu-io's command_run): QEMU's permission error if a user of the node forbids it."""
    user = TemporaryUser(PERM_WRITE, PERM_ALL)
    attach_parent(node, user)
    try:
        check_perms([node])
    except QemuError as exc:
        return exc.desc
    finally:
        detach_parent(node, user)
    return None


HMP_COMMANDS = {"qemu-io": _hmp_qemu_io}


@qmp_command("human-monitor-command", {"command-line": "str", "*cpu-index": "int"})
def qmp_human_monitor_command(machine: Machine, command_line: str, cpu_index: int | None = None) -> str:
    line = command_line.strip()
    if not line:
        return ""
    name, _, rest = line.partition(" ")
    handler = HMP_COMMANDS.get(name)
    if handler is None:
        return _hmp_output(f"unknown command: '{name}'\n")
    try:
        return handler(machine, rest)
    except QemuError as exc:
        return _hmp_output(f"Error: {exc.desc}\n")
