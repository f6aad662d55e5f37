"""Running an emulator instance: the shared start-up sequence, and the in-process launcher.

run_machine() is what `python -m emulator` and EmbeddedEmulator both do: create the start-up
block nodes and drives, open the QMP endpoints, serve until quit or stop, then close the
machine (cancel jobs, flush and close images) and remove the sockets.

EmbeddedEmulator runs that on a private asyncio loop in a daemon thread, so a test process can
host many instances at once (pytest-xdist workers run many cases): no global state, no signal
handlers, no sys.exit.  Command-line errors become EmulatorStartError with QEMU's text.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from emulator.commands import attach
from emulator.commands.control import set_runstate
from emulator.error import QemuError
from emulator.machine import Machine

from .cmdline import PROG, CmdlineError, Config, apply_block_options, parse_args
from .machine.types import lookup
from .qmp.server import EndpointError, QmpServer, open_client

START_TIMEOUT = 30.0


class EmulatorStartError(RuntimeError):
    """The emulator could not start; the message is what QEMU would print on stderr."""


async def open_qtest(config: Config, machine: Machine) -> None:
    """-qtest: connect the qtest chardev at start-up (the harness blocks in accept() until we do)
    and serve it for the machine's life."""
    assert config.qtest is not None
    from emulator.machine.qtest import QtestServer

    try:
        reader, writer = await open_client(config.qtest)
    except QemuError as exc:
        raise CmdlineError(exc.desc, text=(
            f"{PROG}: {exc.desc}\n"
            f"{PROG}: Failed to initialize device for qtest: \"{config.qtest_spec}\"\n")) from exc
    qtest = QtestServer(machine.clock, _qtest_log(config.qtest_log))
    task = asyncio.ensure_future(qtest.serve(reader, writer))
    machine.on_shutdown(qtest.close)

    def stop() -> None:
        if not task.done():
            task.cancel()

    machine.on_shutdown(stop)


def _qtest_log(path: str | None) -> TextIO | None:
    """-qtest-log: stderr when absent (as QEMU), nothing for "none", else that file."""
    if path is None:
        return sys.stderr
    if path == "none":
        return None
    try:
        return open(path, "w+")  # lives as long as the machine
    except OSError as exc:
        raise CmdlineError(f"Could not open '{path}': {exc.strerror}", f"-qtest-log {path}") from exc


async def open_machine(config: Config, machine: Machine) -> QmpServer:
    """Apply start-up options and open the QMP endpoints; CmdlineError on failure."""
    machine.configure(config.version, lookup(config.version, config.machine),
                      qtest=config.accels[:1] == ["qtest"])
    if config.start_paused:
        set_runstate(machine, "prelaunch")
    if config.qtest is not None:
        await open_qtest(config, machine)
    apply_block_options(config, machine)
    server = QmpServer(machine, config.monitors)
    try:
        await server.start()
    except EndpointError as exc:
        raise CmdlineError(exc.desc, exc.endpoint.origin or None) from exc
    return server


async def run_machine(config: Config, machine: Machine,
                      ready: Callable[[QmpServer], None] | None = None) -> None:
    """Start, serve until shut down, then close the machine.  Raises CmdlineError at start-up."""
    try:
        server = await open_machine(config, machine)
    except BaseException:
        machine.close()
        raise
    try:
        if ready is not None:
            ready(server)
        # qemu_cleanup: jobs are cancelled and nodes closed while the monitors still run, so a
        # connected client sees the cancelled jobs' events; the monitors go last.
        await server.serve_forever(before_close=machine.close)
    finally:
        await server.close()
        machine.close()


class EmbeddedEmulator:
    """An emulator instance inside this process, serving QMP from its own thread and loop."""

    def __init__(self, argv: list[str], *, stdout: TextIO | None = None) -> None:
        self.argv = list(argv)
        self.stdout = stdout
        self.machine: Machine | None = None
        self.server: QmpServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    def start(self) -> None:
        """Parse argv, build the machine, and return once every QMP socket listens."""
        if self._thread is not None:
            raise RuntimeError("EmbeddedEmulator.start() called twice")
        try:
            config = parse_args(self.argv)
        except CmdlineError as exc:
            raise EmulatorStartError(exc.format().rstrip("\n")) from exc
        if config.action != "run":
            raise EmulatorStartError(f"-{config.action} does not start an emulator")
        self.machine = attach(Machine(stdout=self.stdout, profile=config.profile))
        self._thread = threading.Thread(target=self._thread_main, args=(config, self.machine),
                                        name="blocktxn-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise EmulatorStartError("the emulator did not start in time")
        if self._start_error is not None:
            self._thread.join(START_TIMEOUT)
            error = self._start_error
            if isinstance(error, CmdlineError):
                raise EmulatorStartError(error.format().rstrip("\n")) from error
            raise EmulatorStartError(f"the emulator failed to start: {error}") from error

    def _thread_main(self, config: Config, machine: Machine) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(config, machine))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._ready.set()

    async def _main(self, config: Config, machine: Machine) -> None:
        def ready(server: QmpServer) -> None:
            self.server = server
            self._ready.set()

        try:
            await run_machine(config, machine, ready)
        except (CmdlineError, QemuError, OSError) as exc:
            if not self._ready.is_set():
                self._start_error = exc
        except BaseException as exc:
            if not self._ready.is_set():
                self._start_error = exc
            raise

    @property
    def stopped(self) -> bool:
        """True once the instance has ended (after quit or stop())."""
        return self._thread is not None and not self._thread.is_alive()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down (like SIGTERM without the event) and wait; harmless if already stopped."""
        thread = self._thread
        if thread is None:
            return
        server = self.server
        if server is not None and thread.is_alive():
            server.request_stop()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the emulator did not stop within {timeout} s")

    def __enter__(self) -> EmbeddedEmulator:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
