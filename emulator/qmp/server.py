"""The QMP server: monitor endpoints (unix or TCP; listening, or connecting out as QEMU's
`-chardev socket,path=...` without server=on does), sessions, and orderly shutdown.

Several clients may be connected at once; each gets its own session, and one disconnecting
never disturbs the others.  `quit` (or stop()) closes everything once the reply is flushed, and
listening unix sockets are created mode 0600 and removed on close.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from emulator.commands import CommandDef
from emulator.error import QemuError
from emulator.machine.chardev import Endpoint, fd_is_listening

from .dispatch import Dispatcher
from .events import EventBroadcaster
from .session import HmpSession, MonitorSession

if TYPE_CHECKING:
    from emulator.machine import Machine

__all__ = ["Endpoint", "EndpointError", "QmpServer", "fd_is_listening", "open_client", "open_stdio"]

log = logging.getLogger("emulator.qmp")

UNIX_PATH_MAX = 108
LOOPBACK = "127.0.0.1"


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_stdio() -> Streams:
    """stdin/stdout as one stream pair (QEMU's `stdio` chardev)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    try:
        await loop.connect_read_pipe(lambda: protocol, os.fdopen(os.dup(0), "rb", buffering=0))
    except ValueError:  # a regular file: read it in a thread
        def pump() -> None:
            with os.fdopen(os.dup(0), "rb", buffering=0) as stdin:
                while chunk := stdin.read(65536):
                    loop.call_soon_threadsafe(reader.feed_data, chunk)
            loop.call_soon_threadsafe(reader.feed_eof)
        threading.Thread(target=pump, daemon=True, name="stdin").start()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    try:
        transport, wprotocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, out)
    except ValueError:  # a regular file: plain blocking writes are all it needs
        return reader, FileWriter(out)  # type: ignore[return-value]
    writer = asyncio.StreamWriter(transport, wprotocol, reader, loop)  # type: ignore[arg-type]
    return reader, writer


