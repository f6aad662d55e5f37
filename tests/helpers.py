"""Helpers the unit tests share: QMP through the dispatcher, real QEMU tools, job event recording.

Tests talk to an emulator the way clients do.  In-process, that is `DispatchClient`: every command
goes through the QMP dispatcher (emulator/qmp/dispatch.py), so its arguments are visited against
the QAPI schema of the machine's QEMU version, names are made Python names by the dispatcher
(not by the test), the handler runs with a monitor published, and a failure comes back as an
error response.  Calling handler functions directly would skip all of that, and would break
whenever a handler's Python signature changes while its QMP interface does not.  Over a socket,
`qmp_session` uses qemu.qmp's client.

Shared fixtures live in conftest.py; this module holds the plain functions and classes that test
modules import (``from helpers import ...``: pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import weakref
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from emulator.error import QemuError
from emulator.qmp.dispatch import Dispatcher

if TYPE_CHECKING:
    from emulator.jobs import Job
    from emulator.machine import Machine

#: The repository (the emulator package is imported from here by child processes).
ROOT = Path(__file__).resolve().parent.parent
#: Every wait on a socket client ends after this many seconds.
SOCKET_TIMEOUT = 20.0
#: Every emulator process run to its end must end within this many seconds.
PROCESS_TIMEOUT = 30


# ---- QMP through the dispatcher ----------------------------------------------------------------------
class _NegotiatedMonitor:
    """The monitor a test client runs commands on: in command mode (qmp_capabilities done), no OOB."""

    offered_capabilities: tuple[str, ...] = ("oob",)
    negotiated = True
    oob_enabled = False

    def enter_command_mode(self, capabilities: list[str]) -> None:
        raise AssertionError("the test monitor is already in command mode")


def qmp_name(python_name: str) -> str:
    """A keyword argument's QMP member name: ``node_name`` -> ``node-name`` (no top-level QMP
    argument of the commands the emulator has contains an underscore)."""
    return python_name.replace("_", "-")


class DispatchClient:
    """One QMP client of `machine`, in-process: requests go through the QMP Dispatcher.

    ``client("blockdev-add", driver="null-co", node_name="n0")`` returns the command's "return"
    value (``{}`` for a command without one) or raises QemuError with the response's error class
    and description, as a QMP client sees them.
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.dispatcher = Dispatcher(machine)
        self.monitor = _NegotiatedMonitor()

    def __call__(self, command: str, /, **arguments: Any) -> Any:
        return self.execute(command, {qmp_name(key): value for key, value in arguments.items()})

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a command whose handler does not wait (all but device_del): usable from plain and
        async test code alike, without an event loop of its own."""
        coro = self._dispatch(command, arguments)
        try:
            coro.send(None)
        except StopIteration as done:
            return self._result(done.value)
        coro.close()
        raise AssertionError(f"{command} waits for the event loop: run it over a QMP socket "
                             "(qmp_session)")

    def _dispatch(self, command: str, arguments: dict[str, Any] | None
                  ) -> Coroutine[Any, Any, dict[str, Any]]:
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        return self.dispatcher.dispatch(request, self.monitor)

    @staticmethod
    def _result(response: dict[str, Any]) -> Any:
        if "error" in response:
            raise QemuError(response["error"]["desc"], response["error"]["class"])
        return response["return"]


_CLIENTS: weakref.WeakKeyDictionary[Machine, DispatchClient] = weakref.WeakKeyDictionary()


def client_of(machine: Machine) -> DispatchClient:
    """The one DispatchClient of `machine` (its QAPI schema is built once per machine)."""
    client = _CLIENTS.get(machine)
    if client is None:
        client = _CLIENTS[machine] = DispatchClient(machine)
    return client


def qmp_cmd(machine: Machine, command: str, /, **arguments: Any) -> Any:
    """Run a QMP command on `machine` through the dispatcher (see DispatchClient)."""
    return client_of(machine)(command, **arguments)


# ---- QMP over a socket ------------------------------------------------------------------------------
async def _socket_session(sock: Path, commands: list[tuple[str, dict[str, Any] | None]]) -> list[Any]:
    client = QMPClient("test")
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while not sock.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sock} did not appear")
        await asyncio.sleep(0.01)
    while True:
        try:
            await client.connect(str(sock))
            break
        except Exception:  # not listening yet (the process is starting)
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)
    out: list[Any] = []
    try:
        for name, args in commands:
            try:
                out.append(await client.execute(name, args))
            except ExecuteError as e:
                out.append({"error": e.error.error.desc})
    finally:
        with contextlib.suppress(EOFError):  # after "quit" the peer may hang up first
            await client.disconnect()
    return out


def qmp_session(sock: Path, *commands: tuple[str, dict[str, Any] | None]) -> list[Any]:
    """Connect to the QMP socket `sock` (waiting for it to appear), run `commands` in order and
    return their results; a failed command gives ``{"error": DESC}`` in its place."""
    return asyncio.run(asyncio.wait_for(_socket_session(sock, list(commands)), SOCKET_TIMEOUT))


# ---- the emulator as a process -------------------------------------------------------------------
def emulator_process(args: list[str], version: str = "7.2", **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m emulator ARGS`` to its end in QEMU `version`'s profile, as a client
    launching the binary does; stdout and stderr are captured as text."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), BLOCKTXN_QEMU_VERSION=version)
    return subprocess.run([sys.executable, "-m", "emulator", *args], capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT, env=env, cwd=ROOT, check=False, **kwargs)


# ---- real QEMU tools ----------------------------------------------------------------------------------
def need(program: str) -> str:
    """The path of a real QEMU program; the test is skipped (with the install command) without it."""
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} not found (real QEMU 7.2 is needed: apt-get install qemu-system-x86 "
                    "qemu-utils)")
    return path


def real(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a real QEMU tool (`args[0]` on PATH); with `check`, it must succeed."""
    need(args[0])
    r = subprocess.run(args, check=False, capture_output=True, text=True, cwd=cwd, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    """Real qemu-img, its status and output left to the caller."""
    return real("qemu-img", *args, check=False)


def real_check_clean(path: Path) -> None:
    """Real qemu-img check finds no error in the image at `path`."""
    r = real("qemu-img", "check", str(path), check=False)
    assert r.returncode == 0 and "No errors were found on the image." in r.stdout, (r.stdout, r.stderr)


# ---- job events -------------------------------------------------------------------------------------
class JobEventRecorder:
    """A JobEventSink that logs (job id, event) pairs: status changes by their status value
    ("running"), the other events in capitals ("PENDING", "COMPLETED(msg)").  With
    `statuses_only`, JOB_STATUS_CHANGE alone is logged."""

    def __init__(self, *, statuses_only: bool = False) -> None:
        self.statuses_only = statuses_only
        self.log: list[tuple[str | None, str]] = []

    def _add(self, job: Job, what: str) -> None:
        if not self.statuses_only:
            self.log.append((job.id, what))

    def status_changed(self, job: Job) -> None:
        self.log.append((job.id, job.status.value))

    def pending(self, job: Job) -> None:
        self._add(job, "PENDING")

    def ready(self, job: Job) -> None:
        self._add(job, "READY")

    def completed(self, job: Job) -> None:
        self._add(job, f"COMPLETED({job.error})" if job.ret < 0 else "COMPLETED")

    def cancelled(self, job: Job) -> None:
        self._add(job, "CANCELLED")

    def io_error(self, job: Job, operation: str, action: str) -> None:
        self._add(job, f"ERROR({operation},{action})")

    def of(self, job_id: str) -> list[str]:
        """What happened to job `job_id`, in order."""
        return [what for jid, what in self.log if jid == job_id]
