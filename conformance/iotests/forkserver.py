"""A fork server for the emulator: one warm process that has imported the emulator and forks a
fresh emulator process for each QEMU_PROG invocation (conformance/iotests/forkclient.py).

Why: QEMU's iotests start the binary under test dozens of times per test, and a Python process
pays for its imports (asyncio, the command and block modules) on every start, several times
QEMU's whole start-up.  A forked child starts with those modules loaded, so the client's start-up
is all that is left.  The child is a real, separate emulator process: it takes over the client's
file descriptors at the same numbers (stdio, the inherited QMP/qtest sockets), its working
directory, umask and environment, runs emulator.__main__.main with the client's argv, and its exit
status goes back to the client.  The server never creates an event loop or a thread, so forking
is safe.  `blocktxn iotests` starts it, and stops it (killing any emulator still running) at the end.

    python -m conformance.iotests.forkserver SOCKET_PATH
"""

from __future__ import annotations

import fcntl
import marshal
import os
import selectors
import signal
import socket
import struct
import sys

MAX_FDS = 250
HIGH_FD = 1000


def preload() -> None:
    """Import everything an emulator process needs before it can greet."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # as emulator.__main__ does
    import asyncio  # noqa: F401
    import logging  # noqa: F401

    import emulator.__main__
    import emulator.commands
    import emulator.launcher
    import emulator.machine.qtest  # noqa: F401
    from emulator.machine import Machine

    Machine().close()  # first use of the block and job modules


def _recv_request(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    header, ancdata, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(MAX_FDS * 4))
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[:len(data) - len(data) % 4]))
    (size,) = struct.unpack("!I", header)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("client went away")
        body += chunk
    return marshal.loads(body), fds


def _become(request: dict[str, object], fds: list[int], conn: socket.socket) -> int:
    """In the child: take over the client's descriptors, directory and environment; run main."""
    targets = list(request["fds"])  # type: ignore[call-overload]
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD) for fd in fds]
    for fd in fds:
        os.close(fd)
    conn_fd = fcntl.fcntl(conn.fileno(), fcntl.F_DUPFD_CLOEXEC, HIGH_FD + MAX_FDS + 1)
    conn.detach()  # its number is closed below; the socket object must never close it again
    keep = set(moved) | {conn_fd}
    for fd in _open_fds():
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the directory listdir read, already closed
                pass
    for target, fd in zip(targets, moved, strict=False):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)
    os.chdir(str(request["cwd"]))
    os.umask(int(request["umask"]))  # type: ignore[call-overload]
    os.environ.clear()
    for key, value in request["env"].items():  # type: ignore[attr-defined]
        os.environb[key] = value  # bytes, as posix.environ holds them
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    sys.argv = ["qemu-system-x86_64", *request["argv"]]  # type: ignore[misc]
    _watch_client(conn_fd)
    from emulator.__main__ import main

    try:
        return int(main() or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def _watch_client(fd: int) -> None:
    """If the client dies (SIGKILL), the emulator dies with it, as QEMU would have."""
    import threading

    def wait() -> None:
        try:
            while os.read(fd, 64):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, daemon=True, name="forkclient-watch").start()


def _open_fds() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]


def serve(path: str) -> None:
    """Accept clients until SIGTERM; then kill the emulators still running and remove `path`."""
    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    children: dict[int, tuple[socket.socket, int]] = {}
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        while not stopping:
            for key, _ in selector.select(timeout=1.0):
                if key.data is None:
                    _accept(listener, selector, children)
                else:
                    _reap(key.data, selector, children)
    finally:
        for pid, (conn, _) in list(children.items()):
            try:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                conn.sendall(struct.pack("!i", status))  # the client dies of SIGKILL too
            except (ChildProcessError, OSError):
                pass
        listener.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def _accept(listener: socket.socket, selector: selectors.BaseSelector,
            children: dict[int, tuple[socket.socket, int]]) -> None:
    conn, _ = listener.accept()
    try:
        request, fds = _recv_request(conn)
    except (OSError, ValueError, EOFError):
        conn.close()
        return
    pid = os.fork()
    if pid == 0:  # the emulator
        code = 1
        try:
            listener.close()
            code = _become(request, fds, conn)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    children[pid] = (conn, pidfd)
    selector.register(pidfd, selectors.EVENT_READ, pid)
    try:
        conn.sendall(struct.pack("!i", pid))
    except OSError:
        pass


def _reap(pid: int, selector: selectors.BaseSelector,
          children: dict[int, tuple[socket.socket, int]]) -> None:
    conn, pidfd = children.pop(pid)
    selector.unregister(pidfd)
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    try:
        conn.sendall(struct.pack("!i", status))
    except OSError:
        pass
    conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
