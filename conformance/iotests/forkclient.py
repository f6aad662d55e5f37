"""The client half of the emulator fork server (conformance/iotests/forkserver.py), run as QEMU_PROG.

It imports builtin modules only (`_socket`, `_signal`, `_struct`, `posix`, `marshal`: `socket`,
`signal` and `os` would cost more than the rest of its life), sends its argv, environment,
working directory, umask and every open file descriptor (SCM_RIGHTS) to the server, learns the
pid of the emulator forked for it, forwards SIGTERM/SIGINT/SIGHUP to that pid, and finally exits
with the emulator's status (or dies of the same signal).  If this process is killed outright, the
emulator notices the closed connection and dies too.
"""

from __future__ import annotations

import _signal
import _socket
import _struct
import marshal
import posix
import sys

FORWARDED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)


def _open_fds(exclude: int) -> list[int]:
    fds = []
    for name in posix.listdir("/proc/self/fd"):
        fd = int(name)
        if fd == exclude:
            continue
        try:
            posix.fstat(fd)
        except OSError:  # the directory fd listdir used, now closed
            continue
        fds.append(fd)
    return sorted(fds)


def _recv_exact(sock: _socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("fork server closed the connection")
        data += chunk
    return data


def run_via(path: str) -> None:
    """Run the emulator through the fork server at `path` and exit as it exits; return only if
    the server cannot be reached (the caller then runs the emulator itself)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return
    fds = _open_fds(sock.fileno())
    umask = posix.umask(0o022)
    posix.umask(umask)
    request = marshal.dumps({"argv": sys.argv[1:], "env": dict(posix.environ), "cwd": posix.getcwd(),
                             "fds": fds, "umask": umask})
    rights = _struct.pack(f"{len(fds)}i", *fds)
    sock.sendmsg([_struct.pack("!I", len(request)) + request],
                 [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
    pid = _struct.unpack("!i", _recv_exact(sock, 4))[0]

    def forward(signum: int, _frame: object) -> None:
        try:
            posix.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        _signal.signal(signum, forward)
    status = _struct.unpack("!i", _recv_exact(sock, 4))[0]
    if posix.WIFSIGNALED(status):
        sig = posix.WTERMSIG(status)
        if sig != _signal.SIGKILL:  # SIGKILL's disposition cannot (and need not) be reset
            _signal.signal(sig, _signal.SIG_DFL)
        posix.kill(posix.getpid(), sig)
    posix._exit(posix.waitstatus_to_exitcode(status) if posix.WIFEXITED(status) else 1)
