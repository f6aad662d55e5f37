"""`python -m emulator ARGS`: the emulator as a process with a QEMU-like command line.

Exit status and stderr follow QEMU: 1 with `qemu-system-x86_64: -opt ARG: message` for a bad
command line or a failed start-up option, 0 after `quit` or SIGTERM/SIGINT (which, as in QEMU,
print `terminating on signal N` and send a SHUTDOWN event with reason host-signal).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from emulator.cmdline import PROG, CmdlineError, Config, help_text, parse_args, version_text

if TYPE_CHECKING:
    from emulator.machine import Machine


def _install_signal_handlers(machine: Machine) -> None:
    import asyncio
    import signal

    loop = asyncio.get_running_loop()

    def terminate(signum: int) -> None:
        sys.stderr.write(f"{PROG}: terminating on signal {signum}\n")
        sys.stderr.flush()
        if not machine.shutdown_requested:
            machine.emit_event("SHUTDOWN", {"guest": False, "reason": "host-signal"})
        machine.request_shutdown("host-signal")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, terminate, int(signum))


async def _serve(config: Config, machine: Machine) -> None:
    from emulator.launcher import run_machine

    _install_signal_handlers(machine)
    await run_machine(config, machine)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator; return the process exit status."""
    args = sys.argv[1:] if argv is None else argv
    try:
        config = parse_args(args)
    except CmdlineError as exc:
        sys.stderr.write(exc.format())
        return 1
    if config.action == "version":
        sys.stdout.write(version_text(config.profile))
        return 0
    if config.action == "help":
        sys.stdout.write(help_text(config.profile))
        return 0
    if config.action == "format-help":
        from emulator.machine import types

        sys.stdout.write(types.format_help(config.version))
        return 0
    if config.action in ("machine-help", "device-help"):
        from emulator.machine import types

        if config.help_output:
            sys.stdout.write(config.help_output)
        elif config.action == "machine-help":
            sys.stdout.write(types.machine_help(config.version))
        else:
            sys.stdout.write(types.device_help(config.version))
        return 0
    return _run(config, whole_process=argv is None)


def _run(config: Config, *, whole_process: bool) -> int:
    """Start the machine: only now pay for asyncio and the command modules.

    As a process of its own (argv from sys.argv) the emulator keeps asyncio from importing ssl,
    a tenth of its start-up: it serves no TLS, and asyncio supports Pythons without ssl."""
    if whole_process and "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]
    import asyncio
    import logging

    from emulator.commands import attach
    from emulator.machine import Machine

    if not logging.getLogger("emulator").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("emulator").addHandler(handler)
    machine = attach(Machine(profile=config.profile))
    try:
        asyncio.run(_serve(config, machine))
    except CmdlineError as exc:
        sys.stderr.write(exc.format())
        return 1
    finally:
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