class FileWriter:
    """The part of asyncio.StreamWriter a session uses, over a regular file (stdout redirected
    to a file), where asyncio's pipe transports refuse to work."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def write(self, data: bytes) -> None:
        if not self._file.closed:
            self._file.write(data)

    async def drain(self) -> None:
        return None

    def is_closing(self) -> bool:
        return bool(self._file.closed)

    def close(self) -> None:
        self._file.close()

    async def wait_closed(self) -> None:
        return None


async def open_client(endpoint: Endpoint) -> Streams:
    """Connect to a client-mode endpoint (unix/tcp without server=on, a connected fd, stdio)."""
    if endpoint.kind == "stdio":
        return await open_stdio()
    try:
        if endpoint.kind == "fd":
            sock = socket.socket(fileno=endpoint.fd)
            sock.setblocking(False)
            if sock.family == socket.AF_UNIX:
                return await asyncio.open_unix_connection(sock=sock)
            return await asyncio.open_connection(sock=sock)
        if endpoint.kind == "unix":
            return await asyncio.open_unix_connection(endpoint.path)
        return await asyncio.open_connection(endpoint.host or LOOPBACK, int(endpoint.port))
    except OSError as exc:
        where = endpoint.path if endpoint.kind == "unix" else f"{endpoint.host}:{endpoint.port}"
        raise QemuError(f"Failed to connect to '{where}': {_strerror(exc)}") from exc


class EndpointError(QemuError):
    """An endpoint could not be opened; `endpoint` says which."""

    def __init__(self, desc: str, endpoint: Endpoint) -> None:
        super().__init__(desc)
        self.endpoint = endpoint


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


class QmpServer:
    """Serves QMP for one Machine on an asyncio loop."""

    def __init__(self, machine: Machine, endpoints: list[Endpoint], *,
                 commands: Mapping[str, CommandDef] | None = None) -> None:
        self.machine = machine
        self.endpoints = endpoints
        self.dispatcher = Dispatcher(machine, commands)
        self._listeners: list[asyncio.AbstractServer] = []
        self._unix_paths: list[str] = []
        self._sessions: set[MonitorSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock: asyncio.Lock | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: EventBroadcaster | None = None
        self._closed = False
        #: (host, port) of every TCP listener, with the port actually bound.
        self.tcp_addresses: list[tuple[str, int]] = []

    # -- start -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open every endpoint; raise QemuError (QEMU's text) if one cannot be opened."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._events = EventBroadcaster(self.machine, self._loop)
        self.machine.on_shutdown(self.request_stop)
        try:
            for endpoint in self.endpoints:
                try:
                    if endpoint.listen:
                        await self._listen(endpoint)
                    else:
                        await self._connect(endpoint)
                except QemuError as exc:
                    raise EndpointError(exc.desc, endpoint) from exc
        except BaseException:
            await self.close()
            raise

    async def _listen(self, endpoint: Endpoint) -> None:
        if endpoint.kind == "fd":
            sock = socket.socket(fileno=endpoint.fd)
            sock.setblocking(False)
            self._listeners.append(await asyncio.start_unix_server(
                lambda r, w: self._accept(r, w, endpoint), sock=sock))
            return
        if endpoint.kind == "unix":
            sock = self._bind_unix(endpoint.path)
            self._listeners.append(await asyncio.start_unix_server(
                lambda r, w: self._accept(r, w, endpoint), sock=sock))
            return
        host = endpoint.host or LOOPBACK
        try:
            server = await asyncio.start_server(lambda r, w: self._accept(r, w, endpoint), host,
                                                int(endpoint.port))
        except (OSError, ValueError) as exc:
            reason = _strerror(exc) if isinstance(exc, OSError) else str(exc)
            raise QemuError(f"Failed to bind socket: {reason}") from exc
        self._listeners.append(server)
        for sock in server.sockets:
            address = sock.getsockname()
            self.tcp_addresses.append((address[0], address[1]))

    def _bind_unix(self, path: str) -> socket.socket:
        if len(os.fsencode(path)) >= UNIX_PATH_MAX:
            raise QemuError(f"UNIX socket path '{path}' is too long")
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # QEMU replaces a stale socket
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise QemuError(f"Failed to unlink socket {path}: {_strerror(exc)}") from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # On Linux, bind() creates the socket file with the socket inode's mode less the
            # umask: setting it first means the file never exists with wider permissions.
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(path)
            os.chmod(path, 0o600)  # for systems where the fchmod() above has no effect
            sock.listen(16)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise QemuError(f"Failed to bind socket to {path}: {_strerror(exc)}") from exc
        self._unix_paths.append(path)
        return sock

    async def _connect(self, endpoint: Endpoint) -> None:
        reader, writer = await open_client(endpoint)
        self._spawn(self._serve(reader, writer, endpoint))

    # -- sessions --------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      endpoint: Endpoint) -> None:
        if self._closed:
            writer.close()
            return
        await self._serve(reader, writer, endpoint)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     endpoint: Endpoint) -> None:
        assert self._lock is not None and self._events is not None
        session: MonitorSession
        if endpoint.mode == "readline":
            session = HmpSession(reader, writer, self.dispatcher, self._lock)
        else:
            session = MonitorSession(reader, writer, self.dispatcher, self._lock,
                                     pretty=endpoint.pretty)
        session.hold_output = endpoint.kind == "stdio"
        self._sessions.add(session)
        if endpoint.mode != "readline":
            self._events.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        except Exception:  # never let one connection's failure escape into the loop
            log.exception("QMP session failed")
        finally:
            self._events.remove(session)
            self._sessions.discard(session)
            if task is not None:
                self._tasks.discard(task)

    # -- stop ------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the server to close (from any thread); serve_forever() then returns."""
        loop, stop = self._loop, self._stop
        if loop is None or stop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            stop.set()
        else:
            loop.call_soon_threadsafe(stop.set)

    async def serve_forever(self, before_close: Callable[[], None] | None = None) -> None:
        """Serve until quit or request_stop(), call `before_close` while the monitors still
        run (qemu_cleanup cancels the jobs then, and their events still go out), then close."""
        assert self._stop is not None
        await self._stop.wait()
        try:
            if before_close is not None:
                before_close()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening, let a running command finish and its reply go out, close sessions."""
        if self._closed:
            return
        self._closed = True
        for listener in self._listeners:
            listener.close()
        if self._lock is not None:
            async with self._lock:  # a command in progress writes its reply first
                pass
        await asyncio.gather(*(session.close() for session in list(self._sessions)),
                             return_exceptions=True)
        for listener in self._listeners:
            try:
                await asyncio.wait_for(listener.wait_closed(), 5.0)
            except TimeoutError:
                pass
        pending = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("could not remove %s: %s", path, exc)
        if self._events is not None:
            self._events.close()
