"""The ``vm`` a case drives: one target instance, a qemu.qmp QMPClient, and the session log.

The helpers read like iotests (``vm.cmd``, ``vm.qmp``, ``vm.event_wait``, ``vm.hmp_qemu_io``,
``vm.shutdown``).  Every command, reply, event, stdout text and image-tool run is recorded in
``vm.log``.  qemu.qmp has no timeouts of its own, so every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient
from qemu.qmp.message import Message

from conformance.compare.normalize import PathMap, normalize
from conformance.imagetools import ImageTools, ToolResult
from conformance.qmplog import QmpLog
from conformance.targets import Instance, MonitorSocket, Target

DEFAULT_TIMEOUT = 30.0


#: Threads that wait for targets to exit, shared by every case of the process (each case's
#: asyncio.run() made, and at its end joined, a default executor thread of its own for this).
_WAITERS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="vm-exit-wait")


class VMError(AssertionError):
    """The target misbehaved (died, timed out, refused the connection)."""


class _RecordingListener(EventListener):
    """Receives every event: records it and wakes up event_wait."""

    def __init__(self, vm: VM) -> None:
        super().__init__()
        self._vm = vm

    async def put(self, event: Message) -> None:
        self._vm._on_event(dict(event))


class _Client(QMPClient):
    """QMPClient whose message hooks format a message for its debug log only when that log is on
    (qemu.qmp pretty-prints every message into the log call, even with debug off)."""

    def _cb_outbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("--> %s", str(msg))
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("<-- %s", str(msg))
        return msg


class VM:
    """One case's target instance and its recorded QMP session."""

    def __init__(self, target: Target, case: str, workdir: Path, sockdir: Path,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = target
        self.workdir = workdir
        self.sockdir = sockdir
        self.timeout = timeout
        self.log = QmpLog(case)
        self.paths = PathMap.of(TEST_DIR=str(workdir), SOCK_DIR=str(sockdir))
        self.tools: ImageTools = target.tools(workdir)
        self.tools.observer = self._on_tool
        self.tools.session_observer = self._on_session
        self.instance: Instance | None = None
        self._argv: list[str] = []
        self._drives = 0
        self._client: QMPClient | None = None
        self._pending_events: list[dict[str, Any]] = []
        self._event_arrived = asyncio.Event()
        self._shut_down = False
        #: (major, minor) of the QEMU the target is or emulates, from the QMP greeting.
        self.qemu_version: tuple[int, int] = (0, 0)

    # ---- set-up -------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """An absolute path in the case's private directory (shown as TEST_DIR in logs)."""
        return self.workdir / name

    def add_args(self, *args: str) -> VM:
        self._argv += args
        return self

    def add_drive(self, path: Path | str, *, fmt: str, drive_id: str | None = None,
                  node_name: str | None = None, interface: str = "none",
                  opts: str = "") -> VM:
        """Add ``-drive if=none,id=drive<N>,[node-name=],file=PATH,format=FMT[,opts]``."""
        drive_id = drive_id or f"drive{self._drives}"
        self._drives += 1
        parts = [f"if={interface}", f"id={drive_id}"]
        if node_name:
            parts.append(f"node-name={node_name}")
        parts += [f"file={path}", f"format={fmt}"] + ([opts] if opts else [])
        return self.add_args("-drive", ",".join(parts))

    @property
    def launched(self) -> bool:
        return self.instance is not None

    async def launch(self) -> None:
        """Start the target and negotiate QMP; the greeting is the log's first entry."""
        if self.instance is not None:
            raise VMError("vm.launch() called twice")
        monitor = MonitorSocket.pair()
        try:
            self.instance = self.target.start(monitor, self.workdir, list(self._argv))
        except BaseException:
            monitor.close()
            raise
        assert monitor.client is not None
        client = _Client(self.log.case)
        client.register_listener(_RecordingListener(self))
        # The target inherited its end of the pair: the greeting comes once it is ready, with
        # nothing to poll for.  The wait is bounded, and gives up early if the target dies.
        connecting = asyncio.ensure_future(client.connect(monitor.client))
        deadline = time.monotonic() + self.timeout
        try:
            while not connecting.done():
                if not self.instance.alive():
                    raise VMError(f"{self.target.name} exited during start-up "
                                  f"(status {self.instance.exit_status()})")
                if time.monotonic() > deadline:
                    raise VMError(f"no QMP greeting from {self.target.name} within {self.timeout}s")
                await asyncio.wait({connecting}, timeout=0.1)
            connecting.result()
        except BaseException:
            connecting.cancel()
            await self._reset_client(client)
            monitor.client.close()
            raise
        self._client = client
        greeting = client.greeting
        self.log.add("greeting", greeting._asdict() if greeting is not None else {})
        if greeting is not None:
            triple: Any = greeting.QMP.version["qemu"]  # type: ignore[index]
            self.qemu_version = (int(triple["major"]), int(triple["minor"]))
        self._collect_stdout()

    @staticmethod
    async def _reset_client(client: QMPClient) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5)

    # ---- QMP ----------------------------------------------------------------------------------
    def _require_client(self) -> QMPClient:
        if self._client is None:
            raise VMError("the vm is not launched (call await vm.launch())" if not self._shut_down
                          else "the vm has been shut down")
        return self._client

    @staticmethod
    def _arguments(args: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """iotests convention: top-level ``job_id`` means ``job-id``; nested names are as given."""
        merged = dict(args or {})
        merged.update({key.replace("_", "-"): value for key, value in kwargs.items()})
        return merged if (args is not None or kwargs) else None

    async def qmp(self, name: str, args: Mapping[str, Any] | None = None, /,
                  timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
        """Run a command; return the raw reply ({"return": ...} or {"error": ...}), recorded."""
        client = self._require_client()
        message = QMPClient.make_execute_msg(name, self._arguments(args, kwargs))
        self.log.add("command", dict(message))
        try:
            value = await asyncio.wait_for(client.execute_msg(message), timeout or self.timeout)
            reply: dict[str, Any] = {"return": value}
        except ExecuteError as error:
            reply = dict(error.received)
        except TimeoutError:
            raise VMError(f"no reply to {name} within {timeout or self.timeout}s") from None
        self.log.add("reply", reply)
        self._collect_stdout()
        return reply

    async def cmd(self, name: str, args: Mapping[str, Any] | None = None, /,
                  timeout: float | None = None, **kwargs: Any) -> Any:
        """Run a command; return its value or raise qemu.qmp.ExecuteError (like iotests' vm.cmd)."""
        client = self._require_client()
        message = QMPClient.make_execute_msg(name, self._arguments(args, kwargs))
        self.log.add("command", dict(message))
        try:
            value = await asyncio.wait_for(client.execute_msg(message), timeout or self.timeout)
        except ExecuteError as error:
            self.log.add("reply", dict(error.received))
            self._collect_stdout()
            raise
        except TimeoutError:
            raise VMError(f"no reply to {name} within {timeout or self.timeout}s") from None
        self.log.add("reply", {"return": value})
        self._collect_stdout()
        return value

    async def hmp(self, command_line: str) -> str:
        """``human-monitor-command``; returns the reply string."""
        return str(await self.cmd("human-monitor-command", {"command-line": command_line}))

    async def hmp_qemu_io(self, device: str, command: str) -> str:
        """HMP ``qemu-io DEV "CMD"``; returns what QEMU printed (qemu-io writes to its stdout)."""
        reply = await self.hmp(f'qemu-io {device} "{command}"')
        return reply + self._last_output

    # ---- events -------------------------------------------------------------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        self.log.add("event", event)
        self._pending_events.append(event)
        self._event_arrived.set()

    @staticmethod
    def event_match(event: Any, match: Any) -> bool:
        """Recursive subset test (iotests' event_match): dicts match on the keys given."""
        if match is None:
            return True
        if isinstance(match, dict):
            return isinstance(event, dict) and all(
                key in event and VM.event_match(event[key], value) for key, value in match.items()
            )
        return bool(event == match)

    async def event_wait(self, name: str, match: Mapping[str, Any] | None = None,
                         timeout: float | None = None) -> dict[str, Any]:
        """Return (and consume) the first event `name` matching `match`, searching the events
        already received first; other events stay pending, as iotests' event_wait."""
        wait_for = timeout or self.timeout
        deadline = time.monotonic() + wait_for
        while True:
            for index, event in enumerate(self._pending_events):
                if event.get("event") == name and self.event_match(event, match):
                    return self._pending_events.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VMError(f"timed out after {wait_for}s waiting for event {name} "
                              f"matching {match!r}")
            if self.instance is not None and not self.instance.alive():
                raise VMError(f"{self.target.name} exited while waiting for event {name}")
            self._event_arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event_arrived.wait(), min(remaining, 0.5))

    async def wait_job_end(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for a job's JOB_STATUS_CHANGE ``null`` (its last event); return it."""
        return await self.event_wait("JOB_STATUS_CHANGE", {"data": {"id": job_id, "status": "null"}},
                                     timeout)

    def get_events(self) -> list[dict[str, Any]]:
        """Return and consume every pending event."""
        events, self._pending_events = self._pending_events, []
        return events

    # ---- output and tools ---------------------------------------------------------------------
    _last_output = ""

    def _collect_stdout(self) -> None:
        text = self.instance.read_new_stdout() if self.instance is not None else ""
        self._last_output = text
        if text:
            self.log.add("output", text)

    def _on_tool(self, result: ToolResult) -> None:
        self.log.add("tool", f"{result.command_line()}  # exit {result.returncode}")
        if result.stdout:
            self.log.add("output", result.stdout)
        if result.stderr:
            self.log.add("output", result.stderr)

    def _on_session(self, command: str, output: str) -> None:
        if not command:  # a session starts: `output` is its command line
            self.log.add("tool", f"{output}  # interactive")
            return
        self.log.add("tool", f"qemu-io> {command}")
        if output:
            self.log.add("output", output)

    # ---- shutdown -----------------------------------------------------------------------------
    async def shutdown(self, timeout: float | None = None) -> None:
        """``quit``, then wait for the target to exit (killing it if it does not)."""
        if self._shut_down:
            return
        self._shut_down = True
        wait_for = timeout or self.timeout
        client, self._client = self._client, None
        try:
            if client is not None:
                self._client = client
                try:
                    await self.cmd("quit", timeout=wait_for)
                finally:
                    self._client = None
            # The client keeps reading while the target exits: QEMU cancels its jobs on the way
            # out (qemu_cleanup) and their events come before the monitor closes.
            if self.instance is not None:
                exited = await asyncio.get_running_loop().run_in_executor(
                    _WAITERS, self.instance.wait, wait_for)
                if not exited:
                    raise VMError(f"{self.target.name} did not exit within {wait_for}s after quit")
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), wait_for)
        finally:
            if self.instance is not None:
                self.instance.kill()
                self._collect_stdout()

    def kill(self) -> None:
        """Teardown: stop the target whatever state it is in."""
        self._client = None
        if self.instance is not None:
            self.instance.kill()

    # ---- reporting ----------------------------------------------------------------------------
    def normalized(self) -> str:
        return normalize(self.log, self.paths, self.target.version).render()

    def diagnostics(self) -> str:
        """What a failing case shows: the normalized log so far and the target's stderr."""
        stderr = self.instance.stderr_text() if self.instance is not None else ""
        return (f"---- normalized log so far ({self.target.name}) ----\n{self.normalized()}"
                f"---- {self.target.name} stderr ----\n{stderr or '(empty)'}\n")
