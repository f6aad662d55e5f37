"""Machine: the emulator's state root (QEMU's global block and job state, minus the guest).

Holds the block graph and the jobs, fans events out to listeners (the QMP server subscribes),
and carries the shutdown request and the stdout that HMP qemu-io prints to.  Nothing here knows
the QMP wire format.  The package also models what QEMU's command line builds around the block
layer: machine types (types.py), devices and their backends (devices.py), the virtual clock
(clock.py), the qtest protocol (qtest.py), the option table (options.py), and the QEMU version
the emulator plays (profile.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from emulator.versions import QemuProfile

EventListener = Callable[[str, dict[str, Any] | None, tuple[int, int]], None]


class Machine:
    """One emulated QEMU instance."""

    def __init__(self, stdout: TextIO | None = None, profile: QemuProfile | None = None) -> None:
        from emulator.block.graph import BlockGraph
        from emulator.jobs.manager import JobManager
        from emulator.versions import select

        from .clock import VirtualClock

        #: The QEMU version this instance behaves as (emulator/versions.py); without one given,
        #: $BLOCKTXN_QEMU_VERSION or the newest, as on the command line.
        self.profile: QemuProfile = profile if profile is not None else select()
        self.stdout: TextIO = stdout if stdout is not None else sys.stdout
        #: The profile's name ("7.2" or "10.0"): the machine model's texts are looked up by it.
        self.version = self.profile.name
        #: QEMU_CLOCK_VIRTUAL; frozen under the qtest accelerator until qtest moves it.
        self.clock = VirtualClock()
        #: Devices; None until configure() gives the machine a type (QMP-only users need none).
        self.devices: Any = None
        #: -object / object-add objects the block layer does not own (iothreads), by id.
        self.objects: dict[str, dict[str, Any]] = {}
        self.block = BlockGraph()
        self.block.copy_bitmap_on_filter = self.profile.block_copy_bitmap_on_filter
        self.block.graph_lock_drains = self.profile.graph_lock_drains
        self.block.debug_output = self._print_unless_qtest
        self.jobs = JobManager()
        self._listeners: list[EventListener] = []
        #: QEMU's RunState as query-status reports it ("prelaunch" with -S, else "running").
        self.runstate = "running"
        self.shutdown_requested = False
        self.shutdown_reason: str | None = None
        self._shutdown_callbacks: list[Callable[[], None]] = []
        self._closed = False

    def configure(self, version: str, machine_type: Any = None, *, qtest: bool = False) -> None:
        """Give the machine its version, type (a types.MachineType) and accelerator."""
        from .devices import DeviceTree
        from .types import lookup

        self.version = version
        self.clock.qtest = qtest
        mtype = machine_type or lookup(version, "none")
        assert mtype is not None
        self.devices = DeviceTree(mtype, version, self.block, self.emit_event,
                                  self.profile.unattached_ide_base)

    def _print_unless_qtest(self, text: str) -> None:
        """The block layer's `if (!qtest_enabled()) printf(...)` (blkdebug breakpoints)."""
        if self.qtest_enabled:
            return
        try:
            self.stdout.write(text)
            self.stdout.flush()
        except (OSError, ValueError):
            pass  # stdout closed (emulator shutting down): QEMU's printf has nowhere to go either

    @property
    def qtest_enabled(self) -> bool:
        """qtest_enabled(): the qtest accelerator is in use (virtual time stands still)."""
        return self.clock.qtest

    # ---- events -------------------------------------------------------------------------------
    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Call `listener(name, data, (seconds, microseconds))` for every event; returns unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit_event(self, name: str, data: dict[str, Any] | None = None) -> None:
        now = time.time()
        stamp = (int(now), int((now % 1) * 1_000_000))
        for listener in list(self._listeners):
            listener(name, data, stamp)

    # ---- lifecycle ----------------------------------------------------------------------------
    def on_shutdown(self, callback: Callable[[], None]) -> None:
        self._shutdown_callbacks.append(callback)

    def request_shutdown(self, reason: str = "host-qmp-quit") -> None:
        """Ask the process (or in-process instance) to stop, as QEMU's qemu_system_shutdown_request."""
        if self.shutdown_requested:
            return
        self.shutdown_requested = True
        self.shutdown_reason = reason
        for callback in list(self._shutdown_callbacks):
            callback()

    def close(self) -> None:
        """Cancel jobs and close every node (flushing images), as QEMU does on exit; once."""
        if self._closed:
            return
        self._closed = True
        # qemu_cleanup: "We must cancel all block jobs while the block layer is drained" --
        # bdrv_drain_all_begin (never ended: every running job shows paused, then running as
        # the cancel re-enters it), job_cancel_sync_all, bdrv_close_all.
        if self.profile.extra_drain_at_quit:
            self.block.drain_all()
        self.block.drain_all_begin()
        self.jobs.cancel_all_sync()
        self.block.close_all()
